"""Search efficiency of `agent` (built-in reasoner) vs `optuna` and `random` on replay tasks.

For every task under envs/replay/tasks and every seed, each strategy runs through the same
`planner.study.optimize` (same runner, cost check and store; in-memory SQLite). Reported
per task and strategy, over seeds:

- the median number of trials to reach 99% of the exhaustive optimum
  (envs/replay/optima.yaml; `>N` when the median run never reached it in N trials);
- the median best score after 20 trials, as a fraction of the optimum.

    python experiments/bench_agent.py                 # 20 seeds, 60 trials, all tasks
    python experiments/bench_agent.py --seeds 3 --tasks monkeys_math.yaml
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from envs import make_environment
from envs.replay.optimum import TASKS, load_optima
from planner.search import AgentOptions
from planner.spec import load_spec
from planner.store import Store
from planner.study import optimize

STRATEGIES = ("agent", "optuna", "random")
EARLY = 20  # trials after which the best score is compared


def run_one(task: str, strategy: str, seed: int, n_trials: int) -> tuple[list[float], float]:
    """Scores (0 for unsuccessful trials) of one search, and its wall time in seconds."""
    spec = load_spec(TASKS / task)
    env = make_environment(spec)
    start = time.perf_counter()
    result = optimize(spec, env, store=Store("sqlite://"), budget=spec.budget,
                      strategy=strategy, n_trials=n_trials, seed=seed,
                      agent=AgentOptions(patience=None))
    return [t.score or 0.0 for t in result.trials], time.perf_counter() - start


def trials_to_reach(scores: list[float], target: float) -> float:
    return next((i + 1 for i, s in enumerate(scores) if s >= target), float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", default=None, help="task files (default: all)")
    args = parser.parse_args()
    optima = {r["file"]: r["score"] for r in load_optima().values()}
    tasks = args.tasks or [p.name for p in sorted(Path(TASKS).glob("*.yaml"))]
    jobs = [(t, s, seed) for t in tasks for s in STRATEGIES for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {job: pool.submit(run_one, *job, args.trials) for job in jobs}
        results = {job: f.result() for job, f in futures.items()}
    header = (f"| task | optimum | strategy | median trials to 99% | reached | "
              f"best@{EARLY} / optimum | s per run |")
    print(f"{args.seeds} seeds, {args.trials} trials per run\n")
    print(header)
    print("|" + "---|" * 7)
    for t in tasks:
        target = 0.99 * optima[t]
        for s in STRATEGIES:
            runs = [results[(t, s, seed)] for seed in range(args.seeds)]
            reach = [trials_to_reach(scores, target) for scores, _ in runs]
            med = statistics.median(reach)
            early = statistics.median(max(scores[:EARLY]) / optima[t] for scores, _ in runs)
            secs = statistics.mean(sec for _, sec in runs)
            shown = f">{args.trials}" if med == float("inf") else f"{med:g}"
            hits = sum(r != float("inf") for r in reach)
            print(f"| {t} | {optima[t]:.4f} | {s} | {shown} | {hits}/{args.seeds} | "
                  f"{early:.3f} | {secs:.2f} |")


if __name__ == "__main__":
    main()
