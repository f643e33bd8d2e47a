"""How fast pass@n rises with n on the recorded pass@n tables: the logit of pass@n gained per
doubling of n, median over each table's arms (model, checkpoint), at every n it records.

The agent's score model assumes a rise per doubling before an arm was tried at two n
(`_SLOPE_MEAN` in planner/search/agent/surrogate.py); this prints what the recordings show:

    python experiments/oracle_slopes.py

Arms whose pass@n stays under 2% at the table's largest n are left out (their logit is
the clip's, not the model's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tools.evaluate import pass_at_k

DATA = Path(__file__).resolve().parent.parent / "envs" / "replay" / "tasks" / "data"
TABLES = ("pythia_gsm8k", "pythia_math", "pythia_gsm8k_final", "pythia_math_10k")
EPS = 1e-3  # as the score model clips before its logit


def rises(table: pd.DataFrame) -> dict[int, float]:
    """n -> the median logit gained from n/2 to n over the table's arms."""
    top = int(table.n_samples.min())
    ns = [2 ** i for i in range(top.bit_length()) if 2 ** i <= top]
    gains: dict[int, list[float]] = {}
    for _, arm in table.groupby([c for c in ("model", "method") if c in table.columns]):
        curve = np.array([np.mean([pass_at_k(n, c, k) for n, c in zip(
            arm.n_samples, arm.n_correct, strict=True)]) for k in ns])
        if curve[-1] < 0.02:
            continue
        p = np.clip(curve, EPS, 1 - EPS)
        for k, gain in zip(ns[1:], np.diff(np.log(p / (1 - p))), strict=True):
            gains.setdefault(k, []).append(float(gain))
    return {k: float(np.median(v)) for k, v in gains.items()}


def main() -> None:
    for name in TABLES:
        table = pd.read_csv(DATA / f"{name}.csv.gz")
        by_n = rises(table)
        print(f"{name}: " + ", ".join(f"n={k} {v:.2f}" for k, v in by_n.items()))


if __name__ == "__main__":
    main()
