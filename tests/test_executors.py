"""Executors: trials in subprocesses and on a local Ray instance, with real kills, timeouts
and retries; a killed driver's workers exit and its trials re-run under their own numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from functools import partial
from pathlib import Path

import pytest

from planner.executors import ProcessExecutor
from planner.search import AgentOptions
from planner.spec import load_spec
from planner.store import Store, TrialStatus
from planner.study import optimize
from tests.executor_envs import MarkedEnv, attempts, most_at_once

TASK = Path(__file__).parents[1] / "envs" / "replay" / "tasks" / "monkeys_gsm8k.yaml"
POSTGRES = os.environ.get("PLANNER_TEST_POSTGRES_URL")


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    folder = tmp_path / "marks"
    folder.mkdir()
    return folder


def _study(tmp_path: Path, executor, strategy: str = "random", n_trials: int = 4,
           retries: int = 1, **kwargs):
    spec = load_spec(TASK)
    store = Store(f"sqlite:///{tmp_path / 'study.db'}")
    return optimize(spec, executor.factory(), store=store, budget="2000gpu-h",
                    strategy=strategy, n_trials=n_trials, executor=executor, retries=retries,
                    **kwargs)


@pytest.mark.parametrize("strategy", ["optuna", "agent"])  # random: the tests below
def test_process_workers_run_trials_at_once(tmp_path: Path, marks: Path, strategy: str) -> None:
    env = partial(MarkedEnv, load_spec(TASK), str(marks), 1.0, together=True)
    result = _study(tmp_path, ProcessExecutor(env, 2), strategy, n_trials=4,
                    agent=AgentOptions(proposals_per_step=2, patience=None))
    trials = result.trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.status is TrialStatus.OK for t in trials), [t.error for t in trials]
    assert len({t.allocation.key() for t in trials}) == 4  # a batch never repeats itself
    assert most_at_once(marks) == 2
    assert result.stopped == "4 trials run"


@pytest.mark.skipif(not POSTGRES, reason="no PostgreSQL: set PLANNER_TEST_POSTGRES_URL "
                    "(.ci/run does)")
@pytest.mark.xdist_group("postgres")  # one database for all: one xdist worker (`make test`)
def test_agent_on_workers_with_study_and_checkpoints_in_postgres(marks: Path) -> None:
    from planner.search.agent.strategy import checkpointer

    env = partial(MarkedEnv, load_spec(TASK), str(marks), 0.5, together=True)
    study = f"workers-{uuid.uuid4().hex[:8]}"
    store = Store(str(POSTGRES))
    result = optimize(load_spec(TASK), env(), store=store, budget="2000gpu-h", strategy="agent",
                      n_trials=4, study=study, executor=ProcessExecutor(env, 2),
                      agent=AgentOptions(proposals_per_step=2, patience=None))
    assert [(t.number, t.status) for t in result.trials] == [
        (n, TrialStatus.OK) for n in range(4)]
    assert most_at_once(marks) == 2
    with checkpointer(str(POSTGRES)) as saver:  # the graph's state is in PostgreSQL
        assert saver.get_tuple({"configurable": {"thread_id": study}}) is not None


def test_a_killed_worker_is_attempted_again_under_its_number(tmp_path: Path,
                                                             marks: Path) -> None:
    env = partial(MarkedEnv, load_spec(TASK), str(marks), 0.0, "kill-first")
    trials = _study(tmp_path, ProcessExecutor(env, 2), n_trials=2).trials
    assert [(t.number, t.status, t.error) for t in trials] == [
        (0, TrialStatus.OK, None), (1, TrialStatus.OK, None)]
    assert sorted(attempts(marks).values()) == [2, 2]


def test_without_retries_a_killed_worker_fails_its_trial(tmp_path: Path, marks: Path) -> None:
    env = partial(MarkedEnv, load_spec(TASK), str(marks), 0.0, "kill-first")
    trials = _study(tmp_path, ProcessExecutor(env, 1), n_trials=1, retries=0).trials
    assert trials[0].status is TrialStatus.FAILED
    assert "WorkerLost" in trials[0].error and "signal 9" in trials[0].error


def test_transient_errors_are_retried_and_others_are_not(tmp_path: Path, marks: Path) -> None:
    flaky = partial(MarkedEnv, load_spec(TASK), str(marks), 0.0, "unreachable-first")
    assert [t.status for t in _study(tmp_path, ProcessExecutor(flaky, 1), n_trials=1).trials] \
        == [TrialStatus.OK]
    assert list(attempts(marks).values()) == [2]

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "marks").mkdir()
    env = partial(MarkedEnv, load_spec(TASK), str(wrong / "marks"), 0.0, "always-wrong")
    trial = _study(wrong, ProcessExecutor(env, 1), n_trials=1).trials[0]
    assert trial.status is TrialStatus.FAILED
    assert trial.error == "ValueError: bad allocation for this toy"
    assert list(attempts(wrong / "marks").values()) == [1]


def test_a_trial_past_its_time_limit_is_killed_and_failed(tmp_path: Path, marks: Path) -> None:
    env = partial(MarkedEnv, load_spec(TASK), str(marks), 600.0)
    begun = time.monotonic()
    trial = _study(tmp_path, ProcessExecutor(env, 1, timeout_s=10), n_trials=1).trials[0]
    assert time.monotonic() - begun < 60
    assert trial.status is TrialStatus.FAILED
    assert trial.error.startswith("TimeoutError: the trial ran past its limit of 10 s")
    pid = int(next(marks.glob("*.start")).read_text().split()[0])
    assert not _alive(pid)


DRIVER = textwrap.dedent("""
    import sys
    from functools import partial
    from planner.executors import ProcessExecutor
    from planner.spec import load_spec
    from planner.store import Store
    from planner.study import optimize
    from tests.executor_envs import MarkedEnv

    task, db, marks = sys.argv[1:]
    spec = load_spec(task)
    env = partial(MarkedEnv, spec, marks, 600.0)
    optimize(spec, env(), store=Store(db), budget="2000gpu-h", strategy="random",
             n_trials=4, study="s", executor=ProcessExecutor(env, 2))
""")


def test_a_killed_driver_leaves_no_worker_and_loses_no_trial(tmp_path: Path,
                                                             marks: Path) -> None:
    db = f"sqlite:///{tmp_path / 'study.db'}"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(TASK), db, str(marks)],
                              cwd=Path(__file__).parents[1])
    try:
        deadline = time.monotonic() + 120
        while len(list(marks.glob("*.start"))) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, "workers never began"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    workers = [int(f.read_text().split()[0]) for f in marks.glob("*.start")]
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "a worker outlived its driver"

    store = Store(db)
    assert [t.status for t in store.trials("s")] == [TrialStatus.RUNNING] * 2
    left = {t.number: t.allocation.key() for t in store.trials("s")}
    env = partial(MarkedEnv, load_spec(TASK), str(marks), 0.0)
    trials = optimize(load_spec(TASK), env(), store=store, budget="2000gpu-h",
                      strategy="random", n_trials=4, study="s", resume=True,
                      executor=ProcessExecutor(env, 2)).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.status is TrialStatus.OK for t in trials)
    assert {t.number: t.allocation.key() for t in trials[:2]} == left  # same numbers
    assert len({t.allocation.key() for t in trials}) == 4


def test_ray_tasks_run_a_study_and_a_lost_worker_is_retried(tmp_path: Path,
                                                            marks: Path) -> None:
    ray = pytest.importorskip("ray")
    from planner.executors import RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        env = partial(MarkedEnv, load_spec(TASK), str(marks), 0.5, "kill-first", together=True)
        result = _study(tmp_path, RayExecutor(env, 2), "optuna", n_trials=4)
    finally:
        ray.shutdown()
    assert [(t.number, t.status) for t in result.trials] == [
        (n, TrialStatus.OK) for n in range(4)], [t.error for t in result.trials]
    assert sorted(attempts(marks).values()) == [2, 2, 2, 2]  # each worker killed once
    # two at once, the killed attempts counted: each attempt waits for a peer (`together`),
    # since a fresh Ray worker per attempt starts in seconds on a busy machine
    assert most_at_once(marks) == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose: it holds no memory
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"
