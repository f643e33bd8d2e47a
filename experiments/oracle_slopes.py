"""How fast pass@n rises with n on the recorded one-stage pass@n tasks: the logit of the
score gained per doubling of n, median over each task's arms (model, checkpoint), between
each n of its grid and the one before, as the replay environment scores the plans.

The agent's score model assumes a rise per doubling before an arm was tried at two n
(`_prior_rise` in planner/search/agent/surrogate.py); this prints what the recordings show,
per task and n, then pooled over the tasks by the score each step starts from:

    python experiments/oracle_slopes.py

Arms that score under 2% at the grid's largest n are left out (their logit is the clip's,
not the model's), and so are steps that start below 0.5% or above 99.5%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from envs import make_environment
from planner.search.agent.surrogate import logit
from planner.space import Allocation, SearchSpace
from planner.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("envs/replay/tasks/monkeys_gsm8k.yaml", "envs/replay/tasks/monkeys_math.yaml",
         "envs/replay/heldout/gsm8k_final.yaml", "envs/replay/tasks/monkeys_math_10k.yaml")


LEVELS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # bins of the score a step starts from


def steps(path: Path) -> tuple[list[tuple[int, float, float]], int]:
    """(n, the score at the grid's previous n, the logit gained per doubling from there to
    n) for each step of each arm of the task's (only) subtask; and how many arms that is."""
    spec = load_spec(path)
    env, space = make_environment(spec), SearchSpace(spec)
    (subtask,) = space.subtasks
    curves: dict[tuple, dict[int, float]] = {}  # arm -> n -> score
    for plan in space.plans(subtask):
        arm = (plan.model, plan.method, plan.mixture)
        score = env.evaluate(Allocation.of({subtask: plan})).score
        curves.setdefault(arm, {})[plan.samples] = score
    out = []
    kept = [c for c in curves.values() if c[max(c)] >= 0.02]
    for curve in kept:
        ns = sorted(curve)
        y = logit(np.array([curve[n] for n in ns]))
        for a, n, gain in zip(ns[:-1], ns[1:], np.diff(y) / np.diff(np.log2(ns)),
                               strict=True):
            out.append((n, curve[a], float(gain)))
    return out, len(kept)


def _median_by(keyed: list[tuple[Any, float]]) -> dict[Any, float]:
    """The median gain per key of (key, gain) pairs."""
    grouped: dict[Any, list[float]] = {}
    for key, gain in keyed:
        grouped.setdefault(key, []).append(gain)
    return {k: float(np.median(g)) for k, g in grouped.items()}


def main() -> None:
    pooled = []
    for task in TASKS:
        found, arms = steps(ROOT / task)
        by_n = _median_by([(n, gain) for n, _, gain in found])
        print(f"{task} ({arms} arms): " + ", ".join(f"n={n} {g:.2f}" for n, g in by_n.items()))
        pooled += [(level, gain) for _, level, gain in found if 0.005 <= level <= 0.995]
    bins = _median_by([(int(np.searchsorted(LEVELS, level, side="right")) - 1, gain)
                       for level, gain in pooled])
    print("pooled, by the score a step starts from: " + ", ".join(
        f"{LEVELS[b]:g}-{LEVELS[b + 1]:g} {g:.2f}" for b, g in sorted(bins.items())))


if __name__ == "__main__":
    main()
