"""`planner check`: dimensions, allocation counts and the budget's cut, before any trial."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from envs.replay.env import ReplayEnvironment
from planner import check
from planner.cost import CostModel
from planner.draws import study_draws
from planner.space import Allocation, SearchSpace
from planner.spec import TaskSpec
from tests.conftest import run_planner


def _brute_force(spec: TaskSpec) -> np.ndarray:
    space = SearchSpace(spec)
    cm = CostModel(spec, ReplayEnvironment(spec).calibration())
    return np.array([cm.estimate(Allocation(tuple(zip(space.subtasks, combo, strict=True))))
                     .total_gpu_hours
                     for combo in itertools.product(*(space.plans(s) for s in space.subtasks))])


def test_exact_summary_matches_every_allocation_priced(tiny_spec: TaskSpec) -> None:
    costs = _brute_force(tiny_spec)
    cm = CostModel(tiny_spec, ReplayEnvironment(tiny_spec).calibration())
    info = check.summarize(SearchSpace(tiny_spec), cm, 35.0)
    assert info.exact and info.allocations == len(costs) == 20 * 20
    assert info.plans == {"extract": 20, "solve": 20}
    assert info.cost_min_gpu_hours == pytest.approx(costs.min())
    assert info.cost_max_gpu_hours == pytest.approx(costs.max())
    assert info.feasible_fraction == pytest.approx(np.mean(costs <= 35.0))
    assert 0 < info.feasible_fraction < 1 and info.binds
    assert not check.summarize(SearchSpace(tiny_spec), cm, 1e9).binds
    dims = {d["name"]: d for d in info.dimensions["solve"]}
    assert dims["samples"] == {"name": "samples", "kind": "ordinal", "values": [1, 2, 4, 8, 16]}
    assert dims["mixture"]["values"] == [{"name": "default", "weights": {"solve/data": 1.0}}]


def test_the_arms_a_budget_draws_below_the_largest_n_are_named(tiny_spec: TaskSpec) -> None:
    cm = CostModel(tiny_spec, ReplayEnvironment(tiny_spec).calibration())
    space = SearchSpace(tiny_spec)
    draws = study_draws(space, cm, 35.0)
    cut = check.summarize(space, cm, 35.0).cut_draws
    assert cut and sum(map(len, cut.values())) == sum(n < 16 for n in draws.values())
    for subtask, arms in cut.items():
        for a in arms:
            model, method, mixture = a["arm"].split(" / ")
            assert draws[subtask, model, method, mixture, None] == a["samples"] < 16
    assert check.summarize(space, cm, 1e9).cut_draws == {}  # every arm read at n=16
    assert check.summarize(space, cm).cut_draws == {}  # no budget, no study


def test_large_spaces_are_sampled(tiny_spec: TaskSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "EXACT_LIMIT", 10)
    costs = _brute_force(tiny_spec)
    info = check.summarize(SearchSpace(tiny_spec), CostModel(tiny_spec), 35.0)
    assert not info.exact
    assert info.feasible_fraction == pytest.approx(np.mean(costs <= 35.0), abs=0.01)
    lo, hi = costs.min() * (1 - 1e-12), costs.max() * (1 + 1e-12)  # summed in another order
    assert lo <= info.cost_min_gpu_hours <= info.cost_max_gpu_hours <= hi


def _planner(*args: str) -> subprocess.CompletedProcess:
    return run_planner(*args)


def test_check_command(tiny_task_path: Path) -> None:
    r = _planner("check", str(tiny_task_path), "--budget", "35gpu-h")
    assert r.returncode == 0, r.stderr
    assert "tiny (replay): valid" in r.stdout
    assert "samples (ordinal): 1, 2, 4, 8, 16" in r.stdout
    assert "allocations: 400" in r.stdout and "it binds" in r.stdout
    assert "arms are drawn below n=16" in r.stdout
    data = json.loads(_planner("check", str(tiny_task_path), "--json").stdout)
    assert data["budget"] == "100gpu-h" and data["allocations"] == 400
    assert data["binds"] is False and data["feasible_fraction"] == 1.0
    bad = _planner("check", str(tiny_task_path), "--budget", "lots")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "bad budget" in bad.stderr


def test_check_refuses_a_budget_nothing_fits_as_optimize_does(tiny_task_path: Path) -> None:
    r = _planner("check", str(tiny_task_path), "--budget", "0.001gpu-h")
    assert r.returncode == 2
    assert "budget 0.001gpu-h (0.001 GPU-h): no allocation fits; it binds" in r.stdout
    line, = r.stderr.strip().splitlines()
    cheapest = line.split("the cheapest costs ")[1].split(" GPU-h")[0]
    refused = _planner("optimize", str(tiny_task_path), "--budget", "0.001gpu-h",
                       "--db", "sqlite://")
    assert refused.stderr.strip() == line  # the same line
    assert _planner("check", str(tiny_task_path), "--budget", f"{cheapest}gpu-h").returncode == 0


def test_a_long_list_of_values_is_shortened(tmp_path: Path) -> None:
    """Thousands of models made one line of thousands of names; the text shows the ends and
    the count, `--json` every one."""
    models = [f"m{i}" for i in range(40)]
    (tmp_path / "t.csv").write_text("model,item,n,c\n" + "".join(
        f"{m},{q},4,{(i + q) % 5}\n" for i, m in enumerate(models) for q in range(2)))
    (tmp_path / "task.yaml").write_text(json.dumps({
        "name": "wide", "environment": "replay", "budget": "1gpu-h",
        "workload": {"queries": 10},
        "models": [{"name": m, "params": 1e8 * (i + 1)} for i, m in enumerate(models)],
        "subtasks": [{"name": "s", "prompt_tokens": 10, "output_tokens": 10,
                      "models": models, "samples": [1, 2, 4], "aggregators": ["oracle"],
                      "replay": {"table": "t.csv", "item": "item", "n_samples": "n",
                                 "n_correct": "c"}}]}))
    r = _planner("check", str(tmp_path / "task.yaml"))
    assert r.returncode == 0, r.stderr
    assert "model (categorical): m0, m1, m2, m3, m4, ..., m38, m39 (40 values; --json lists " \
           "them)" in r.stdout
    assert "samples (ordinal): 1, 2, 4\n" in r.stdout
    data = json.loads(_planner("check", str(tmp_path / "task.yaml"), "--json").stdout)
    assert data["dimensions"]["s"][0]["values"] == models
