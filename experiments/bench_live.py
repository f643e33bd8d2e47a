"""Benchmark the live environment's cache: one allocation cold, then with other n/aggregators.

Cold: an empty live cache (the zoo models are reused), so every fine-tune is trained and
every prompt sampled. Warm: the same models and mixtures with every stage's n and aggregator
changed, which must train nothing and sample only prompts that changed because an upstream
stage's answer changed. Counts come from the cache; seconds are wall time.

    OMP_NUM_THREADS=1 python experiments/bench_live.py [--task envs/live/tasks/wordsum/task.yaml]

Prints the figures and writes them to experiments/README_live.md.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from contextlib import redirect_stdout
from dataclasses import asdict
from pathlib import Path

from envs.live.cache import default_root
from envs.live.env import LiveEnvironment
from planner.space import Allocation, Plan
from planner.spec import load_spec

HERE = Path(__file__).parent


def plan(model: str, method: str, n: int, aggregator: str) -> Plan:
    return Plan(model=model, method=method, mixture="default", samples=n, aggregator=aggregator)


COLD = {"parse": plan("tiny", "full-150", 1, "majority"),
        "add": plan("small", "full-600", 4, "majority")}
# `first` reads one sample, so its canonical plan has n=1 (planner.space)
WARM = {"parse": plan("tiny", "full-150", 4, "majority"),
        "add": plan("small", "full-600", 1, "first")}


def timed(env: LiveEnvironment, plans: dict[str, Plan], label: str) -> None:
    before = asdict(env.cache.stats)
    start = time.perf_counter()
    obs = env.evaluate(Allocation.of(plans))
    seconds = time.perf_counter() - start
    delta = {k: v - before[k] for k, v in asdict(env.cache.stats).items()}
    print(f"{label}: {seconds:7.2f} s  trainings {delta['train_misses']} (reused "
          f"{delta['train_hits']})  prompts sampled {delta['sample_misses']} (reused "
          f"{delta['sample_hits']})")
    print(f"  score {obs.score:.3f}  stages " + "  ".join(
        f"{s} {v:.3f}" for s, v in obs.subtask_scores.items()))
    print("  measured " + "  ".join(f"{k} {v:.0f}" for k, v in obs.measured.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="envs/live/tasks/wordsum/task.yaml")
    parser.add_argument("--readme", default=str(HERE / "README_live.md"))
    args = parser.parse_args()
    spec = load_spec(args.task)
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, redirect_stdout(out):
        zoo = default_root() / "zoo"
        zoo.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "zoo").symlink_to(zoo)  # reuse built zoo models, nothing else
        env = LiveEnvironment(spec, cache_dir=tmp, progress=False)
        print(f"task {spec.name}: {len(env.items)} validation items; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        for name, p in COLD.items():
            print(f"  cold {name}: {p.describe()}  ->  warm n={WARM[name].samples} "
                  f"{WARM[name].aggregator}")
        timed(env, COLD, "cold")
        timed(env, WARM, "warm")
        timed(env, COLD, "cold allocation again")
    text = out.getvalue()
    print(text, end="")
    Path(args.readme).write_text(
        "## live: the cache (`bench_live.py`)\n\n"
        f"    OMP_NUM_THREADS=1 .venv/bin/python experiments/bench_live.py --task {args.task}\n\n"
        "Cold: empty live cache (zoo models prebuilt); every fine-tune trained, every prompt\n"
        "sampled (N = max samples per stage). Warm: same models, every stage's n and\n"
        "aggregator changed: no training; only prompts whose upstream answer changed are\n"
        "sampled. Counts are from `Cache.stats`; seconds are wall time on a shared machine.\n"
        "\n```\n" + text + "```\n")


if __name__ == "__main__":
    main()
