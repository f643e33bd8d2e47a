"""The agent strategy: a LangGraph planner with pluggable reasoners and an insight memory.

`AgentStrategy` is imported on first use, so that reading the options loads no LangGraph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner._lazy import lazy_attributes
from planner.search.agent.options import DEFAULT_PATIENCE, AgentOptions, LLMConfig

if TYPE_CHECKING:
    from planner.search.agent.strategy import AgentStrategy


__getattr__ = lazy_attributes(__name__, {"AgentStrategy": "planner.search.agent.strategy"})


__all__ = ["DEFAULT_PATIENCE", "AgentOptions", "AgentStrategy", "LLMConfig"]
