"""What a reasoner returns, and the interface the graph's propose node calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from planner.search.agent.memory import Insight
from planner.space import Allocation
from planner.store import TrialRecord


@dataclass(frozen=True)
class Attempt:
    """One exchange with a language model, as the trace stores it (no credentials)."""

    messages: list[dict]
    response: str = ""
    proposals: list[dict] = field(default_factory=list)  # parsed, before validation
    errors: list[str] = field(default_factory=list)  # validation or transport errors
    tokens: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Proposal:
    """Allocations to evaluate next, with what produced them."""

    allocations: list[Allocation]
    reasoner: str
    notes: list[str] = field(default_factory=list)  # the reasoner's own insights, if any
    attempts: list[Attempt] = field(default_factory=list)
    fallback: str | None = None  # why the built-in reasoner answered instead
    rationale: list[str] = field(default_factory=list)  # why each allocation, one line each


@dataclass(frozen=True)
class Reflection:
    """The insight memory a reflect step leaves, with what produced it."""

    insights: list[Insight]
    reasoner: str
    attempts: list[Attempt] = field(default_factory=list)
    fallback: str | None = None  # why the built-in reasoner answered instead


class Reasoner(Protocol):
    """What the agent's graph asks in each node: probes before any trial, the insight
    memory after each evaluation, and the next allocations."""

    name: str
    nodes: tuple[str, ...]
    """The graph nodes this reasoner answers (the builtin answers the others)."""

    def initial(self, history: Sequence[TrialRecord]) -> Proposal:
        """Probe allocations (unseen, within budget), each with its rationale."""
        ...

    def reflect(self, history: Sequence[TrialRecord], memory: Sequence[Insight]) -> Reflection:
        """The insight memory the trials imply, given the memory so far."""
        ...

    def propose(self, history: Sequence[TrialRecord], memory: Sequence[Insight],
                k: int) -> Proposal:
        """Up to `k` unseen allocations within budget, best first."""
        ...
