"""Random search: uniform over unseen allocations within budget."""

from __future__ import annotations

import random
from collections.abc import Sequence

from planner.search._base import BaseStrategy, seen_keys
from planner.space import Allocation
from planner.store import TrialRecord


class RandomStrategy(BaseStrategy):
    """Seeded so that a resumed study draws what an uninterrupted one would have."""

    name = "random"

    def ask(self, history: Sequence[TrialRecord]) -> Allocation | None:
        rng = random.Random(f"{self.ctx.seed}-{len(history)}")
        return self.random_feasible(rng, seen_keys(history))
