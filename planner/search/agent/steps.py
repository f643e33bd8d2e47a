"""The agent's trace: one typed record per node visit, stored as its JSON payload.

The graph writes these records (`Step.payload()`); `planner trace`, the report and the
fallback summary read them back with `read_step`, so no reader digs through dict keys.
A payload written by an older planner reads back with defaults for the fields it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from itertools import zip_longest
from typing import ClassVar

from planner.search.agent.memory import ALL
from planner.search.agent.reasoners.base import Attempt
from planner.space import Allocation
from planner.store import StepRecord


@dataclass(frozen=True)
class Step:
    """What every node visit records: a one-line summary and what the node was given."""

    node: ClassVar[str]
    summary: str = ""
    inputs: dict = field(default_factory=dict)

    def payload(self) -> dict:
        """As stored: the fields, one level deep (attempts as dicts)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if "attempts" in out:
            out["attempts"] = [a.to_dict() for a in out["attempts"]]
        return out

    @classmethod
    def from_payload(cls, payload: dict) -> Step:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in payload.items() if k in names}
        if "attempts" in values:
            values["attempts"] = [Attempt.from_dict(a) for a in values["attempts"]]
        return cls(**values)

    def details(self) -> list[str]:
        """What the step decided, a line each, for a reader (`planner trace --step`); the
        trials it ran are the timeline's."""
        return []


@dataclass(frozen=True)
class AnsweredStep(Step):
    """A node a language model may answer: who answered (`llm` or `builtin`), every
    exchange with the model (its tool calls included), and why the builtin answered
    instead, if it did."""

    reasoner: str = "builtin"
    fallback: str | None = None
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class InitStep(AnsweredStep):
    """The probes proposed before any trial, why each, and a language model's notes."""

    node = "init"
    proposals: list[dict] = field(default_factory=list)
    rationale: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def details(self) -> list[str]:
        return _proposal_lines(self.proposals, self.rationale, self.notes)


@dataclass(frozen=True)
class EvaluateStep(Step):
    """Trials run from the pending allocations, those found already in the study, and the
    init probes left out (allocations) as the trials before them outclass them."""

    node = "evaluate"
    trials: list[dict] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    left_out: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ReflectStep(AnsweredStep):
    """The insight memory after the step (before it: the last reflect step's), and the
    stop decision ("" goes on). Payloads written before 2026-12-05 also hold the memory
    before the step (`insights_before`), which is not read."""

    node = "reflect"
    insights_after: list[dict] = field(default_factory=list)
    stop: str = ""

    def details(self) -> list[str]:
        return ([insight_line(d["subtask"], d["kind"], d["text"]) for d in self.insights_after]
                + ([f"stop: {self.stop}"] if self.stop else []))


@dataclass(frozen=True)
class ProposeStep(AnsweredStep):
    """The reasoner's proposals, its notes, and the model's tokens and latency."""

    node = "propose"
    proposals: list[dict] = field(default_factory=list)
    rationale: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0

    def details(self) -> list[str]:
        return _proposal_lines(self.proposals, self.rationale, self.notes)


@dataclass(frozen=True)
class FinalizeStep(Step):
    """Why the search stopped, and its best trial."""

    node = "finalize"
    stop: str = ""
    best: dict | None = None


STEP_TYPES: dict[str, type[Step]] = {t.node: t for t in (InitStep, EvaluateStep, ReflectStep,
                                                         ProposeStep, FinalizeStep)}


def step_of(node: str, payload: dict) -> Step:
    """The typed step of a node's stored payload."""
    return STEP_TYPES[node].from_payload(payload)


def read_step(record: StepRecord) -> Step:
    """The typed step a stored record holds."""
    return step_of(record.node, record.payload)


def insight_line(subtask: str, kind: str, text: str) -> str:
    """An insight as a reader sees it, led by what it is about: its subtask, or the
    pipeline."""
    return f"{'pipeline' if subtask == ALL else subtask} {kind}: {text}"


def _proposal_lines(proposals: list[dict], rationale: list[str], notes: list[str]
                    ) -> list[str]:
    """Each proposal (its stages' plans), a line with why below it, then each note."""
    lines = []
    for p, why in zip_longest(proposals, rationale[:len(proposals)], fillvalue=""):
        lines.append(" | ".join(Allocation.from_dict(p).describe()))
        if why:
            lines.append(f"    why: {why}")
    return lines + [f"note: {n}" for n in notes]
