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
from planner.store import Driver, Store, TrialRecord, TrialStatus

TrialCallback = Callable[[TrialRecord, TrialRecord | None], None]


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The highest-scoring finished trial (earliest on ties), or None."""
    ok = [t for t in trials if t.status is TrialStatus.OK and t.score is not None]
    return max(ok, key=lambda t: (t.score, -t.number), default=None)


class Runner:
    """Evaluates allocations of one study and records them, as `driver` (`Store.driving`;
    None: an anonymous one, whose running trials any driver may adopt)."""

    def __init__(self, env: Environment, store: Store, study: str, cost_model: CostModel,
                 budget_gpu_hours: float, driver: Driver | None = None) -> None:
        self.env = env
        self.store = store
        self.study = study
        self.driver = driver
        self.token = driver.token if driver else ""
        self.space = SearchSpace(env.spec)
        self.cost_model = cost_model
        self.budget_gpu_hours = budget_gpu_hours
        self.stopped = ""  # why the last search ended, said to the user
        self._trials: list[TrialRecord] = []  # as last read; see `history`

    def history(self) -> list[TrialRecord]:
        """Every trial of the study, in number order, as the store holds it now (other
        drivers add trials too). Read incrementally: the trials that had finished when last
        read are kept, and only later ones (the running and the new) are read again."""
        running = [t.number for t in self._trials if t.status is TrialStatus.RUNNING]
        start = min(running, default=self._trials[-1].number + 1 if self._trials else 0)
        self._trials = [t for t in self._trials if t.number < start] + self.store.trials(
            self.study, start)
        return list(self._trials)

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

    def run_trial(self, allocation: Allocation, *, source: str = "", number: int | None = None,
                  max_trials: int | None = None) -> TrialRecord | None:
        """Claim a trial for the allocation, evaluate it unless it is over budget; store and
        return the trial. None, with nothing run, when the allocation is claimed already
        (another driver runs or ran it) or the study holds `max_trials` trials.

        `number` re-runs a trial left running by a crash (adopted) instead of claiming one.
        """
        cost = self.cost_model.estimate(allocation)
        if number is None:
            number = self.store.start_trial(self.study, allocation, cost, source=source,
                                            driver=self.token, max_trials=max_trials)
            if number is None:
                return None
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
        """Re-run trials a crash left running, under their own numbers: those whose driver
        is gone, each adopted by one driver only; another live driver's are its own."""
        for t in self.history():
            if (t.status is TrialStatus.RUNNING
                    and self.store.adopt_trial(self.study, t.number, self.token)):
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
        while not (stop := self.exhausted(history, n_trials, search_budget_gpu_hours)):
            allocation = strategy.ask(history)
            if allocation is None:
                stop = "nothing left to try: every unseen allocation is over budget"
                break
            trial = self.run_trial(allocation, source=strategy.name, max_trials=n_trials)
            history = self.history()  # with other drivers' trials
            if trial is None:  # another driver claimed it, or the study is full: look again
                continue
            strategy.tell(trial)
            if callback:
                callback(trial, best_trial(history))
        self.stopped = stop
        return history
