"""The planner's own CPU time per trial on replay tasks (what `benchmark.py` runs, timed by
`time.process_time`, so other jobs on the machine inflate it less than wall time).

    python experiments/planner_cpu.py                          # the agent, every suite task
    python experiments/planner_cpu.py --strategy random --seeds 3 --trials 60 \
        --tasks monkeys-gsm8k tutor-mmlu-gsm8k-math

Each run is one study in an in-memory store, as in the benchmark; its CPU time, setup
included, is divided by its trials. Prints one line per task: ms per trial for each seed
and their median. The replay look-up is part of it (microseconds).
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmark import Job, load_task, resolve_tasks, run_job, split_names


def cpu_ms_per_trial(job: Job) -> float:
    start = time.process_time()
    rows = run_job(job)
    return 1000 * (time.process_time() - start) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=[],
                        help="suite names or task.yaml paths (default: the whole suite)")
    parser.add_argument("--strategy", default="agent")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=60)
    args = parser.parse_args()
    for path in resolve_tasks(split_names(args.tasks)):
        name = load_task(path).spec.name
        run_job(Job(path, args.strategy, 0, 5))  # first-call imports and caches, untimed
        ms = [cpu_ms_per_trial(Job(path, args.strategy, seed, args.trials))
              for seed in range(args.seeds)]
        print(f"{name}: {' '.join(f'{m:.1f}' for m in ms)} ms/trial "
              f"(median {statistics.median(ms):.1f})")


if __name__ == "__main__":
    main()
