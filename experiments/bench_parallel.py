"""Parallel trials: wall time by executor, and what batching costs a strategy in trials.

    OMP_NUM_THREADS=1 python experiments/bench_parallel.py wall              # replay task
    OMP_NUM_THREADS=1 python experiments/bench_parallel.py wall \
        --task envs/live/tasks/wordsum/task.yaml --trials 16             # live task
    python experiments/bench_parallel.py batch --seeds 10 --trials 50         # replay suite

`wall`: one study of --trials random trials (seed 0) per executor: local, process with 1,
2 and 4 workers, and a local Ray instance with 2 and 4 workers; each in a fresh database
and, for a live task, a fresh artifact cache (`PLANNER_CACHE`), so every run trains and
samples the same allocations from nothing. Prints wall seconds and the speed-up over one
process worker.

`batch`: trials to 99% of the exact optimum on the replay suite when a strategy asks for 1
or 4 allocations before hearing any result (`LocalExecutor(env, slots)`: what 4 workers
do to the search, without their wall time), via experiments/benchmark.py's harness.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import benchmark  # noqa: E402  (experiments/benchmark.py, beside this file)

from envs import make_environment  # noqa: E402
from planner.executors import Executor, LocalExecutor, ProcessExecutor, RayExecutor  # noqa: E402
from planner.spec import load_spec  # noqa: E402
from planner.store import Store, TrialStatus  # noqa: E402
from planner.study import optimize  # noqa: E402

REPLAY = Path(__file__).parents[1] / "envs" / "replay" / "tasks" / "monkeys_gsm8k.yaml"


def wall(task: Path, n_trials: int, ray_workers: list[int]) -> None:
    spec = load_spec(task)
    factory = partial(make_environment, spec)
    configs: list[tuple[str, object]] = [("local", None)]
    configs += [(f"process x{w}", w) for w in (1, 2, 4)]
    configs += [(f"ray x{w}", ("ray", w)) for w in ray_workers]
    print(f"task {spec.name} ({spec.environment}), {n_trials} random trials, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    base = None
    for label, how in configs:
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PLANNER_CACHE"] = str(Path(tmp) / "cache")  # workers inherit it
            env = factory()
            if how is None:
                executor: Executor = LocalExecutor(env)
            elif isinstance(how, int):
                executor = ProcessExecutor(factory, how)
            else:
                import ray

                ray.init(num_cpus=how[1], include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
                executor = RayExecutor(factory, how[1])
            begun = time.perf_counter()
            try:
                result = optimize(spec, env, store=Store(f"sqlite:///{tmp}/s.db"),
                                  budget=spec.budget or "", strategy="random",
                                  n_trials=n_trials, executor=executor)
            finally:
                if how is not None and not isinstance(how, int):
                    ray.shutdown()
            seconds = time.perf_counter() - begun
        ok = sum(t.status is TrialStatus.OK for t in result.trials)
        if label == "process x1":
            base = seconds
        speedup = f"{base / seconds:.2f}x" if base else "-"
        best = result.best.score if result.best else float("nan")
        print(f"  {label:<12} {seconds:8.1f} s  speed-up vs process x1: {speedup:>6}  "
              f"ok {ok}/{len(result.trials)}  best {best:.4f}", flush=True)


def batch(seeds: int, n_trials: int, strategies: list[str]) -> None:
    tasks = benchmark.resolve_tasks([])
    print(f"{len(tasks)} suite tasks x {seeds} seeds x {n_trials} trials; median trials to "
          f"99% (seeds that reached it)")
    print(f"  {'strategy':<10} {'task':<32} {'batch 1':>14} {'batch 4':>14}")
    for strategy in strategies:
        by_batch = {}
        for k in (1, 4):
            trials = benchmark.pad(benchmark.run(tasks, [strategy], seeds, n_trials, 1,
                                                 batch=k), n_trials)
            by_batch[k] = benchmark.summarize(trials, n_trials).set_index("task")
        for task in by_batch[1].index:
            cells = []
            for k in (1, 4):
                row = by_batch[k].loc[task]
                cells.append(f"{benchmark._fmt_trials(row['trials_to_99_median'], n_trials)} "
                             f"({int(row['reached'])}/{seeds})")
            print(f"  {strategy:<10} {task:<32} {cells[0]:>14} {cells[1]:>14}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("wall")
    w.add_argument("--task", type=Path, default=REPLAY)
    w.add_argument("--trials", type=int, default=32)
    w.add_argument("--ray", default="2,4", help="Ray worker counts ('' for none)")
    b = sub.add_parser("batch")
    b.add_argument("--seeds", type=int, default=10)
    b.add_argument("--trials", type=int, default=50)
    b.add_argument("--strategies", default="agent,optuna,random")
    args = parser.parse_args()
    if args.what == "wall":
        wall(args.task, args.trials, [int(x) for x in args.ray.split(",") if x])
    else:
        batch(args.seeds, args.trials, args.strategies.split(","))


if __name__ == "__main__":
    main()
