"""Convert published result tables (shared/data) into the replay tables shipped here.

Run once when the sources change; the outputs under envs/replay/data are committed:

    python -m envs.replay.build_tables --source ../shared/data

Sources and licences are listed in envs/replay/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

OUT = Path(__file__).parent / "data"
_CASCADE_COLUMNS = ["query", "model", "correct", "input_tokens", "output_tokens", "cost_usd"]
_MOT_COLUMNS = ["model", "prompt", "question", "sample", "answer", "correct"]
MOT_MIN_SAMPLES = 16  # keep questions with at least this many samples in every prompt
# the five Llama models of the cascades tables, by size, with their parameter counts (as in
# the task files that use them): a cascade's FLOPs are 2N per recorded token of each model
LLAMA_PARAMS = {"llama3.2-1b": 1.24e9, "llama3.2-3b": 3.21e9, "llama3.1-8b": 8.03e9,
                "llama3.1-70b": 7.06e10, "llama3.1-405b": 4.05e11}
DEFER_FRACTIONS = (0.1, 0.2, 0.3, 0.5)  # share of its least confident answers a model defers


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


def convert_monkeys_10k(source: Path) -> pd.DataFrame:
    """10,000 samples per MATH problem of the final Pythia models: `Pythia 12B` -> `pythia-12b`."""
    df = pd.read_csv(source / "monkeys" / "pythia_math_10k_samples.csv")
    model = "pythia-" + df["model"].str.split(" ").str[1].str.lower()
    out = pd.DataFrame({"model": model, "problem": df["problem"],
                        "n_samples": df["n_samples"], "n_correct": df["n_correct"]})
    return out.sort_values(["model", "problem"], kind="stable")


def math_levels(math: pd.DataFrame, levels: tuple[int, ...]) -> pd.DataFrame:
    """The MATH rows of some difficulty levels (1-5), without the level column: one stage
    of easy and one of hard problems replay the same checkpoints on different items."""
    kept = math["level"].isin([f"Level {k}" for k in levels])
    return math[kept].drop(columns="level")


def final_checkpoint(table: pd.DataFrame, method: str = "pretrain-300B") -> pd.DataFrame:
    """The rows of one pre-training checkpoint, without the method column: the released
    models, which a task serves without training them."""
    return table[table["method"] == method].drop(columns="method")


def convert_cascades(source: Path, files: list[str]) -> pd.DataFrame:
    """Rational-cascades answers -> one row per (model, query): correct, tokens, USD.

    The answer text is dropped (one answer per model, so nothing to vote over)."""
    df = pd.concat([pd.read_csv(source / "cascades" / f"{f}.csv") for f in files])
    return df[_CASCADE_COLUMNS].sort_values(["model", "query"], kind="stable")


def cascade_route(strong: str, fraction: float) -> str:
    """`llama3.1-70b`, 0.2 -> `to-70b-20pct`: defer the least confident 20% to Llama 70B."""
    return f"to-{strong.rsplit('-', 1)[-1]}-{round(fraction * 100)}pct"


def convert_llama_cascades(source: Path, file: str,
                           fractions: tuple[float, ...] = DEFER_FRACTIONS) -> pd.DataFrame:
    """Rational-cascades answers of the five Llama models -> two-model confidence cascades,
    one row per (model, route, query): correct, deferred, flops.

    Route `alone`: the model's own answer. Route `to-<M>-<f>pct`: the model answers every
    query; where its `logprob_conf` is below its f-quantile over the file's queries (its
    f least confident answers) the answer of the larger model M on the same query is
    returned instead. `flops` is 2N per recorded input and output token of each model that
    ran (both, on a deferred query). Every outcome is a recorded answer: nothing is
    re-sampled or simulated."""
    df = pd.read_csv(source / "cascades" / f"{file}.csv")
    wide = df.pivot(index="query", columns="model")
    flops = {m: 2 * n * (wide["input_tokens"][m] + wide["output_tokens"][m])
             for m, n in LLAMA_PARAMS.items()}
    frames = []
    models = list(LLAMA_PARAMS)
    for i, weak in enumerate(models):
        conf, correct = wide["logprob_conf"][weak], wide["correct"][weak]
        never = pd.Series(0, index=wide.index)
        routes = [("alone", never, correct, flops[weak])]
        for strong in models[i + 1:]:
            for f in fractions:
                deferred = (conf < conf.quantile(f)).astype(int)
                routes.append((cascade_route(strong, f), deferred,
                               correct.where(deferred == 0, wide["correct"][strong]),
                               flops[weak] + deferred * flops[strong]))
        frames += [pd.DataFrame({"query": wide.index, "model": weak, "route": route,
                                 "correct": ok.astype(int).to_numpy(),
                                 "deferred": deferred.to_numpy(),
                                 "flops": cost.round().astype("int64").to_numpy()})
                   for route, deferred, ok, cost in routes]
    return pd.concat(frames, ignore_index=True)


def convert_mot(source: Path, prompts: tuple[str, ...] = ("pot1", "pot2"),
                min_samples: int = MOT_MIN_SAMPLES) -> pd.DataFrame:
    """Mixture-of-thought samples of Llama-2-13B on GSM8K -> one row per sample: model,
    prompt, question, sample, answer, correct.

    Sample counts vary per question (1 to 24), so only questions with at least
    `min_samples` samples under every prompt are kept (all their samples): n up to
    `min_samples` then replays exactly. Answers are kept as recorded text, so a vote
    counts them as the source's own majority vote does (equal values)."""
    frames = [pd.read_csv(source / "mot" / f"gsm8k_llama2-13b_{p}.csv.gz", dtype={"answer": str})
              for p in prompts]
    df = pd.concat(frames)
    counts = df.groupby(["question", "prompt"]).size().unstack(fill_value=0)
    kept = counts.index[(counts >= min_samples).all(axis=1)]
    out = df[df["question"].isin(kept)][_MOT_COLUMNS]
    return out.sort_values(["model", "prompt", "question", "sample"], kind="stable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path("../shared/data"))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    gsm8k, math = convert_monkeys(args.source, "gsm8k"), convert_monkeys(args.source, "math")
    tables = {
        "pythia_gsm8k": gsm8k,
        "pythia_math": math,
        # for the held-out tasks (envs/replay/heldout), shapes the suite does not have
        "pythia_math_levels_1_3": math_levels(math, (1, 2, 3)),
        "pythia_math_levels_4_5": math_levels(math, (4, 5)),
        "pythia_gsm8k_final": final_checkpoint(gsm8k),
        "pythia_math_10k": convert_monkeys_10k(args.source),
        "mmlu_cascades": convert_cascades(args.source,
                                          ["mmlu_llama_test", "mmlu_qwen_oai_test"]),
        "mot_gsm8k_llama2": convert_mot(args.source),
        "mmlu_llama_cascades": convert_llama_cascades(args.source, "mmlu_llama_test"),
        "gsm8k_llama_cascades": convert_llama_cascades(args.source, "gsm8k_llama_train"),
    }
    for name, table in tables.items():
        path = OUT / f"{name}.csv.gz"
        # mtime=0 keeps the gzip bytes identical across rebuilds
        table.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})
        print(f"wrote {path} ({len(table)} rows)")


if __name__ == "__main__":
    main()
