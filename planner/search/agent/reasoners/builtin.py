"""The built-in reasoner: AgentTTS's regularities applied without an LLM.

- init: per subtask, probes that isolate the model choice (one model from each size
  stratum, drawn with the seed, on one reference arm at the largest n that fits the
  subtask's share of the budget), the trend in n (the same arm at the smallest n) and
  each other field (method, aggregator, mixture).
  Stage scores are reported per subtask, so trial i carries probe i of every subtask.
- propose: fit each subtask's score model (`surrogate`), score every plan optimistically
  (mean + kappa std in logit space), and combine the per-subtask frontiers under the
  budget (`combine`), skipping allocations already evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from planner.search._base import SearchContext, seen_keys
from planner.search.agent.analysis import Analysis, Analyst
from planner.search.agent.combine import best_allocations
from planner.search.agent.memory import Insight
from planner.search.agent.reasoners.base import Proposal
from planner.search.agent.surrogate import PlanTable
from planner.space import Allocation
from planner.store import TrialRecord

_MAX_MODEL_PROBES = 4
_MAX_MIXTURE_PROBES = 2
KAPPA = 1.0  # optimism, in standard deviations of the logit score


class BuiltinReasoner:
    """Deterministic: the same history gives the same proposals."""

    name = "builtin"

    def __init__(self, ctx: SearchContext, kappa: float = KAPPA) -> None:
        self.ctx = ctx
        self.kappa = kappa
        self.analyst = Analyst(ctx)

    def analyse(self, history: Sequence[TrialRecord]) -> Analysis:
        return self.analyst.analyse(history)

    def initial(self, history: Sequence[TrialRecord]) -> tuple[list[Allocation], list[str]]:
        """Probe allocations (unseen, within budget) and one line of rationale each."""
        tables = self.analyst.tables
        share = self.ctx.budget_gpu_hours / len(tables)
        probes = [_probes(t, share, self.ctx) for t in tables]
        seen = seen_keys(history)
        out: list[Allocation] = []
        why: list[str] = []
        for i in range(max(len(p) for p in probes)):
            chosen = {t.subtask: p[min(i, len(p) - 1)] for t, p in zip(tables, probes,
                                                                         strict=True)}
            alloc = Allocation.of({t.subtask: t.plans[chosen[t.subtask][0]] for t in tables})
            if alloc.key() in seen or not self._fits(alloc):
                continue
            seen.add(alloc.key())
            out.append(alloc)
            why.append("; ".join(f"{s}: {reason}" for s, (_, reason) in chosen.items()))
        return out, why

    def propose(self, history: Sequence[TrialRecord], memory: Sequence[Insight] = (),
                k: int = 1) -> Proposal:
        """The `k` unseen feasible allocations with the best optimistic end score.

        `memory` is a summary of this reasoner's own analysis, which it re-derives.
        """
        analysis = self.analyse(history)
        allocs = best_allocations(analysis.tables, analysis.plan_values(self.kappa),
                                  self.ctx.budget_gpu_hours, self.ctx.cost_model,
                                  seen_keys(history), k)
        return Proposal(allocs, reasoner=self.name)

    def _fits(self, alloc: Allocation) -> bool:
        return self.ctx.cost_model.estimate(alloc).total_gpu_hours <= self.ctx.budget_gpu_hours


def _probes(t: PlanTable, share: float, ctx: SearchContext) -> list[tuple[int, str]]:
    """Plan indices (and why) that isolate model, n trend, then the other fields."""
    spec = ctx.space.spec
    afford = t.cost <= share
    if not afford.any():
        return [(int(np.argmin(t.cost)), "cheapest plan (nothing fits the budget share)")]
    model, method, mixture, agg, arm = t.codes.T
    # reference arm: the (method, mixture, aggregator) most models can afford, most trained
    keys: dict[tuple[int, int, int], set[int]] = {}
    for i in np.flatnonzero(afford):
        keys.setdefault((method[i], mixture[i], agg[i]), set()).add(model[i])
    tokens = np.log1p([spec.method(m).train_tokens for m in t.levels[1]])
    ref = max(keys, key=lambda k: (len(keys[k]), tokens[k[0]], -k[1], -k[2]))
    on_ref = afford & (method == ref[0]) & (mixture == ref[1]) & (agg == ref[2])
    models = sorted(keys[ref], key=lambda m: t.compute[model == m, 0].min())  # by size
    # one model from each of up to 4 size strata (which one: the seed's choice)
    rng = np.random.default_rng([ctx.seed, len(t.plans)])
    strata = np.array_split(np.arange(len(models)), min(_MAX_MODEL_PROBES, len(models)))
    picks = [models[int(rng.choice(stratum))] for stratum in strata]
    out: list[tuple[int, str]] = []

    def add(mask: np.ndarray, what: str) -> None:
        """Probe the affordable plan in `mask` with the largest n (then cost)."""
        cand = np.flatnonzero(mask & afford)
        if cand.size:
            i = int(cand[np.lexsort((t.cost[cand], t.log_n[cand]))[-1]])
            out.append((i, f"{what} probe {t.plans[i].describe()}"))

    for m in picks:
        add(on_ref & (model == m), "model")
    anchor = out[len(out) // 2][0]
    same_arm = afford & (arm == arm[anchor])
    low = int(np.flatnonzero(same_arm)[np.argmin(t.log_n[same_arm])])
    if low != anchor:
        out.append((low, f"n-trend probe {t.plans[low].describe()}"))
    on_model = afford & (model == model[anchor])
    others = np.unique(method[on_model & (method != method[anchor])])
    if others.size:
        far = max(others, key=lambda c: abs(tokens[c] - tokens[ref[0]]))
        add(on_model & (method == far) & (mixture == ref[1]) & (agg == ref[2]), "method")
    for a in np.unique(agg[on_model & (agg != ref[2])]):
        add(on_model & (agg == a) & (method == ref[0]), "aggregator")
    for x in np.unique(mixture[on_model & (mixture != ref[1])])[:_MAX_MIXTURE_PROBES]:
        add(on_model & (mixture == x) & (method == ref[0]), "mixture")
    return out
