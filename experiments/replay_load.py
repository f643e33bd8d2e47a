"""How long a replay task over a large table takes to start and to answer.

    python experiments/replay_load.py                        # 20 models x 1,000 items x 100
    python experiments/replay_load.py --against fd48b06      # that revision too, and ratios
    python experiments/replay_load.py --models 1000 --items 20 --samples 64   # many choices
    python experiments/replay_load.py --counts --models 1000 --items 100      # pass@n counts

Writes a per-sample table (one row per model, item and sample: the sample's answer and
whether it is correct; a model's chance on an item is logistic in its skill less the item's
difficulty, and a wrong sample picks one of `--wrong` distractors) and a one-stage task
offering majority, oracle and first at n = 1 .. 64; with `--counts`, the same samples
counted per model and item instead (samples drawn, samples correct: the pass@n form, as
Large Language Monkeys records), offering oracle and first. Then, in a fresh process per
checkout, times how long until the environment is built (what `planner check` and every
worker pay), until each model's majority vote (with `--counts`, its pass@n) at the largest
n is answered (a search's first trials), and until every plan of the space is (what the
exhaustive optimum reads). With `--against REV` it measures that revision's checkout (a
temporary worktree) the same way, prints the ratios, and the largest difference between
the two checkouts' scores over every plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from planner_cpu import checkout, run_in_checkout

HERE = Path(__file__).resolve().parent
SAMPLES = [1, 2, 4, 8, 16, 32, 64]
# run in the measured checkout's root: prints the three times and every plan's score
_MEASURE = """
import json, sys, time
from envs.replay.env import ReplayEnvironment
from planner.spec import load_spec
spec = load_spec(sys.argv[1])
begin = time.perf_counter()
env = ReplayEnvironment(spec)
built = time.perf_counter()
plans = env.space.plans("solve")
top = max(p.samples for p in plans)
for p in plans:
    if p.aggregator == sys.argv[2] and p.samples == top:
        env.subtask_score("solve", p)
first = time.perf_counter()
scores = [env.subtask_score("solve", p) for p in plans]
every = time.perf_counter()
print(json.dumps({"build": built - begin, "first": first - built, "every": every - first,
                  "scores": scores}))
"""


def write_task(folder: Path, models: int, items: int, samples: int, wrong: int,
               seed: int, counts: bool = False) -> Path:
    """The table and its task.yaml in `folder` (`counts`: the pass@n form); returns the
    task's path."""
    rng = np.random.default_rng(seed)
    skill = np.linspace(-3.0, 1.0, models)
    difficulty = rng.normal(0.0, 1.5, items)
    model = np.repeat(np.arange(models), items * samples)
    item = np.tile(np.repeat(np.arange(items), samples), models)
    p = 1.0 / (1.0 + np.exp(difficulty[item] - skill[model]))
    correct = rng.random(p.size) < p
    answer = np.where(correct, -1, rng.integers(0, wrong, p.size))
    names = [f"m{i}" for i in range(models)]
    table = pd.DataFrame({"model": np.array(names)[model], "item": item, "answer": answer,
                          "correct": correct.astype(int)})
    replay = {"table": "table.csv.gz", "item": "item", "correct": "correct", "answer": "answer"}
    if counts:
        table = table.groupby(["model", "item"], sort=False)["correct"].agg(
            n="size", c="sum").reset_index()
        replay = {"table": "table.csv.gz", "item": "item", "n_samples": "n", "n_correct": "c"}
    table.to_csv(folder / "table.csv.gz", index=False)
    task = {"name": "replay-load", "environment": "replay", "budget": "50gpu-h",
            "workload": {"queries": 100000},
            "models": [{"name": n, "params": float(p)}
                       for n, p in zip(names, np.logspace(8, 11, models), strict=True)],
            "subtasks": [{"name": "solve", "prompt_tokens": 500, "output_tokens": 200,
                          "models": names, "samples": SAMPLES,
                          "aggregators": ["oracle", "first"] if counts
                          else ["majority", "oracle", "first"], "replay": replay}]}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def measure(root: Path, task: Path, aggregator: str) -> dict:
    """The three times (seconds) and every plan's score, in a fresh process in `root`;
    `aggregator` is the one read for each model at the largest n."""
    out = run_in_checkout(root, [sys.executable, "-c", _MEASURE, str(task), aggregator])
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100, help="recorded per item")
    parser.add_argument("--wrong", type=int, default=5, help="distinct wrong answers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", action="store_true",
                        help="a pass@n table (samples drawn and correct per model and item)")
    parser.add_argument("--against", metavar="REV", help="git revision to measure as well")
    args = parser.parse_args()
    if args.samples < max(SAMPLES):
        parser.error(f"--samples must be at least {max(SAMPLES)}, the largest n offered")
    with tempfile.TemporaryDirectory() as tmp:
        task = write_task(Path(tmp), args.models, args.items, args.samples, args.wrong,
                          args.seed, args.counts)
        rows = args.models * args.items * (1 if args.counts else args.samples)
        print(f"{args.models} models x {args.items:,} items x {args.samples} samples "
              f"({rows:,} rows{', counted' if args.counts else ''}), n up to {max(SAMPLES)}")
        aggregator, vote = ("oracle", "pass@n") if args.counts else ("majority", "majority vote")
        runs = {"this checkout": measure(HERE.parent, task, aggregator)}
        if args.against:
            with checkout(args.against) as other:
                runs[args.against] = measure(other, task, aggregator)
    # seconds from the start until the environment is built, until each model's vote (or
    # pass@n) at the largest n is answered, and until every plan is
    until = {label: np.cumsum([run["build"], run["first"], run["every"]])
             for label, run in runs.items()}
    for label, (built, first, every) in until.items():
        print(f"{label}: built after {built:.2f} s, each model's {vote} at n = "
              f"{max(SAMPLES)} answered after {first:.2f} s, every plan after {every:.2f} s")
    if args.against:
        ratio = until["this checkout"] / until[args.against]
        print(f"ratios (this checkout / {args.against}): built {ratio[0]:.3f}, {vote} "
              f"{ratio[1]:.3f}, every plan {ratio[2]:.3f}")
        new, old = runs["this checkout"]["scores"], runs[args.against]["scores"]
        diff = np.abs(np.array(new) - np.array(old)).max()
        print(f"largest score difference over {len(new)} plans: {diff:.1e}")


if __name__ == "__main__":
    main()
