"""The exact best allocation of a replay task under a budget, by vectorised enumeration.

Each subtask becomes arrays over its plans (score, inference and training GPU-hours, and
the id of the trained artifact, which subtasks share when the cost model shares it). Plans
that can never be in an optimum are pruned exactly:

- a plan whose `oracle` twin (the same values and n, the same artifact) costs no more: no
  aggregator of the same samples scores above `oracle`, so the twin can stand in for it;
  such a plan is not even scored (a majority vote is the dearest score to compute). Where
  the two tie, the optimum names the twin;
- a plan whose inference alone is over the budget;
- a plan beaten, in the same artifact group, by one at least as good and no dearer to serve;
- a plan beaten on score by one whose inference *and* training cost no more than this
  plan's inference alone (swapping it in can only lower the total).

The remaining product is enumerated with numpy broadcasting, in chunks over the first
subtask; a shared artifact's training is paid once. Ties go to the cheaper allocation,
then to the first in enumeration order, at about 90 million allocations a second on one
core. A product of more than `MAX_ENUMERATED` (a pipeline of many stages: six of 120-163
plans each leave 7e12) has no exact optimum here: the command and the benchmark say so in
one line; `planner compare` and `planner report` show the optimum only where at most
`planner.cli.VIEW_ENUMERATED` remain (seconds), and none otherwise.

    python -m envs.replay.optimum                       # check the suite's stored optima
    python -m envs.replay.optimum --write               # recompute and store them
    python -m envs.replay.optimum my_task.yaml [--budget 20gpu-h]   # any task's optimum
    python -m envs.replay.optimum my_task.yaml --near 0.97 0.99     # and how many come close

How many allocations come close to the optimum says how hard a task is to search: a
strategy that must find one of 4 allocations among 282,368 to score 97% of the optimum has
a needle to find, one with 61 in 1,305 does not. That count enumerates every allocation
within budget (no pruning: a dominated plan may still come close).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from envs.replay.env import ReplayEnvironment
from planner.check import PlanCosts, allocation_costs, axis, plan_costs
from planner.cost import CostModel
from planner.errors import PlannerError, SpecError
from planner.space import Allocation, Plan
from planner.spec import TaskSpec, load_spec

TASKS = Path(__file__).parent / "tasks"
OPTIMA = Path(__file__).parent / "optima.yaml"
_CHUNK_ELEMENTS = 2_000_000  # broadcast block size: bounds memory to ~100 MB
MAX_ENUMERATED = 10**10  # allocations enumerated at most: ~2 min at ~90 million a second


class NoOptimum(ValueError):
    """The task has no exact optimum to give under this budget."""


class NoFeasibleAllocation(NoOptimum):
    """Every allocation costs more than the budget."""


class SpaceTooLarge(NoOptimum):
    """More allocations remain than `MAX_ENUMERATED` (a pipeline of many stages)."""


@dataclass(frozen=True)
class PlanArrays(PlanCosts):
    """One subtask's plans priced (`PlanCosts`, GPU-hours) and scored."""

    plans: tuple[Plan, ...]
    score: np.ndarray

    def take(self, index: np.ndarray) -> PlanArrays:
        return PlanArrays(self.infer[index], self.train[index], self.artifact[index],
                          tuple(self.plans[i] for i in index), self.score[index])


@dataclass(frozen=True)
class Optimum:
    """The best allocation under a budget, with its exact score and estimated cost."""

    score: float
    cost_gpu_hours: float
    allocation: Allocation
    space_size: int


def plan_arrays(env: ReplayEnvironment, cost_model: CostModel,
                every_plan: bool = True) -> dict[str, PlanArrays]:
    """Every subtask's plans priced and scored, artifacts numbered across subtasks; without
    `every_plan`, less the plans whose `oracle` twin can stand in for them
    (`_below_oracle`), which are left unscored: no optimum needs them, and a majority vote
    is the dearest score to compute."""
    out = {}
    for s, c in zip(env.space.subtasks, plan_costs(env.space, cost_model), strict=True):
        plans = env.space.plans(s)
        kept = np.flatnonzero(np.ones(len(plans), dtype=bool) if every_plan
                              else ~_below_oracle(env, s, c))
        out[s] = PlanArrays(c.infer[kept], c.train[kept], c.artifact[kept],
                            tuple(plans[i] for i in kept),
                            np.array([env.subtask_score(s, plans[i]) for i in kept]))
    return out


def _below_oracle(env: ReplayEnvironment, subtask: str, costs: PlanCosts) -> np.ndarray:
    """(P,) the subtask's plans whose `oracle` twin (the same values and n) is another of its
    plans, served from the same artifact and no dearer to train or serve. No aggregator of
    the same samples scores above `oracle` (a question counts as solved if any sample
    solves it), so the twin in a plan's place never lowers an allocation's score nor raises
    its cost: the optimum's score is the same without the plan."""
    plans = env.space.plans(subtask)
    at = {p: i for i, p in enumerate(plans)}
    out = np.zeros(len(plans), dtype=bool)
    for i, p in enumerate(plans):
        j = at.get(env.space.canonical(subtask, p.replace(aggregator="oracle")))
        out[i] = (j is not None and j != i and costs.artifact[j] == costs.artifact[i]
                  and costs.infer[j] <= costs.infer[i] and costs.train[j] <= costs.train[i])
    return out


def prune(a: PlanArrays, budget_gpu_hours: float) -> PlanArrays:
    """Drop plans that no optimum can contain (see the module docstring); keeps order."""
    keep = a.infer <= budget_gpu_hours
    # same artifact: sorted by (artifact, inference cost, -score, index), a plan survives only
    # if it scores strictly above every cheaper-or-equal plan of its group before it
    order = np.lexsort((np.arange(len(a.score)), -a.score, a.infer, a.artifact))
    best_in_group: dict[int, float] = {}
    for i in order:
        g = int(a.artifact[i])
        if a.score[i] <= best_in_group.get(g, -np.inf):
            keep[i] = False
        else:
            best_in_group[g] = float(a.score[i])
    # any artifact: the best score among plans whose full cost fits in this plan's inference
    full = a.infer + a.train
    by_full = np.argsort(full, kind="stable")
    prefix_best = np.maximum.accumulate(a.score[by_full])
    fits = np.searchsorted(full[by_full], a.infer, side="right")
    beaten = (fits > 0) & (prefix_best[np.maximum(fits - 1, 0)] > a.score)
    return a.take(np.flatnonzero(keep & ~beaten))


def _block(parts: list[PlanArrays]) -> tuple[np.ndarray, np.ndarray]:
    """Score and total cost of every combination of the parts' plans (one axis each)."""
    k = len(parts)
    index = [axis(len(p.score), j, k) for j, p in enumerate(parts)]
    score: np.ndarray = np.ones([1] * k)
    for p, i in zip(parts, index, strict=True):
        score = score * p.score[i]
    return score, allocation_costs(parts, index)


def _blocks(name: str, parts: list[PlanArrays], what: str, limit: int | None = None
            ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """`_block` of every allocation, in chunks over the first subtask's plans: the first
    plan's index in each chunk, then the chunk's scores and costs. `SpaceTooLarge` where
    there are more than `limit` (default `MAX_ENUMERATED`; `what` says which allocations
    they are)."""
    limit = MAX_ENUMERATED if limit is None else limit
    sizes = [len(p.score) for p in parts]
    total = math.prod(sizes)
    if total > limit:
        raise SpaceTooLarge(f"{name}: {total:,} allocations {what} "
                            f"({' x '.join(map(str, sizes))} plans per stage), more than the "
                            f"{limit:,} an exact optimum enumerates here; it needs fewer "
                            "stages, or fewer choices per stage")
    rest = math.prod(sizes[1:])
    chunk = max(1, _CHUNK_ELEMENTS // max(rest, 1))
    for lo in range(0, len(parts[0].score), chunk):
        head = parts[0].take(np.arange(lo, min(lo + chunk, len(parts[0].score))))
        yield lo, *_block([head, *parts[1:]])


def exhaustive_optimum(spec: TaskSpec, budget_gpu_hours: float,
                       env: ReplayEnvironment | None = None, limit: int | None = None
                       ) -> Optimum:
    """The exact best allocation whose estimated cost is within `budget_gpu_hours`;
    `SpaceTooLarge` where more than `limit` allocations remain to enumerate."""
    env = env or ReplayEnvironment(spec)
    arrays = plan_arrays(env, CostModel(spec, env.calibration()), every_plan=False)
    return _optimum(spec, arrays, budget_gpu_hours, limit, env.space.size())


def pruned_sizes(spec: TaskSpec, budget_gpu_hours: float,
                 env: ReplayEnvironment | None = None) -> list[int]:
    """Plans per stage left after pruning (`prune`): an exact optimum enumerates their
    product, and refuses (`SpaceTooLarge`) past `MAX_ENUMERATED`."""
    env = env or ReplayEnvironment(spec)
    arrays = plan_arrays(env, CostModel(spec, env.calibration()), every_plan=False)
    return [len(prune(a, budget_gpu_hours).score) for a in arrays.values()]


def _optimum(spec: TaskSpec, arrays: dict[str, PlanArrays], budget_gpu_hours: float,
             limit: int | None = None, size: int | None = None) -> Optimum:
    """`exhaustive_optimum` over the task's plans as `plan_arrays` gives them; `size` is the
    space's (default: the product of the arrays' plans)."""
    names = list(arrays)
    parts = [prune(arrays[s], budget_gpu_hours) for s in names]
    best: tuple[float, float, tuple[int, ...]] | None = None
    for lo, score, cost in _blocks(spec.name, parts, "remain after pruning", limit):
        score = np.where(cost <= budget_gpu_hours, score, -np.inf)
        top = score.max(initial=-np.inf)  # empty where a later stage has no plan left
        if top == -np.inf:
            continue
        flat = int(np.argmin(np.where(score == top, cost, np.inf)))
        index = np.unravel_index(flat, score.shape)
        candidate = (float(top), float(cost[index]), (lo + int(index[0]), *map(int, index[1:])))
        if best is None or (candidate[0], -candidate[1]) > (best[0], -best[1]):
            best = candidate
    size = size or math.prod(len(a.score) for a in arrays.values())
    if best is None:
        raise NoFeasibleAllocation(f"{spec.name}: no allocation fits in {budget_gpu_hours:g} "
                                   "GPU-h; raise the budget")
    alloc = Allocation.of({s: p.plans[i] for s, p, i in zip(names, parts, best[2], strict=True)})
    return Optimum(best[0], best[1], alloc, size)


def near_optimal(spec: TaskSpec, budget_gpu_hours: float, fractions: list[float],
                 env: ReplayEnvironment | None = None) -> tuple[int, dict[float, int]]:
    """The number of allocations within `budget_gpu_hours`, and per fraction f how many of
    them score at least f times the optimum."""
    env = env or ReplayEnvironment(spec)
    arrays = plan_arrays(env, CostModel(spec, env.calibration()))
    best = _optimum(spec, arrays, budget_gpu_hours).score
    parts = [a.take(np.flatnonzero(a.infer <= budget_gpu_hours)) for a in arrays.values()]
    fits, near = 0, dict.fromkeys(fractions, 0)
    for _, score, cost in _blocks(spec.name, parts, "have stages within budget"):
        score = score[cost <= budget_gpu_hours]
        fits += score.size
        for f in fractions:
            near[f] += int((score >= f * best).sum())
    return fits, near


def builtin_tasks() -> list[Path]:
    """The suite's task files, by name."""
    return sorted(TASKS.glob("*.yaml"))


def budget_gpu_hours(spec: TaskSpec, budget: str | None = None) -> float:
    """`budget` (default: the task's own) in GPU-hours of the task's hardware."""
    budget = budget or spec.budget
    if budget is None:
        raise SpecError(f"{spec.source}: budget: the task declares none; pass --budget, e.g. "
                        "--budget 20gpu-h")
    return spec.hardware.gpu_hours(budget)


def optimum_record(path: Path, budget: str | None = None,
                   env: ReplayEnvironment | None = None) -> dict:
    """The stored form of a task's optimum under `budget` (default: the task's own); `env`,
    if given, is the task's environment, already loaded."""
    spec = env.spec if env else load_spec(path)
    opt = exhaustive_optimum(spec, budget_gpu_hours(spec, budget), env)
    return {"task": spec.name, "file": path.name, "budget": budget or spec.budget,
            "space_size": opt.space_size, "score": opt.score,
            "cost_gpu_hours": opt.cost_gpu_hours, "allocation": opt.allocation.to_dict()}


def load_optima(path: Path = OPTIMA) -> dict[str, dict]:
    """Stored optima by task name."""
    return {r["task"]: r for r in yaml.safe_load(path.read_text())}


def describe(record: dict) -> str:
    return (f"{record['task']}: {record['score']:.6f} at {record['cost_gpu_hours']:.4g} GPU-h "
            f"(budget {record['budget']}, {record['space_size']:,} allocations)")


def check_suite(write: bool) -> None:
    """Recompute the suite's optima; store them (`write`) or fail if the stored ones differ."""
    records = [optimum_record(p) for p in builtin_tasks()]
    for r in records:
        print(describe(r))
    if write:
        OPTIMA.write_text(yaml.safe_dump(records, sort_keys=False))
        print(f"wrote {OPTIMA}")
    elif load_optima() != {r["task"]: r for r in records}:
        raise SystemExit(f"{OPTIMA} is stale; rerun with --write")


def print_optima(paths: list[Path], budget: str | None, near: list[float]) -> None:
    """Each task's optimum and its allocation, one plan per line; then, per fraction in
    `near`, how many allocations in budget score at least that fraction of it."""
    for path in paths:
        env = ReplayEnvironment(load_spec(path))  # loading its tables takes most of the time
        record = optimum_record(path, budget, env)
        print(describe(record))
        for line in Allocation.from_dict(record["allocation"]).describe():
            print(f"  {line}")
        if near:
            fits, counts = near_optimal(env.spec, budget_gpu_hours(env.spec, budget), near,
                                        env)
            for f, count in counts.items():
                print(f"  at least {f * 100:g}% of it: {count:,} of the {fits:,} allocations in "
                      "budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tasks", nargs="*", type=Path,
                        help="task.yaml files (default: check the suite against its stored optima)")
    parser.add_argument("--budget", help="budget of the given tasks, e.g. 20gpu-h (default: each "
                        "task's own)")
    parser.add_argument("--write", action="store_true", help=f"store the optima in {OPTIMA}")
    parser.add_argument("--near", nargs="+", type=float, default=[], metavar="FRACTION",
                        help="also count the allocations in budget that score at least each "
                        "fraction of the optimum, e.g. --near 0.97 0.99")
    args = parser.parse_args()
    if args.tasks and args.write:
        parser.exit(2, "Error: --write stores the suite's optima; give no task paths with it\n")
    if args.near and not args.tasks:
        parser.exit(2, "Error: --near counts for the task paths given; pass them, e.g. "
                    "envs/replay/tasks/*.yaml\n")
    if any(not 0 < f <= 1 for f in args.near):
        parser.exit(2, f"Error: --near {' '.join(map(str, args.near))}: fractions of the "
                    "optimum lie in (0, 1], e.g. --near 0.97\n")
    if args.budget and not args.tasks:
        parser.exit(2, "Error: --budget applies to the task paths given; the suite uses each "
                    "task's own\n")
    try:
        if args.tasks:
            print_optima(args.tasks, args.budget, args.near)
        else:
            check_suite(args.write)
    except (PlannerError, NoOptimum) as e:
        parser.exit(2, f"Error: {e}\n")


if __name__ == "__main__":
    main()
