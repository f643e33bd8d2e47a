"""What a user sets for the agent: its reasoner, the language model it may ask, when it stops.

Kept apart from the strategy so that reading them (the CLI's options) loads neither LangGraph
nor the OpenAI client.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.env import check_fidelity

DEFAULT_PATIENCE = 12  # proposals without a better score before the search stops


@dataclass(frozen=True)
class AgentOptions:
    """How the agent reasons and when it stops."""

    reasoner: str = "builtin"  # builtin | llm
    llm: LLMConfig | None = None  # required for reasoner="llm"
    patience: int | None = DEFAULT_PATIENCE
    proposals_per_step: int = 1
    screen: float | None = None  # screen new arms on this share of the items (`screening`)

    def __post_init__(self) -> None:
        if self.screen is not None:
            check_fidelity(self.screen)


@dataclass(frozen=True)
class LLMConfig:
    """Where and how to ask (no credentials: the key comes from the environment)."""

    base_url: str
    model: str
    timeout_s: float = 60.0
    max_retries: int = 3  # transport retries, with the client's exponential backoff
    repairs: int = 2  # extra rounds after an unusable reply
    temperature: float = 0.2
    max_tokens: int = 512  # a reply is 60-150 tokens; a small model may ramble for thousands
    structured: bool = True  # ask for JSON matching the space's schema, where the server can
    nodes: tuple[str, ...] = ("reflect", "propose")  # where the model acts (else the builtin)
    tool_rounds: int = 3  # replies per node that may call tools (0: tools are not offered)
    guard: bool = True  # asked to propose only once the search stalls, and while its own
    # picks pay (`state.LLM_CREDIT`; the graph's propose node); at init, one probe of its own
    # beside the builtin's design (`LLMReasoner.initial`)
