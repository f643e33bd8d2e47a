"""The agent strategy: a LangGraph planner with pluggable reasoners and an insight memory."""

from planner.search.agent.reasoners.llm import LLMConfig
from planner.search.agent.strategy import AgentOptions, AgentStrategy

__all__ = ["AgentOptions", "AgentStrategy", "LLMConfig"]
