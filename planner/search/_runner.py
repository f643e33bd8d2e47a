"""The budget loop: ask -> check cost -> submit -> wait -> store -> tell.

`Runner.submit` claims a trial and starts it on the runner's executor (`planner.executors`:
in process, one subprocess per trial, or Ray); `Runner.wait` hands back finished trials after
`complete` stored them. Only the runner (the driver) writes the store. The agent's evaluate
node submits and waits through the same calls, so every strategy's trials go through the
same cost check, the same retries and the same store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from planner.cost import CostModel
from planner.draws import Draws, plan_arms, study_draws
from planner.env import Environment, Observation
from planner.errors import SpaceError
from planner.executors import Executor, LocalExecutor
from planner.search._base import BaseStrategy, seen_keys
from planner.search.search_cost import SearchCost
from planner.space import Allocation, SearchSpace
from planner.store import Driver, Store, TrialRecord, TrialStatus

TrialCallback = Callable[[TrialRecord, TrialRecord | None], None]


def standing(trial: TrialRecord) -> tuple[float, float, int]:
    """How a finished trial ranks, the larger the better: by score, on a tie the cheaper
    (what a user deploys), then the earlier."""
    return trial.score, -trial.cost.total_gpu_hours, -trial.number


def best_trial(trials: Sequence[TrialRecord], cheapest: bool = True) -> TrialRecord | None:
    """The finished trial of the highest `standing`, or None; with `cheapest` False, a tie
    goes to the earlier whatever it cost. A screen's score is an estimate on a share of the
    items, so a screen is never the best."""
    ok = [t for t in trials if t.final]
    return max(ok, key=standing if cheapest else lambda t: (t.score, -t.number), default=None)


class Runner:
    """Evaluates allocations of one study on `executor` (default: in this process) and
    records them, as `driver` (`Store.driving`; None: an anonymous one, whose running trials
    any driver may adopt). A transient failure is attempted `retries` more times. With
    `screen` (the share of validation items the strategy screens on), a full trial is also
    scored on those items (`Environment.evaluate`), so screens compare with it there."""

    def __init__(self, env: Environment, store: Store, study: str, cost_model: CostModel,
                 budget_gpu_hours: float, driver: Driver | None = None,
                 executor: Executor | None = None, retries: int = 1,
                 screen: float | None = None) -> None:
        self.env = env
        self.screen = screen
        self.executor = executor or LocalExecutor(env)
        self.retries = retries
        self.store = store
        self.study = study
        self.driver = driver
        self.token = driver.token if driver else ""
        self.space = SearchSpace(env.spec)
        self.cost_model = cost_model
        self.budget_gpu_hours = budget_gpu_hours
        self.draws: Draws = store.keep_draws(study, study_draws(self.space, cost_model,
                                                                budget_gpu_hours))
        """How many samples a trial draws of each arm (`planner.draws`): fixed by the study's
        first run, so resumes and other drivers draw the same samples."""
        self.stopped = ""  # why the last search ended, said to the user
        self._trials: list[TrialRecord] = []  # as last read; see `history`
        self._allocations: dict[int, tuple[Allocation, float]] = {}  # in flight, fidelity
        self._attempts: dict[int, int] = {}  # attempts started, per trial in flight
        self._settled: list[int] = []  # finished unevaluated, not yet handed back

    def history(self) -> list[TrialRecord]:
        """Every trial of the study, in number order, as the store holds it now (other
        drivers add trials too). Read incrementally: the trials that had finished when last
        read are kept, and only later ones (the running and the new) are read again."""
        running = [t.number for t in self._trials if t.status is TrialStatus.RUNNING]
        start = min(running, default=self._trials[-1].number + 1 if self._trials else 0)
        self._trials = [t for t in self._trials if t.number < start] + self.store.trials(
            self.study, start)
        return list(self._trials)

    def known(self) -> list[TrialRecord]:
        """The trials as `history` last read them, without reading the store (right after
        `wait`, which read them, the same as another read would give but for other drivers'
        trials of the last instant)."""
        return list(self._trials)

    def search_meter(self, trials: Sequence[TrialRecord]) -> SearchCost:
        """What evaluating the trials cost, cache-aware (`SearchCost`): each fine-tune and
        each sampled arm once (a screen its share of the items); failed and over-budget
        trials are not counted."""
        meter = SearchCost(self.cost_model, self.env.validation_items(), self.draws)
        for t in trials:
            if t.status is TrialStatus.OK:
                meter.add(t.allocation, t.fidelity)
        return meter

    def search_spent(self, trials: Sequence[TrialRecord]) -> float:
        """GPU-hours evaluating the trials cost (`search_meter`)."""
        return self.search_meter(trials).gpu_hours

    def exhausted(self, trials: Sequence[TrialRecord], n_trials: int,
                  search_budget_gpu_hours: float | None) -> str | None:
        """Why the search must stop (trials run, or search GPU-hours spent), or None."""
        if len(trials) >= n_trials:  # a resumed study may hold more than asked for now
            return (f"{n_trials} trials run" if len(trials) == n_trials else
                    f"the study already holds {len(trials)} trials, more than the {n_trials} "
                    "asked for")
        if search_budget_gpu_hours is not None:
            spent = self.search_spent(trials)
            if spent >= search_budget_gpu_hours:
                return (f"search budget of {search_budget_gpu_hours:.4g} GPU-h spent "
                        f"({spent:.4g} GPU-h)")
        return None

    def free(self) -> int:
        """Trials the executor can start now."""
        return self.executor.slots - self.in_flight()

    def in_flight(self) -> int:
        """Trials submitted whose outcome `wait` has not handed back yet."""
        return self.executor.running() + len(self._settled)

    def submit(self, allocation: Allocation, *, source: str = "", number: int | None = None,
               max_trials: int | None = None, fidelity: float = 1.0) -> int | None:
        """Claim a trial for the allocation and start it on the executor (one over budget
        or invalid is settled at once, unevaluated); return its number. None, with nothing
        started, when the allocation is claimed already at this fidelity (another driver
        runs or ran it) or the study holds `max_trials` trials. A `fidelity` < 1 screens it
        on that share of the validation items.

        `number` re-runs a trial left running by a crash (adopted) instead of claiming one.
        """
        cost = self.cost_model.estimate(allocation)
        if number is None:
            number = self.store.start_trial(self.study, allocation, cost, source=source,
                                            driver=self.token, max_trials=max_trials,
                                            fidelity=fidelity)
            if number is None:
                return None
        self._allocations[number] = allocation, fidelity
        if cost.total_gpu_hours > self.budget_gpu_hours:
            self._settle(number, TrialStatus.OVER_BUDGET,
                         f"estimated {cost.total_gpu_hours:.4g} GPU-h > budget "
                         f"{self.budget_gpu_hours:.4g} GPU-h; not evaluated")
            return number
        try:
            self.space.validate(allocation)
        except SpaceError as e:
            self._settle(number, TrialStatus.FAILED, f"{type(e).__name__}: {e}")
            return number
        self._attempts[number] = 1
        self._start(number)
        return number

    def draws_of(self, allocation: Allocation) -> Draws:
        """The draws of the arms the allocation samples: what its evaluation needs."""
        return {arm: self.draws[arm] for s, p in allocation.items()
                for arm, _ in plan_arms(self.cost_model, s, p) if arm in self.draws}

    def wait(self) -> list[TrialRecord]:
        """Trials finished since the last call, as stored: at least one while any is in
        flight, else none. A transient failure (`executors.is_transient`, a lost worker)
        is attempted again under the same number, up to `retries` more times."""
        numbers, self._settled = self._settled, []
        while not numbers and self.executor.running():
            for out in self.executor.wait():
                attempts = self._attempts[out.number]
                if out.error is not None and out.transient and attempts <= self.retries:
                    self._attempts[out.number] = attempts + 1
                    self._start(out.number)
                    continue
                if out.error is not None and attempts > 1:
                    out = replace(out, error=f"{out.error} (after {attempts} attempts)")
                self.complete(out.number, out.observation, out.error)
                numbers.append(out.number)
        if not numbers:
            return []
        stored = {t.number: t for t in self.history()}
        return [stored[n] for n in numbers]

    def _start(self, number: int) -> None:
        """Start (again) the evaluation of a submitted trial on the executor."""
        allocation, fidelity = self._allocations[number]
        self.executor.start(number, allocation, fidelity, self.draws_of(allocation),
                            self.screen if fidelity == 1.0 else None)

    def drain(self) -> list[TrialRecord]:
        """Wait for every trial in flight; the finished ones in the order they finished."""
        done = []
        while finished := self.wait():
            done += finished
        return done

    def complete(self, number: int, observation: Observation | None,
                 error: str | None = None) -> None:
        """Store the outcome of trial `number`: its observation, or the error it failed with."""
        allocation, _ = self._allocations.pop(number)
        self._attempts.pop(number, None)
        if observation is None:
            self.store.finish_trial(self.study, number, TrialStatus.FAILED,
                                    error=error or "no observation")
            return
        costs = {s: self.cost_model.plan_cost(s, p) for s, p in allocation.items()}
        self.store.finish_trial(self.study, number, TrialStatus.OK, observation=observation,
                                subtask_costs=costs)

    def _settle(self, number: int, status: TrialStatus, error: str) -> None:
        """Finish a trial that is not evaluated; `wait` hands it back next."""
        self.store.finish_trial(self.study, number, status, error=error)
        self._allocations.pop(number)
        self._settled.append(number)

    def run_trial(self, allocation: Allocation, *, source: str = "", number: int | None = None,
                  max_trials: int | None = None) -> TrialRecord | None:
        """`submit` one allocation and wait for it, nothing else being in flight."""
        assert not self.in_flight(), "run_trial with trials in flight"
        number = self.submit(allocation, source=source, number=number, max_trials=max_trials)
        return None if number is None else self.drain()[0]

    def resume_interrupted(self, callback: TrialCallback | None = None) -> None:
        """Re-run trials a crash left running, under their own numbers: those whose driver
        is gone, each adopted by one driver only; another live driver's are its own."""
        for t in self.history():
            if (t.status is TrialStatus.RUNNING
                    and self.store.adopt_trial(self.study, t.number, self.token)):
                while not self.free():
                    self._tell(self.wait(), None, callback)
                self.submit(t.allocation, source=t.source, number=t.number,
                            fidelity=t.fidelity)
        self._tell(self.drain(), None, callback)

    def _tell(self, finished: list[TrialRecord], strategy: BaseStrategy | None,
              callback: TrialCallback | None) -> None:
        """Give finished trials to the strategy and the callback."""
        if not finished or not (strategy or callback):
            return
        best = best_trial(self.known())  # `wait` has just read the history
        for trial in finished:
            if strategy:
                strategy.tell(trial)
            if callback:
                callback(trial, best)

    def optimize(self, strategy: BaseStrategy, n_trials: int,
                 callback: TrialCallback | None = None,
                 search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """Run until the study holds `n_trials` finished trials, the search budget
        (`search_spent`) is spent, or the strategy stops."""
        self.resume_interrupted(callback)
        strategy.run(self, n_trials, callback, search_budget_gpu_hours)
        return self.history()

    def tried_all(self, history: Sequence[TrialRecord]) -> bool:
        """Whether `history` holds every allocation of the space."""
        return len(seen_keys(history)) >= self.space.size()

    def nothing_left(self, history: Sequence[TrialRecord]) -> str:
        """Why a strategy found no allocation to ask for, in words."""
        if self.tried_all(history):
            size = self.space.size()
            what = f"all {size:,} allocations of the space were" if size > 1 else \
                "the space's one allocation was"
            return f"nothing left to try: {what} tried"
        return "nothing left to try: every unseen allocation is over budget"

    def ask_tell(self, strategy: BaseStrategy, n_trials: int,
                 callback: TrialCallback | None = None,
                 search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """The plain loop: ask while the executor has a free slot (the history the strategy
        sees holds the trials in flight, so it asks for others), then wait -> tell, until
        a stop condition holds and nothing is in flight."""
        history = self.history()
        stop = None
        while True:
            while self.free() > 0 and not (
                    stop := self.exhausted(history, n_trials, search_budget_gpu_hours)):
                allocation = strategy.ask(history)
                if allocation is None:
                    stop = self.nothing_left(history)
                    break
                # None: another driver claimed it, or the study is full: look again
                self.submit(allocation, source=strategy.name, max_trials=n_trials)
                history = self.history()  # with this trial and other drivers'
            finished = self.wait()
            if not finished:
                break
            self._tell(finished, strategy, callback)
            history = self.history()
        self.stopped = stop or ""
        return history
