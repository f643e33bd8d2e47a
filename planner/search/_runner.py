"""The budget loop: ask -> check cost -> evaluate -> store -> tell.

`Runner.run_trial` is also what the agent's evaluate node calls, so every strategy's
trials go through the same cost check and the same store.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence

from planner.cost import CostModel
from planner.env import Environment
from planner.search._base import BaseStrategy
from planner.search.search_cost import SearchCost
from planner.space import Allocation, SearchSpace
from planner.store import Store, TrialRecord, TrialStatus

TrialCallback = Callable[[TrialRecord, TrialRecord | None], None]


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The highest-scoring finished trial (earliest on ties), or None."""
    ok = [t for t in trials if t.status is TrialStatus.OK and t.score is not None]
    return max(ok, key=lambda t: (t.score, -t.number), default=None)


class Runner:
    """Evaluates allocations of one study and records them."""

    def __init__(self, env: Environment, store: Store, study: str, cost_model: CostModel,
                 budget_gpu_hours: float) -> None:
        self.env = env
        self.store = store
        self.study = study
        self.space = SearchSpace(env.spec)
        self.cost_model = cost_model
        self.budget_gpu_hours = budget_gpu_hours

    def history(self) -> list[TrialRecord]:
        return self.store.trials(self.study)

    def search_spent(self, trials: Sequence[TrialRecord]) -> float:
        """GPU-hours evaluating the trials cost, cache-aware (`SearchCost`): each fine-tune
        and each sampled arm once; failed and over-budget trials are not counted."""
        meter = SearchCost(self.cost_model, self.env.validation_items())
        return meter.add_all(t.allocation for t in trials if t.status is TrialStatus.OK)

    def exhausted(self, trials: Sequence[TrialRecord], n_trials: int,
                  search_budget_gpu_hours: float | None) -> str | None:
        """Why the search must stop (trials run, or search GPU-hours spent), or None."""
        if len(trials) >= n_trials:
            return f"{n_trials} trials run"
        if search_budget_gpu_hours is not None:
            spent = self.search_spent(trials)
            if spent >= search_budget_gpu_hours:
                return (f"search budget of {search_budget_gpu_hours:.4g} GPU-h spent "
                        f"({spent:.4g} GPU-h)")
        return None

    def run_trial(self, allocation: Allocation, *, source: str = "",
                  number: int | None = None) -> TrialRecord:
        """Evaluate one allocation unless it is over budget; store and return the trial.

        `number` re-runs a trial left running by a crash instead of starting a new one.
        """
        cost = self.cost_model.estimate(allocation)
        if number is None:
            number = self.store.start_trial(self.study, allocation, cost, source=source)
        if cost.total_gpu_hours > self.budget_gpu_hours:
            self.store.finish_trial(
                self.study, number, TrialStatus.OVER_BUDGET,
                error=f"estimated {cost.total_gpu_hours:.4g} GPU-h > budget "
                      f"{self.budget_gpu_hours:.4g} GPU-h; not evaluated")
        else:
            try:
                self.space.validate(allocation)
                obs = self.env.evaluate(allocation)
            except Exception as e:  # recorded as FAILED, like Optuna's _run_trial
                self.store.finish_trial(self.study, number, TrialStatus.FAILED,
                                        error="".join(traceback.format_exception_only(e)).strip())
            else:
                costs = {s: self.cost_model.plan_cost(s, p) for s, p in allocation.items()}
                self.store.finish_trial(self.study, number, TrialStatus.OK, observation=obs,
                                        subtask_costs=costs)
        return next(t for t in self.history() if t.number == number)

    def resume_interrupted(self, callback: TrialCallback | None = None) -> None:
        """Re-run trials a crash left running, under their own numbers."""
        for t in self.history():
            if t.status is TrialStatus.RUNNING:
                done = self.run_trial(t.allocation, source=t.source, number=t.number)
                if callback:
                    callback(done, best_trial(self.history()))

    def optimize(self, strategy: BaseStrategy, n_trials: int,
                 callback: TrialCallback | None = None,
                 search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """Run until the study holds `n_trials` finished trials, the search budget
        (`search_spent`) is spent, or the strategy stops."""
        self.resume_interrupted(callback)
        strategy.run(self, n_trials, callback, search_budget_gpu_hours)
        return self.history()

    def ask_tell(self, strategy: BaseStrategy, n_trials: int,
                 callback: TrialCallback | None = None,
                 search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """The plain loop: ask -> run_trial -> tell, until a stop condition holds."""
        history = self.history()
        while self.exhausted(history, n_trials, search_budget_gpu_hours) is None:
            allocation = strategy.ask(history)
            if allocation is None:
                break
            trial = self.run_trial(allocation, source=strategy.name)
            strategy.tell(trial)
            history = [*history, trial]
            if callback:
                callback(trial, best_trial(history))
        return history
