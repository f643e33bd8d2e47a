"""How fast pass@n rises with n on the recorded one-stage pass@n tasks: the logit of the
score gained per doubling of n, median over each task's arms (model, checkpoint), between
each n of its grid and the one before, as the replay environment scores the plans.

The agent's score model assumes a rise per doubling before an arm was tried at two n
(`_SLOPE_MEAN` in planner/search/agent/surrogate.py); this prints what the recordings show:

    python experiments/oracle_slopes.py

Arms that score under 2% at the grid's largest n are left out (their logit is the clip's,
not the model's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from envs import make_environment
from planner.search.agent.surrogate import logit
from planner.space import Allocation, SearchSpace
from planner.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
TASKS = ("envs/replay/tasks/monkeys_gsm8k.yaml", "envs/replay/tasks/monkeys_math.yaml",
         "envs/replay/heldout/gsm8k_final.yaml", "envs/replay/tasks/monkeys_math_10k.yaml")


def rises(path: Path) -> tuple[dict[int, float], int]:
    """n -> the median logit gained per doubling from the grid's previous n to n, over the
    arms of the task's (only) subtask; and how many arms that is."""
    spec = load_spec(path)
    env, space = make_environment(spec), SearchSpace(spec)
    (subtask,) = space.subtasks
    curves: dict[tuple, dict[int, float]] = {}  # arm -> n -> score
    for plan in space.plans(subtask):
        arm = (plan.model, plan.method, plan.mixture)
        score = env.evaluate(Allocation.of({subtask: plan})).score
        curves.setdefault(arm, {})[plan.samples] = score
    gains: dict[int, list[float]] = {}
    kept = [c for c in curves.values() if c[max(c)] >= 0.02]
    for curve in kept:
        ns = sorted(curve)
        y = logit(np.array([curve[n] for n in ns]))
        for n, gain in zip(ns[1:], np.diff(y) / np.diff(np.log2(ns)), strict=True):
            gains.setdefault(n, []).append(float(gain))
    return {n: float(np.median(g)) for n, g in gains.items()}, len(kept)


def main() -> None:
    for task in TASKS:
        by_n, arms = rises(ROOT / task)
        print(f"{task} ({arms} arms): " + ", ".join(f"n={n} {g:.2f}" for n, g in by_n.items()))


if __name__ == "__main__":
    main()
