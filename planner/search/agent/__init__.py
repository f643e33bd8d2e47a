"""The agent strategy: a LangGraph planner with pluggable reasoners and an insight memory.

`AgentStrategy` is imported on first use, so that reading the options loads no LangGraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from planner.search.agent.options import DEFAULT_PATIENCE, AgentOptions, LLMConfig

if TYPE_CHECKING:
    from planner.search.agent.strategy import AgentStrategy


def __getattr__(name: str) -> object:
    if name != "AgentStrategy":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module("planner.search.agent.strategy").AgentStrategy


__all__ = ["DEFAULT_PATIENCE", "AgentOptions", "AgentStrategy", "LLMConfig"]
