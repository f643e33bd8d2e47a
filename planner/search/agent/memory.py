"""The insight memory: explicit, stored statements about what the trials showed.

Three kinds follow AgentTTS's regularities, per subtask and across subtasks:
`model` (which model/method wins), `saturation` (where the score-versus-n curve flattens)
and `budget` (how the predicted-best allocation splits the budget, and how that moved).
`note` holds a language model's own remarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.cost import CostModel
from planner.search.agent.analysis import Analysis
from planner.search.agent.combine import best_allocations
from planner.search.agent.surrogate import PlanTable
from planner.space import Plan

ALL = "*"  # the subtask of an insight about the whole pipeline
_SATURATED_GAIN = 0.005  # score gained per doubling of n below which a curve is flat


@dataclass(frozen=True)
class Insight:
    subtask: str  # a subtask name, or ALL
    kind: str  # model | saturation | budget | note
    text: str
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """As stored and checkpointed; `data` is copied one level deep, as `from_dict` does
        (insights are never changed in place, and `asdict`'s deep copy is a hot path)."""
        return {"subtask": self.subtask, "kind": self.kind, "text": self.text,
                "data": dict(self.data)}

    @classmethod
    def from_dict(cls, d: dict) -> Insight:
        return cls(d["subtask"], d["kind"], d["text"], dict(d.get("data", {})))


def derive(analysis: Analysis, cost_model: CostModel, budget_gpu_hours: float,
           previous: Sequence[Insight] = ()) -> list[Insight]:
    """Insights implied by the current analysis (empty before any successful trial)."""
    if not analysis.trials:
        return []
    out: list[Insight] = []
    for t, pred in zip(analysis.tables, analysis.predictions, strict=True):
        mean = pred.score()
        affordable = t.cost <= budget_gpu_hours
        by_model = []
        column = t.column("model")
        for code, name in enumerate(t.dims[column].values):
            mask = affordable & (t.codes[:, column] == code)
            if mask.any():
                i = int(np.flatnonzero(mask)[np.argmax(mean[mask])])
                by_model.append((float(mean[i]), name, t.plans[i]))
        by_model.sort(key=lambda r: -r[0])
        score, _, plan = by_model[0]
        ranking = ", ".join(f"{name} {s:.3f}" for s, name, _ in by_model[:4])
        out.append(Insight(t.subtask, "model",
                           f"best predicted plan {plan.describe()} ({score:.3f}); by model: "
                           f"{ranking}", {"plan": dict(plan), "predicted": score,
                                          "ranking": [[n, s] for s, n, _ in by_model]}))
        out.append(_saturation(t, mean, plan))
    out.append(_budget(analysis, cost_model, budget_gpu_hours, previous))
    return out


def _saturation(t: PlanTable, mean: np.ndarray, plan: Plan) -> Insight:
    """Where the best plan's arm stops gaining from more samples."""
    arm = t.codes[t.index[plan], -1]
    idx = np.flatnonzero(t.codes[:, -1] == arm)
    idx = idx[np.argsort(t.log_n[idx])]
    ns = [t.plans[i].samples for i in idx]
    curve = mean[idx]
    gains = np.diff(curve) / np.maximum(np.diff(t.log_n[idx]), 1e-9)
    rising = np.flatnonzero(gains >= _SATURATED_GAIN)
    if rising.size and rising[-1] == len(gains) - 1:
        where, text = None, f"{plan.model}/{plan.method}: still rising at n={ns[-1]}"
    else:
        where = ns[rising[-1] + 1] if rising.size else ns[0]
        text = f"{plan.model}/{plan.method}: score flattens from n={where}"
    return Insight(t.subtask, "saturation", text,
                   {"arm": dict(plan), "saturates_at": where,
                    "curve": [[n, float(s)] for n, s in zip(ns, curve, strict=True)]})


def _budget(analysis: Analysis, cost_model: CostModel, budget_gpu_hours: float,
            previous: Sequence[Insight]) -> Insight:
    """How the predicted-best allocation splits the budget, and the shift since last time."""
    found = best_allocations(analysis.tables, analysis.plan_values(0.0), budget_gpu_hours,
                             cost_model, set(), 1)
    if not found:
        return Insight(ALL, "budget", "no allocation fits the budget", {})
    alloc = found[0]
    costs = {s: cost_model.plan_cost(s, p).total_gpu_hours for s, p in alloc.items()}
    total = sum(costs.values()) or 1.0
    shares = {s: c / total for s, c in costs.items()}
    before = next((i.data.get("shares", {}) for i in previous if i.kind == "budget"), {})
    moves = {s: shares[s] - before[s] for s in shares if s in before}
    text = "predicted best spends " + ", ".join(f"{s} {v:.0%}" for s, v in shares.items())
    text += f" of {cost_model.estimate(alloc).total_gpu_hours:.4g} GPU-h"
    if moves and max(abs(v) for v in moves.values()) >= 0.05:
        s = max(moves, key=lambda k: abs(moves[k]))
        text += f"; budget moved {'to' if moves[s] > 0 else 'from'} {s} ({moves[s]:+.0%})"
    return Insight(ALL, "budget", text, {"allocation": alloc.to_dict(), "shares": shares,
                                         "moves": moves})
