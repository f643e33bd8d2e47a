"""Command lines around the replay suite: `python -m envs.replay.optimum` on any task file,
and the benchmark's strategy and task lists (space- or comma-separated)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from envs.replay import optimum
from envs.replay.env import ReplayEnvironment
from envs.replay.optimum import exhaustive_optimum
from planner.cost import CostModel
from planner.spec import load_spec

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "envs" / "replay" / "examples" / "mot_gsm8k_llama2.yaml"


def _optimum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envs.replay.optimum", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_optimum_of_a_task_file() -> None:
    done = _optimum(str(EXAMPLE))
    assert done.returncode == 0, done.stderr
    expected = exhaustive_optimum(load_spec(EXAMPLE), 40.0)
    assert done.stdout.splitlines() == [
        f"mot-gsm8k-llama2: {expected.score:.6f} at 36.51 GPU-h (budget 40gpu-h, 18 "
        "allocations)",
        "  gsm8k: llama2-13b / pot2 / n=8 / oracle",
    ]


def test_optimum_leaves_unscored_the_plans_oracle_stands_in_for(monkeypatch) -> None:
    """A majority vote at n scores no more than `oracle` on the same samples, at no less
    cost: the optimum never computes one (the dearest score there is), and finds what it
    finds over every plan scored."""
    spec = load_spec(EXAMPLE)
    env = ReplayEnvironment(spec)
    asked: list[str] = []
    score = env.subtask_score
    monkeypatch.setattr(env, "subtask_score", lambda s, plan, *rest: (
        asked.append(plan.aggregator) or score(s, plan, *rest)))
    found = exhaustive_optimum(spec, 40.0, env)
    assert "oracle" in asked and "majority" not in asked
    every = optimum._optimum(spec, optimum.plan_arrays(env, CostModel(spec, env.calibration())),
                             40.0)
    assert "majority" in asked
    assert (found.score, found.allocation, found.space_size) == (
        every.score, every.allocation, every.space_size)


def test_optimum_under_another_budget(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["optimum", str(EXAMPLE), "--budget", "30gpu-h"])
    optimum.main()
    out = capsys.readouterr().out
    assert "(budget 30gpu-h" in out and "pot2 / n=4 / oracle" in out


def test_optimum_counts_the_allocations_near_it(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["optimum", str(EXAMPLE), "--near", "0.5", "1"])
    optimum.main()
    lines = capsys.readouterr().out.splitlines()
    spec = load_spec(EXAMPLE)
    fits, near = optimum.near_optimal(spec, 40.0, [0.5, 1.0])
    assert lines[2:] == [f"  at least 50% of it: {near[0.5]:,} of the {fits:,} allocations in "
                         "budget",
                         f"  at least 100% of it: {near[1.0]:,} of the {fits:,} allocations in "
                         "budget"]
    assert near[1.0] == 1 < near[0.5] <= fits < exhaustive_optimum(spec, 40.0).space_size


@pytest.mark.parametrize(("args", "message"), [
    (["missing.yaml"], "missing.yaml: no such task file"),
    ([str(EXAMPLE), "--budget", "1gpu-h"], "no allocation fits in 1 GPU-h; raise the budget"),
    # the first stage has plans within budget, the second none: nothing to enumerate
    ([str(ROOT / "envs" / "replay" / "tasks" / "mmlu_cascade_gsm8k_vote.yaml"), "--budget",
      "137.5gpu-h"], "no allocation fits in 137.5 GPU-h; raise the budget"),
    ([str(EXAMPLE), "--write"], "--write stores the suite's optima"),
    (["--budget", "1gpu-h"], "--budget applies to the task paths given"),
    (["--near", "0.97"], "--near counts for the task paths given"),
    ([str(EXAMPLE), "--near", "97"], "--near 97.0: fractions of the optimum lie in (0, 1]"),
])
def test_optimum_errors_are_one_line(monkeypatch, capsys, args, message) -> None:
    monkeypatch.setattr(sys, "argv", ["optimum", *args])
    with pytest.raises(SystemExit) as exit_:
        optimum.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("near", "message"), [
    ([], "7,254 allocations remain after pruning (93 x 78 plans per stage), more than the "
         "1,000 an exact optimum enumerates here; it needs fewer stages"),
    (["--near", "0.9"], "allocations have stages within budget"),
])
def test_a_space_too_large_to_enumerate_is_one_line(monkeypatch, capsys, near, message) -> None:
    """A pipeline of many stages (six of 120-163 plans each: 7e12 allocations) made the
    enumeration ask numpy for hundreds of GiB: a traceback."""
    monkeypatch.setattr(optimum, "MAX_ENUMERATED", 1000 if not near else 8000)
    task = ROOT / "envs" / "replay" / "tasks" / "pythia_gsm8k_math.yaml"
    monkeypatch.setattr(sys, "argv", ["optimum", str(task), *near])
    with pytest.raises(SystemExit) as exit_:
        optimum.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def _benchmark() -> ModuleType:
    if str(ROOT / "experiments") not in sys.path:  # it imports `sections` beside it
        sys.path.append(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("experiments_benchmark", ROOT / "experiments" /
                                                  "benchmark.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark() -> ModuleType:
    return _benchmark()


@pytest.mark.parametrize("argv", [["random,optuna"], ["random", "optuna"], ["random,", "optuna"],
                                  ["random, optuna"]])
def test_benchmark_strategies_by_comma_or_space(benchmark, argv) -> None:
    assert benchmark.parse_args(["--strategies", *argv]).strategies == ["random", "optuna"]


def test_benchmark_tasks_by_comma(benchmark) -> None:
    args = benchmark.parse_args(["--tasks", f"monkeys-gsm8k,{EXAMPLE}"])
    assert args.tasks == ["monkeys-gsm8k", str(EXAMPLE)]
    assert benchmark.resolve_tasks(args.tasks)[1] == EXAMPLE


@pytest.mark.parametrize(("call", "message"), [
    (lambda b: b.parse_args(["--strategies", "random,tpe"]),
     r"unknown strategies \['tpe'\]; choose from"),
    (lambda b: b.parse_args(["--strategies", "agent-llm"]), "agent-llm needs --llm-base-url"),
    (lambda b: b.resolve_tasks(["nope"]), r"unknown tasks \['nope'\]"),
])
def test_benchmark_unknown_names_exit_cleanly(benchmark, capsys, call, message) -> None:
    with pytest.raises(SystemExit) as exit_:
        call(benchmark)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and len(err.strip().splitlines()) == 1


def test_benchmark_readme_command_reruns_as_written(benchmark, tmp_path, monkeypatch) -> None:
    """The command quoted above a results table, run from the repository root, writes where
    the table's links point: a task file relative to the root and a non-default --out are
    in it (a live run's quoted command once left out its --out, and rerunning it as written
    overwrote the replay suite's results)."""
    monkeypatch.chdir(ROOT / "experiments")
    task = os.path.relpath(EXAMPLE, ROOT / "experiments")
    args = benchmark.parse_args(["--tasks", task, "--out", str(tmp_path / "live"),
                                 "--readme", str(tmp_path / "README.md"), "--seeds", "2"])
    text = benchmark._readme("table", [], args, ["random"], 1.0)
    command = re.search(r"`python experiments/benchmark.py (.*?)`", text).group(1).split()
    assert command[command.index("--tasks") + 1] == EXAMPLE.relative_to(ROOT).as_posix()
    assert command[command.index("--out") + 1] == str(tmp_path / "live")
    default = benchmark.parse_args(["--readme", str(tmp_path / "README.md")])
    assert "--out" not in benchmark._readme("table", [], default, ["random"], 1.0)


def test_benchmark_meters_search_compute(benchmark) -> None:
    """A short study on the example task: the meter pays each (prompt) sampling pass once, at
    the largest n the budget lets a plan serve (8 of the space's 16), over the task's
    recorded items."""
    rows = benchmark.run_job(benchmark.Job(EXAMPLE, "random", seed=0, trials=6))
    spent = [r["search_gpu_hours"] for r in rows]
    assert len(rows) == 6 and spent == sorted(spent) and spent[0] > 0
    # one pass = 357 items x (2NP + 8 x 2NO) FLOPs; two prompts at most
    one_pass = 357 * 2 * 1.3e10 * (1200 + 8 * 100) / (9.89e14 * 0.4 * 3600)
    assert spent[-1] / one_pass == pytest.approx(round(spent[-1] / one_pass))
    assert round(spent[-1] / one_pass) in (1, 2)
    assert max(r["best_frac"] for r in rows) <= 1 + 1e-12


def test_benchmark_brute_force_optimum_matches_the_exhaustive_one(benchmark) -> None:
    """What a live task's optimum is found by (every allocation within budget evaluated one
    by one), checked on a replay task, where the vectorised search gives the exact one."""
    spec = load_spec(EXAMPLE)
    env = ReplayEnvironment(spec)
    brute = benchmark.brute_force_optimum(spec, env)
    assert brute == pytest.approx(exhaustive_optimum(spec, benchmark._budget(spec), env).score)


def test_benchmark_budget_scale_is_a_task_of_its_own(benchmark) -> None:
    """`--budget-scale 0.75`: the task under 3/4 of its budget, named for the factor,
    scored against the exact optimum under that budget, its studies run under it; a factor
    under which nothing fits is one line and exit code 2."""
    spec = load_spec(EXAMPLE)
    budget = benchmark._budget(spec) * 0.75
    task = benchmark.load_task(EXAMPLE, 0.75)
    assert task.spec.name == f"{spec.name}@x0.75"
    assert benchmark._budget(task.spec) == pytest.approx(budget)
    exact = exhaustive_optimum(spec, budget, ReplayEnvironment(spec)).score
    assert task.optimum == exact < benchmark.load_task(EXAMPLE).optimum
    rows = benchmark.run_job(benchmark.Job(EXAMPLE, "random", seed=0, trials=4,
                                           budget_scale=0.75))
    assert {r["task"] for r in rows} == {task.spec.name}
    assert max(r["best_frac"] for r in rows) <= 1 + 1e-12
    assert benchmark.parse_args(["--budget-scale", "0.25", "4"]).budget_scale == [0.25, 4.0]
    with pytest.raises(SystemExit) as exit_:
        benchmark.load_task(EXAMPLE, 0.25)
    assert exit_.value.code == 2


@pytest.mark.parametrize("factor", ["0", "-1", "inf", "lots"])
def test_benchmark_budget_scale_must_be_positive(benchmark, capsys, factor) -> None:
    with pytest.raises(SystemExit) as exit_:
        benchmark.parse_args(["--budget-scale", factor])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "not a positive number" in err and len(err.strip().splitlines()) == 1
