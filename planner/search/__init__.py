"""Search strategies behind one ask/tell interface, and the loop that runs them."""

from __future__ import annotations

from planner.search._base import BaseStrategy, SearchContext
from planner.search._optuna import OptunaStrategy
from planner.search._random import RandomStrategy
from planner.search._runner import Runner, best_trial

STRATEGIES = ("optuna", "random")


def make_strategy(name: str, ctx: SearchContext, *, storage: str | None = None) -> BaseStrategy:
    """Build a strategy by name; `storage` is the study database for Optuna."""
    if name == "random":
        return RandomStrategy(ctx)
    if name == "optuna":
        return OptunaStrategy(ctx, storage=storage)
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


__all__ = ["STRATEGIES", "BaseStrategy", "OptunaStrategy", "RandomStrategy", "Runner",
           "SearchContext", "best_trial", "make_strategy"]
