"""The insight memory: explicit, stored statements about what the trials showed.

Four kinds follow AgentTTS's regularities, per subtask and across subtasks:
`model` (which model/method wins), `saturation` (where the score-versus-n curve flattens),
`dominance` (served arms no plan of which can beat what was already observed at no more
cost) and `budget` (how the predicted-best allocation splits the budget, and how that
moved). `note` holds a language model's own remarks.

`closed` reads the memory back: the plans a `dominance` or `saturation` insight rules
out, which the builtin reasoner does not propose while it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.cost import CostModel
from planner.search.agent.analysis import FLOOR, Analysis
from planner.search.agent.combine import best_allocation
from planner.search.agent.surrogate import PlanTable, Prediction
from planner.space import Plan, Value

ALL = "*"  # the subtask of an insight about the whole pipeline
_SATURATED_GAIN = 0.005  # score gained per doubling of n below which a curve is flat
# An arm is dominated when each of its plans that fits the budget, even scored _KAPPA
# standard deviations above its predicted mean, is beaten by _MARGIN in log score by a plan
# observed at no more cost, and at least _TRIED of its plans were observed.
_DOMINANCE_KAPPA = 2.0
_DOMINANCE_MARGIN = 0.05
_DOMINANCE_TRIED = 2
_N = "samples"


@dataclass(frozen=True)
class Insight:
    subtask: str  # a subtask name, or ALL
    kind: str  # model | saturation | dominance | budget | note
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
    one_stage = len(analysis.tables) == 1
    for j, (t, pred) in enumerate(zip(analysis.tables, analysis.predictions, strict=True)):
        mean = pred.score()
        column = t.column("model")
        # each model's best affordable plan (the first of equal ones), in model order
        cand = np.flatnonzero(t.cost <= budget_gpu_hours)
        cand = cand[np.lexsort((-mean[cand], t.codes[cand, column]))]
        models = t.codes[cand, column]
        tops = cand[np.r_[True, models[1:] != models[:-1]]] if cand.size else cand
        names = t.dims[column].values
        by_model = sorted(((float(mean[i]), names[t.codes[i, column]], t.plans[i]) for i in tops),
                          key=lambda r: -r[0])
        score, _, plan = by_model[0]
        ranking = ", ".join(f"{name} {s:.3f}" for s, name, _ in by_model[:4])
        out.append(Insight(t.subtask, "model",
                           f"best predicted plan {plan.describe()} ({score:.3f}); by model: "
                           f"{ranking}", {"plan": dict(plan), "predicted": score,
                                          "ranking": [[n, s] for s, n, _ in by_model]}))
        out.append(_saturation(t, mean, plan))
        before = [i for i in previous if i.kind == "dominance" and i.subtask == t.subtask]
        dominance = _dominance(t, pred, _observed(analysis, j), budget_gpu_hours, one_stage,
                               before)
        if dominance is not None:
            out.append(dominance)
    out.append(_budget(analysis, cost_model, budget_gpu_hours, previous))
    return out


def closed(tables: Sequence[PlanTable],
           memory: Sequence[Insight]) -> tuple[list[np.ndarray], list[str]]:
    """Per table, a mask of the plans the memory rules out: every plan of an arm that a
    `dominance` insight dropped, and the plans of a `saturation` insight's arm above the n
    where it flattens (none while it is still rising). Also one phrase per rule that ruled
    plans out, e.g. "dropped 3 arms (dominance)"."""
    masks = {t.subtask: np.zeros(len(t.plans), dtype=bool) for t in tables}
    by_name = {t.subtask: t for t in tables}
    dropped = 0
    capped: list[str] = []
    for insight in memory:
        t = by_name.get(insight.subtask)
        if t is None:
            continue
        if insight.kind == "dominance":
            for entry in insight.data.get("dropped", []):
                arm = _matching(t, entry["arm"])
                dropped += bool((arm & ~masks[t.subtask]).any())
                masks[t.subtask] |= arm
        elif insight.kind == "saturation" and insight.data.get("saturates_at") is not None:
            cap = insight.data["saturates_at"]
            arm = {k: v for k, v in insight.data["arm"].items() if k != _N}
            above = _matching(t, arm) & (t.log_n > np.log2(cap))
            if above.any():
                masks[t.subtask] |= above
                capped.append(f"capped n at {cap} on {t.subtask} {_name(arm)} (saturation)")
    why = [f"dropped {dropped} arm{'s' if dropped > 1 else ''} (dominance)"] if dropped else []
    return [masks[t.subtask] for t in tables], why + capped


def _matching(t: PlanTable, values: dict[str, Value]) -> np.ndarray:
    """A mask of the plans that take every one of `values` (none where one is unknown: the
    insight was written for another version of the task)."""
    mask = np.ones(len(t.plans), dtype=bool)
    for name, value in values.items():
        j = next((j for j, d in enumerate(t.dims) if d.name == name), None)
        if j is None or value not in t.dims[j].values:
            return np.zeros(len(t.plans), dtype=bool)
        mask &= t.codes[:, j] == t.dims[j].index(value)
    return mask


def _name(arm: dict[str, Value]) -> str:
    return "/".join(str(v) for v in arm.values())


def _observed(analysis: Analysis, j: int) -> dict[int, float]:
    """The mean observed stage score of each of table `j`'s plans that was evaluated in
    full (a screen's score is an estimate: it rules nothing out)."""
    total, count = analysis.observed(j)
    return {int(i): float(total[i] / count[i]) for i in np.flatnonzero(count)}


def _dominance(t: PlanTable, pred: Prediction, observed: dict[int, float], budget: float,
               whole: bool, previous: Sequence[Insight]) -> Insight | None:
    """Served arms (model, method, mixture ...: every dimension but n, aggregator and
    verifier) whose every plan within budget is beaten, even optimistically, by a plan
    observed at no more cost; and the arms an earlier insight dropped that new evidence
    revived. None if there is neither. Where the subtask is the whole task, nothing else
    competes for the budget, so any observed plan counts as evidence whatever its cost."""
    if not observed:
        return None
    served = [j for j, d in enumerate(t.dims) if not d.test_time]
    sizes = [len(t.dims[j].values) for j in served]
    group = t.codes[:, served] @ np.cumprod([1, *sizes[:-1]])  # the served arm of each plan
    arms = int(np.prod(sizes))
    idx = np.array(sorted(observed), dtype=int)
    order = idx[np.argsort(t.cost[idx], kind="stable")]  # observed plans, cheapest first
    scores = np.array([observed[i] for i in order])
    best = np.maximum.accumulate(scores)  # the best score observed at each cost
    by = order[np.maximum.accumulate(np.where(scores == best, np.arange(len(order)), 0))]
    # what a plan may cost in an allocation: a shared training may be paid by another subtask
    low = t.low
    k = (np.full(len(t.plans), len(order) - 1) if whole
         else np.searchsorted(t.cost[order], low, side="right") - 1)
    evidence = np.where(k >= 0, best[np.maximum(k, 0)], 0.0)
    optimistic = pred.score(_DOMINANCE_KAPPA)
    beaten = (np.log(np.maximum(evidence, FLOOR)) - np.log(np.maximum(optimistic, FLOOR))
              >= _DOMINANCE_MARGIN)
    fits = low <= budget
    tried = np.bincount(group[idx], minlength=arms)
    open_ = np.bincount(group[fits & ~beaten], minlength=arms)
    dropped = []
    for g in np.flatnonzero((tried >= _DOMINANCE_TRIED) & (open_ == 0)
                            & (np.bincount(group[fits], minlength=arms) > 0)):
        plans = np.flatnonzero(fits & (group == g))
        top = int(plans[np.argmax(optimistic[plans])])  # its most promising plan
        dropped.append({"arm": {t.dims[j].name: t.plans[top][t.dims[j].name] for j in served},
                        "tried": int(tried[g]), "optimistic": float(optimistic[top]),
                        "plan": dict(t.plans[top]), "evidence": float(evidence[top]),
                        "by": dict(t.plans[int(by[k[top]])])})
    arms_now = [d["arm"] for d in dropped]
    revived = [d["arm"] for i in previous for d in i.data.get("dropped", [])
               if d["arm"] not in arms_now]
    if not dropped and not revived:
        return None
    parts = []
    if dropped:
        parts.append(f"dropped {len(dropped)} arm{'s' if len(dropped) > 1 else ''}: " + ", ".join(
            f"{_name(d['arm'])} (best {d['optimistic']:.3f} at {_DOMINANCE_KAPPA:g} sd < "
            f"{d['evidence']:.3f} observed at no more cost, {d['tried']} plans tried)"
            for d in dropped))
    if revived:
        parts.append("revived by new evidence: " + ", ".join(_name(a) for a in revived))
    return Insight(t.subtask, "dominance", "; ".join(parts),
                   {"dropped": dropped, "revived": revived})


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
    alloc = best_allocation(analysis.tables, analysis.plan_values(0.0), budget_gpu_hours,
                            cost_model)
    if alloc is None:
        return Insight(ALL, "budget", "no allocation fits the budget", {})
    tables = {t.subtask: t for t in analysis.tables}
    costs = {s: float(tables[s].cost[tables[s].index[p]]) for s, p in alloc.items()}
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
