"""The held-out replay tasks (envs/replay/heldout): shapes the suite lacks, kept out of it.
Their tables are cut from the suite's own, and every task has an optimum within budget."""

from __future__ import annotations

import pandas as pd
import pytest

from envs.replay.build_tables import OUT, final_checkpoint, math_levels
from envs.replay.env import ReplayEnvironment
from envs.replay.optimum import builtin_tasks, optimum_record
from planner.cost import CostModel
from planner.space import Allocation
from planner.spec import load_spec

HELD_OUT = sorted((OUT.parent / "heldout").glob("*.yaml"))


def test_held_out_tasks_are_not_in_the_suite() -> None:
    names = {load_spec(p).name for p in HELD_OUT}
    assert len(names) == 3
    assert not names & {load_spec(p).name for p in builtin_tasks()}


@pytest.mark.parametrize("path", HELD_OUT, ids=lambda p: p.stem)
def test_held_out_optimum_evaluates_within_budget(path) -> None:
    spec = load_spec(path)
    record = optimum_record(path)
    env = ReplayEnvironment(spec)
    alloc = Allocation.from_dict(record["allocation"])
    assert env.evaluate(alloc).score == pytest.approx(record["score"], rel=1e-12)
    assert CostModel(spec, env.calibration()).estimate(alloc).total_gpu_hours == pytest.approx(
        record["cost_gpu_hours"], rel=1e-9)
    assert 0 < record["score"] < 1


def test_math_levels_split_the_math_table() -> None:
    math = pd.read_csv(OUT / "pythia_math.csv.gz")
    easy, hard = (pd.read_csv(OUT / f"pythia_math_levels_{k}.csv.gz") for k in ("1_3", "4_5"))
    pd.testing.assert_frame_equal(easy, math_levels(math, (1, 2, 3)).reset_index(drop=True))
    assert len(easy) + len(hard) == len(math)
    assert not set(easy["problem"]) & set(hard["problem"])  # a problem has one level


def test_final_checkpoint_is_the_300b_rows_of_gsm8k() -> None:
    gsm8k = pd.read_csv(OUT / "pythia_gsm8k.csv.gz")
    final = pd.read_csv(OUT / "pythia_gsm8k_final.csv.gz")
    pd.testing.assert_frame_equal(final, final_checkpoint(gsm8k).reset_index(drop=True))
    assert "method" not in final and final["model"].nunique() == 9
