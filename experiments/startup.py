"""How long `planner` takes to answer: the commands that read a study, and a short study.

    python experiments/startup.py                      # this checkout
    python experiments/startup.py --against beec42d    # that revision too, and ratios

Each command runs `--runs` times in a fresh process (the console script's entry point, in
the checkout's root), and its median wall time is printed: `--help`, `check` of the tutor
task, then `studies`, `show` and `trace` of a 20-trial agent study that the checkout wrote
first, a 30-trial agent study of the tutor task into a new database each run, and a
one-trial study of the live wordsum task whose trial the cache answers (the same first
trial, trained and sampled into a fresh cache once before): its driver and its worker
process. What these commands wait for is mostly imports: a replay lookup takes
microseconds, and a cached live trial a tenth of a second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from planner_cpu import checkout, run_in_checkout

HERE = Path(__file__).resolve().parent
TASK = "envs/replay/tasks/tutor_mmlu_gsm8k_math.yaml"
LIVE = "envs/live/tasks/wordsum/task.yaml"
STUDY = "tutor-mmlu-gsm8k-math-agent"
_PLANNER = "import sys; from planner.cli import main; sys.argv[0] = 'planner'; main()"


def planner(root: Path, *args: str, **env: str) -> float:
    """Seconds `planner ARGS` takes in a fresh process run in `root` (with `env` set)."""
    begin = time.perf_counter()
    run_in_checkout(root, [sys.executable, "-c", _PLANNER, *args], **env)
    return time.perf_counter() - begin


def measure(root: Path, runs: int) -> dict[str, float]:
    """Median seconds of each command in the checkout at `root`."""
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/study.db"
        planner(root, "optimize", TASK, "--trials", "20", "--db", db)
        commands = {"--help": ["--help"], "check": ["check", TASK],
                    "studies": ["studies", "--db", db], "show": ["show", STUDY, "--db", db],
                    "trace": ["trace", STUDY, "--db", db]}
        times = {name: statistics.median(planner(root, *args) for _ in range(runs))
                 for name, args in commands.items()}
        times["optimize, 30 trials"] = statistics.median(
            planner(root, "optimize", TASK, "--trials", "30", "--db",
                    f"sqlite:///{tmp}/run{i}.db") for i in range(runs))
        cache = {"PLANNER_CACHE": f"{tmp}/cache"}
        planner(root, "optimize", LIVE, "--trials", "1", "--db", f"sqlite:///{tmp}/warm.db",
                **cache)  # trains and samples the first trial into the cache
        times["optimize wordsum, 1 cached trial"] = statistics.median(
            planner(root, "optimize", LIVE, "--trials", "1", "--db",
                    f"sqlite:///{tmp}/live{i}.db", **cache) for i in range(runs))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs of each command")
    parser.add_argument("--against", metavar="REV", help="git revision to measure as well")
    args = parser.parse_args()
    runs = {"this checkout": measure(HERE.parent, args.runs)}
    if args.against:
        with checkout(args.against) as other:
            runs[args.against] = measure(other, args.runs)
    print(f"median seconds of {args.runs} runs, 2 CPU cores:")
    print("| command | " + " | ".join(runs) + (" | ratio |" if args.against else " |"))
    print("|---|" + "---|" * (len(runs) + bool(args.against)))
    for name, now in runs["this checkout"].items():
        cells = [f"{run[name]:.2f}" for run in runs.values()]
        if args.against:
            cells.append(f"{now / runs[args.against][name]:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
