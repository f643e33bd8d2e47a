"""Optuna TPE baseline, with the budget as a constraint and the study in the same database.

Each dimension of each subtask (`SearchSpace.dimensions`) is one Optuna parameter named
`subtask.dimension`: an ordinal one (samples) as an `IntDistribution` over its index, so TPE
can exploit the order; a categorical or mixture one as a `CategoricalDistribution`. Every
parameter is sampled for every trial (multivariate TPE over one fixed space) and the plan is
then made canonical (`SearchSpace.canonical`), so a dead value (a mixture for an untrained
method) maps to the plan that answers alike. That is the stronger baseline: on the four
tasks `tests/mixture_tasks.write_mixture_task` generates for seeds 0-3 (mixtures, shared
fine-tunes; 20 seeds x 60 trials each, `experiments/benchmark.py --tasks ...`), it reached
99% of the optimum in 48 of 80 runs, against 18 with define-by-run conditional parameters
and TPE's `group` option, which samples each conditional group apart from the model and so
loses the model-versus-n trade-off the budget imposes.

An ask that is over budget or invalid (a method the model lacks) is told to Optuna as
infeasible through `Trial.set_constraint` and never evaluated; an ask that repeats an
evaluated allocation is told its known score. Both cost no trial. With several workers,
the trials in flight stay running Optuna trials, which TPE's constant-liar mode counts as
poor results, so the asks of one batch spread out instead of repeating each other.

`optuna-stages` is the same search told each subtask's own score instead of the end score
(multi-objective TPE, one objective per stage): the information the agent reasons from,
without its reasoning. The end-to-end optimum of a pipeline whose end score rises with
every stage's score lies on the Pareto front of the stage scores it explores.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from planner.errors import SpaceError
from planner.search._base import BaseStrategy, SearchContext, seen_keys
from planner.space import Allocation, Dimension, Ordinal, Plan, SearchSpace
from planner.store import TrialRecord, TrialStatus

_MAX_INTERNAL_ASKS = 200
_KEY = "allocation_key"
_DRIVER = "driver"  # the token of the planner driver that asked the trial (its owner)
_YOUNG = timedelta(minutes=1)  # a running trial with no owner yet may be just asked
_CONSTRAINT = "over_budget"  # GPU-hours over the cap; <= 0 is feasible
_SCHEMA_TRIES = 5  # lost races creating Optuna's tables before giving up


def _in_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.drivername.startswith("sqlite") and parsed.database in (None, "", ":memory:")


def _distribution(dim: Dimension) -> BaseDistribution:
    """The Optuna distribution of one dimension: ordinal as its index, else categorical."""
    if isinstance(dim, Ordinal):
        return IntDistribution(0, len(dim.values) - 1)
    return CategoricalDistribution(dim.values)


def internal_study_name(study: str, strategy: str) -> str:
    """The name of the Optuna study a strategy keeps for a planner study."""
    return f"{study}-{strategy}"


def delete_internal_studies(storage: str, study: str) -> list[str]:
    """Delete the Optuna studies both Optuna strategies keep for `study` in `storage`, if
    any; return their names. A database without Optuna's tables is left untouched."""
    if _in_memory(storage):
        return []
    engine = create_engine(storage)
    try:
        if "studies" not in inspect(engine).get_table_names():
            return []
    finally:
        engine.dispose()
    existing = set(optuna.get_all_study_names(storage))
    names = [internal_study_name(study, s) for s in ("optuna", "optuna-stages")]
    gone = [n for n in names if n in existing]
    for name in gone:
        optuna.delete_study(study_name=name, storage=storage)
    return gone


def _create_study(**kwargs: Any) -> optuna.Study:
    """`optuna.create_study`, again when another driver was creating Optuna's tables in the
    same database at the same moment (the loser's CREATE TABLE fails; the retry sees them)."""
    for attempt in range(1, _SCHEMA_TRIES):
        try:
            return optuna.create_study(**kwargs)
        except SQLAlchemyError:
            time.sleep(0.1 * attempt)
    return optuna.create_study(**kwargs)


def distributions(space: SearchSpace) -> dict[str, BaseDistribution]:
    """One Optuna parameter per dimension of each subtask, named `subtask.dimension`."""
    return {f"{s}.{d.name}": _distribution(d) for s in space.subtasks
            for d in space.dimensions(s)}


def params(space: SearchSpace, allocation: Allocation) -> dict[str, object]:
    """An allocation as the parameters `distributions` describes (ordinal: its index)."""
    return {f"{s}.{d.name}": d.index(p[d.name]) if isinstance(d, Ordinal) else p[d.name]
            for s, p in allocation.items() for d in space.dimensions(s)}


class OptunaStrategy(BaseStrategy):
    name = "optuna"

    def __init__(self, ctx: SearchContext, *, storage: str | None = None,
                 sampler: optuna.samplers.BaseSampler | None = None,
                 per_stage: bool = False) -> None:
        super().__init__(ctx)
        self.per_stage = per_stage
        if per_stage:
            self.name = "optuna-stages"
        if storage is not None and _in_memory(storage):
            storage = None  # Optuna's in-memory storage: as short-lived, and faster
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # multivariate is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.sampler = sampler or optuna.samplers.TPESampler(
                seed=ctx.seed, multivariate=True, constant_liar=True)
        objectives = len(ctx.space.subtasks) if per_stage else 1
        self.study = _create_study(
            study_name=internal_study_name(ctx.study or 'planner', self.name), storage=storage,
            sampler=self.sampler, directions=["maximize"] * objectives, load_if_exists=True)
        self.distributions = distributions(ctx.space)
        self._pending: dict[str, int] = {}  # allocation key -> optuna trial number
        self._synced = False
        self._rng = random.Random(ctx.seed)

    # plans <-> parameters -----------------------------------------------------------------
    def _allocation(self, asked: dict) -> Allocation:
        """The canonical allocation the parameters Optuna asked stand for."""
        space = self.ctx.space
        plans = {}
        for s in space.subtasks:
            values = {}
            for d in space.dimensions(s):
                value = asked[f"{s}.{d.name}"]
                values[d.name] = d.values[value] if isinstance(d, Ordinal) else value
            plans[s] = space.canonical(s, Plan(values))
        return Allocation.of(plans)

    # ask / tell -----------------------------------------------------------------------------
    def _sync(self, history: Sequence[TrialRecord]) -> None:
        """On (re)start: fail Optuna trials a dead driver left running (a live driver's own
        trials are its to tell); add finished trials it never heard of."""
        ctx = self.ctx
        live = ctx.store.live_drivers(ctx.study) if ctx.store and ctx.study else set()
        known = set()
        for t in self.study.get_trials(deepcopy=False):
            owner = t.user_attrs.get(_DRIVER)
            if t.state == TrialState.RUNNING and owner not in live and (
                    owner or datetime.now() - (t.datetime_start or datetime.min) > _YOUNG):
                self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            elif t.state in (TrialState.COMPLETE, TrialState.RUNNING):
                known.add(t.user_attrs.get(_KEY))
        for t in history:
            if t.status is TrialStatus.OK and t.allocation.key() not in known:
                self.study.add_trial(optuna.trial.create_trial(
                    params=params(self.ctx.space, t.allocation), distributions=self.distributions,
                    values=self._values(t), user_attrs={_KEY: t.allocation.key()},
                    system_attrs={f"constraints:{_CONSTRAINT}": 0.0}))
        self._synced = True

    def ask(self, history: Sequence[TrialRecord]) -> Allocation | None:
        if not self._synced:
            self._sync(history)
        running = {t.allocation.key() for t in history
                   if t.status is TrialStatus.RUNNING and t.driver == self.ctx.driver}
        for key, number in list(self._pending.items()):
            if key not in running:  # asked, never run: another driver claimed it
                self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
                del self._pending[key]
        seen = seen_keys(history)
        known = {t.allocation.key(): t for t in history if t.status is TrialStatus.OK}
        for _ in range(_MAX_INTERNAL_ASKS):
            alloc = self._judge(self.study.ask(self.distributions), seen, known)
            if alloc is not None:
                return alloc
        # TPE keeps proposing known or infeasible points: enqueue random feasible ones (a
        # driver beside this one may take an enqueued trial, so judge what comes back)
        for _ in range(_MAX_INTERNAL_ASKS):
            pick = self.random_feasible(self._rng, seen)
            if pick is None:
                return None
            self.study.enqueue_trial(params(self.ctx.space, pick), user_attrs={_KEY: pick.key()})
            alloc = self._judge(self.study.ask(self.distributions), seen, known)
            if alloc is not None:
                return alloc
        return None

    def _judge(self, trial: optuna.Trial, seen: set[str],
               known: dict[str, TrialRecord]) -> Allocation | None:
        """The trial's allocation when it is new and feasible (kept pending, owned by this
        driver); else tell Optuna at once (infeasible, or the known score) and give None."""
        alloc = self._allocation(trial.params)
        key = alloc.key()
        trial.set_user_attr(_KEY, key)
        over = self.ctx.cost_model.estimate(alloc).total_gpu_hours - self.ctx.budget_gpu_hours
        try:
            self.ctx.space.validate(alloc)
        except SpaceError:
            over = max(over, 1.0)
        trial.set_constraint(_CONSTRAINT, max(over, 0.0))
        if over > 0:
            self.study.tell(trial, self._values(None))
        elif key in seen:
            self.study.tell(trial, self._values(known.get(key)))
        else:
            trial.set_user_attr(_DRIVER, self.ctx.driver)  # young and unowned until here
            self._pending[key] = trial.number
            return alloc
        return None

    def tell(self, trial: TrialRecord) -> None:
        number = self._pending.pop(trial.allocation.key(), None)
        if number is None:
            return
        # skip_if_finished: a driver that took this one for dead may have failed it
        if trial.status is TrialStatus.OK:
            self.study.tell(number, self._values(trial), skip_if_finished=True)
        else:
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def _values(self, trial: TrialRecord | None) -> list[float]:
        """What Optuna is told: the end score, or each stage's (0 for no result)."""
        score = (trial.score or 0.0) if trial else 0.0
        if not self.per_stage:
            return [score]
        stages = trial.subtask_scores if trial else {}
        return [stages.get(s, score) for s in self.ctx.space.subtasks]
