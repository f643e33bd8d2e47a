"""`AgentStrategy`: drives the LangGraph loop over a runner, checkpointed in the study's DB.

The checkpointer is LangGraph's `SqliteSaver` on the study's SQLite file, or its
`PostgresSaver` on a PostgreSQL database (the `postgres` extra), so a killed search continues
from its last finished node. Its thread is the driver's seat on the study (`Store.driving`):
the study's name for the first driver, `NAME#SEAT` for each driver beside it, so agents
driving one study at once never write one thread, and all read the trials from the store.
For an in-memory SQLite database it is an in-memory saver.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite import SqliteSaver
from sqlalchemy.engine import make_url

from planner.errors import PlannerError
from planner.search._base import BaseStrategy, SearchContext
from planner.search._runner import Runner, TrialCallback
from planner.search.agent.graph import build_graph
from planner.search.agent.options import AgentOptions
from planner.search.agent.reasoners.builtin import BuiltinReasoner
from planner.search.agent.state import AgentContext
from planner.space import Allocation
from planner.store import TrialRecord

if TYPE_CHECKING:
    from planner.search.agent.reasoners.llm import LLMReasoner


class AgentStrategy(BaseStrategy):
    """AgentTTS-style search: probe, reflect into insights, propose, repeat."""

    name = "agent"

    def __init__(self, ctx: SearchContext, options: AgentOptions | None = None) -> None:
        super().__init__(ctx)
        self.options = options or AgentOptions()
        self.builtin = BuiltinReasoner(ctx)
        self.llm: LLMReasoner | None = None
        if self.options.reasoner == "llm":
            if self.options.llm is None:
                raise ValueError("reasoner 'llm' needs an LLMConfig (base URL and model)")
            from planner.search.agent.reasoners.llm import LLMReasoner  # loads openai

            self.llm = LLMReasoner(ctx, self.options.llm, self.builtin)
        elif self.options.reasoner != "builtin":
            raise ValueError(f"unknown reasoner {self.options.reasoner!r}; choose builtin or llm")

    def ask(self, history: Sequence[TrialRecord]) -> Allocation | None:
        """Ask/tell access without graph or trace: the next init probe, then proposals."""
        probes = self.builtin.initial(history).allocations
        if probes:
            return probes[0]
        found = self.builtin.propose(history).allocations
        return found[0] if found else None

    def run(self, runner: Runner, n_trials: int, callback: TrialCallback | None = None,
            search_budget_gpu_hours: float | None = None) -> list[TrialRecord]:
        """Run (or continue) the graph for this study until a stop condition holds."""
        context = AgentContext(runner=runner, builtin=self.builtin, llm=self.llm,
                               n_trials=n_trials,
                               search_budget_gpu_hours=search_budget_gpu_hours,
                               patience=self.options.patience,
                               proposals_per_step=self.options.proposals_per_step,
                               screen=self.options.screen,
                               callback=callback)
        seat = runner.driver.seat if runner.driver else 0
        config = {"configurable": {"thread_id": thread_id(runner.study, seat)},
                  "recursion_limit": 10 * n_trials + 50}
        with checkpointer(runner.store.url) as saver:
            graph = build_graph().compile(checkpointer=saver)
            snapshot = graph.get_state(config)
            # interrupted mid-graph: continue at the node that did not finish; else (re)start
            start = None if snapshot.next else {"stop": "", "stale": 0}
            # an in-memory saver dies with this run, so nothing reads a checkpoint of it
            # mid-run: it is written once, at the end, not after every node
            durability = "exit" if isinstance(saver, InMemorySaver) else "sync"
            final = graph.invoke(start, config, context=context, durability=durability)
        runner.stopped = final["stop"]
        return runner.history()


def thread_id(study: str, seat: int) -> str:
    """The checkpoint thread of the driver in `seat` on the study."""
    return study if seat == 0 else f"{study}#{seat}"


@contextmanager
def checkpointer(url: str) -> Iterator[BaseCheckpointSaver]:
    """SqliteSaver on the study's SQLite file, PostgresSaver on its PostgreSQL database,
    else an in-memory saver."""
    if make_url(url).get_backend_name() == "postgresql":
        with _postgres_saver(url) as saver:
            yield saver
        return
    path = _sqlite_file(url)
    if path is None:
        yield InMemorySaver()
        return
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
    try:
        saver = SqliteSaver(conn)
        saver.setup()
        yield saver
    finally:
        conn.close()


@contextmanager
def _postgres_saver(url: str) -> Iterator[BaseCheckpointSaver]:
    """LangGraph's PostgresSaver on the database of `url`, its tables set up by one driver
    at a time (an advisory lock)."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError:
        raise PlannerError(f"--db {make_url(url).render_as_string()}: the agent's checkpoints "
                           "on PostgreSQL need the postgres extra: pip install "
                           "'planner[postgres]'") from None
    libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with PostgresSaver.from_conn_string(libpq) as saver:
        saver.conn.execute("SELECT pg_advisory_lock(7436352)")  # planner's checkpoint setup
        try:
            saver.setup()
        finally:
            saver.conn.execute("SELECT pg_advisory_unlock(7436352)")
        yield saver


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory or non-SQLite database."""
    parsed = make_url(url)
    path = parsed.database
    if not parsed.drivername.startswith("sqlite") or path in (None, "", ":memory:"):
        return None
    return Path(path)


def delete_checkpoints(url: str, study: str) -> bool:
    """Delete the graph checkpoints of a study (the threads of all its seats) from its
    SQLite file or PostgreSQL database; True when there were some. A SQLite file without
    LangGraph's tables is left untouched."""
    if make_url(url).get_backend_name() == "postgresql":
        with _postgres_saver(url) as saver:
            threads = saver.conn.execute("SELECT DISTINCT thread_id FROM checkpoints")
            return _delete_threads(saver, [t["thread_id"] for t in threads], study)
    path = _sqlite_file(url)
    if path is None or not path.is_file():
        return False
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                        "'checkpoints'").fetchone() is None:
            return False
        threads = conn.execute("SELECT DISTINCT thread_id FROM checkpoints")
        return _delete_threads(SqliteSaver(conn), [t for (t,) in threads], study)
    finally:
        conn.close()


def _delete_threads(saver: BaseCheckpointSaver, threads: list[str], study: str) -> bool:
    """Delete those of `threads` that belong to the study's seats; True if any did."""
    mine = [t for t in threads
            if t == study or (t.startswith(f"{study}#") and t[len(study) + 1:].isdigit())]
    for t in mine:
        saver.delete_thread(t)
    return bool(mine)
