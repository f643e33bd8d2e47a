"""Two drivers on one study: no crash, no allocation evaluated twice, no trial lost or
duplicated, on SQLite and PostgreSQL, for every strategy.

`test_two_processes` runs two `planner optimize` processes on one study for real. A
`sitecustomize` on their path makes each wait at its first evaluation until the other one
is evaluating too, then take `TWO_DRIVERS_PAUSE` seconds per trial (a replay evaluation is
instant): both drive the study at once, every time. PostgreSQL tests need
`PLANNER_TEST_POSTGRES_URL` (`.ci/run` starts a throwaway server and sets it); without it
they are skipped.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from planner.cost import Cost
from planner.search import STRATEGIES
from planner.space import Allocation, Plan
from planner.store import Store, TrialStatus

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "envs/replay/tasks/monkeys_gsm8k.yaml"
TRIALS = 12
POSTGRES = os.environ.get("PLANNER_TEST_POSTGRES_URL")
# one database for all: its tests share one xdist worker (`make test`)
needs_postgres = [pytest.mark.skipif(
    not POSTGRES, reason="no PostgreSQL: set PLANNER_TEST_POSTGRES_URL (.ci/run does)"),
    pytest.mark.xdist_group("postgres")]
DATABASES = ["sqlite", pytest.param("postgres", marks=needs_postgres)]

SITECUSTOMIZE = """
import os, time
from pathlib import Path
from envs.replay.env import ReplayEnvironment

_evaluate = ReplayEnvironment.evaluate
_barrier = Path(os.environ["TWO_DRIVERS_BARRIER"])


def evaluate(self, allocation, fidelity=1.0, draws=None, screen=None):
    (_barrier / str(os.getpid())).touch()
    deadline = time.time() + 20  # the other one crashed: go on alone
    while len(list(_barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(float(os.environ["TWO_DRIVERS_PAUSE"]))
    return _evaluate(self, allocation, fidelity, draws, screen)


ReplayEnvironment.evaluate = evaluate
"""


def _url(database: str, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}" if database == "sqlite" else str(POSTGRES)


def _driver(tmp_path: Path, url: str, study: str, strategy: str, *args: str,
            pause: float = 0.03) -> subprocess.Popen:
    """A `planner optimize` process on the study, its evaluations slowed (`SITECUSTOMIZE`)."""
    site, barrier = tmp_path / "site", tmp_path / "barrier"
    if not site.is_dir():
        site.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        barrier.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(site),
           "TWO_DRIVERS_BARRIER": str(barrier), "TWO_DRIVERS_PAUSE": str(pause)}
    command = [sys.executable, "-m", "planner.cli", "optimize", str(TASK), "--strategy",
               strategy, "--trials", str(TRIALS), "--study", study, "--db", url, "--json",
               *args]
    return subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _check(url: str, study: str) -> list[str]:
    """Every trial of the study finished, numbered 0..TRIALS-1, each allocation once; the
    drivers that ran them."""
    trials = Store(url, create=False).trials(study)
    keys = [t.allocation.key() for t in trials]
    assert [t.number for t in trials] == list(range(TRIALS))  # none lost, none twice
    assert all(t.status.is_finished() for t in trials)  # none left running
    assert len(set(keys)) == len(keys)  # no allocation evaluated twice
    return [t.driver for t in trials]


# every strategy on SQLite; on PostgreSQL the two that keep state of their own in the
# database too (Optuna's study, the agent's checkpoints): the others only share the store
@pytest.mark.parametrize(("strategy", "database"), [
    *((s, "sqlite") for s in STRATEGIES),
    *(pytest.param(s, "postgres", marks=needs_postgres) for s in ("optuna", "agent"))])
def test_two_processes(strategy: str, database: str, tmp_path: Path) -> None:
    url, study = _url(database, tmp_path), f"two-{strategy}-{uuid.uuid4().hex[:8]}"
    drivers = [_driver(tmp_path, url, study, strategy) for _ in range(2)]
    outputs = [d.communicate(timeout=120) for d in drivers]
    crashes = [err[-2000:] for d, (_, err) in zip(drivers, outputs, strict=True) if d.returncode]
    assert crashes == []
    assert len(set(_check(url, study))) == 2  # both drove the study


def test_a_killed_driver_s_running_trial_is_run_again(tmp_path: Path) -> None:
    """Kill -9 mid-evaluation: a driver started after adopts the trial (the liveness test is
    the same on every database: the driver's process is gone from this host)."""
    url, study = _url("sqlite", tmp_path), f"killed-{uuid.uuid4().hex[:8]}"
    doomed = _driver(tmp_path, url, study, "random", pause=30)
    for stale in (tmp_path / "barrier" / "a", tmp_path / "barrier" / "b"):
        stale.touch()  # no barrier: one driver
    deadline = time.time() + 60
    while time.time() < deadline and not _running(url, study):
        time.sleep(0.1)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    assert _running(url, study) == [0]  # killed in its first evaluation
    heir = _driver(tmp_path, url, study, "random", "--resume", pause=0)
    _, err = heir.communicate(timeout=120)
    assert heir.returncode == 0, err[-2000:]
    assert len(set(_check(url, study))) == 1  # the heir adopted trial 0 and ran the rest


def _running(url: str, study: str) -> list[int]:
    """The numbers of the study's running trials (none before it exists)."""
    store = Store(url)
    if store.get_study(study) is None:
        return []
    return [t.number for t in store.trials(study) if t.status is TrialStatus.RUNNING]


def _alloc(i: int) -> Allocation:
    plan = Plan(model=f"m{i}", method="ckpt-a", mixture="default", samples=1,
                aggregator="oracle")
    return Allocation.of({"solve": plan})


def _hammer(store: Store, study: str, allocations: list[Allocation], threads: int,
            max_trials: int | None = None) -> None:
    """Each thread tries to claim every allocation, in its own order."""
    def claim(seed: int) -> None:
        for a in random.Random(seed).sample(allocations, len(allocations)):
            store.start_trial(study, a, Cost(0.0, 0.0), max_trials=max_trials)
            store.add_step(study, "evaluate", {})

    workers = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


@pytest.mark.parametrize("database", DATABASES)
@pytest.mark.parametrize("max_trials", [None, 7])
def test_trial_claims_are_atomic(database: str, max_trials: int | None,
                                 tmp_path: Path) -> None:
    store, study = Store(_url(database, tmp_path)), f"claims-{uuid.uuid4().hex[:8]}"
    store.create_study(name=study, task_name="t", task_path="", task={}, budget="1gpu-h",
                       budget_gpu_hours=1.0, strategy="random", seed=0)
    allocations = [_alloc(i) for i in range(20)]
    _hammer(store, study, allocations, threads=6, max_trials=max_trials)
    trials = store.trials(study)
    assert [t.number for t in trials] == list(range(max_trials or 20))
    assert len({t.allocation for t in trials}) == len(trials)
    assert [s.number for s in store.steps(study)] == list(range(6 * 20))


def test_a_failed_allocation_may_be_claimed_again(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_study(name="s", task_name="t", task_path="", task={}, budget="1gpu-h",
                       budget_gpu_hours=1.0, strategy="random", seed=0)
    first = store.start_trial("s", _alloc(0), Cost(0.0, 0.0))
    assert store.start_trial("s", _alloc(0), Cost(0.0, 0.0)) is None  # running: claimed
    store.finish_trial("s", first, TrialStatus.FAILED, error="boom")
    assert store.start_trial("s", _alloc(0), Cost(0.0, 0.0)) == 1


def test_seats_and_adoption(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_study(name="s", task_name="t", task_path="", task={}, budget="1gpu-h",
                       budget_gpu_hours=1.0, strategy="random", seed=0)
    with store.driving("s") as a, store.driving("s") as b:
        assert (a.seat, b.seat) == (0, 1)
        assert store.live_drivers("s") == {a.token, b.token}
        mine = store.start_trial("s", _alloc(0), Cost(0.0, 0.0), driver=a.token)
        crashed = store.start_trial("s", _alloc(1), Cost(0.0, 0.0), driver="gone:1:x")
        assert not store.adopt_trial("s", mine, b.token)  # a lives: its trial is its own
        assert store.adopt_trial("s", crashed, b.token)
        assert not store.adopt_trial("s", crashed, a.token)  # b adopted it first
    with store.driving("s") as c:
        assert c.seat == 0 and store.live_drivers("s") == {c.token}
