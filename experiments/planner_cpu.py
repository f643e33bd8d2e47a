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

`--instructions` counts the instructions the planner executes per trial instead of timing
it: valgrind's callgrind counts them, from after the first-call warm-up to the process's
end, in a process per task and checkout (PYTHONHASHSEED=0). Runs of one checkout agree to
0.3%, where CPU time varies by up to 30% between runs on a shared virtual machine, so one
round compares two revisions; it runs about 50 times slower than native (`--seeds 1` for
a quick comparison). Needs valgrind (Debian: apt-get install valgrind).

    python experiments/planner_cpu.py --against HEAD~3 --instructions --seeds 1
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from benchmark import Job, load_task, resolve_tasks, run_job, split_names

HERE = Path(__file__).resolve().parent
_LINE = re.compile(r"^(?P<task>\S+): (?P<ms>[\d. ]+) ms/trial", re.MULTILINE)


def cpu_ms_per_trial(job: Job) -> float:
    start = time.process_time()
    rows = run_job(job)
    return 1000 * (time.process_time() - start) / len(rows)


def measure(tasks: list[str], strategy: str, seeds: int, trials: int, count: bool) -> None:
    """Print each task's CPU ms per trial, per seed; with `count` (the process runs under
    callgrind, instrumentation off), run the studies counted and print their trials."""
    for path in resolve_tasks(split_names(tasks)):
        name = load_task(path).spec.name
        run_job(Job(path, strategy, 0, 5))  # first-call imports and caches, untimed
        if not gc.get_freeze_count():  # as `planner`'s command line freezes its modules
            gc.freeze()
        if count:
            subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True,
                           capture_output=True)
            done = sum(len(run_job(Job(path, strategy, seed, trials))) for seed in range(seeds))
            print(f"{name}: {done} trials", flush=True)
            continue
        ms = [cpu_ms_per_trial(Job(path, strategy, seed, trials)) for seed in range(seeds)]
        print(f"{name}: {' '.join(f'{m:.1f}' for m in ms)} ms/trial "
              f"(median {statistics.median(ms):.1f})", flush=True)


def _child(cmd: list[str], root: Path, args: argparse.Namespace, tasks: list[str],
           **env: str) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (a planner_cpu.py) on this run's strategy, seeds, trials and `tasks` in a
    subprocess that imports the planner from the checkout at `root`, one thread a process."""
    return run_in_checkout(
        root, [*cmd, "--strategy", args.strategy, "--seeds", str(args.seeds), "--trials",
               str(args.trials), "--tasks", *tasks], cwd=root / "experiments", **env)


def run_tree(root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """The checkout at `root` measured by its own copy of this script: ms per trial of each
    seed, per task."""
    # a task file goes to the child by its absolute path (the child runs in experiments/), a
    # suite name as it is (each checkout reads its own suite file)
    tasks = [str(Path(t).resolve()) if Path(t).is_file() else t for t in split_names(args.tasks)]
    out = _child([sys.executable, str(root / "experiments" / "planner_cpu.py")], root, args,
                 tasks).stdout
    return {m["task"]: [float(x) for x in m["ms"].split()] for m in _LINE.finditer(out)}


def instructions_per_trial(root: Path, task: str, args: argparse.Namespace) -> float:
    """Instructions per trial of the studies of one task on the checkout at `root`, counted
    by callgrind in a process of their own: this script (and harness) with `--count`,
    importing the planner from `root`."""
    done = _child(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                   "--callgrind-out-file=/dev/null", sys.executable, str(HERE / "planner_cpu.py"),
                   "--count"], root, args, [task], PYTHONHASHSEED="0")
    counted = re.search(r"Collected : ([\d,]+)", done.stderr)
    trials = re.search(r": (\d+) trials$", done.stdout, re.MULTILINE)
    if counted is None or trials is None:
        raise RuntimeError(f"no count from callgrind for {task} in {root}:\n{done.stderr[-2000:]}")
    return int(counted[1].replace(",", "")) / int(trials[1])


def count(args: argparse.Namespace, trees: dict[str, Path]) -> None:
    """Print instructions per trial of each task on each checkout in `trees` (label ->
    root), two processes at a time, and the ratio of the last to the first."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("planner_cpu.py: --instructions needs valgrind's callgrind; install it (Debian: "
              "apt-get install valgrind) or time the planner instead (leave the flag out)",
              file=sys.stderr)
        sys.exit(2)
    # a task file's path, not its name, goes to the child: only a suite task has a name
    # the child resolves
    paths = {load_task(p).spec.name: str(p.resolve())
             for p in resolve_tasks(split_names(args.tasks))}
    jobs = [(name, label, root) for name in paths for label, root in trees.items()]
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda j: instructions_per_trial(j[2], paths[j[0]], args), jobs))
    found: dict[str, dict[str, float]] = {}
    for (name, label, _), n in zip(jobs, counts, strict=True):
        found.setdefault(name, {})[label] = n / 1e6
    print(f"Million instructions per trial ({args.strategy}, {args.seeds} seeds x "
          f"{args.trials} trials, setup included):")
    for name, by_label in found.items():
        values = list(by_label.values())
        ratio = f" (ratio {values[-1] / values[0]:.3f})" if len(values) > 1 else ""
        print(f"{name}: " + ", ".join(f"{label} {v:.2f}" for label, v in by_label.items())
              + ratio)


def run_in_checkout(root: Path, cmd: list[str], cwd: Path | None = None,
                    **env: str) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (in `cwd`, default `root`) in a subprocess that imports the planner from the
    checkout at `root`, one thread a process; its output captured, a failure raised."""
    return subprocess.run(cmd, cwd=cwd or root, check=True, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1",
                               **env})


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary worktree of git revision `rev` of this repository (exit 2 if none)."""
    repo = HERE.parent
    known = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                            f"{rev}^{{commit}}"], capture_output=True)
    if known.returncode:
        print(f"{Path(sys.argv[0]).name}: --against {rev}: no such git revision in {repo}; "
              "pass a commit, tag or branch (e.g. HEAD~1)", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "--quiet",
                        str(tree), rev], check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force",
                            str(tree)], check=True)


def compare(args: argparse.Namespace) -> None:
    """This checkout and revision `args.against`, timed in turn `args.rounds` times."""
    ms: dict[str, dict[str, list[float]]] = {"this": {}, args.against: {}}
    with checkout(args.against) as other:
        for _ in range(args.rounds):
            for label, root in ((args.against, other), ("this", HERE.parent)):
                for task, values in run_tree(root, args).items():
                    ms[label].setdefault(task, []).extend(values)
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
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per trial under valgrind's callgrind "
                             "instead of timing (deterministic; about 50 times slower)")
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instructions and args.against:
        with checkout(args.against) as other:
            count(args, {args.against: other, "this checkout": HERE.parent})
    elif args.instructions:
        count(args, {"this checkout": HERE.parent})
    elif args.against:
        compare(args)
    else:
        measure(args.tasks, args.strategy, args.seeds, args.trials, args.count)


if __name__ == "__main__":
    main()
