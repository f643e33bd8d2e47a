"""The shipped replay suite: every task loads and evaluates; stored optima are exact."""

from __future__ import annotations

import pytest

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
