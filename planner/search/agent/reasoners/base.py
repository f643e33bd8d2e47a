"""What a reasoner answers the graph's nodes (init: a `Proposal` of probes; reflect: a
`Reflection`; propose: a `Proposal`), with the typed record of each exchange with a
language model. `BuiltinReasoner` and `LLMReasoner` answer with the same methods; the
latter's also take the conversation so far (the graph's `messages` channel) and return the
exchange to append to it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from planner.search.agent.memory import Insight
from planner.space import Allocation


@dataclass(frozen=True)
class ToolCall:
    """One tool call a language model asked for, and what it was answered."""

    name: str
    arguments: str  # as the model wrote them (redacted)
    result: dict  # the tool's answer, or {"error": ...}


@dataclass(frozen=True)
class Attempt:
    """One exchange with a language model, as the trace stores it (no credentials)."""

    messages: list[dict]
    response: str = ""
    proposals: list[dict] = field(default_factory=list)  # parsed, before validation
    errors: list[str] = field(default_factory=list)  # validation or transport errors
    tokens: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0
    tool_calls: list[ToolCall] = field(default_factory=list)  # asked instead of an answer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Attempt:
        """As `to_dict` wrote it (a payload without tool calls reads back with none)."""
        calls = [ToolCall(**c) for c in data.get("tool_calls", [])]
        return cls(**{**data, "tool_calls": calls})


@dataclass(frozen=True)
class Proposal:
    """Allocations to evaluate next, with what produced them."""

    allocations: list[Allocation]
    reasoner: str
    notes: list[str] = field(default_factory=list)  # the reasoner's own insights, if any
    attempts: list[Attempt] = field(default_factory=list)
    fallback: str | None = None  # why the built-in reasoner answered instead
    rationale: list[str] = field(default_factory=list)  # why each allocation, one line each
    summary: str = ""  # the proposal as a whole, one line (the trace's step summary)
    exchange: list[dict] = field(default_factory=list)  # for the graph's messages channel
    bets: list[float | None] = field(default_factory=list)  # per allocation (empty: all
    # None): for a language model's pick outside the builtin's top candidates, the score it
    # must reach to count as a good pick (`state.LLM_CREDIT`); None for any other
    sources: list[str] = field(default_factory=list)  # per allocation, its trial's source
    # where the reasoner tells (the builtin's bets on its score model's mean:
    # `builtin.EXPLOIT`); empty: `agent-REASONER` for all


@dataclass(frozen=True)
class Reflection:
    """The insight memory a reflect step leaves, with what produced it."""

    insights: list[Insight]
    reasoner: str
    attempts: list[Attempt] = field(default_factory=list)
    fallback: str | None = None  # why the built-in reasoner answered instead
    exchange: list[dict] = field(default_factory=list)  # for the graph's messages channel
