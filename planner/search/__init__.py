"""Search strategies behind one ask/tell interface, and the loop that runs them.

The agent and Optuna strategies are imported on first use (`make_strategy`, or the names
below), so commands that only read a study load neither LangGraph nor Optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner._lazy import lazy_attributes
from planner.search._base import BaseStrategy, SearchContext
from planner.search._random import RandomStrategy
from planner.search._runner import Runner, best_trial, standing
from planner.search._sweep import SweepStrategy
from planner.search.agent.options import AgentOptions

if TYPE_CHECKING:
    from planner.search._optuna import OptunaStrategy
    from planner.search.agent.strategy import AgentStrategy

STRATEGIES = ("agent", "optuna", "optuna-stages", "random", "sweep")


def make_strategy(name: str, ctx: SearchContext, *, storage: str | None = None,
                  agent: AgentOptions | None = None) -> BaseStrategy:
    """Build a strategy by name; `storage` is the study database for Optuna, `agent` the
    agent's reasoner and stopping options."""
    if name == "agent":
        from planner.search.agent.strategy import AgentStrategy

        return AgentStrategy(ctx, agent)
    if name == "random":
        return RandomStrategy(ctx)
    if name in ("optuna", "optuna-stages"):
        from planner.search._optuna import OptunaStrategy

        return OptunaStrategy(ctx, storage=storage, per_stage=name == "optuna-stages")
    if name == "sweep":
        return SweepStrategy(ctx)
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES}")


__getattr__ = lazy_attributes(__name__, {"AgentStrategy": "planner.search.agent.strategy",
                                         "OptunaStrategy": "planner.search._optuna"})


__all__ = ["STRATEGIES", "AgentOptions", "AgentStrategy", "BaseStrategy", "OptunaStrategy",
           "RandomStrategy", "Runner", "SearchContext", "SweepStrategy", "best_trial",
           "make_strategy", "standing"]
