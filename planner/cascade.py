"""Cascades (Yue et al. 2024, "Large Language Model Cascades with Mixture of Thought
Representations"; Chen et al. 2023, FrugalGPT): a subtask answers with its plan (the cheap
one) where its n samples agree, and escalates the item to a stronger plan otherwise.

A subtask's `cascades:` names stronger plans and the agreement thresholds to search; its
plans get a `cascade` dimension: `none`, and `NAME@THRESHOLD` per cascade and threshold
(e.g. `big@0.75`). An item's agreement is the share of the plan's n samples whose answer is
the majority's (a sample without an answer agrees with none); the item is escalated, and
answered by the strong plan, where fewer than `min_agreeing(threshold, n)` samples agree:
threshold 0 never escalates, one above 1 always does. Only a majority vote at n >= 2 has an
agreement to read; other plans take `none` (`SearchSpace.canonical`).

Priced before running (`CostModel`): the cheap plan, plus the strong plan's training and,
per query, its inference times the expected escalated share, which is assumed to be the
threshold clipped to [0, 1] (agreement uniform on [0, 1]: an assumption, not a measurement);
the live environment measures the share it escalated (`escalated:SUBTASK`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from planner.space import Plan
from planner.spec import CASCADE_NONE, TaskSpec, cascade_value


@dataclass(frozen=True)
class Cascade:
    """A plan's escalation rule: its cascade's name, threshold and strong plan."""

    name: str
    threshold: float
    strong: Plan
    """The strong plan: model, method, mixture, samples, aggregator."""

    @property
    def expected_share(self) -> float:
        """The share of items the cost model assumes escalate (`assumed_share`)."""
        return assumed_share(self.threshold)

    def describe(self) -> str:
        """The rule in words, e.g. for an export's README."""
        s = self.strong
        return (f"where fewer than {self.threshold:.4g} of the n samples agree with the "
                f"majority answer, answer with model {s.model} (method {s.method}, mixture "
                f"{s.mixture}, n={s.samples}, {s.aggregator}) instead")


def cascade_of(spec: TaskSpec, subtask: str, plan: Plan) -> Cascade | None:
    """The cascade a plan escalates by; None where it escalates nothing (`none`, or no
    `cascade` dimension)."""
    value = plan.get("cascade")
    if value is None or value == CASCADE_NONE:
        return None
    name = str(value).rpartition("@")[0]
    c = spec.subtask(subtask).cascades[name]
    threshold = next(t for t in c.thresholds if cascade_value(name, t) == value)
    return Cascade(name, threshold, strong_plan(spec, subtask, name))


def strong_plan(spec: TaskSpec, subtask: str, name: str) -> Plan:
    """The strong plan of a subtask's cascade `name`; a method that does not fine-tune
    takes the subtask's first mixture, as a plan of it would (`SearchSpace.canonical`)."""
    s = spec.subtask(subtask)
    c = s.cascades[name]
    mixture = (c.mixture if c.mixture is not None and spec.method(c.method).fine_tunes
               else next(iter(s.mixtures)))
    return Plan(model=c.model, method=c.method, mixture=mixture, samples=c.samples,
                aggregator=c.aggregator)


def assumed_share(threshold: float) -> float:
    """The share of items the cost model assumes a threshold escalates: the threshold,
    clipped to [0, 1] (as if agreement were uniform on [0, 1])."""
    return min(1.0, threshold)


def threshold_of(value: str) -> float:
    """The threshold a `cascade` value `NAME@THRESHOLD` names, as written there."""
    return float(value.rpartition("@")[2])


def min_agreeing(threshold: float, n: int) -> int:
    """Samples of n that must agree with the majority to keep the item (0: all kept)."""
    return max(0, math.ceil(threshold * n - 1e-9))  # 0.7 x 10 is 7, not 7.000000000000001


def escalates(answers: Sequence[str | None], threshold: float) -> bool:
    """Whether an item with these n answers is escalated (None: a sample without one)."""
    votes = Counter(a for a in answers if a is not None)
    return max(votes.values(), default=0) < min_agreeing(threshold, len(answers))
