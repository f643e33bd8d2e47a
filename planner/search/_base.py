"""The strategy interface (ask/tell over immutable trial history) and shared helpers."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from planner.cost import CostModel
from planner.space import Allocation, Plan, SearchSpace
from planner.store import Store, TrialRecord

if TYPE_CHECKING:
    from planner.search._runner import Runner, TrialCallback

_ENUMERABLE = 20_000  # spaces up to this size are listed when rejection sampling stalls


@dataclass(frozen=True)
class SearchContext:
    """What every strategy may use: the space, prices, cap, seed, and where to persist."""

    space: SearchSpace
    cost_model: CostModel
    budget_gpu_hours: float
    seed: int = 0
    store: Store | None = None
    study: str = ""
    driver: str = ""  # this process's token on the study (`Store.driving`)


class BaseStrategy(ABC):
    """Proposes allocations. `ask` sees the whole history; `tell` hears each new result.

    An allocation returned by `ask` must be within budget and not evaluated before;
    `None` means the strategy has nothing left to propose.
    """

    name: str = "base"

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self._plans = {s: list(ctx.space.plans(s)) for s in ctx.space.subtasks}

    @abstractmethod
    def ask(self, history: Sequence[TrialRecord]) -> Allocation | None:
        """The next allocation to evaluate, or None to stop."""

    def tell(self, trial: TrialRecord) -> None:  # noqa: B027 - optional hook
        """Hear the outcome of a trial this strategy asked for."""

    def run(self, runner: Runner, n_trials: int, callback: TrialCallback | None = None,
            search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """Drive the search until the study holds `n_trials` trials, the search budget is
        spent, or the strategy stops; by default the ask/tell loop."""
        return runner.ask_tell(self, n_trials, callback, search_budget_gpu_hours)

    # helpers shared by strategies ----------------------------------------------------------
    def feasible(self, allocation: Allocation) -> bool:
        return self.ctx.cost_model.estimate(allocation).total_gpu_hours <= self.ctx.budget_gpu_hours

    def random_feasible(self, rng: random.Random, seen: set[str],
                        tries: int = 200) -> Allocation | None:
        """A uniformly drawn unseen allocation within budget (rejection sampling); when that
        keeps failing, a uniform pick among all remaining ones in a small space, or else one
        built a subtask at a time from plans that still fit."""
        for _ in range(tries):
            alloc = Allocation.of({s: rng.choice(p) for s, p in self._plans.items()})
            if alloc.key() not in seen and self.feasible(alloc):
                return alloc
        if self.ctx.space.size() <= _ENUMERABLE:
            left = [a for a in self.ctx.space.allocations()
                    if a.key() not in seen and self.feasible(a)]
            return rng.choice(left) if left else None
        for _ in range(tries):
            alloc = self._build_fitting(rng)
            if alloc is not None and alloc.key() not in seen:
                return alloc
        return None

    def _build_fitting(self, rng: random.Random) -> Allocation | None:
        """Pick subtask plans in random order, each from those that keep the cheapest
        completion of the remaining subtasks within budget."""
        cost = self.ctx.cost_model
        cheapest = {s: min(p, key=lambda x, s=s: cost.plan_cost(s, x).total_gpu_hours)
                    for s, p in self._plans.items()}
        chosen: dict[str, Plan] = dict(cheapest)
        order = list(self._plans)
        rng.shuffle(order)
        for s in order:
            fitting = [p for p in self._plans[s]
                       if self.feasible(Allocation.of({**chosen, s: p}))]
            if not fitting:
                return None
            chosen[s] = rng.choice(fitting)
        alloc = Allocation.of({s: chosen[s] for s in self.ctx.space.subtasks})
        return alloc if self.feasible(alloc) else None


def seen_keys(history: Sequence[TrialRecord]) -> set[str]:
    """Keys of every allocation already in the history, whatever its status; one only
    screened (`TrialRecord.screen`) is not seen yet: it may still be evaluated in full."""
    return {t.allocation.key() for t in history if not t.screen}
