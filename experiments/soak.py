"""Soak: two drivers on one study, workers and drivers killed with SIGKILL at random.

    OMP_NUM_THREADS=1 python experiments/soak.py --trials 300 --seconds 600
    OMP_NUM_THREADS=1 python experiments/soak.py --task envs/live/tasks/wordsum/task.yaml \
        --trials 12 --seconds 300 --kill-every 8 20

Starts two `planner optimize --executor process --workers 2` drivers on one study in one
SQLite file; every 1-4 s (`--kill-every`) kills one worker process (`planner.worker`) or,
one time in four, a whole driver, which is started again with `--resume`. When the study
holds --trials trials and both drivers have exited, it checks the store:

- lost: a trial number missing between 0 and the last (a claim that vanished);
- duplicated: an allocation with more than one trial that did not fail;
- stuck: a trial still running with no driver left.

All three must be 0. Also prints the kills, the trials that failed (a worker killed twice
in a row: recorded with its error, as a user would see it) and the planner's own CPU time
per trial, measured apart on the same task with the in-process executor.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from envs import make_environment
from planner.spec import load_spec
from planner.store import Store, TrialStatus
from planner.study import optimize

ROOT = Path(__file__).parents[1]
TASK = ROOT / "envs" / "replay" / "tasks" / "pythia_gsm8k_math.yaml"
PLANNER = Path(sys.executable).parent / "planner"


def workers_of(drivers: list[subprocess.Popen]) -> list[int]:
    """Pids of the live `planner.worker` processes the drivers started."""
    parents = {d.pid for d in drivers if d.poll() is None}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"planner.worker" in cmd and ppid in parents:
            found.append(int(proc.name))
    return found


def start_driver(task: Path, db: str, n_trials: int, resume: bool) -> subprocess.Popen:
    cmd = [str(PLANNER), "optimize", str(task), "--strategy", "random", "--study", "soak",
           "--trials", str(n_trials), "--executor", "process", "--workers", "2",
           "--db", db, "--json"] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def soak(task: Path, n_trials: int, seconds: float, seed: int,
         every: tuple[float, float]) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/soak.db"
        drivers = [start_driver(task, db, n_trials, resume=False)]
        while not Path(f"{tmp}/soak.db").exists() or not _has_study(db):
            time.sleep(0.2)
        drivers.append(start_driver(task, db, n_trials, resume=True))
        kills = Counter()
        begun = time.monotonic()
        while any(d.poll() is None for d in drivers) and time.monotonic() - begun < seconds:
            time.sleep(rng.uniform(*every))
            live = [i for i, d in enumerate(drivers) if d.poll() is None]
            if not live:
                break
            if rng.random() < 0.25:
                i = rng.choice(live)
                drivers[i].send_signal(signal.SIGKILL)
                drivers[i].wait()
                drivers[i] = start_driver(task, db, n_trials, resume=True)
                kills["driver"] += 1
            elif pids := workers_of(drivers):
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills["worker"] += 1
        for d in drivers:  # the last driver to stop has adopted every orphan
            d.wait()
        if any(t.status is TrialStatus.RUNNING for t in Store(db).trials("soak")):
            start_driver(task, db, n_trials, resume=True).wait()  # killed last: resume it
        trials = Store(db).trials("soak")
    numbers = [t.number for t in trials]
    lost = len(set(range(max(numbers, default=-1) + 1)) - set(numbers))
    kept = Counter(t.allocation.key() for t in trials if t.status is not TrialStatus.FAILED)
    duplicated = sum(c - 1 for c in kept.values() if c > 1)
    stuck = sum(t.status is TrialStatus.RUNNING for t in trials)
    failed = [t for t in trials if t.status is TrialStatus.FAILED]
    print(f"{len(trials)} trials in {time.monotonic() - begun:.0f} s; killed "
          f"{kills['worker']} workers and {kills['driver']} drivers")
    print(f"lost {lost}  duplicated {duplicated}  stuck {stuck}  failed {len(failed)}")
    for t in failed[:3]:
        print(f"  failed trial {t.number}: {t.error}")


def _has_study(db: str) -> bool:
    try:
        return any(s.name == "soak" for s in Store(db, create=False).studies())
    except Exception:  # the first driver is still creating the file's tables
        return False


def overhead(task: Path, n_trials: int) -> None:
    """The planner's CPU time per trial with the in-process executor (replay lookups
    included, which take microseconds)."""
    spec = load_spec(task)
    env = make_environment(spec)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        optimize(spec, env, store=Store(f"sqlite:///{tmp}/o.db"), budget=spec.budget or "",
                 strategy="random", n_trials=n_trials)
        cpu = time.process_time() - cpu
    print(f"planner overhead: {1000 * cpu / n_trials:.1f} ms CPU per trial "
          f"(random, {n_trials} trials, in-process executor, SQLite file)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", type=Path, default=TASK)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=900, help="stop killing after this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 4.0),
                        metavar=("MIN", "MAX"), help="seconds between kills, drawn uniformly")
    args = parser.parse_args()
    soak(args.task, args.trials, args.seconds, args.seed, tuple(args.kill_every))
    if load_spec(args.task).environment == "replay":  # a live trial's time is its training
        overhead(args.task, args.trials)


if __name__ == "__main__":
    main()
