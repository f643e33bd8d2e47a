"""`AgentStrategy`: drives the LangGraph loop over a runner, checkpointed in the study's DB.

The checkpointer is LangGraph's `SqliteSaver` on the study's SQLite file (thread id = study
name), so a killed search continues from its last finished node. For an in-memory SQLite
database or a non-SQLite URL (PostgreSQL) it is an in-memory saver: the search still runs,
and trials are still stored, but an interrupted graph restarts from its init node, whose
probes already in the study are skipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from sqlalchemy.engine import make_url

from planner.search._base import BaseStrategy, SearchContext
from planner.search._runner import Runner, TrialCallback
from planner.search.agent.graph import build_graph
from planner.search.agent.reasoners.base import Reasoner
from planner.search.agent.reasoners.builtin import BuiltinReasoner
from planner.search.agent.reasoners.llm import LLMConfig, LLMReasoner
from planner.search.agent.state import AgentContext, History
from planner.space import Allocation
from planner.store import TrialRecord

DEFAULT_PATIENCE = 12  # proposals without a better score before the search stops


@dataclass(frozen=True)
class AgentOptions:
    """How the agent reasons and when it stops."""

    reasoner: str = "builtin"  # builtin | llm
    llm: LLMConfig | None = None  # required for reasoner="llm"
    patience: int | None = DEFAULT_PATIENCE
    proposals_per_step: int = 1


class AgentStrategy(BaseStrategy):
    """AgentTTS-style search: probe, reflect into insights, propose, repeat."""

    name = "agent"

    def __init__(self, ctx: SearchContext, options: AgentOptions | None = None) -> None:
        super().__init__(ctx)
        self.options = options or AgentOptions()
        self.builtin = BuiltinReasoner(ctx)
        self.reasoner: Reasoner = self.builtin
        if self.options.reasoner == "llm":
            if self.options.llm is None:
                raise ValueError("reasoner 'llm' needs an LLMConfig (base URL and model)")
            self.reasoner = LLMReasoner(ctx, self.options.llm, self.builtin)
        elif self.options.reasoner != "builtin":
            raise ValueError(f"unknown reasoner {self.options.reasoner!r}; choose builtin or llm")

    def ask(self, history: Sequence[TrialRecord]) -> Allocation | None:
        """Ask/tell access without graph or trace: the next init probe, then proposals."""
        probes, _ = self.builtin.initial(history)
        if probes:
            return probes[0]
        found = self.builtin.propose(history).allocations
        return found[0] if found else None

    def run(self, runner: Runner, n_trials: int, callback: TrialCallback | None = None,
            search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """Run (or continue) the graph for this study until a stop condition holds."""
        context = AgentContext(runner=runner, history=History(runner), reasoner=self.reasoner,
                               builtin=self.builtin, n_trials=n_trials,
                               search_budget_gpu_hours=search_budget_gpu_hours,
                               patience=self.options.patience,
                               proposals_per_step=self.options.proposals_per_step,
                               callback=callback)
        config = {"configurable": {"thread_id": runner.study},
                  "recursion_limit": 10 * n_trials + 50}
        with checkpointer(runner.store.url) as saver:
            graph = build_graph().compile(checkpointer=saver)
            snapshot = graph.get_state(config)
            # interrupted mid-graph: continue at the node that did not finish; else (re)start
            start = None if snapshot.next else {"stop": "", "stale": 0}
            graph.invoke(start, config, context=context, durability="sync")
        return runner.history()


@contextmanager
def checkpointer(url: str) -> Iterator[BaseCheckpointSaver]:
    """SqliteSaver on the study's SQLite file, else an in-memory saver."""
    parsed = make_url(url)
    path = parsed.database
    if not parsed.drivername.startswith("sqlite") or path in (None, "", ":memory:"):
        yield InMemorySaver()
        return
    conn = sqlite3.connect(str(Path(path)), check_same_thread=False, timeout=30)
    try:
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()
