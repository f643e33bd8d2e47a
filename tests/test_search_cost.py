"""Search cost: what evaluating trials costs a live run, each fine-tune and arm paid once;
and the sweep baseline's order (every arm once at its widest n, then n on the best arm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from envs.replay.env import ReplayEnvironment
from planner.cost import CostModel
from planner.search.search_cost import SearchCost
from planner.space import Allocation, Plan
from planner.spec import TaskSpec, load_spec
from planner.store import Store
from planner.study import optimize
from tests.mixture_tasks import SHARED, write_mixture_task


def lora(mixture: str, n: int = 16, aggregator: str = "oracle") -> Plan:
    return Plan(model="small", method="lora", mixture=mixture, samples=n, aggregator=aggregator)


def test_a_shared_fine_tune_is_paid_once_and_n_is_free(tmp_path: Path) -> None:
    spec = load_spec(write_mixture_task(tmp_path))
    items = ReplayEnvironment(spec).validation_items()
    cost_model = CostModel(spec)
    meter = SearchCost(cost_model, items)
    shared = Allocation.of({"a": lora(SHARED), "b": lora(SHARED)})
    train = cost_model.plan_cost("a", lora(SHARED)).train_gpu_hours
    trains, arms = meter.parts(shared)
    assert list(trains.values()) == [train]  # one multi-task LoRA serves both
    assert len(arms) == 2 and all(c > 0 for c in arms.values())
    # sampling: max n (16) for each of the subtask's items, whatever n the plan uses
    per_query = (cost_model.plan_cost("a", lora(SHARED)).inference_gpu_hours
                 / spec.workload.queries)
    assert arms[("a", "small", "lora", SHARED, None)] == pytest.approx(per_query * items["a"])
    assert meter.add(shared) == pytest.approx(train + sum(arms.values()))
    fewer = Allocation.of({"a": lora(SHARED, 4), "b": lora(SHARED, 1, "first")})
    assert meter.marginal(fewer) == 0.0  # only n and the aggregator changed
    own = Allocation.of({"a": lora("own"), "b": lora(SHARED)})
    assert meter.marginal(own) == pytest.approx(
        cost_model.plan_cost("a", lora("own")).train_gpu_hours
        + meter.parts(own)[1][("a", "small", "lora", "own", None)])


def test_a_released_checkpoint_costs_only_its_samples(tiny_spec: TaskSpec) -> None:
    meter = SearchCost(CostModel(tiny_spec), {"extract": 20, "solve": 20})
    plan = Plan(model="large", method="ckpt-b", mixture="default", samples=2,
                aggregator="oracle")
    trains, arms = meter.parts(Allocation.of({"extract": plan, "solve": plan}))
    assert trains == {} and len(arms) == 2  # downloaded, not trained


def test_sweep_tries_every_arm_at_its_widest_n_then_refines_n(tiny_spec: TaskSpec) -> None:
    store = Store("sqlite://")
    env = ReplayEnvironment(tiny_spec)
    trials = optimize(tiny_spec, env, store=store, budget="100gpu-h", strategy="sweep",
                      n_trials=12, seed=0).trials
    cost_model = CostModel(tiny_spec)
    extract = [t.allocation["extract"] for t in trials]
    arms = {(p.model, p.method) for p in extract[:4]}
    assert len(arms) == 4  # the first four trials: extract's four arms
    for p in extract[:4]:  # each at the largest n that fits beside solve's cheapest plan
        bigger = p.replace(samples=p.samples * 2)
        if bigger.samples <= 16:
            alloc = Allocation.of({"extract": bigger, "solve": trials[0].allocation["solve"]})
            assert cost_model.estimate(alloc).total_gpu_hours > 100.0
    assert len({t.allocation.key() for t in trials}) == len(trials)


def test_a_live_screen_pays_a_prefix_of_training_and_the_full_trial_the_rest(
        tmp_path: Path) -> None:
    replay = load_spec(write_mixture_task(tmp_path))
    items = ReplayEnvironment(replay).validation_items()
    live = CostModel(replay.model_copy(update={"environment": "live"}))
    meter, recorded = SearchCost(live, items), SearchCost(CostModel(replay), items)
    own = Allocation.of({"a": lora("own"), "b": lora(SHARED)})
    trains, arms = meter.parts(own)
    train, sample = sum(trains.values()), sum(arms.values())
    assert recorded.marginal(own, 0.25) == pytest.approx(train + 0.25 * sample)  # a table's
    assert meter.add(own, 0.25) == pytest.approx(0.25 * (train + sample))
    assert meter.marginal(own, 0.25) == 0.0  # that prefix and its samples are cached
    assert meter.marginal(own, 0.5) == pytest.approx(0.25 * train + 0.5 * sample)
    # in full: the remaining steps, and every sample again (the finished model is another)
    assert meter.marginal(own) == pytest.approx(0.75 * train + sample)
    meter.add(own)
    assert meter.marginal(own) == 0.0
    assert meter.marginal(own, 0.25) == 0.0  # that prefix was trained and sampled
    assert meter.marginal(own, 0.5) == pytest.approx(0.25 * train + 0.5 * sample)  # resumed
