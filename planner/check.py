"""What a task's search space holds and how the budget cuts it, before anything runs.

Every allocation's cost is summed from per-plan arrays (`plan_costs`: inference, training,
artifact id; an artifact several subtasks use is paid once, as in `CostModel.estimate`;
`envs.replay.optimum` sums its allocations with the same `allocation_costs`): exactly, by
numpy broadcasting in chunks, for spaces of up to `EXACT_LIMIT` allocations; beyond that
from a uniform sample of `SAMPLE` allocations, and the summary says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from planner.cost import CostModel
from planner.draws import study_draws
from planner.space import Mixture, Ordinal, SearchSpace

EXACT_LIMIT = 20_000_000
SAMPLE = 200_000
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class SpaceSummary:
    """Dimensions, sizes and the cost distribution of a task's allocations."""

    dimensions: dict[str, list[dict]]
    """Subtask -> its dimensions: name, kind and values (a mixture's with its weights)."""
    plans: dict[str, int]
    """Subtask -> canonical plans (dead combinations pruned)."""
    allocations: int
    exact: bool
    """False: the fraction and the range come from a uniform sample of allocations."""
    cost_min_gpu_hours: float
    cost_max_gpu_hours: float
    budget_gpu_hours: float | None = None
    feasible_fraction: float | None = None
    cut_draws: dict[str, list[dict]] = field(default_factory=dict)
    """Subtask -> the arms a study draws fewer samples of than the subtask's largest n (the
    most a plan of the arm within the budget reads, `planner.draws`): arm, samples."""

    @property
    def binds(self) -> bool | None:
        """Whether the budget rules out some allocations (the dearest do not fit)."""
        if self.budget_gpu_hours is None:
            return None
        return self.cost_max_gpu_hours > self.budget_gpu_hours


def summarize(space: SearchSpace, cost_model: CostModel,
              budget_gpu_hours: float | None = None, seed: int = 0) -> SpaceSummary:
    """The summary of `space` priced by `cost_model`, against an optional budget."""
    parts = plan_costs(space, cost_model)
    size = space.size()
    if size <= EXACT_LIMIT:
        lo, hi, fits = _exact(parts, budget_gpu_hours)
        fraction = None if budget_gpu_hours is None else fits / size
    else:
        rng = np.random.default_rng(seed)
        costs = allocation_costs(parts, [rng.integers(len(p.infer), size=SAMPLE)
                                         for p in parts])
        lo, hi = float(costs.min()), float(costs.max())
        fraction = None if budget_gpu_hours is None else float(
            np.mean(costs <= budget_gpu_hours))
    return SpaceSummary({s: [_describe(d) for d in space.dimensions(s)]
                         for s in space.subtasks},
                        {s: len(space.plans(s)) for s in space.subtasks}, size,
                        size <= EXACT_LIMIT, lo, hi, budget_gpu_hours, fraction,
                        {} if budget_gpu_hours is None
                        else cut_draws(space, cost_model, budget_gpu_hours))


def cut_draws(space: SearchSpace, cost_model: CostModel,
              budget_gpu_hours: float) -> dict[str, list[dict]]:
    """Per subtask, the arms drawn below its largest n under the budget, with their draw."""
    out: dict[str, list[dict]] = {}
    for (subtask, *arm, verifier), n in study_draws(space, cost_model, budget_gpu_hours).items():
        if n < max(space.spec.subtask(subtask).samples):
            name = " / ".join([*arm, *([verifier] if verifier else [])])
            out.setdefault(subtask, []).append({"arm": name, "samples": n})
    return out


def nothing_fits(space: SearchSpace, cost_model: CostModel, cap: float) -> float | None:
    """The cheapest allocation's cost when even it is over `cap` (exact up to `EXACT_LIMIT`
    allocations, else a sample's minimum), or None when some allocation fits."""
    parts = plan_costs(space, cost_model)
    if sum(float(p.infer.min() + p.train.min()) for p in parts) <= cap:
        return None  # every subtask's cheapest plan together fits (sharing only lowers it)
    cheapest = _exact(parts, None)[0] if space.size() <= EXACT_LIMIT else \
        summarize(space, cost_model).cost_min_gpu_hours
    return cheapest if cheapest > cap else None


def _describe(d: object) -> dict:
    kind = "mixture" if isinstance(d, Mixture) else "ordinal" if isinstance(d, Ordinal) \
        else "categorical"
    values = [{"name": v, "weights": d.mixture(v)} for v in d.values] \
        if isinstance(d, Mixture) else list(d.values)
    return {"name": d.name, "kind": kind, "values": values}


@dataclass(frozen=True)
class PlanCosts:
    """One subtask's plans as parallel arrays: inference and training GPU-h, and the id of
    the artifact each serves from (numbered across subtasks: equal ids are paid once)."""

    infer: np.ndarray
    train: np.ndarray
    artifact: np.ndarray


def plan_costs(space: SearchSpace, cost_model: CostModel) -> list[PlanCosts]:
    """Every subtask's plans priced, in `space.subtasks` order."""
    ids: dict = {}
    out = []
    for s in space.subtasks:
        costs = [cost_model.plan_cost(s, p) for p in space.plans(s)]
        out.append(PlanCosts(
            np.array([c.inference_gpu_hours for c in costs]),
            np.array([c.train_gpu_hours for c in costs]),
            np.array([ids.setdefault(cost_model.artifact(s, p), len(ids))
                      for p in space.plans(s)])))
    return out


def axis(n: int, j: int, k: int) -> np.ndarray:
    """`arange(n)` laid along axis `j` of `k`, to broadcast against the other subtasks."""
    return np.arange(n).reshape([1] * j + [-1] + [1] * (k - j - 1))


def allocation_costs(parts: Sequence[PlanCosts], index: Sequence[np.ndarray]) -> np.ndarray:
    """Total cost of the allocations whose plan indices are `index` (one broadcastable array
    per subtask): an artifact an earlier subtask already uses is not paid again."""
    total = np.zeros(np.broadcast_shapes(*(i.shape for i in index)))
    for j, (p, i) in enumerate(zip(parts, index, strict=True)):
        paid = p.train[i]
        for k in range(j):
            paid = paid * (p.artifact[i] != parts[k].artifact[index[k]])
        total = total + p.infer[i] + paid
    return total


def _exact(parts: list[PlanCosts], budget: float | None) -> tuple[float, float, int]:
    """(min, max, count within budget) over every allocation, in chunks of the first subtask."""
    k = len(parts)
    rest = [axis(len(p.infer), j, k) for j, p in enumerate(parts) if j]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod([len(p.infer) for p in parts[1:]]))))
    lo, hi, fits = np.inf, -np.inf, 0
    for start in range(0, len(parts[0].infer), chunk):
        head = start + axis(min(chunk, len(parts[0].infer) - start), 0, k)
        costs = allocation_costs(parts, [head, *rest])
        lo, hi = min(lo, float(costs.min())), max(hi, float(costs.max()))
        if budget is not None:
            fits += int((costs <= budget).sum())
    return lo, hi, fits
