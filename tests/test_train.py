"""`planner train DIR`: optimize a small live task, export it, retrain it from the export alone
and get the study's score back; bad folders are one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from envs import make_environment, resolve_for_export
from envs.live.env import LiveEnvironment
from envs.live.reproduce import shift_seeds
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.cli import main
from planner.export import export_files, write_export
from planner.search import best_trial
from planner.space import Allocation, Plan
from planner.spec import load_spec
from planner.store import Store
from planner.study import optimize
from tools.zoo import build_tiny_model, synthetic_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("tiny", synthetic_corpus(40, seed=0),
                            tmp_path_factory.mktemp("bases") / "m1", steps=1, batch_size=4)


def write_task(folder: Path, base: Path) -> Path:
    """parse -> add, both answering "7": ten steps of fine-tuning learn it in part, so scores
    are not 0 and move with the seeds."""
    records = [{**r, "parse": "7", "add": "7"} for r in wordsum_records(24, seed=1)]
    write_jsonl(folder / "train.jsonl", records[:16])
    write_jsonl(folder / "val.jsonl", records[16:])
    stage = {"prompt_tokens": 10, "output_tokens": 2, "models": ["m1"],
             "methods": ["none", "full"], "samples": [1, 3], "aggregators": ["first", "majority"],
             "decoding": {"max_new_tokens": 2}}
    data = {"sources": {"train": "train.jsonl"}, "val": "val.jsonl"}
    task = {
        "name": "live-seven", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": 1000},
        "models": [{"name": "m1", "params": 1e5, "source": str(base)}],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "full", "kind": "full",
                     "options": {"steps": 10, "batch_size": 16, "lr": 0.01}}],
        "subtasks": [{"name": "parse", **stage, "data": {**data, "prompt": "{problem} sum:"}},
                     {"name": "add", "depends_on": ["parse"], **stage,
                      "data": {**data, "prompt": "{problem} {parse}="}}],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def export_best(task: Path, db: Path, out: Path, **kwargs: object) -> float:
    """Run a short random study of `task`, export its best trial to `out`; its score."""
    spec = load_spec(task)
    result = optimize(spec, make_environment(spec), store=Store(f"sqlite:///{db}"),
                      budget=spec.budget, strategy="random", seed=1, study="s",
                      task_path=str(task), **kwargs)
    best = best_trial(result.trials)
    assert best is not None
    files, _ = export_files(spec, result.study, best, "planner",
                            resolve_for_export(spec, best.allocation))
    write_export(files, out)
    return best.score


def planner(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """`planner ARGS` in this process; its exit code."""
    monkeypatch.setattr(sys, "argv", ["planner", *args])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_round_trip_reproduces_the_study_score(base: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    tuned = Plan(model="m1", method="full", mixture="default", samples=3, aggregator="majority")
    study_score = export_best(write_task(tmp_path, base), tmp_path / "s.db", tmp_path / "exp",
                              n_trials=3, start_from=Allocation.of({"parse": tuned,
                                                                    "add": tuned}))
    assert study_score > 0

    r = subprocess.run([sys.executable, "-m", "planner.cli", "train", "exp", "--json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [run["shift"] for run in result["runs"]] == [0, 1]
    assert result["score"] == result["study_score"] == study_score  # on CPU: exactly
    assert result["noise"] == abs(result["runs"][1]["score"] - result["score"])
    assert result["agrees"] is True

    # seed +0 retrained the study's very models (into a fresh cache), seed +1 others
    study_losses = {json.loads(m.read_text())["final_loss"]
                    for m in (tmp_path / "cache/live/artifacts").glob("*/meta.json")}
    assert result["outputs"] == {"parse": "outputs/parse", "add": "outputs/add"}
    for folder in result["outputs"].values():
        meta = json.loads((tmp_path / "exp" / folder / "meta.json").read_text())
        assert meta["final_loss"] in study_losses
        assert (tmp_path / "exp" / folder / "model.safetensors").is_file()
    cache = tmp_path / "exp/.planner-cache"
    assert len(list((cache / "live/artifacts").glob("*/meta.json"))) == 4

    # a score the retrained models cannot give: exit 1 (the cache given is reused as it is)
    plan = tmp_path / "exp/plan.yaml"
    plan.write_text(yaml.safe_dump({**yaml.safe_load(plan.read_text()), "score": 2.0}))
    assert planner(monkeypatch, "train", str(tmp_path / "exp"), "--seeds", "1",
                   "--cache-dir", str(cache)) == 1
    assert "does NOT agree" in capsys.readouterr().out


def test_shifted_seeds_move_every_training_and_sampling_seed(base: Path,
                                                             tmp_path: Path) -> None:
    spec = load_spec(write_task(tmp_path, base))
    moved = shift_seeds(spec, 3)
    assert [m.options.seed for m in moved.methods if m.kind == "full"] == [3]
    assert [s.decoding.seed for s in moved.subtasks] == [3, 3]
    assert shift_seeds(spec, 0) == spec and moved.root == spec.root
    LiveEnvironment(moved, cache_dir=tmp_path / "cache", progress=False)  # still a valid task


def test_not_an_export_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert planner(monkeypatch, "train", str(tmp_path)) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "not an export folder" in message
    assert "planner export" in message


def test_replay_export_is_one_line(tiny_task_path: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    export_best(tiny_task_path, tmp_path / "s.db", tmp_path / "exp", n_trials=2)
    assert planner(monkeypatch, "train", str(tmp_path / "exp")) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "task/task.yaml: missing" in message
    assert "live task" in message
