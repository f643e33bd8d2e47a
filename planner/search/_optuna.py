"""Optuna TPE baseline, with the budget as a constraint and the study in the same database.

Every subtask field is one Optuna parameter (`solve.model`, ...); samples are an ordinal
index so TPE can exploit their order. An ask that is over budget or invalid (a method the
model lacks) is told to Optuna as infeasible through `Trial.set_constraint` and never evaluated;
an ask that repeats an evaluated allocation is told its known score. Both cost no trial.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import optuna
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from planner.errors import SpaceError
from planner.search._base import BaseStrategy, SearchContext, seen_keys
from planner.space import Allocation, Plan
from planner.store import TrialRecord, TrialStatus

_MAX_INTERNAL_ASKS = 200
_KEY = "allocation_key"
_CONSTRAINT = "over_budget"  # GPU-hours over the cap; <= 0 is feasible


class OptunaStrategy(BaseStrategy):
    name = "optuna"

    def __init__(self, ctx: SearchContext, *, storage: str | None = None,
                 sampler: optuna.samplers.BaseSampler | None = None) -> None:
        super().__init__(ctx)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sampler = sampler or optuna.samplers.TPESampler(
            seed=ctx.seed, multivariate=True)
        self.study = optuna.create_study(
            study_name=f"{ctx.study or 'planner'}-optuna", storage=storage,
            sampler=self.sampler, direction="maximize", load_if_exists=True)
        self.distributions = self._distributions()
        self._pending: dict[str, int] = {}  # allocation key -> optuna trial number
        self._synced = False
        self._rng = random.Random(ctx.seed)

    def _distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        dists: dict[str, optuna.distributions.BaseDistribution] = {}
        for s in self.ctx.space.subtasks:
            c = self.ctx.space.choices(s)
            for field in ("model", "method", "mixture", "aggregator"):
                dists[f"{s}.{field}"] = CategoricalDistribution(c[field])
            dists[f"{s}.samples"] = IntDistribution(0, len(c["samples"]) - 1)
        return dists

    def _allocation(self, params: dict) -> Allocation:
        plans = {}
        for s in self.ctx.space.subtasks:
            samples = self.ctx.space.choices(s)["samples"][params[f"{s}.samples"]]
            plans[s] = Plan(params[f"{s}.model"], params[f"{s}.method"],
                            params[f"{s}.mixture"], samples, params[f"{s}.aggregator"])
        return Allocation.of(plans)

    def _params(self, allocation: Allocation) -> dict:
        params = {}
        for s, p in allocation.items():
            params.update({f"{s}.model": p.model, f"{s}.method": p.method,
                           f"{s}.mixture": p.mixture, f"{s}.aggregator": p.aggregator,
                           f"{s}.samples": self.ctx.space.choices(s)["samples"].index(p.samples)})
        return params

    def _sync(self, history: Sequence[TrialRecord]) -> None:
        """On resume: fail Optuna trials left running; add finished ones it never heard of."""
        known = set()
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING:
                self.study.tell(t.number, state=TrialState.FAIL)
            elif t.state == TrialState.COMPLETE:
                known.add(t.user_attrs.get(_KEY))
        for t in history:
            if t.status is TrialStatus.OK and t.allocation.key() not in known:
                self.study.add_trial(optuna.trial.create_trial(
                    params=self._params(t.allocation), distributions=self.distributions,
                    value=t.score, user_attrs={_KEY: t.allocation.key()},
                    system_attrs={f"constraints:{_CONSTRAINT}": 0.0}))
        self._synced = True

    def ask(self, history: Sequence[TrialRecord]) -> Allocation | None:
        if not self._synced:
            self._sync(history)
        seen = seen_keys(history)
        scores = {t.allocation.key(): t.score for t in history if t.status is TrialStatus.OK}
        for _ in range(_MAX_INTERNAL_ASKS):
            trial = self.study.ask(self.distributions)
            alloc = self._allocation(trial.params)
            key = alloc.key()
            trial.set_user_attr(_KEY, key)
            over = self.ctx.cost_model.estimate(alloc).total_gpu_hours - self.ctx.budget_gpu_hours
            try:
                self.ctx.space.validate(alloc)
            except SpaceError:
                over = max(over, 1.0)
            if over > 0:
                trial.set_constraint(_CONSTRAINT, over)
                self.study.tell(trial, 0.0)
            elif key in seen:
                trial.set_constraint(_CONSTRAINT, 0.0)
                self.study.tell(trial, scores.get(key) or 0.0)
            else:
                trial.set_constraint(_CONSTRAINT, 0.0)
                self._pending[key] = trial.number
                return alloc
        # TPE keeps proposing known or infeasible points: enqueue a random feasible one
        alloc = self.random_feasible(self._rng, seen)
        if alloc is None:
            return None
        self.study.enqueue_trial(self._params(alloc), user_attrs={_KEY: alloc.key()})
        trial = self.study.ask(self.distributions)
        trial.set_constraint(_CONSTRAINT, 0.0)
        self._pending[alloc.key()] = trial.number
        return alloc

    def tell(self, trial: TrialRecord) -> None:
        number = self._pending.pop(trial.allocation.key(), None)
        if number is None:
            return
        if trial.status is TrialStatus.OK:
            self.study.tell(number, trial.score)
        else:
            self.study.tell(number, state=TrialState.FAIL)
