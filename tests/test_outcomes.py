"""No silent outcomes: `planner optimize` says why it stopped, refuses a budget nothing fits,
says when the --from plan was evaluated before, and prints near-zero scores readably."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from planner.cost import Cost
from planner.report import failure, score_text
from planner.space import Allocation
from planner.store import TrialRecord, TrialStatus
from tests.conftest import run_planner


def planner(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_planner(*args, cwd=cwd)


def test_budget_nothing_fits_is_refused_before_anything_is_written(
        tmp_path: Path, tiny_task_path: Path) -> None:
    r = planner("optimize", str(tiny_task_path), "--budget", "0.001gpu-h", cwd=tmp_path)
    assert r.returncode == 2
    line, = r.stderr.strip().splitlines()
    assert line.startswith(f"Error: {tiny_task_path}: budget 0.001gpu-h: no allocation fits; "
                           "the cheapest costs ")
    assert "--budget" in line
    assert not (tmp_path / "planner.db").exists()
    # the figure it names is a budget that fits the cheapest allocation
    cheapest = line.split("the cheapest costs ")[1].split(" GPU-h")[0]
    r = planner("optimize", str(tiny_task_path), "--budget", f"{cheapest}gpu-h",
                "--strategy", "random", "--trials", "2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trials"] >= 1


def test_a_cost_is_shown_as_a_budget_that_fits_it() -> None:
    from planner.cli import _rounded_up

    assert _rounded_up(0.06372023725750725) == "0.06373"  # was shown as 0.06372
    assert _rounded_up(0.4879609) == "0.488" and _rounded_up(1e-9) == "1e-09"
    for cost in (0.06372023725750725, 0.3142211694073475, 9.99949, 123456.7, 3e14):
        assert float(_rounded_up(cost)) >= cost


def test_search_says_why_it_stopped_and_what_it_spent(tmp_path: Path,
                                                      tiny_task_path: Path) -> None:
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--strategy", "random",
                "--trials", "4", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["stopped"] == "4 trials run" and data["failure"] is None
    assert data["search_gpu_hours"] > 0
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--strategy", "random",
                "--trials", "6", "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "stopped: 6 trials run; evaluating the trials cost" in r.stderr
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--strategy", "random",
                "--trials", "2", "--resume", cwd=tmp_path)  # it said "2 trials run" and ran none
    assert r.returncode == 0, r.stderr
    assert "stopped: the study already holds 6 trials, more than the 2 asked for;" in r.stderr


def test_a_study_without_agent_steps_says_so_when_a_step_is_asked(
        tmp_path: Path, tiny_task_path: Path) -> None:
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--strategy", "random",
                "--trials", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = planner("trace", "tiny-random", "--step", "1", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == ("Error: --step: study 'tiny-random' has no step 1; it has none: "
                                "only the agent records steps; leave --step out for its trials")


def test_agent_says_it_converged(tmp_path: Path, tiny_task_path: Path) -> None:
    r = planner("optimize", str(tiny_task_path), "--budget", "35gpu-h", "--trials", "60",
                "--patience", "2", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["stopped"].startswith("converged: no better score in 2 proposals")
    assert data["trials"] < 60


def test_from_a_plan_the_study_evaluated_says_so(tmp_path: Path, tiny_task_path: Path) -> None:
    args = ("--budget", "35gpu-h", "--strategy", "random", "--trials", "3")
    assert planner("optimize", str(tiny_task_path), *args, cwd=tmp_path).returncode == 0
    r = planner("export", "tiny-random", "-o", "plan", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = planner("optimize", str(tiny_task_path), *args, "--resume", "--from", "plan",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--from: the study evaluated this allocation before (trial" in r.stderr
    assert "not run again" in r.stderr


def _trial(number: int, status: TrialStatus, error: str | None = None) -> TrialRecord:
    return TrialRecord(number, Allocation.of({}), status, None, {}, Cost(0.0, 0.0),
                       error=error)


def test_failure_names_the_first_failed_trial_and_its_cause() -> None:
    trials = [_trial(0, TrialStatus.OVER_BUDGET),
              _trial(1, TrialStatus.FAILED, "Traceback...\nRuntimeError: out of memory"),
              _trial(2, TrialStatus.FAILED, "ValueError: x")]
    assert failure(trials) == ("every trial failed (2); the first, trial 1: RuntimeError: "
                               "out of memory")
    assert failure([_trial(0, TrialStatus.OVER_BUDGET)]) == \
        "no trial was evaluated: all 1 were over budget"
    assert failure([]) == "no trial was run"


@pytest.mark.parametrize(("score", "text"), [(None, "-"), (0.0, "0.0000"), (0.8765, "0.8765"),
                                             (2.5e-05, "2.5e-05"), (0.000123, "0.000123")])
def test_near_zero_scores_are_readable(score: float | None, text: str) -> None:
    assert score_text(score) == text
