"""Search strategies behind one ask/tell interface, and the loop that runs them."""

from __future__ import annotations

from planner.search._base import BaseStrategy, SearchContext
from planner.search._optuna import OptunaStrategy
from planner.search._random import RandomStrategy
from planner.search._runner import Runner, best_trial
from planner.search._sweep import SweepStrategy
from planner.search.agent import AgentOptions, AgentStrategy

STRATEGIES = ("agent", "optuna", "optuna-stages", "random", "sweep")


def make_strategy(name: str, ctx: SearchContext, *, storage: str | None = None,
                  agent: AgentOptions | None = None) -> BaseStrategy:
    """Build a strategy by name; `storage` is the study database for Optuna, `agent` the
    agent's reasoner and stopping options."""
    if name == "agent":
        return AgentStrategy(ctx, agent)
    if name == "random":
        return RandomStrategy(ctx)
    if name in ("optuna", "optuna-stages"):
        return OptunaStrategy(ctx, storage=storage, per_stage=name == "optuna-stages")
    if name == "sweep":
        return SweepStrategy(ctx)
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


__all__ = ["STRATEGIES", "AgentOptions", "AgentStrategy", "BaseStrategy", "OptunaStrategy",
           "RandomStrategy", "Runner", "SearchContext", "SweepStrategy", "best_trial",
           "make_strategy"]
