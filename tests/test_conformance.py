"""One conformance suite for every search strategy over several replay tasks (like Optuna's
tests/samplers_tests): budget-safe, reproducible, resumable, canonical and duplicate-free,
and paying a shared artifact once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from envs import make_environment
from planner.cost import Calibration, CostModel
from planner.draws import Draws
from planner.env import Environment, Observation
from planner.search import STRATEGIES, AgentOptions, Runner
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import Store, TrialRecord, TrialStatus
from planner.study import default_study_name, optimize
from tests.agent_tasks import write_random_task
from tests.conftest import write_tiny_task
from tests.mixture_tasks import FINE_TUNE, SHARED, write_mixture_task

N_TRIALS = 12
NO_EARLY_STOP = AgentOptions(patience=None)  # every strategy runs the trials it is given


@dataclass(frozen=True)
class Task:
    spec: TaskSpec
    budget: str

    @property
    def limit(self) -> float:
        return self.spec.hardware.gpu_hours(self.budget)

    def cost_model(self) -> CostModel:
        return CostModel(self.spec, make_environment(self.spec).calibration())


TASKS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "tiny": (write_tiny_task, "35gpu-h"),
    "random-1": (lambda folder: write_random_task(folder, seed=1), "60gpu-h"),
    "random-2": (lambda folder: write_random_task(folder, seed=2, n_stages=3, n_models=3),
                 "40gpu-h"),
    "mixture": (write_mixture_task, "2gpu-h"),
}


@pytest.fixture(scope="module", params=list(TASKS))
def task(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Task:
    write, budget = TASKS[request.param]
    return Task(load_spec(write(tmp_path_factory.mktemp(request.param))), budget)


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return request.param


class RecordingEnv:
    """A replay environment that remembers every allocation it was asked to evaluate."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.inner: Environment = make_environment(spec)
        self.evaluated: list[Allocation] = []

    def calibration(self) -> Calibration:
        return self.inner.calibration()

    def evaluate(self, allocation: Allocation, fidelity: float = 1.0,
                 draws: Draws | None = None, screen: float | None = None) -> Observation:
        self.evaluated.append(allocation)
        return self.inner.evaluate(allocation, fidelity, draws, screen)

    def validation_items(self) -> Mapping[str, int]:
        return self.inner.validation_items()


def run(task: Task, strategy: str, store: Store, n_trials: int = N_TRIALS, seed: int = 0,
        env: Environment | None = None, **kwargs: object) -> list[TrialRecord]:
    return optimize(task.spec, env or make_environment(task.spec), store=store,
                    budget=task.budget, strategy=strategy, n_trials=n_trials, seed=seed,
                    agent=NO_EARLY_STOP, **kwargs).trials


def keys(trials: list[TrialRecord]) -> list[str]:
    return [t.allocation.key() for t in trials]


def test_budget_binds_on_every_task(task: Task) -> None:
    """The budget checks below are real: each task has allocations over its budget."""
    space, cost = SearchSpace(task.spec), task.cost_model()
    priciest = Allocation.of({s: max(space.plans(s), key=lambda p, s=s: cost.plan_cost(
        s, p).total_gpu_hours) for s in space.subtasks})
    assert cost.estimate(priciest).total_gpu_hours > task.limit


def test_asks_are_feasible_canonical_and_new(task: Task, strategy: str) -> None:
    env = RecordingEnv(task.spec)
    trials = run(task, strategy, Store("sqlite://"), env=env)
    space, cost = SearchSpace(task.spec), task.cost_model()
    assert len(trials) == N_TRIALS
    assert [t.status for t in trials] == [TrialStatus.OK] * N_TRIALS
    assert env.evaluated == [t.allocation for t in trials]
    for allocation in env.evaluated:
        space.validate(allocation)  # neither pruned nor invalid
        assert cost.estimate(allocation).total_gpu_hours <= task.limit
    assert len(set(keys(trials))) == N_TRIALS, "an evaluated allocation was asked again"
    for t in trials:  # recorded costs pay each distinct artifact once
        train = {cost.artifact(s, p): cost.plan_cost(s, p).train_gpu_hours
                 for s, p in t.allocation.items()}
        infer = sum(cost.plan_cost(s, p).inference_gpu_hours for s, p in t.allocation.items())
        assert t.cost.train_gpu_hours == pytest.approx(sum(train.values()))
        assert t.cost.inference_gpu_hours == pytest.approx(infer)


def test_same_seed_same_trials(task: Task, strategy: str) -> None:
    first, second = (keys(run(task, strategy, Store("sqlite://"), seed=7)) for _ in range(2))
    assert first == second


class _Crash(Exception):
    pass


def test_resume_neither_repeats_nor_loses(tmp_path: Path, task: Task, strategy: str) -> None:
    """Stop after 4 trials, continue and crash after the 8th, continue to the end: each time
    with a fresh strategy object on the same store."""
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def crash_after_eight(trial: TrialRecord, best: TrialRecord | None) -> None:
        if trial.number == 7:
            raise _Crash

    stopped = run(task, strategy, Store(url), n_trials=4)
    assert len(stopped) == 4
    with pytest.raises(_Crash):
        run(task, strategy, Store(url), resume=True, callback=crash_after_eight)
    crashed = Store(url).trials(default_study_name(task.spec, strategy))
    assert len(crashed) == 8 and crashed[:4] == stopped
    after = run(task, strategy, Store(url), resume=True)
    assert [t.number for t in after] == list(range(N_TRIALS))
    assert after[:8] == crashed
    assert len(set(keys(after))) == N_TRIALS
    assert all(t.status is TrialStatus.OK for t in after)


def test_interrupted_trial_is_rerun_under_its_number(tmp_path: Path, task: Task,
                                                     strategy: str) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    store = Store(url)
    seen = set(keys(run(task, strategy, store, n_trials=3)))
    space, cost = SearchSpace(task.spec), task.cost_model()
    left = next(a for a in (Allocation(tuple(zip(space.subtasks, plans, strict=True)))
                            for plans in itertools.product(*map(space.plans, space.subtasks)))
                if a.key() not in seen and cost.estimate(a).total_gpu_hours <= task.limit)
    study = default_study_name(task.spec, strategy)
    number = store.start_trial(study, left, cost.estimate(left))  # a crash mid-evaluation
    after = run(task, strategy, Store(url), n_trials=6, resume=True)
    assert [t.number for t in after] == list(range(6))
    assert after[number].allocation == left and after[number].status is TrialStatus.OK
    assert len(set(keys(after))) == 6


# the mixture task's multi-task artifact -------------------------------------------------------
def _shared(model: str, samples: int = 4) -> Allocation:
    plan = Plan(model=model, method=FINE_TUNE, mixture=SHARED, samples=samples,
                aggregator="oracle")
    return Allocation.of({"a": plan, "b": plan})


def test_shared_artifact_is_trained_and_paid_once(tmp_path: Path) -> None:
    task = Task(load_spec(write_mixture_task(tmp_path)), "2gpu-h")
    cost = task.cost_model()
    shared = _shared("large")
    (_, a), (_, b) = shared.items()
    assert cost.artifact("a", a) == cost.artifact("b", b)
    assert cost.artifact("a", a.replace(mixture="tilted")) != cost.artifact(
        "b", b.replace(mixture="tilted"))
    one, other = cost.plan_cost("a", a), cost.plan_cost("b", b)
    assert one.train_gpu_hours == other.train_gpu_hours > 0
    total = cost.estimate(shared)
    assert total.train_gpu_hours == pytest.approx(one.train_gpu_hours)
    assert total.total_gpu_hours == pytest.approx(
        one.train_gpu_hours + one.inference_gpu_hours + other.inference_gpu_hours)
    # paid twice it would not fit: the runner evaluates it only because it is shared
    assert total.total_gpu_hours <= task.limit < total.total_gpu_hours + one.train_gpu_hours
    store = Store("sqlite://")
    store.create_study(name="s", task_name=task.spec.name, task_path="", task={},
                       budget=task.budget, budget_gpu_hours=task.limit, strategy="random",
                       seed=0)
    trial = Runner(make_environment(task.spec), store, "s", cost, task.limit).run_trial(shared)
    assert trial.status is TrialStatus.OK
    assert trial.cost.total_gpu_hours == pytest.approx(total.total_gpu_hours)


def test_a_space_tried_to_its_end_says_so(tmp_path: Path, strategy: str) -> None:
    """Every strategy tries each of a small space's allocations once, then stops saying the
    space was tried to its end (it said every unseen allocation was over budget, with none
    left unseen)."""
    rows = [f"{m},{item},{(item + k) % 2},{(item + k) % 3}"
            for m in "ab" for item in range(4) for k in range(3)]
    (tmp_path / "t.csv").write_text("model,item,correct,answer\n" + "\n".join(rows) + "\n")
    (tmp_path / "task.yaml").write_text(
        "name: small\nenvironment: replay\nbudget: 100gpu-h\nworkload: {queries: 10}\n"
        "models: [{name: a, params: 1.0e+8}, {name: b, params: 4.0e+8}]\n"
        "subtasks:\n- {name: s, prompt_tokens: 10, output_tokens: 10, models: [a, b],\n"
        "   samples: [1, 2, 3], aggregators: [majority],\n"
        "   replay: {table: t.csv, item: item, correct: correct, answer: answer}}\n")
    spec = load_spec(tmp_path / "task.yaml")
    result = optimize(spec, make_environment(spec), store=Store("sqlite://"),
                      budget="100gpu-h", strategy=strategy, n_trials=20, agent=NO_EARLY_STOP)
    assert len(set(keys(result.trials))) == len(result.trials) == 6
    assert result.stopped == "nothing left to try: all 6 allocations of the space were tried"
