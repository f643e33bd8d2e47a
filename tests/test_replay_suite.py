"""The shipped replay suite: every task loads and evaluates; stored optima are exact; the
cascade tables rebuild from the recorded answers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from envs.replay.build_tables import LLAMA_PARAMS, OUT, convert_llama_cascades
from envs.replay.env import ReplayEnvironment
from envs.replay.optimum import builtin_tasks, load_optima, optimum_record
from planner.budget import parse_budget
from planner.cost import CostModel
from planner.space import Allocation
from planner.spec import load_spec

TASKS = builtin_tasks()
OPTIMA = load_optima()


def test_suite_has_multi_stage_tasks() -> None:
    stages = [len(load_spec(p).subtasks) for p in TASKS]
    assert len(TASKS) >= 4 and sum(n >= 2 for n in stages) >= 2
    assert {load_spec(p).name for p in TASKS} == set(OPTIMA)


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.stem)
def test_stored_optimum_evaluates_within_budget(path) -> None:
    spec = load_spec(path)
    env = ReplayEnvironment(spec)
    stored = OPTIMA[spec.name]
    alloc = Allocation.from_dict(stored["allocation"])
    assert env.evaluate(alloc).score == pytest.approx(stored["score"], rel=1e-12)
    cost = CostModel(spec, env.calibration()).estimate(alloc).total_gpu_hours
    budget = parse_budget(stored["budget"]).gpu_hours(spec.hardware.peak_flops,
                                                      spec.hardware.utilization)
    assert cost == pytest.approx(stored["cost_gpu_hours"], rel=1e-9)
    assert cost <= budget
    assert 0 < stored["score"] < 1


@pytest.mark.parametrize("path", TASKS, ids=lambda p: p.stem)
def test_stored_optimum_recomputes_identically(path) -> None:
    assert optimum_record(path) == OPTIMA[load_spec(path).name]


SHARED = Path(__file__).parents[2] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "cascades").is_dir(), reason="shared/data/cascades not present")
@pytest.mark.parametrize(("source", "table"), [("mmlu_llama_test", "mmlu_llama_cascades"),
                                               ("gsm8k_llama_train", "gsm8k_llama_cascades")])
def test_cascade_tables_rebuild_from_recorded_answers(source, table) -> None:
    built = convert_llama_cascades(SHARED, source)
    shipped = pd.read_csv(OUT / f"{table}.csv.gz")
    pd.testing.assert_frame_equal(built, shipped, check_dtype=False)
    # a route serves the small model's answer, or on its deferred queries the larger one's
    answers = pd.read_csv(SHARED / "cascades" / f"{source}.csv").pivot(
        index="query", columns="model", values="correct")
    for (model, route), rows in shipped.groupby(["model", "route"]):
        rows = rows.set_index("query")
        if route == "alone":
            assert (rows["correct"] == answers[model]).all() and rows["deferred"].sum() == 0
            continue
        _, size, share = route.split("-")  # to-70b-20pct
        strong = next(m for m in LLAMA_PARAMS if m.endswith(f"-{size}"))
        served = answers[model].where(rows["deferred"] == 0, answers[strong])
        assert (rows["correct"] == served).all()
        assert rows["deferred"].mean() == pytest.approx(int(share[:-3]) / 100, abs=2 / len(rows))
