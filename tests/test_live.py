"""Live environment on two tiny GPT-2s (one pretraining step each) and 6 validation items."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from envs import make_environment
from envs.live.env import LiveEnvironment
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.errors import SpecError
from planner.space import Allocation, Plan
from planner.spec import load_spec
from planner.store import Store, TrialStatus
from planner.study import optimize
from tools.zoo import build_tiny_model, synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; on a busy CPU two threads thrash."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bases")
    corpus = synthetic_corpus(40, seed=0)
    return {name: build_tiny_model("tiny", corpus, folder / name, steps=1, batch_size=4,
                                   seed=seed) for name, seed in (("m1", 0), ("m2", 1))}


def write_live_task(folder: Path, bases: dict[str, Path], val: list[dict] | None = None) -> Path:
    """A two-stage task (parse -> add) on wordsum data; returns the task.yaml path."""
    write_jsonl(folder / "train.jsonl", wordsum_records(20, seed=1))
    write_jsonl(folder / "val.jsonl", val or wordsum_records(6, seed=2))
    data = {"sources": {"train": "train.jsonl"}, "val": "val.jsonl"}
    stage = {"prompt_tokens": 10, "output_tokens": 5, "models": ["m1", "m2"],
             "methods": ["none", "full"], "samples": [1, 3], "aggregators": ["first", "majority"],
             "decoding": {"max_new_tokens": 4}}
    task = {
        "name": "live-tiny", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": 1000},
        "models": [{"name": n, "params": 1e5, "source": str(p)} for n, p in bases.items()],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "full", "kind": "full", "train_tokens": 200,
                     "options": {"steps": 2, "batch_size": 4, "lr": 0.01}}],
        "subtasks": [{"name": "parse", **stage, "data": {**data, "prompt": "{problem} sum:"}},
                     {"name": "add", "depends_on": ["parse"], **stage,
                      "data": {**data, "prompt": "{parse}="}}],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


@pytest.fixture
def task_path(tmp_path: Path, bases: dict[str, Path]) -> Path:
    return write_live_task(tmp_path, bases)


def env_for(task_path: Path, cache: Path) -> LiveEnvironment:
    return LiveEnvironment(load_spec(task_path), cache_dir=cache, progress=False)


def alloc(parse: Plan, add: Plan) -> Allocation:
    return Allocation.of({"parse": parse, "add": add})


def test_changing_only_n_or_aggregator_neither_trains_nor_samples(task_path: Path,
                                                                  tmp_path: Path) -> None:
    env = env_for(task_path, tmp_path / "cache")
    stats = env.cache.stats
    parse, add = Plan("m1", "full", samples=1, aggregator="first"), Plan("m2", "full")
    cold = env.run(alloc(parse, add))
    assert (stats.train_misses, stats.train_hits) == (2, 0)
    assert stats.sample_misses > 0
    sampled = stats.sample_misses

    warm = env.run(alloc(parse, Plan("m2", "full", samples=3, aggregator="majority")))
    assert (stats.train_misses, stats.train_hits, stats.sample_misses) == (2, 2, sampled)
    assert warm.prompts == cold.prompts

    # more parse samples may change parse's outputs: only add's new prompts are sampled
    rerun = env.run(alloc(Plan("m1", "full", samples=3, aggregator="majority"), add))
    seen = set(cold.prompts["add"]) | {env.data["add"].prompt(r) for r in env.data["add"].val}
    assert stats.train_misses == 2
    assert stats.sample_misses - sampled == len(set(rerun.prompts["add"]) - seen)

    for obs in (cold.observation, warm.observation):
        assert set(obs.subtask_scores) == {"parse", "add"}
        assert 0.0 <= obs.score <= 1.0
        assert set(obs.measured) == {"device_seconds", "train_tokens", "prompt_tokens",
                                     "completion_tokens"}
    assert cold.observation.measured["train_tokens"] == warm.observation.measured["train_tokens"]
    assert warm.observation.measured["completion_tokens"] > cold.observation.measured[
        "completion_tokens"]


def test_stage_outputs_feed_the_next_stage(task_path: Path, tmp_path: Path) -> None:
    env = env_for(task_path, tmp_path / "cache")
    add = Plan("m1", "none", samples=1, aggregator="first")
    runs = [env.run(alloc(Plan(model, "none", samples=1, aggregator="first"), add))
            for model in ("m1", "m2")]
    for run in runs:
        assert run.prompts["add"] == [f"{out}=" for out in run.outputs["parse"]]
        assert run.prompts["parse"][0].endswith(" sum:")
    assert runs[0].prompts["add"] != runs[1].prompts["add"]
    assert runs[0].prompts["parse"] == runs[1].prompts["parse"]


@pytest.mark.parametrize("strategy", ["random", "optuna"])
def test_optimize_runs_live_trials(strategy: str, task_path: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    spec = load_spec(task_path)
    env = make_environment(spec)
    assert isinstance(env, LiveEnvironment)
    env.progress = False
    result = optimize(spec, env, store=Store(f"sqlite:///{tmp_path / 'study.db'}"),
                      budget="1gpu-h", strategy=strategy, n_trials=3, seed=0)
    assert len(result.trials) == 3
    assert all(t.status is TrialStatus.OK for t in result.trials), [t.error for t in
                                                                     result.trials]
    assert all(t.measured["prompt_tokens"] > 0 for t in result.trials)
    assert result.best is not None
    assert (tmp_path / "cache" / "live" / "samples.sqlite").exists()


def test_a_second_process_reuses_the_cache(task_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    allocation = alloc(Plan("m1", "full", samples=3, aggregator="majority"),
                       Plan("m1", "full", samples=3, aggregator="majority"))
    first = env_for(task_path, cache).evaluate(allocation)
    script = (
        "import json, sys; from envs.live.env import LiveEnvironment; "
        "from planner.space import Allocation; from planner.spec import load_spec; "
        "env = LiveEnvironment(load_spec(sys.argv[1]), cache_dir=sys.argv[2], progress=False); "
        "obs = env.evaluate(Allocation.from_dict(json.loads(sys.argv[3]))); "
        "print(json.dumps({'score': obs.score, 'stats': vars(env.cache.stats)}))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(task_path), str(cache),
                          json.dumps(allocation.to_dict())], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    second = json.loads(out.stdout)
    assert second["stats"]["train_misses"] == second["stats"]["sample_misses"] == 0
    assert second["stats"]["train_hits"] == 2  # a fine-tune per stage
    assert second["score"] == first.score


def test_missing_field_in_live_data_names_file_and_field(tmp_path: Path,
                                                         bases: dict[str, Path]) -> None:
    val = wordsum_records(3, seed=2)
    del val[1]["problem"]
    path = write_live_task(tmp_path, bases, val=val)
    with pytest.raises(SpecError, match=r"val\.jsonl:2: record lacks field 'problem'"):
        env_for(path, tmp_path / "cache")
