"""The graph's state (checkpointed, JSON-friendly) and its run context (not checkpointed).

The `messages` channel is the conversation with a language-model reasoner: each node it
answered appends one exchange (a short user line naming the node, its JSON reply), and
LangGraph applies `keep_recent` to it, so the conversation is checkpointed with the rest
of the state (a resumed run continues it) and stays bounded however many trials run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from planner.search._runner import Runner, TrialCallback
from planner.search.agent.reasoners.builtin import BuiltinReasoner

if TYPE_CHECKING:  # the OpenAI client loads only where the llm reasoner runs
    from planner.search.agent.reasoners.llm import LLMReasoner

# consecutive steps the language model may fail before it is rested: the next
# 1, 2, 4, then at most 8 steps go to the builtin reasoner, and then it is asked again
MAX_LLM_FAILURES = 2
MAX_LLM_REST = 8


def llm_rest(failures: int) -> int:
    """Steps the language model sits out after `failures` failed steps in a row."""
    return 0 if failures < MAX_LLM_FAILURES else min(2 ** (failures - MAX_LLM_FAILURES),
                                                     MAX_LLM_REST)


# a language model's pick outside the builtin's top candidates is a bet on its own
# judgement: it starts with one, wins one more each time such a pick scores at least what
# the score model predicted for the builtin's own pick (and the best so far), and loses one
# each time it does not; with none left the builtin proposes (a weak model costs the
# search about one trial, a model whose picks pay keeps picking)
LLM_CREDIT = 1


MAX_EXCHANGES = 4  # exchanges the conversation keeps; older ones fold into `EARLIER`
EARLIER = ("Earlier exchanges are not repeated: the insights you stated are in the insight "
           "memory, the allocations you proposed in the trials table.")


def keep_recent(old: list[dict], new: list[dict]) -> list[dict]:
    """The `messages` reducer: append a node's exchange (user, assistant), keep the latest
    `MAX_EXCHANGES`, and once any were dropped, lead with a system line saying so."""
    turns = [m for m in old + new if m["role"] != "system"]
    exchanges = [turns[i:i + 2] for i in range(0, len(turns), 2)]
    if len(exchanges) <= MAX_EXCHANGES and len(turns) == len(old + new):
        return turns
    return [{"role": "system", "content": EARLIER},
            *(m for pair in exchanges[-MAX_EXCHANGES:] for m in pair)]


@dataclass
class PlannerState:
    """What the agent carries from node to node; trials themselves live in the store."""

    pending: list[dict] = field(default_factory=list)
    """Allocations (`Allocation.to_dict`) waiting for the evaluate node, each under
    `allocation` with its `source` (agent-init, agent-builtin, agent-llm) and `fidelity`
    (< 1: a screen)."""
    memory: list[dict] = field(default_factory=list)
    """The current insight memory (`Insight.to_dict`); every version is also stored."""
    initialized: bool = False
    """Whether the init probes were proposed (a re-run thread skips init)."""
    best_score: float | None = None
    """Best end-to-end score seen so far."""
    stale: int = 0
    """Proposed trials since the best score last improved (convergence counter)."""
    llm_failures: int = 0
    """Consecutive steps where the language model gave nothing usable."""
    llm_rest: int = 0
    """Steps left before the language model is asked again (`llm_rest()`)."""
    llm_credit: int = LLM_CREDIT
    """Picks the language model may still make outside the builtin's top candidates
    (`LLM_CREDIT`)."""
    messages: Annotated[list[dict], keep_recent] = field(default_factory=list)
    """The conversation with a language-model reasoner (chat messages, bounded)."""
    stop: str = ""
    """Why the search stopped; empty while it runs."""


@dataclass(kw_only=True)
class AgentContext:
    """Run configuration and live objects; rebuilt on every run, never checkpointed."""

    runner: Runner
    """Evaluates and stores trials (the same path every strategy uses); init, evaluate
    and finalize read the study's trials from its `history()`, which sees other drivers'
    trials too, and reflect and propose, which follow evaluate at once, take them as it
    last read them (`known()`): a read each costs more than a trial of a replay table."""
    builtin: BuiltinReasoner
    """Answers every node the language model does not, and any it fails."""
    llm: LLMReasoner | None = None
    """The language model, if one answers its `nodes`."""
    n_trials: int
    """Trials the study may hold."""
    search_budget_gpu_hours: float | None = None
    """Cap on the summed estimated cost of evaluated trials."""
    patience: int | None = None
    """Stop after this many proposals without a better score (None: never)."""
    proposals_per_step: int = 1
    """Allocations asked of the reasoner per propose step."""
    screen: float | None = None
    """Share of the validation items a screen evaluates (`screening`; None: no screens)."""
    callback: TrialCallback | None = None
    """Called after every trial with (trial, best trial)."""
    llm_asked: bool = False
    """Whether this run asked the language model yet: a resumed run asks it at once, however
    long the checkpointed state says it should rest."""
