"""The planner's own CPU time per trial on replay tasks (what `benchmark.py` runs, timed by
`time.process_time`, so other jobs on the machine inflate it less than wall time).

    python experiments/planner_cpu.py                          # the agent, every suite task
    python experiments/planner_cpu.py --strategy random --seeds 3 --trials 60 \
        --tasks monkeys-gsm8k tutor-mmlu-gsm8k-math
    python experiments/planner_cpu.py --against 4ca4627 --rounds 3 --tasks monkeys-gsm8k

Each run is one study in an in-memory store, as in the benchmark; its CPU time, setup
included, is divided by its trials. Prints one line per task: ms per trial for each seed
and their median. The replay look-up is part of it (microseconds).

`--against REV` measures a git revision's checkout (a temporary worktree) and this one in
turn, `--rounds` times, and prints each task's two medians and their ratio. The machine's
speed drifts between sessions by as much as a factor of two, so a figure from another day
says little; two revisions measured in one run do.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark import Job, load_task, resolve_tasks, run_job, split_names

HERE = Path(__file__).resolve().parent
_LINE = re.compile(r"^(?P<task>\S+): (?P<ms>[\d. ]+) ms/trial", re.MULTILINE)


def cpu_ms_per_trial(job: Job) -> float:
    start = time.process_time()
    rows = run_job(job)
    return 1000 * (time.process_time() - start) / len(rows)


def measure(tasks: list[str], strategy: str, seeds: int, trials: int) -> None:
    for path in resolve_tasks(split_names(tasks)):
        name = load_task(path).spec.name
        run_job(Job(path, strategy, 0, 5))  # first-call imports and caches, untimed
        if not gc.get_freeze_count():  # as `planner`'s command line freezes its modules
            gc.freeze()
        ms = [cpu_ms_per_trial(Job(path, strategy, seed, trials)) for seed in range(seeds)]
        print(f"{name}: {' '.join(f'{m:.1f}' for m in ms)} ms/trial "
              f"(median {statistics.median(ms):.1f})", flush=True)


def run_tree(root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """This script's measurement on the checkout at `root`, in a subprocess importing the
    planner from there: ms per trial of each seed, per task."""
    cmd = [sys.executable, str(root / "experiments" / "planner_cpu.py"), "--strategy",
           args.strategy, "--seeds", str(args.seeds), "--trials", str(args.trials),
           "--tasks", *args.tasks]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, cwd=root / "experiments", env=env, check=True,
                         capture_output=True, text=True).stdout
    return {m["task"]: [float(x) for x in m["ms"].split()] for m in _LINE.finditer(out)}


def compare(args: argparse.Namespace) -> None:
    """This checkout and revision `args.against`, measured in turn."""
    repo = HERE.parent
    known = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                            f"{args.against}^{{commit}}"], capture_output=True)
    if known.returncode:
        print(f"planner_cpu.py: --against {args.against}: no such git revision in {repo}; "
              "pass a commit, tag or branch (e.g. HEAD~1)", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet",
                        str(other), args.against], check=True)
        try:
            ms: dict[str, dict[str, list[float]]] = {"this": {}, args.against: {}}
            for _ in range(args.rounds):
                for label, root in ((args.against, other), ("this", repo)):
                    for task, values in run_tree(root, args).items():
                        ms[label].setdefault(task, []).extend(values)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                            str(other)], check=True)
    print(f"CPU ms per trial, median of {args.rounds} rounds x {args.seeds} seeds "
          f"({args.strategy}, {args.trials} trials):")
    medians = {label: {task: statistics.median(v) for task, v in by_task.items()}
               for label, by_task in ms.items()}
    for task, new in medians["this"].items():
        old = medians[args.against][task]
        print(f"{task}: {args.against} {old:.1f}, this checkout {new:.1f} "
              f"(ratio {new / old:.2f})")
    if len(medians["this"]) > 1:
        old, new = (statistics.median(medians[label].values())
                    for label in (args.against, "this"))
        print(f"median over the tasks: {args.against} {old:.1f}, this checkout {new:.1f} "
              f"(ratio {new / old:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=[],
                        help="suite names or task.yaml paths (default: the whole suite)")
    parser.add_argument("--strategy", default="agent")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--against", metavar="REV",
                        help="also measure this git revision, in turn with this checkout")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --against: how many times each is measured")
    args = parser.parse_args()
    if args.against:
        compare(args)
    else:
        measure(args.tasks, args.strategy, args.seeds, args.trials)


if __name__ == "__main__":
    main()
