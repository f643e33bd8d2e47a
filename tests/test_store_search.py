from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution

from envs import make_environment
from planner.cost import Cost, CostModel
from planner.env import Observation, ScreenScores
from planner.errors import StudyError
from planner.report import leaderboard
from planner.search import OptunaStrategy, Runner, SearchContext, best_trial, make_strategy
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import Store, TrialRecord, TrialStatus
from planner.study import open_study, optimize
from tests.mixture_tasks import write_mixture_task


def _alloc(model: str = "small", n: int = 1) -> Allocation:
    plan = Plan(model=model, method="ckpt-a", mixture="default", samples=n, aggregator="oracle")
    return Allocation.of({"extract": plan, "solve": plan})


def _create(store: Store, name: str = "s") -> None:
    store.create_study(name=name, task_name="tiny", task_path="task.yaml", task={"a": 1},
                       budget="1gpu-h", budget_gpu_hours=1.0, strategy="random", seed=3)


def _one_trial_file(path: Path) -> Path:
    """A SQLite store at `path` holding study "s" with one running trial, closed, so raw SQL
    may edit it as an older planner would have written it."""
    store = Store(f"sqlite:///{path}")
    _create(store)
    store.start_trial("s", _alloc(), Cost(0.25, 0.5))
    store.engine.dispose()
    return path


def test_store_round_trip(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    _create(store)
    n0 = store.start_trial("s", _alloc(), Cost(0.25, 0.5), source="random")
    time.sleep(0.02)  # its duration runs from its start to its finish
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
    assert 0.02 <= t0.duration_s < 10 and 0 <= t1.duration_s < 10
    assert (t1.status, t1.error, t1.score) == (TrialStatus.FAILED, "boom", None)
    assert again.get_study("s").seed == 3
    with pytest.raises(StudyError, match="--resume"):
        _create(again)



def test_two_stores_writing_in_turn_number_densely(tmp_path: Path) -> None:
    """Each store guesses its next number from its own last insert; the other store's
    inserts make that guess taken, which must fall back to the study's last number."""
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    a, b = Store(url), Store(url)
    _create(a)
    steps = [s.add_step("s", "evaluate", {"by": i}, [{"subtask": "*", "kind": "note",
                                                      "text": f"step {i}"}])
             for i, s in enumerate([a, a, b, a, b, b, a])]
    trials = [s.start_trial("s", _alloc(model, n), Cost(0.1, 0.1))
              for s, (model, n) in zip([b, a, a, b], [("small", 1), ("small", 2),
                                                      ("large", 1), ("large", 2)], strict=True)]
    assert steps == list(range(7)) and trials == list(range(4))
    assert [s.payload["by"] for s in a.steps("s")] == list(range(7))
    assert [(i.step, i.text) for i in b.insights("s")] == [(i, f"step {i}") for i in range(7)]
    assert a.start_trial("s", _alloc("small", 2), Cost(0.1, 0.1)) is None  # claimed by a

def test_scores_on_a_screen_s_items_stored_positionally_still_read(tmp_path: Path) -> None:
    """Stores written before the named fields hold [fidelity, score, subtask scores]."""
    path = _one_trial_file(tmp_path / "db.sqlite")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE trial SET on_screen_items_json = ?",
                     ('[0.25, 0.4, {"solve": 0.4}]',))
    read = Store(f"sqlite:///{path}").trials("s")[0].on_screen_items
    assert read == ScreenScores(0.25, 0.4, {"solve": 0.4})


def test_an_older_database_is_brought_up_to_date(tmp_path: Path) -> None:
    path = _one_trial_file(tmp_path / "old.sqlite")
    with sqlite3.connect(path) as conn:  # the schema before study identity and claims
        conn.executescript("DROP INDEX ix_trial_claim; DROP INDEX ix_agent_step_number; "
                           "DROP TABLE driver; ALTER TABLE study DROP COLUMN task_hash; "
                           "ALTER TABLE study DROP COLUMN reasoner; "
                           "ALTER TABLE trial DROP COLUMN claim; "
                           "ALTER TABLE trial DROP COLUMN driver; "
                           "ALTER TABLE trial DROP COLUMN fidelity; "
                           "ALTER TABLE trial DROP COLUMN on_screen_items_json;")
    again = Store(f"sqlite:///{path}")
    assert (again.get_study("s").task_hash, again.trials("s")[0].driver) == ("", "")
    assert again.trials("s")[0].fidelity == 1.0  # every old trial was a full evaluation
    assert again.trials("s")[0].on_screen_items is None  # not scored on a screen's items
    assert again.start_trial("s", _alloc("large"), Cost(0.25, 0.5)) == 1
    assert again.start_trial("s", _alloc("large"), Cost(0.25, 0.5)) is None  # claimed
    with again.driving("s") as driver:
        assert driver.seat == 0


def test_a_changed_task_or_reasoner_is_refused_unless_allowed(tiny_task_path: Path,
                                                               tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"

    def run(**kwargs: object) -> None:
        spec = load_spec(tiny_task_path)
        optimize(spec, make_environment(spec), store=Store(url), budget="100gpu-h",
                 strategy="random", n_trials=2, study="s", **kwargs)

    run()
    table = tiny_task_path.parent / "table.csv"
    *rows, last = table.read_text().splitlines()
    head, correct = last.rsplit(",", 1)
    table.write_text("\n".join([*rows, f"{head},{(int(correct) + 1) % 33}"]) + "\n")
    with pytest.raises(StudyError, match=r"another version of the task.*--study NEW_NAME.*"
                                         r"--allow-changed-task"):
        run()
    run(allow_changed_task=True)  # goes on, and the changed task is the study's now
    run()
    spec, store = load_spec(tiny_task_path), Store(url)
    settings = {"name": "a", "budget": "100gpu-h", "strategy": "agent", "seed": 0}
    open_study(store, spec, reasoner="builtin", **settings)
    with pytest.raises(StudyError, match="--reasoner builtin, not llm"):
        open_study(store, spec, reasoner="llm", **settings)
    assert open_study(store, spec, reasoner="llm", allow_changed_task=True,
                      **settings).reasoner == "llm"


def test_the_best_of_equal_scores_is_the_cheapest_then_the_earliest() -> None:
    def trial(number: int, score: float, train: float) -> TrialRecord:
        return TrialRecord(number, _alloc(n=2 ** number), TrialStatus.OK, score, {},
                           Cost(train, 1.0))

    trials = [trial(0, 0.5, 2.0), trial(1, 0.5, 1.0), trial(2, 0.5, 1.0), trial(3, 0.4, 0.0)]
    assert best_trial(trials).number == 1  # what a user would deploy of the three
    assert best_trial(trials, cheapest=False).number == 0  # the sweep's rule
    assert [row["number"] for row in leaderboard(trials)] == [1, 2, 0, 3]


def test_over_budget_allocation_is_never_evaluated(tiny_spec: TaskSpec) -> None:
    class CountingEnv:
        def __init__(self) -> None:
            self.inner = make_environment(tiny_spec)
            self.spec = tiny_spec
            self.calls = 0

        def calibration(self):
            return {}

        def evaluate(self, allocation, fidelity=1.0, draws=None, screen=None):
            self.calls += 1
            return self.inner.evaluate(allocation, fidelity, draws, screen)

    store = Store("sqlite://")
    store.create_study(name="s", task_name="tiny", task_path="", task={}, budget="1gpu-h",
                       budget_gpu_hours=1.0, strategy="random", seed=0)
    env = CountingEnv()
    runner = Runner(env, store, "s", CostModel(tiny_spec), 1.0)
    big = Allocation.of({s: Plan(model="large", method="ckpt-b", mixture="default", samples=16,
                                 aggregator="oracle")
                         for s in ("extract", "solve")})
    trial = runner.run_trial(big)
    assert trial.status is TrialStatus.OVER_BUDGET and trial.score is None
    assert env.calls == 0
    assert "not evaluated" in trial.error


def test_random_strategy_returns_none_when_space_is_exhausted(tiny_spec: TaskSpec) -> None:
    spec = tiny_spec.model_copy(update={"subtasks": [  # 2 models x 2 methods x 2 samples
        s.model_copy(update={"samples": [1, 2]}) for s in tiny_spec.subtasks]})
    space = SearchSpace(spec)
    ctx = SearchContext(space, CostModel(spec), budget_gpu_hours=1e9)
    strategy = make_strategy("random", ctx)
    result = optimize(spec, make_environment(spec), store=Store("sqlite://"),
                      budget="1e9gpu-h", strategy="random", n_trials=space.size() + 5)
    assert len(result.trials) == space.size() == 64
    assert len({t.allocation for t in result.trials}) == 64
    assert strategy.ask(result.trials) is None


# Optuna: define-by-run over the space's dimensions ------------------------------------------
def _optuna_study(tmp_path: Path, n_trials: int) -> tuple[TaskSpec, str, list[TrialRecord]]:
    spec = load_spec(write_mixture_task(tmp_path))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = optimize(spec, make_environment(spec), store=Store(url), budget="2gpu-h",
                      strategy="optuna", n_trials=n_trials, seed=4)
    return spec, url, result.trials


def _resumed(spec: TaskSpec, url: str, trials: list[TrialRecord]) -> OptunaStrategy:
    """A fresh Optuna strategy on the study, reconciled by its first ask."""
    cost = CostModel(spec, make_environment(spec).calibration())
    ctx = SearchContext(SearchSpace(spec), cost, 2.0, 4, Store(url), f"{spec.name}-optuna")
    strategy = OptunaStrategy(ctx, storage=url)
    strategy.ask(trials)
    return strategy


def test_optuna_samples_every_dimension_and_asks_canonical_plans(tmp_path: Path) -> None:
    spec, url, trials = _optuna_study(tmp_path, 25)
    space = SearchSpace(spec)
    asked = [t for t in _resumed(spec, url, trials).study.get_trials()
             if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(asked) > len(trials)  # infeasible and repeated asks are told, not run
    dead = 0
    for t in asked:
        allocation = Allocation.from_dict(json.loads(t.user_attrs["allocation_key"]))
        for s, plan in allocation.items():
            assert plan == space.canonical(s, plan)
            assert isinstance(t.distributions[f"{s}.model"], CategoricalDistribution)
            assert t.distributions[f"{s}.samples"] == IntDistribution(0, 2)
            assert t.params[f"{s}.model"] == plan.model
            assert t.params[f"{s}.method"] == plan.method
            # a dead value (a mixture for an untrained method) stands for the canonical plan
            dead += t.params[f"{s}.mixture"] != plan.mixture
            assert t.params[f"{s}.mixture"] == plan.mixture or not spec.method(
                plan.method).fine_tunes
    assert dead > 0


def test_optuna_resume_reconciles_its_study(tmp_path: Path) -> None:
    spec, url, trials = _optuna_study(tmp_path, 6)
    cost = CostModel(spec, make_environment(spec).calibration())
    # a trial Optuna never heard of (e.g. `--from-plan`), an ask a crash left running, and
    # an ask a live driver beside this one is running
    runner = Runner(make_environment(spec), Store(url), f"{spec.name}-optuna", cost, 2.0)
    plan = Plan(model="small", method="lora", mixture="tilted", samples=16,
                aggregator="oracle")
    extra = runner.run_trial(Allocation.of({"a": plan, "b": plan}), source="from-plan")
    assert extra.status is TrialStatus.OK
    crashed = _resumed(spec, url, trials).study.ask()
    crashed.set_user_attr("driver", "gone-host:1:0")
    history = [*trials, extra]
    with Store(url).driving(f"{spec.name}-optuna") as driver:
        alive = _resumed(spec, url, trials).study.ask()
        alive.set_user_attr("driver", driver.token)
        study = _resumed(spec, url, history).study
    states = {t.number: t.state for t in study.get_trials()}
    assert states[crashed.number] is optuna.trial.TrialState.FAIL
    assert states[alive.number] is optuna.trial.TrialState.RUNNING
    told = {t.user_attrs["allocation_key"]: t for t in study.get_trials()
            if t.state is optuna.trial.TrialState.COMPLETE and t.constraints == {"over_budget": 0}}
    for t in history:
        assert told[t.allocation.key()].value == pytest.approx(t.score)
    added = told[extra.allocation.key()]
    assert added.params == {"a.model": "small", "a.method": "lora", "a.mixture": "tilted",
                            "a.samples": 2, "a.aggregator": "oracle", "b.model": "small",
                            "b.method": "lora", "b.mixture": "tilted", "b.samples": 2,
                            "b.aggregator": "oracle"}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_falls_back_to_an_unseen_allocation(tmp_path: Path) -> None:
    """A sampler stuck on one allocation: each later ask enqueues a random unseen one."""
    spec = load_spec(write_mixture_task(tmp_path))
    ctx = SearchContext(SearchSpace(spec), CostModel(spec), 2.0, seed=1)
    stuck = {f"{s}.{dim}": value for s in ("a", "b") for dim, value in
             (("model", "small"), ("method", "none"), ("aggregator", "first"))}
    strategy = OptunaStrategy(ctx, sampler=optuna.samplers.PartialFixedSampler(
        stuck, optuna.samplers.RandomSampler(seed=1)))
    store = Store("sqlite://")
    store.create_study(name="s", task_name=spec.name, task_path="", task={}, budget="2gpu-h",
                       budget_gpu_hours=2.0, strategy="optuna", seed=1)
    trials = Runner(make_environment(spec), store, "s", ctx.cost_model, 2.0).ask_tell(strategy, 3)
    first = Plan(model="small", method="none", mixture="own", samples=1, aggregator="first")
    assert trials[0].allocation == Allocation.of({"a": first, "b": first})
    assert len({t.allocation for t in trials}) == 3
    assert all(t.status is TrialStatus.OK for t in trials)
    told = [t for t in strategy.study.get_trials() if t.state.is_finished()]
    assert [t.value for t in told[-1:]] == [trials[-1].score]
