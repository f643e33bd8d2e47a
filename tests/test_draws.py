"""Draws: a study samples each arm only as often as a plan of it within the budget reads,
and the search meter prices that."""

from __future__ import annotations

from pathlib import Path

import pytest

from envs.replay.env import ReplayEnvironment
from planner.cost import CostModel, MeasuredCalibration, Utilization
from planner.draws import Arm, plan_arms, samples_drawn, study_draws
from planner.search import Runner
from planner.search.search_cost import SearchCost
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import Store
from planner.study import open_study

TASKS = Path(__file__).resolve().parents[1] / "envs" / "replay" / "tasks"


def priced(name: str) -> tuple[TaskSpec, SearchSpace, CostModel, float]:
    spec = load_spec(TASKS / f"{name}.yaml")
    assert spec.budget is not None
    return (spec, SearchSpace(spec), CostModel(spec, ReplayEnvironment(spec).calibration()),
            spec.hardware.gpu_hours(spec.budget))


def enumerated_draws(space: SearchSpace, cost_model: CostModel,
                     budget: float) -> dict[Arm, int]:
    """Per arm, the most samples a plan of it reads in some allocation within the budget,
    found by pricing every allocation."""
    draws: dict[Arm, int] = {}
    for allocation in space.allocations():
        if cost_model.estimate(allocation).total_gpu_hours <= budget:
            for s, p in allocation.items():
                for arm, n in plan_arms(cost_model, s, p):
                    draws[arm] = max(n, draws.get(arm, 0))
    return draws


@pytest.mark.parametrize("name", ["monkeys_gsm8k", "mmlu_cascade_gsm8k_vote",
                                  "cascades_mmlu_gsm8k"])
def test_draws_are_the_most_samples_a_plan_within_budget_reads(name: str) -> None:
    spec, space, cost_model, budget = priced(name)
    draws = study_draws(space, cost_model, budget)
    assert draws == enumerated_draws(space, cost_model, budget)
    largest = {s.name: max(s.samples) for s in spec.subtasks}
    cut = {arm for arm, n in draws.items() if n < largest[arm[0]]}
    assert bool(cut) == (name == "monkeys_gsm8k")  # where the budget binds n


def test_a_plan_reading_more_than_the_draw_gets_the_largest_n() -> None:
    arm: Arm = ("solve", "m", "lora", "default", None)
    assert samples_drawn(None, arm, 2, 128) == 128  # outside a study
    assert samples_drawn({arm: 4}, arm, 2, 128) == 4
    assert samples_drawn({arm: 4}, arm, 8, 128) == 128  # over budget: never cut short
    assert samples_drawn({}, arm, 1, 128) == 128  # no plan of the arm fits


def test_the_meter_prices_an_arm_at_its_draw() -> None:
    spec, space, cost_model, budget = priced("monkeys_gsm8k")
    draws = study_draws(space, cost_model, budget)
    items = ReplayEnvironment(spec).validation_items()
    arm, n = min(draws.items(), key=lambda kv: kv[1])  # the arm the budget cuts most
    subtask, model, method, mixture, _ = arm
    largest = max(spec.subtask(subtask).samples)
    assert n < largest
    plan = Plan(model=model, method=method, mixture=mixture, samples=1, aggregator="oracle")
    allocation = Allocation.of({subtask: plan})

    def per_item(samples: int) -> float:
        return (cost_model.plan_cost(subtask, plan.replace(samples=samples)).inference_gpu_hours
                / spec.workload.queries)

    drawn = SearchCost(cost_model, items, draws).parts(allocation)[1][arm]
    widest = SearchCost(cost_model, items).parts(allocation)[1][arm]
    assert drawn == pytest.approx(per_item(n) * items[subtask])
    assert widest == pytest.approx(per_item(largest) * items[subtask])
    assert drawn < widest


def test_a_study_keeps_the_draws_of_its_first_run(tmp_path: Path) -> None:
    spec, space, cost_model, budget = priced("monkeys_gsm8k")
    env = ReplayEnvironment(spec)
    db = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(Store(db), spec, name="s", budget=spec.budget or "", strategy="random",
                       seed=0)
    first = Runner(env, Store(db), "s", cost_model, study.budget_gpu_hours).draws
    assert first == study_draws(space, cost_model, budget)
    # a resume (or another driver) that measured 4x dearer sampling since draws the same
    dearer = CostModel(spec, MeasuredCalibration(Utilization(train=None, sample=0.1),
                                                 env.calibration()))
    assert study_draws(space, dearer, budget) != first
    assert Runner(env, Store(db), "s", dearer, study.budget_gpu_hours).draws == first
    assert Store(db).require_study("s").draws == first
