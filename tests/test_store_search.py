from __future__ import annotations

from pathlib import Path

import pytest

from envs import make_environment
from planner.cost import Cost, CostModel
from planner.env import Observation
from planner.errors import StudyError
from planner.search import Runner, SearchContext, make_strategy
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec
from planner.store import Store, TrialStatus
from planner.study import optimize


def _alloc(model: str = "small", n: int = 1) -> Allocation:
    plan = Plan(model, "ckpt-a", samples=n, aggregator="oracle")
    return Allocation.of({"extract": plan, "solve": plan})


def _create(store: Store, name: str = "s") -> None:
    store.create_study(name=name, task_name="tiny", task_path="task.yaml", task={"a": 1},
                       budget="1gpu-h", budget_gpu_hours=1.0, strategy="random", seed=3)


def test_store_round_trip(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _create(store)
    n0 = store.start_trial("s", _alloc(), Cost(0.25, 0.5), source="random")
    store.finish_trial("s", n0, TrialStatus.OK,
                       observation=Observation(0.42, {"extract": 0.6, "solve": 0.7},
                                               {"device_seconds": 1.5}),
                       subtask_costs={"extract": Cost(0.1, 0.2), "solve": Cost(0.15, 0.3)})
    n1 = store.start_trial("s", _alloc("large"), Cost(2.0, 1.0))
    store.finish_trial("s", n1, TrialStatus.FAILED, error="boom")
    again = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")  # a new process would see this
    t0, t1 = again.trials("s")
    assert (t0.number, t0.status, t0.score) == (0, TrialStatus.OK, 0.42)
    assert t0.allocation == _alloc()
    assert t0.subtask_scores == {"extract": 0.6, "solve": 0.7}
    assert t0.subtask_costs["solve"] == Cost(0.15, 0.3)
    assert t0.cost.total_gpu_hours == pytest.approx(0.75)
    assert t0.measured == {"device_seconds": 1.5}
    assert (t1.status, t1.error, t1.score) == (TrialStatus.FAILED, "boom", None)
    assert again.get_study("s").seed == 3
    with pytest.raises(StudyError, match="--resume"):
        _create(again)


@pytest.mark.parametrize("strategy", ["random", "optuna"])
@pytest.mark.parametrize("budget", ["20gpu-h", "35gpu-h"])
def test_strategies_never_exceed_budget(tiny_spec: TaskSpec, strategy: str, budget: str) -> None:
    store = Store("sqlite://")
    result = optimize(tiny_spec, make_environment(tiny_spec), store=store, budget=budget,
                      strategy=strategy, n_trials=25, seed=1)
    limit = result.study.budget_gpu_hours
    assert len(result.trials) == 25
    assert all(t.status is TrialStatus.OK for t in result.trials)
    assert all(t.cost.total_gpu_hours <= limit for t in result.trials)
    keys = [t.allocation.key() for t in result.trials]
    assert len(set(keys)) == len(keys), "a strategy asked for an evaluated allocation again"
    # the cost check is real: some allocations of this space are over budget
    cm = CostModel(tiny_spec)
    space = SearchSpace(tiny_spec)
    plans = list(space.plans("solve"))
    over = [p for p in plans if cm.estimate(Allocation.of({"extract": p, "solve": p}))
            .total_gpu_hours > limit]
    assert over


@pytest.mark.parametrize("strategy", ["random", "optuna"])
def test_same_seed_same_trials(tiny_spec: TaskSpec, strategy: str) -> None:
    runs = []
    for _ in range(2):
        result = optimize(tiny_spec, make_environment(tiny_spec), store=Store("sqlite://"),
                          budget="60gpu-h", strategy=strategy, n_trials=12, seed=7)
        runs.append([t.allocation for t in result.trials])
    assert runs[0] == runs[1]


class _Crash(Exception):
    pass


@pytest.mark.parametrize("strategy", ["random", "optuna"])
def test_resume_after_crash_neither_repeats_nor_loses(tmp_path: Path, tiny_spec: TaskSpec,
                                                      strategy: str) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    env = make_environment(tiny_spec)

    def crash_after_five(trial, best):
        if trial.number == 4:
            raise _Crash

    with pytest.raises(_Crash):
        optimize(tiny_spec, env, store=Store(url), budget="60gpu-h", strategy=strategy,
                 n_trials=12, seed=2, callback=crash_after_five)
    first = Store(url).trials("tiny-" + strategy)
    assert len(first) == 5
    result = optimize(tiny_spec, env, store=Store(url), budget="60gpu-h", strategy=strategy,
                      n_trials=12, seed=2, resume=True)
    numbers = [t.number for t in result.trials]
    assert numbers == list(range(12))
    assert [t.allocation for t in result.trials[:5]] == [t.allocation for t in first]
    keys = [t.allocation.key() for t in result.trials]
    assert len(set(keys)) == 12


def test_interrupted_trial_is_rerun_under_its_number(tmp_path: Path, tiny_spec: TaskSpec) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = Store(url)
    optimize(tiny_spec, make_environment(tiny_spec), store=store, budget="60gpu-h",
             strategy="random", n_trials=3)
    # a crash mid-evaluation leaves a running trial behind
    number = store.start_trial("tiny-random", _alloc(n=2), Cost(0.0, 0.0))
    result = optimize(tiny_spec, make_environment(tiny_spec), store=Store(url),
                      budget="60gpu-h", strategy="random", n_trials=5)
    rerun = result.trials[number]
    assert rerun.status is TrialStatus.OK and rerun.allocation == _alloc(n=2)
    assert len(result.trials) == 5


def test_over_budget_allocation_is_never_evaluated(tiny_spec: TaskSpec) -> None:
    class CountingEnv:
        def __init__(self) -> None:
            self.inner = make_environment(tiny_spec)
            self.spec = tiny_spec
            self.calls = 0

        def calibration(self):
            return {}

        def evaluate(self, allocation):
            self.calls += 1
            return self.inner.evaluate(allocation)

    store = Store("sqlite://")
    store.create_study(name="s", task_name="tiny", task_path="", task={}, budget="1gpu-h",
                       budget_gpu_hours=1.0, strategy="random", seed=0)
    env = CountingEnv()
    runner = Runner(env, store, "s", CostModel(tiny_spec), 1.0)
    big = Allocation.of({s: Plan("large", "ckpt-b", samples=16, aggregator="oracle")
                         for s in ("extract", "solve")})
    trial = runner.run_trial(big)
    assert trial.status is TrialStatus.OVER_BUDGET and trial.score is None
    assert env.calls == 0
    assert "not evaluated" in trial.error


def test_random_strategy_returns_none_when_space_is_exhausted(tiny_spec: TaskSpec) -> None:
    space = SearchSpace(tiny_spec)
    ctx = SearchContext(space, CostModel(tiny_spec), budget_gpu_hours=1e9)
    strategy = make_strategy("random", ctx)
    result = optimize(tiny_spec, make_environment(tiny_spec), store=Store("sqlite://"),
                      budget="1e9gpu-h", strategy="random", n_trials=space.size() + 5)
    assert len(result.trials) == space.size() == 400
    assert strategy.ask(result.trials) is None
