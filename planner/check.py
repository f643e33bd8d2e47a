"""What a task's search space holds and how the budget cuts it, before anything runs.

Every allocation's cost is summed from per-plan arrays (inference, training, artifact id;
an artifact several subtasks use is paid once, as in `CostModel.estimate`): exactly, by
numpy broadcasting in chunks, for spaces of up to `EXACT_LIMIT` allocations; beyond that
from a uniform sample of `SAMPLE` allocations, and the summary says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost import CostModel
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

    @property
    def binds(self) -> bool | None:
        """Whether the budget rules out some allocations (the dearest do not fit)."""
        if self.budget_gpu_hours is None:
            return None
        return self.cost_max_gpu_hours > self.budget_gpu_hours


def summarize(space: SearchSpace, cost_model: CostModel,
              budget_gpu_hours: float | None = None, seed: int = 0) -> SpaceSummary:
    """The summary of `space` priced by `cost_model`, against an optional budget."""
    infer, train, artifact = _arrays(space, cost_model)
    size = space.size()
    if size <= EXACT_LIMIT:
        lo, hi, fits = _exact(infer, train, artifact, budget_gpu_hours)
        fraction = None if budget_gpu_hours is None else fits / size
    else:
        rng = np.random.default_rng(seed)
        costs = _costs([rng.integers(len(x), size=SAMPLE) for x in infer],
                       infer, train, artifact)
        lo, hi = float(costs.min()), float(costs.max())
        fraction = None if budget_gpu_hours is None else float(
            np.mean(costs <= budget_gpu_hours))
    return SpaceSummary({s: [_describe(d) for d in space.dimensions(s)]
                         for s in space.subtasks},
                        {s: len(space.plans(s)) for s in space.subtasks}, size,
                        size <= EXACT_LIMIT, lo, hi, budget_gpu_hours, fraction)


def _describe(d: object) -> dict:
    kind = "mixture" if isinstance(d, Mixture) else "ordinal" if isinstance(d, Ordinal) \
        else "categorical"
    values = [{"name": v, "weights": d.mixture(v)} for v in d.values] \
        if isinstance(d, Mixture) else list(d.values)
    return {"name": d.name, "kind": kind, "values": values}


def _arrays(space: SearchSpace, cost_model: CostModel
            ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per subtask: each plan's inference and training GPU-h and its artifact's id."""
    ids: dict = {}
    infer, train, artifact = [], [], []
    for s in space.subtasks:
        costs = [cost_model.plan_cost(s, p) for p in space.plans(s)]
        infer.append(np.array([c.inference_gpu_hours for c in costs]))
        train.append(np.array([c.train_gpu_hours for c in costs]))
        artifact.append(np.array([ids.setdefault(cost_model.artifact(s, p), len(ids))
                                  for p in space.plans(s)]))
    return infer, train, artifact


def _costs(index: list[np.ndarray], infer: list[np.ndarray], train: list[np.ndarray],
           artifact: list[np.ndarray]) -> np.ndarray:
    """Total cost of the allocations whose plan indices are `index` (one array per subtask,
    broadcastable): an artifact already used by an earlier subtask is not paid again."""
    total = np.zeros(np.broadcast_shapes(*(i.shape for i in index)))
    for j, i in enumerate(index):
        paid = train[j][i]
        for k in range(j):
            paid = paid * (artifact[j][i] != artifact[k][index[k]])
        total = total + infer[j][i] + paid
    return total


def _exact(infer: list[np.ndarray], train: list[np.ndarray], artifact: list[np.ndarray],
           budget: float | None) -> tuple[float, float, int]:
    """(min, max, count within budget) over every allocation, in chunks of the first subtask."""
    k = len(infer)
    rest = [np.arange(len(x)).reshape([1] * (j + 1) + [-1] + [1] * (k - j - 2))
            for j, x in enumerate(infer[1:])]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, int(np.prod([len(x) for x in infer[1:]]))))
    lo, hi, fits = np.inf, -np.inf, 0
    for start in range(0, len(infer[0]), chunk):
        head = np.arange(start, min(start + chunk, len(infer[0]))).reshape([-1] + [1] * (k - 1))
        costs = _costs([head, *rest], infer, train, artifact)
        lo, hi = min(lo, float(costs.min())), max(hi, float(costs.max()))
        if budget is not None:
            fits += int((costs <= budget).sum())
    return lo, hi, fits
