"""Convert published result tables (shared/data) into the replay tables shipped here.

Run once when the sources change; the outputs under envs/replay/data are committed:

    python -m envs.replay.build_tables --source ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

OUT = Path(__file__).parent / "data"


def _pythia_names(nickname: pd.Series) -> tuple[pd.Series, pd.Series]:
    """`Pythia_1.4B_200B` -> model `pythia-1.4b`, method `pretrain-200B`."""
    parts = nickname.str.split("_", expand=True)
    return "pythia-" + parts[1].str.lower(), "pretrain-" + parts[2]


def convert_monkeys(source: Path, name: str) -> pd.DataFrame:
    """Large Language Monkeys per-problem counts -> model, method, problem, counts, FLOPs."""
    df = pd.read_csv(source / "monkeys" / f"pythia_{name}_samples.csv")
    model, method = _pythia_names(df["model"])
    out = pd.DataFrame({"model": model, "method": method, "problem": df["problem"],
                        "n_samples": df["n_samples"], "n_correct": df["n_correct"],
                        "inference_flops": df["inference_flops"].round()})
    if "level" in df:
        out["level"] = df["level"]
    return out.sort_values(["model", "method", "problem"], kind="stable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    for name in ("gsm8k", "math"):
        convert_monkeys(args.source, name).to_csv(OUT / f"pythia_{name}.csv.gz", index=False)
        print(f"wrote {OUT / f'pythia_{name}.csv.gz'}")


if __name__ == "__main__":
    main()
