"""Low-fidelity screens: a trial on a share of the validation items, stored and metered as
such, never the best; the agent screens arms it has not sampled and evaluates in full only
what it proposes again."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.replay.env import ReplayEnvironment
from planner.cost import Cost, CostModel
from planner.env import ScreenScores
from planner.executors import ProcessExecutor
from planner.search import AgentOptions, best_trial
from planner.search._base import SearchContext
from planner.search.agent.analysis import Analyst
from planner.search.agent.screening import fidelities, promotions, reference
from planner.search.agent.surrogate import PlanTable, SubtaskModel, screen_share
from planner.search.search_cost import SearchCost
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import Store, TrialRecord, TrialStatus
from planner.study import open_study, optimize
from tests.conftest import run_planner, write_tiny_task
from tests.mixture_tasks import SHARED, write_mixture_task
from tools.evaluate import pass_at_k

MONKEYS = Path(__file__).parents[1] / "envs" / "replay" / "tasks" / "monkeys_gsm8k.yaml"


def _plan(model: str, method: str = "ckpt-a", n: int = 4) -> Plan:
    return Plan(model=model, method=method, mixture="default", samples=n, aggregator="oracle")


def _both(plan: Plan) -> Allocation:
    return Allocation.of({"extract": plan, "solve": plan})


def test_a_replay_screen_scores_the_same_shuffled_items_for_every_choice(
        tiny_spec: TaskSpec, tiny_task_path: Path) -> None:
    env = ReplayEnvironment(tiny_spec)
    table = pd.read_csv(tiny_task_path.parent / "table.csv")
    ids = np.sort(table["item"].astype(str).unique())  # the documented order: shuffled by
    order = np.random.default_rng(zlib.crc32(b"extract")).permutation(len(ids))  # subtask
    first = set(ids[order][:math.ceil(0.25 * len(ids))])  # 5 of 20 items
    assert len(first) == 5
    for model, method in (("small", "ckpt-a"), ("large", "ckpt-b")):
        rows = table[(table["model"] == model) & (table["method"] == method)]
        kept = rows[rows["item"].astype(str).isin(first)]
        expected = np.mean([pass_at_k(int(r.n_samples), int(r.n_correct), 4)
                            for r in kept.itertuples()])
        plan = _plan(model, method)
        screen = env.evaluate(_both(plan), 0.25)
        assert screen.subtask_scores["extract"] == pytest.approx(expected)
        full = env.evaluate(_both(plan))
        assert full.subtask_scores["extract"] == env.evaluate(_both(plan), 1.0).subtask_scores[
            "extract"] == pytest.approx(np.mean([pass_at_k(int(r.n_samples), int(r.n_correct),
                                                           4) for r in rows.itertuples()]))
        on_items = env.evaluate(_both(plan), screen=0.25).on_screen_items  # same items
        assert (on_items.fidelity, on_items.score, on_items.subtask_scores) == (
            0.25, screen.score, screen.subtask_scores)
    with pytest.raises(ValueError, match=r"fidelity must be in \(0, 1\]"):
        env.evaluate(_both(_plan("small")), 0.0)
    with pytest.raises(ValueError, match="come with a full evaluation"):
        env.evaluate(_both(_plan("small")), 0.25, screen=0.25)


def test_a_choice_recorded_on_none_of_a_screens_items_is_screened_on_its_own_first(
        tmp_path: Path) -> None:
    """pythia-12b on 2M tokens has 9 of MATH's 128 problems, none among a quarter screen's
    32: its screen scored the mean of no items (NaN), the store refused the trial, and
    agent-screen stopped with a traceback (pythia-gsm8k-math under half its budget, seed 4).
    Such a choice is screened on its own first items in the screen's order, as many as the
    share gives of its own."""
    path = write_tiny_task(tmp_path)
    table = pd.read_csv(path.parent / "table.csv")
    ids = np.sort(table["item"].astype(str).unique())
    order = ids[np.random.default_rng(zlib.crc32(b"extract")).permutation(len(ids))]
    first = set(order[:math.ceil(0.25 * len(ids))])
    large = (table["model"] == "large") & (table["method"] == "ckpt-b")
    table = table[~(large & table["item"].astype(str).isin(first))]
    table.to_csv(path.parent / "table.csv", index=False)
    rows = table[(table["model"] == "large") & (table["method"] == "ckpt-b")]
    own = [i for i in order if i in set(rows["item"].astype(str))]
    kept = rows.set_index(rows["item"].astype(str)).loc[own[:math.ceil(0.25 * len(own))]]
    expected = np.mean([pass_at_k(int(r.n_samples), int(r.n_correct), 4)
                        for r in kept.itertuples()])
    env = ReplayEnvironment(load_spec(path))
    screen = env.evaluate(_both(_plan("large", "ckpt-b")), 0.25)
    assert len(own) == 15 and len(kept) == 4
    assert screen.subtask_scores["extract"] == pytest.approx(expected)


def test_a_screen_and_a_full_trial_of_one_allocation_are_claimed_apart() -> None:
    store = Store("sqlite://")
    store.create_study(name="s", task_name="tiny", task_path="task.yaml", task={},
                       budget="1gpu-h", budget_gpu_hours=1.0, strategy="agent", seed=0)
    alloc = _both(_plan("small"))
    assert store.start_trial("s", alloc, Cost(0.1, 0.1), fidelity=0.25) == 0
    assert store.start_trial("s", alloc, Cost(0.1, 0.1), fidelity=0.25) is None  # claimed
    assert store.start_trial("s", alloc, Cost(0.1, 0.1)) == 1
    assert store.start_trial("s", alloc, Cost(0.1, 0.1)) is None
    assert store.start_trial("s", alloc, Cost(0.1, 0.1), fidelity=0.5) == 2  # another share
    store.finish_trial("s", 0, TrialStatus.OK, observation=_observed(0.9))
    store.finish_trial("s", 1, TrialStatus.OK, observation=_observed(0.5))
    trials = store.trials("s")
    assert [(t.number, t.fidelity, t.screen) for t in trials] == [
        (0, 0.25, True), (1, 1.0, False), (2, 0.5, True)]
    assert best_trial(trials).number == 1  # the screen scored higher, on a quarter


def _observed(score: float):
    from planner.env import Observation

    return Observation(score=score, subtask_scores={"extract": score, "solve": 1.0})


def test_a_screen_pays_its_share_of_sampling_and_the_full_trial_the_rest(
        tmp_path: Path) -> None:
    spec = load_spec(write_mixture_task(tmp_path))
    meter = SearchCost(CostModel(spec), ReplayEnvironment(spec).validation_items())
    lora = Plan(model="small", method="lora", mixture=SHARED, samples=16, aggregator="oracle")
    alloc = Allocation.of({"a": lora, "b": lora})
    trains, arms = meter.parts(alloc)
    train, sample = sum(trains.values()), sum(arms.values())
    assert train > 0 and sample > 0
    assert meter.marginal(alloc, 0.25) == pytest.approx(train + 0.25 * sample)
    assert meter.add(alloc, 0.25) == pytest.approx(train + 0.25 * sample)  # trained in full
    assert meter.marginal(alloc, 0.25) == 0.0  # screened already
    assert meter.add(alloc) == pytest.approx(train + sample)  # the other three quarters


def test_only_allocations_opening_a_new_arm_mostly_paid_in_sampling_are_screened(
        tiny_spec: TaskSpec, tmp_path: Path) -> None:
    meter = SearchCost(CostModel(tiny_spec), ReplayEnvironment(tiny_spec).validation_items())
    small, large = _both(_plan("small")), _both(_plan("large"))
    assert fidelities([small, large, _both(_plan("small", n=16))], [], meter, 0.25) == [
        0.25, 0.25, 1.0]  # the third only changes n of a screened arm: evaluated in full
    assert fidelities([small], [], meter, None) == [1.0]  # screening off
    # once a full trial scored 0.5: a proposal the score model expects to beat it is a
    # likely winner, evaluated in full at once; an exploratory one is screened
    best = TrialRecord(0, small, TrialStatus.OK, 0.5, {}, Cost(0.0, 0.0))
    fresh_arm = _both(_plan("large", "ckpt-b"))
    for expected, fidelity in ((0.6, 1.0), (0.4, 0.25)):
        meter = SearchCost(CostModel(tiny_spec), ReplayEnvironment(tiny_spec).validation_items())
        meter.add(small)
        assert fidelities([fresh_arm], [best], meter, 0.25,
                          lambda _, e=expected: e) == [fidelity]
    # a fine-tune costs far more than its samples: screening it would save little
    spec = load_spec(write_mixture_task(tmp_path))
    lora = Plan(model="small", method="lora", mixture=SHARED, samples=16, aggregator="oracle")
    fresh = SearchCost(CostModel(spec), ReplayEnvironment(spec).validation_items())
    trains, arms = fresh.parts(Allocation.of({"a": lora, "b": lora}))
    expected = 0.25 if sum(trains.values()) + 0.25 * sum(arms.values()) <= 0.5 * (
        sum(trains.values()) + sum(arms.values())) else 1.0
    assert fidelities([Allocation.of({"a": lora, "b": lora})], [], fresh, 0.25) == [expected]


def test_the_agent_screens_new_arms_and_evaluates_in_full_what_it_proposes_again() -> None:
    spec = load_spec(MONKEYS)
    env = ReplayEnvironment(spec)
    result = optimize(spec, env, store=Store("sqlite://"), budget=spec.budget,
                      strategy="agent", n_trials=30, seed=0,
                      agent=AgentOptions(patience=None, screen=0.25))
    trials = result.trials
    screens = [t for t in trials if t.screen]
    full = [t for t in trials if not t.screen]
    assert screens and full and all(t.status is TrialStatus.OK for t in trials)
    for t in trials:  # each stored score is what the environment gives at its fidelity
        assert t.score == env.evaluate(t.allocation, t.fidelity).score
        if not t.screen:  # and on a screen's items, which the screens are measured against
            there = env.evaluate(t.allocation, 0.25)
            assert (t.on_screen_items.fidelity, t.on_screen_items.score,
                    t.on_screen_items.subtask_scores) == (0.25, there.score,
                                                          there.subtask_scores)
        else:
            assert t.on_screen_items is None
    screened = {t.allocation.key(): t.number for t in screens}
    assert len(screened) == len(screens)  # never screened twice
    promoted = [t for t in full if t.allocation.key() in screened]
    assert promoted and all(t.number > screened[t.allocation.key()] for t in promoted)
    assert not result.best.screen and result.best.score == max(t.score for t in full)


def test_a_screen_is_promoted_against_the_best_full_trial_on_its_own_items() -> None:
    stages = {"extract": 1.0, "solve": 1.0}
    full = TrialRecord(0, _both(_plan("small")), TrialStatus.OK, 0.5, stages, Cost(0.0, 0.0),
                       on_screen_items=ScreenScores(0.25, 0.2, stages))  # harder items there
    near = TrialRecord(1, _both(_plan("large")), TrialStatus.OK, 0.3, stages, Cost(0.0, 0.0),
                       fidelity=0.25)
    below = TrialRecord(2, _both(_plan("large", "ckpt-b")), TrialStatus.OK, 0.18, stages,
                        Cost(0.0, 0.0), fidelity=0.25)
    assert reference([full, near, below], 0.25) == 0.2
    assert promotions([full, near, below], 2) == [near]  # 0.18 < 0.95 * 0.2
    # a full trial not scored on those items (an older study's): its full score
    unpaired = replace(full, on_screen_items=None)
    assert reference([unpaired, near], 0.25) == 0.5
    assert promotions([unpaired, near, below], 2) == []
    assert reference([near], 0.25) is None and promotions([near, below], 2) == [near, below]
    # a screen that solved nothing on items where the best full trial solved nothing either
    # shows nothing promising
    blank = replace(full, on_screen_items=ScreenScores(0.25, 0.0, stages))
    assert promotions([blank, replace(near, score=0.0)], 2) == []


def test_screens_run_on_worker_processes_at_their_fidelity(tmp_path: Path) -> None:
    spec = load_spec(MONKEYS)
    factory = partial(ReplayEnvironment, spec)
    trials = optimize(spec, factory(), store=Store(f"sqlite:///{tmp_path / 's.db'}"),
                      budget=spec.budget, strategy="agent", n_trials=2, seed=0,
                      executor=ProcessExecutor(factory, 2),
                      agent=AgentOptions(patience=None, screen=0.5,
                                         proposals_per_step=2)).trials
    env = factory()
    assert [t.fidelity for t in trials] == [0.5, 0.5]
    assert all(t.score == env.evaluate(t.allocation, 0.5).score for t in trials)
    workers = ProcessExecutor(factory, 1)  # a full trial scored on a screen's items too
    workers.start(0, trials[0].allocation, 1.0, None, 0.5)
    (outcome,) = workers.wait()
    assert outcome.observation.on_screen_items.score == trials[0].score


def test_screen_on_the_command_line(tmp_path: Path, tiny_task_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'p.db'}"
    done = run_planner("optimize", str(MONKEYS), "--trials", "8", "--screen", "0.25",
                       "--db", db, "--study", "s")
    assert done.returncode == 0, done.stderr
    shown = run_planner("show", "s", "--db", db)
    assert "of them screens" in shown.stdout
    rows = json.loads(run_planner("trials", "s", "--db", db, "--json").stdout)
    assert {r["fidelity"]: r["on_screen_items"] is None for r in rows} == {0.25: True,
                                                                           1.0: False}
    assert {r["on_screen_items"]["fidelity"] for r in rows if r["fidelity"] == 1.0} == {0.25}
    for args, said in ((["--screen", "1.5"], "--screen 1.5: give a share"),
                       (["--screen", "0.5", "--strategy", "random"], "only the agent screens")):
        bad = run_planner("optimize", str(tiny_task_path), "--db", db, "--study", "t", *args)
        assert bad.returncode == 2 and said in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_a_screen_informs_the_score_model_less_than_a_full_evaluation() -> None:
    spec = load_spec(MONKEYS)
    env = ReplayEnvironment(spec)
    space = SearchSpace(spec)
    table = PlanTable.build(space, CostModel(spec, env.calibration()), "solve", {})
    plan = table.plans[len(table.plans) // 2]
    i = table.index[plan]
    std = {f: SubtaskModel(table).fit([(i, 0.3, f)]).std[i] for f in (0.25, 1.0)}
    assert std[0.25] > std[1.0]
    both = SubtaskModel(table).fit([(i, 0.9, 0.25), (i, 0.3, 1.0)])
    assert both.mean[i] == SubtaskModel(table).fit([(i, 0.3, 1.0)]).mean[i]  # superseded


def test_a_screen_says_as_little_as_full_trials_on_its_items_show(tiny_spec: TaskSpec) -> None:
    assert screen_share([], 0.25) == screen_share([0.3], 0.25) == 0.25  # too few to tell
    assert screen_share([0.01, -0.01], 0.25) == 0.25  # its items agree with the whole
    assert screen_share([2.0, -2.0], 0.25) == pytest.approx(screen_share([1.0, 1.0], 0.25) / 4)
    ctx = SearchContext(SearchSpace(tiny_spec), CostModel(tiny_spec), 1.0)
    small, large = _both(_plan("small")), _both(_plan("large"))
    screened = _both(_plan("large", "ckpt-b"))
    screen = TrialRecord(2, screened, TrialStatus.OK, 0.81, {"extract": 0.9, "solve": 0.9},
                         Cost(0.0, 0.0), fidelity=0.25)

    def predicted(on_items: float) -> tuple[float, float]:
        """The "solve" model's mean and sd at the screened plan, with the full trials'
        stage scores 0.5 in full and `on_items` on the screen's items."""
        full = [TrialRecord(n, a, TrialStatus.OK, 0.25, {"extract": 0.5, "solve": 0.5},
                            Cost(0.0, 0.0), on_screen_items=ScreenScores(
                                0.25, on_items ** 2, {"extract": on_items, "solve": on_items}))
                for n, a in enumerate((small, large))]
        analyst = Analyst(ctx)
        p = analyst.analyse([*full, screen]).predictions[1]  # "solve"
        i = analyst.tables[1].index[screened["solve"]]
        return float(p.mean[i]), float(p.std[i])

    agree, disagree = predicted(0.5), predicted(0.05)
    assert disagree[1] > agree[1]  # less sure of the screened plan
    assert disagree[0] < agree[0]  # and pulled less towards the screen's 0.9


def test_a_language_model_is_told_which_trials_are_screens(tiny_spec: TaskSpec) -> None:
    from planner.search.agent.prompts import _trials, exchange_line

    screen = TrialRecord(0, _both(_plan("large")), TrialStatus.OK, 0.9,
                         {"extract": 0.95, "solve": 0.95}, Cost(0.0, 0.0), fidelity=0.25)
    full = TrialRecord(1, _both(_plan("small")), TrialStatus.OK, 0.5,
                       {"extract": 0.7, "solve": 0.7}, Cost(0.0, 0.0))
    lines = _trials(SearchSpace(tiny_spec), [screen, full])
    assert "(screen on 25% of the items)" in lines[1] and "screen" not in lines[2]
    assert exchange_line("propose", [screen, full]).endswith("best 0.5000 (trial 1)]")


def test_a_screen_left_running_by_a_crash_is_run_again_as_a_screen(tmp_path: Path) -> None:
    spec = load_spec(MONKEYS)
    env = ReplayEnvironment(spec)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    open_study(store, spec, name="s", budget=spec.budget, strategy="random", seed=0)
    alloc = Allocation.of({"solve": SearchSpace(spec).plans("solve")[0]})
    assert store.start_trial("s", alloc, Cost(0.0, 0.0), fidelity=0.25) == 0  # then a crash
    trials = optimize(spec, env, store=store, budget=spec.budget, strategy="random",
                      n_trials=1, study="s", resume=True).trials
    assert [(t.number, t.status, t.fidelity) for t in trials] == [(0, TrialStatus.OK, 0.25)]
    assert trials[0].score == env.evaluate(alloc, 0.25).score
