"""Live environment on two tiny GPT-2s (one pretraining step each) and a few validation items."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from envs import make_environment
from envs.live.env import LiveEnvironment, PipelineRun
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.artifact import artifact_of
from planner.cost import CostModel
from planner.errors import SpecError
from planner.search import AgentOptions, Runner
from planner.search.agent.screening import trains_prefixes
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import load_spec
from planner.store import Store, TrialRecord, TrialStatus
from planner.study import open_study, optimize
from tools.train import load_model
from tools.zoo import build_tiny_model, synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


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
                    {"name": "full", "kind": "full",
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


def plan(model: str, method: str, n: int = 1, aggregator: str = "first",
         mixture: str = "default") -> Plan:
    return Plan(model=model, method=method, mixture=mixture, samples=n, aggregator=aggregator)


def alloc(parse: Plan, add: Plan) -> Allocation:
    return Allocation.of({"parse": parse, "add": add})


MEASURED_COST = {"train_seconds", "train_flops", "train_capacity_flops", "peak_memory_bytes",
                 "sample_seconds", "sample_tokens", "sample_flops", "sample_capacity_flops",
                 "cpu_seconds", "cached_trainings", "cached_train_seconds",
                 "cached_sample_seconds", "spent_seconds"}
"""Measured cost keys of an allocation with a fine-tune (tests/test_calibration.py)."""


def test_changing_only_n_or_aggregator_neither_trains_nor_samples(task_path: Path,
                                                                  tmp_path: Path) -> None:
    env = env_for(task_path, tmp_path / "cache")
    stats = env.cache.stats
    parse, add = plan("m1", "full"), plan("m2", "full")
    cold = env.run(alloc(parse, add))
    assert (stats.train_misses, stats.train_hits) == (2, 0)
    assert stats.sample_misses > 0
    sampled = stats.sample_misses

    warm = env.run(alloc(parse, plan("m2", "full", 3, "majority")))
    assert (stats.train_misses, stats.train_hits, stats.sample_misses) == (2, 2, sampled)
    assert warm.prompts == cold.prompts

    # more parse samples may change parse's outputs: only add's new prompts are sampled
    rerun = env.run(alloc(plan("m1", "full", 3, "majority"), add))
    seen = set(cold.prompts["add"]) | {env.data["add"].prompt(r) for r in env.data["add"].val}
    assert stats.train_misses == 2
    assert stats.sample_misses - sampled == len(set(rerun.prompts["add"]) - seen)

    for obs in (cold.observation, warm.observation):
        assert set(obs.subtask_scores) == {"parse", "add"}
        assert 0.0 <= obs.score <= 1.0
        assert set(obs.measured) == {"device_seconds", "train_tokens", "prompt_tokens",
                                     "completion_tokens", "examples:parse/train",
                                     "examples:add/train", *MEASURED_COST}
        assert obs.measured["examples:parse/train"] == obs.measured["examples:add/train"] == 8
    assert cold.observation.measured["train_tokens"] == warm.observation.measured["train_tokens"]
    assert warm.observation.measured["completion_tokens"] > cold.observation.measured[
        "completion_tokens"]


def test_a_study_draws_an_arm_only_as_often_as_a_plan_within_budget_reads(
        tmp_path: Path, bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    task = yaml.safe_load(write_live_task(tmp_path, bases).read_text())
    task["models"][1]["params"] = 1e9  # m2 priced as a large model: the budget serves n=1
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    spec = load_spec(tmp_path / "task.yaml")
    env = env_for(tmp_path / "task.yaml", tmp_path / "cache")
    cost_model = CostModel(spec, env.calibration())
    large = alloc(plan("m2", "none"), plan("m1", "none", 3, "majority"))
    budget = cost_model.estimate(large).total_gpu_hours * 1.01
    assert cost_model.estimate(large.replace("parse", plan("m2", "none", 3, "majority"))
                               ).total_gpu_hours > budget
    store = Store(f"sqlite:///{tmp_path / 'study.db'}")
    study = open_study(store, spec, name="draws", budget=f"{budget}gpu-h", strategy="chosen",
                       seed=0)
    runner = Runner(env, store, study.name, cost_model, study.budget_gpu_hours)
    drawn: dict[Path, set[int]] = {}
    sample = env.samplers.sample

    def recorded(backend, target, prompts, n, **decoding):  # noqa: ANN001, ANN202
        drawn.setdefault(Path(target), set()).add(n)
        return sample(backend, target, prompts, n, **decoding)

    monkeypatch.setattr(env.samplers, "sample", recorded)
    trial = runner.run_trial(large)
    assert trial is not None and trial.status is TrialStatus.OK, trial
    assert drawn == {env.base_path("m2"): {1}, env.base_path("m1"): {3}}
    assert runner.draws[("parse", "m2", "none", "default", None)] == 1
    # outside a study every arm is drawn at the subtask's largest n, as before
    drawn.clear()
    env.evaluate(large)
    assert drawn[env.base_path("m2")] == {3}


def test_stage_outputs_feed_the_next_stage(task_path: Path, tmp_path: Path) -> None:
    env = env_for(task_path, tmp_path / "cache")
    add = plan("m1", "none")
    runs = [env.run(alloc(plan(model, "none"), add)) for model in ("m1", "m2")]
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


def test_a_second_process_reuses_the_cache_without_loading_a_model_library(
        task_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    allocation = alloc(plan("m1", "full", 3, "majority"), plan("m1", "full", 3, "majority"))
    first = env_for(task_path, cache).evaluate(allocation)
    script = (
        "import json, sys; from envs.live.env import LiveEnvironment; "
        "from planner.space import Allocation; from planner.spec import load_spec; "
        "env = LiveEnvironment(load_spec(sys.argv[1]), cache_dir=sys.argv[2], progress=False); "
        "obs = env.evaluate(Allocation.from_dict(json.loads(sys.argv[3]))); "
        "print(json.dumps({'score': obs.score, 'stats': vars(env.cache.stats), 'loaded': "
        "[m for m in ('torch', 'peft', 'transformers', 'openai') if m in sys.modules]}))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(task_path), str(cache),
                          json.dumps(allocation.to_dict())], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    second = json.loads(out.stdout)
    assert second["stats"]["train_misses"] == second["stats"]["sample_misses"] == 0
    assert second["stats"]["train_hits"] == 2  # a fine-tune per stage
    assert second["score"] == first.score
    # every fine-tune and sample came from the cache: no seconds spent importing what would
    # train or sample them (a worker per trial paid ~5 s of imports for each cached trial)
    assert second["loaded"] == []


def test_missing_field_in_live_data_names_file_and_field(tmp_path: Path,
                                                         bases: dict[str, Path]) -> None:
    val = wordsum_records(3, seed=2)
    del val[1]["problem"]
    path = write_live_task(tmp_path, bases, val=val)
    with pytest.raises(SpecError, match=r"val\.jsonl:2: record lacks field 'problem'"):
        env_for(path, tmp_path / "cache")


# before: a traceback (an unmatched brace), or accepted (the others)
@pytest.mark.parametrize(("edit", "expected"), [
    ({"prompt": "{problem sum:"}, "is no template (unmatched '{' in format spec)"),
    ({"prompt": "{} sum:"}, "has an empty {}"),
    ({"prompt": "sum:"}, "names no record field, so every item would get the same prompt"),
    ({"label": ""}, "data.label: String should have at least 1 character"),
    ({"sources": {"": "train.jsonl"}}, "data.sources..[key]: String should have at least 1"),
])
def test_a_live_subtasks_template_and_names_are_checked_when_the_task_is_read(
        tmp_path: Path, edit: dict, expected: str) -> None:
    folder = shutil.copytree(ROOT / "envs" / "live" / "tasks" / "wordsum", tmp_path / "task")
    task = yaml.safe_load((folder / "task.yaml").read_text())
    task["subtasks"][0]["data"].update(edit)
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    with pytest.raises(SpecError, match=re.escape(expected)):
        load_spec(folder / "task.yaml")


@pytest.mark.parametrize(("source", "expected"), [
    ("zoo:nope", "unknown zoo model 'nope'"),
    ("", "empty; give zoo:tiny"),
    ("no/such-model", "'no/such-model' is neither a local path nor an HF id in the local hub"),
    ("package:no_such_package/m.gguf", "package 'no_such_package' is not installed"),
])
def test_a_model_whose_weights_cannot_be_found_is_refused_before_any_trial(
        tmp_path: Path, source: str, expected: str) -> None:
    """Each was a failed trial for every plan of the model, found one trial at a time."""
    folder = shutil.copytree(ROOT / "envs" / "live" / "tasks" / "wordsum", tmp_path / "task")
    task = yaml.safe_load((folder / "task.yaml").read_text())
    task["models"][0]["source"] = source
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    with pytest.raises(SpecError, match=re.escape(f"models.{task['models'][0]['name']}.source: "
                                                  f"{expected}")):
        env_for(folder / "task.yaml", tmp_path / "cache")


def test_a_screen_is_the_full_evaluation_of_its_first_items_and_the_rest_is_drawn_later(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    val, cache = wordsum_records(6, seed=2), tmp_path / "cache"

    def task(folder: Path, records: list[dict]) -> Path:
        """The tiny task on `records`, scored by answer length: every item counts (the
        tiny models match no label)."""
        folder.mkdir()
        path = write_live_task(folder, bases, val=records)
        spec = yaml.safe_load(path.read_text())
        for stage in spec["subtasks"]:
            stage["metric"] = "screen_metric:length"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        (folder / "screen_metric.py").write_text(
            "def length(prediction, label):\n    return min(len(prediction or ''), 8) / 8\n")
        return path

    env = env_for(task(tmp_path / "all", val), cache)
    stats = env.cache.stats
    allocation = alloc(plan("m1", "none", 3, "majority"), plan("m2", "none", 3, "majority"))
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"fidelity must be in \(0, 1\]"):
            env.evaluate(allocation, bad)
    assert stats.sample_misses == 0

    def drawn_for(run: PipelineRun, first: int) -> set[tuple[str, str]]:
        """(stage, prompt) pairs a run samples: its first validation records and pipeline."""
        return {(s, p) for s, d in env.data.items()
                for p in [d.prompt(r) for r in d.val[:first]] + run.prompts[s]}

    screen = env.run(allocation, fidelity=0.5)  # ceil(0.5 * 6) = 3 items of each
    assert {s: len(p) for s, p in screen.prompts.items()} == {"parse": 3, "add": 3}
    assert stats.sample_misses == len(drawn_for(screen, 3))

    # the same allocation on a task holding only those 3 records: the very same evaluation
    half = env_for(task(tmp_path / "half", val[:3]), cache)
    alone = half.run(allocation)
    assert half.cache.stats.sample_misses == 0  # every sample is the screen's
    assert alone.prompts == screen.prompts and alone.outputs == screen.outputs
    assert 0 < screen.observation.score == alone.observation.score
    assert min(screen.observation.subtask_scores.values()) > 0
    assert screen.observation.subtask_scores == alone.observation.subtask_scores
    for k in ("prompt_tokens", "completion_tokens", "sample_tokens", "sample_seconds"):
        assert screen.observation.measured[k] == pytest.approx(alone.observation.measured[k])

    # a full evaluation reuses the screened items' samples and draws only the other half
    before = stats.sample_misses
    full = env.run(allocation)
    assert {s: p[:3] for s, p in full.prompts.items()} == screen.prompts
    assert {s: o[:3] for s, o in full.outputs.items()} == screen.outputs
    assert stats.sample_misses - before == len(drawn_for(full, 6) - drawn_for(screen, 3)) > 0
    assert full.observation.measured["prompt_tokens"] > screen.observation.measured[
        "prompt_tokens"]
    again = env.evaluate(allocation, 1.0)  # fidelity 1: the full evaluation, all cached
    assert stats.sample_misses - before == len(drawn_for(full, 6) - drawn_for(screen, 3))
    assert (again.score, again.subtask_scores) == (full.observation.score,
                                                   full.observation.subtask_scores)
    assert again.measured["prompt_tokens"] == full.observation.measured["prompt_tokens"]
    # scored on the screen's items too, from the same samples: what the screen scored
    on_items = env.evaluate(allocation, 1.0, screen=0.5).on_screen_items
    assert (on_items.fidelity, on_items.score, on_items.subtask_scores) == (
        0.5, screen.observation.score, screen.observation.subtask_scores)
    assert full.observation.on_screen_items is None  # not asked for
    assert stats.sample_misses - before == len(drawn_for(full, 6) - drawn_for(screen, 3))
    with pytest.raises(ValueError, match="come with a full evaluation"):
        env.evaluate(allocation, 0.5, screen=0.25)


def test_a_screen_trains_a_prefix_of_the_fine_tune_which_the_full_evaluation_resumes(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    path = write_live_task(tmp_path, bases)
    task = yaml.safe_load(path.read_text())
    task["methods"][1]["options"]["steps"] = 4
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    allocation = alloc(plan("m1", "full", 3, "majority"), plan("m2", "none"))
    artifact = artifact_of(load_spec(path), "parse", allocation["parse"])
    env = env_for(path, tmp_path / "cache")

    screen = env.run(allocation, fidelity=0.5)  # 2 of the 4 steps, 3 of the 6 items
    (prefix,) = [json.loads(p.read_text())
                 for p in (tmp_path / "cache").glob("live/artifacts/*-2steps/meta.json")]
    assert (prefix["steps_trained"], prefix["resumed_from"]) == (2, 0)
    full = env.run(allocation)  # resumes at step 2: trains only steps 3 and 4
    assert env.cache.stats.train_misses == 2
    uninterrupted = env_for(path, tmp_path / "fresh")
    whole = uninterrupted.run(allocation)

    tokens = [r.observation.measured["train_tokens"] for r in (screen, full, whole)]
    assert tokens[0] + tokens[1] == tokens[2] and 0 < tokens[0] < tokens[2]
    flops = [r.observation.measured["train_flops"] for r in (screen, full, whole)]
    assert flops[0] + flops[1] == pytest.approx(flops[2])
    assert (full.observation.score, full.observation.subtask_scores) == (
        whole.observation.score, whole.observation.subtask_scores)
    resumed, _ = load_model(env.model_path(artifact))
    trained, _ = load_model(uninterrupted.model_path(artifact))
    for name, weight in trained.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], weight), name
    # the screen sampled the prefix model: the finished one's samples are drawn afresh
    assert screen.prompts["parse"] == full.prompts["parse"][:3]


def test_a_one_stage_search_stops_when_its_best_provably_is_the_optimum(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    """Live samples bear out the bound the agent stops on: per model, oracle at n reads the
    first n of one set of samples, so it scores no less than any plan of that model at a
    smaller n or under another aggregator. Once both models were tried under oracle at
    their largest n, the agent stops, and every plan evaluated afterwards scores no more
    (a metric with partial credit, so the untrained models do not all score 0)."""
    from planner.search.agent.graph import SETTLED

    path = write_live_task(tmp_path, bases)
    task = yaml.safe_load(path.read_text())
    stage = task["subtasks"][0]
    stage.update(methods=["none"], aggregators=["first", "majority", "oracle"],
                 samples=[1, 2, 4], metric="overlap:chars",
                 decoding={"max_new_tokens": 4, "temperature": 1.0})
    task["subtasks"] = [stage]
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    (tmp_path / "overlap.py").write_text(
        "def chars(prediction, label):\n"
        "    return len(set(prediction) & set(label)) / max(1, len(set(label)))\n")
    spec = load_spec(path)
    env = env_for(path, tmp_path / "cache")
    result = optimize(spec, env, store=Store("sqlite://"), budget=spec.budget,
                      strategy="agent", n_trials=20, agent=AgentOptions(patience=None))
    assert result.stopped.startswith(SETTLED)
    assert sorted(t.allocation["parse"].describe() for t in result.trials) == [
        "m1 / none / n=4 / oracle", "m2 / none / n=4 / oracle"]
    scores = [env.evaluate(Allocation.of({"parse": p})).score
              for p in SearchSpace(spec).plans("parse")]
    assert max(scores) == result.best.score > 0


def test_the_agent_screens_training_by_rungs_and_never_a_probe(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    path = write_live_task(tmp_path, bases)
    task = yaml.safe_load(path.read_text())
    task["methods"][1]["options"]["steps"] = 4  # full: the probes train it
    task["methods"].append({"name": "lora", "kind": "lora",  # the probes leave it to screens
                            "options": {"steps": 4, "batch_size": 4, "lr": 0.01}})
    for stage in task["subtasks"]:  # scored by answer length: the tiny models match no label
        stage["methods"] = ["none", "full", "lora"]
        stage["metric"] = "screen_metric:length"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    (tmp_path / "screen_metric.py").write_text(
        "def length(prediction, label):\n    return min(len(prediction or ''), 8) / 8\n")
    spec = load_spec(path)
    env = env_for(path, tmp_path / "cache")
    trials = optimize(spec, env, store=Store("sqlite://"), budget=spec.budget,
                      strategy="agent", n_trials=16, seed=0,
                      agent=AgentOptions(patience=None, screen=0.5)).trials
    cost_model = CostModel(spec, env.calibration())
    prefix = [t for t in trials if t.screen and trains_prefixes(cost_model, t.allocation)]
    assert prefix, "no screen trained a prefix of a fine-tune"
    assert not any(t.screen for t in trials if t.source == "agent-init"
                   and trains_prefixes(cost_model, t.allocation))
    for t in prefix:  # 2 of the 4 steps of each fine-tune it trains: half the tokens at most
        assert t.measured["train_tokens"] < 0.6 * max(u.measured["train_tokens"]
                                                       for u in trials if not u.screen)
    # a prefix screen is evaluated in full only when promoted, leading its rung (the prefix
    # screens before) and above 0; the others are dropped
    promoted = [(t, u) for t in prefix for u in trials
                if not u.screen and u.allocation.key() == t.allocation.key()]
    assert promoted and len(promoted) < len(prefix)
    for t, u in promoted:
        rung = max(v.score for v in prefix if v.number < u.number)
        assert u.source == "agent-promote" and 0 < t.score >= 0.95 * rung


# --- mixtures over sources, methods from the registry, one shared multi-task artifact -------

DRAWS = 2 * 50  # steps x batch_size of both fine-tuning methods: examples drawn per training


def write_mixture_task(folder: Path, bases: dict[str, Path]) -> Path:
    """parse trains on 1-digit (`easy`) and/or 2-digit (`hard`) problems; `multi` in both
    stages is one artifact trained on parse's easy and add's train records."""
    for name, records in (("easy", wordsum_records(30, seed=1, digits=1)),
                          ("hard", wordsum_records(30, seed=3, digits=2)),
                          ("train", wordsum_records(30, seed=4)),
                          ("val", wordsum_records(3, seed=2))):
        write_jsonl(folder / f"{name}.jsonl", records)
    loop = {"steps": 2, "batch_size": 50, "lr": 0.01}
    stage = {"prompt_tokens": 10, "output_tokens": 5, "models": ["m1"], "samples": [1],
             "aggregators": ["first"], "decoding": {"max_new_tokens": 3}}
    task = {
        "name": "live-mix", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": 1000},
        "models": [{"name": "m1", "params": 1e5, "source": str(bases["m1"])}],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "lora", "kind": "lora", "options": {**loop, "lora_r": 4}},
                    {"name": "full", "kind": "full", "options": loop}],
        "subtasks": [
            {"name": "parse", **stage, "methods": ["none", "lora", "full"],
             "mixtures": {"easy": {"easy": 1}, "hard": {"hard": 1},
                          "even": {"easy": 1, "hard": 1}, "multi": {"easy": 1, "add/train": 1}},
             "data": {"sources": {"easy": "easy.jsonl", "hard": "hard.jsonl"},
                      "val": "val.jsonl", "prompt": "{problem} sum:"}},
            {"name": "add", "depends_on": ["parse"], **stage, "methods": ["none", "full"],
             "mixtures": {"own": {"train": 1}, "multi": {"train": 1, "parse/easy": 1}},
             "data": {"sources": {"train": "train.jsonl"}, "val": "val.jsonl",
                      "prompt": "{parse}="}},
        ],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def examples(trial: TrialRecord) -> dict[str, float]:
    return {k.removeprefix("examples:"): v for k, v in trial.measured.items()
            if k.startswith("examples:")}


def test_mixtures_shape_training_data_and_a_shared_artifact_trains_once(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    spec = load_spec(write_mixture_task(tmp_path, bases))
    env = LiveEnvironment(spec, cache_dir=tmp_path / "cache", progress=False)
    store = Store(f"sqlite:///{tmp_path / 'study.db'}")
    study = open_study(store, spec, name="mix", budget="1gpu-h", strategy="chosen", seed=0)
    runner = Runner(env, store, study.name, CostModel(spec), study.budget_gpu_hours)
    stats = env.cache.stats

    def trial(parse: Plan, add: Plan) -> TrialRecord:
        record = runner.run_trial(alloc(parse, add))
        assert record.status is TrialStatus.OK, record.error
        return record

    base = plan("m1", "none", mixture="own")
    easy, hard, even = (trial(plan("m1", "full", mixture=m), base)
                        for m in ("easy", "hard", "even"))
    assert examples(easy) == {"parse/easy": DRAWS}  # not one hard example
    assert examples(hard) == {"parse/hard": DRAWS}
    assert examples(even)["parse/easy"] + examples(even)["parse/hard"] == DRAWS
    assert 0.35 * DRAWS <= examples(even)["parse/easy"] <= 0.65 * DRAWS
    assert (stats.train_misses, stats.train_hits) == (3, 0)  # three mixtures, three models

    lora = trial(plan("m1", "lora", mixture="even"), plan("m1", "full", mixture="own"))
    assert examples(lora) == {"parse/easy": examples(even)["parse/easy"],  # same seed, draw
                              "parse/hard": examples(even)["parse/hard"], "add/train": DRAWS}
    assert stats.train_misses == 5

    multi = trial(plan("m1", "full", mixture="multi"), plan("m1", "full", mixture="multi"))
    assert (stats.train_misses, stats.train_hits) == (6, 0)  # one training serves both stages
    assert sum(examples(multi).values()) == DRAWS  # and is counted once
    assert set(examples(multi)) == {"parse/easy", "add/train"}
    assert 0.35 * DRAWS <= examples(multi)["add/train"] <= 0.65 * DRAWS
    shared = artifact_of(spec, "parse", runner.history()[-1].allocation["parse"])
    assert shared == artifact_of(spec, "add", runner.history()[-1].allocation["add"])
    assert multi.cost.train_gpu_hours == pytest.approx(
        runner.cost_model.plan_cost("parse", plan("m1", "full", mixture="multi")).train_gpu_hours)

    folders = [p.parent for p in (tmp_path / "cache").glob("live/artifacts/*/meta.json")]
    metas = {f: json.loads((f / "meta.json").read_text()) for f in folders}
    assert sorted(sum(m["examples"].values()) for m in metas.values()) == [DRAWS] * 6
    assert {"parse/easy", "add/train"} in [set(m["sources"]) for m in metas.values()]
    lora_dir = next(f for f, m in metas.items() if json.loads(m["settings"])["kind"] == "lora")
    assert json.loads((lora_dir / "adapter_config.json").read_text())["r"] == 4  # typed option


def test_random_trials_report_the_data_of_each_distinct_artifact(
        tmp_path: Path, bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANNER_CACHE", str(tmp_path / "cache"))
    spec = load_spec(write_mixture_task(tmp_path, bases))
    env = make_environment(spec)
    assert isinstance(env, LiveEnvironment)
    env.progress = False
    result = optimize(spec, env, store=Store(f"sqlite:///{tmp_path / 'study.db'}"),
                      budget="1gpu-h", strategy="random", n_trials=4, seed=1)
    for t in result.trials:
        assert t.status is TrialStatus.OK, t.error
        artifacts = {artifact_of(spec, s, p) for s, p in t.allocation.items()}
        trained = {a for a in artifacts if a.method.fine_tunes}
        assert sum(examples(t).values()) == DRAWS * len(trained)
        assert set(examples(t)) <= {src for a in trained for src in a.sources}


def test_a_method_that_cannot_run_live_is_named(tmp_path: Path, bases: dict[str, Path]) -> None:
    path = write_mixture_task(tmp_path, bases)
    task = yaml.safe_load(path.read_text())
    task["methods"].append({"name": "ckpt", "kind": "pretrain", "train_tokens": 1e9})
    task["subtasks"][1]["methods"].append("ckpt")
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match=r"methods\.ckpt: kind 'pretrain' cannot run live"):
        env_for(path, tmp_path / "cache")


def test_a_fine_tune_without_training_files_is_named(tmp_path: Path,
                                                     bases: dict[str, Path]) -> None:
    path = write_live_task(tmp_path, bases)
    task = yaml.safe_load(path.read_text())
    del task["subtasks"][0]["data"]["sources"]  # parse's default mixture: its own sources
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match=r"subtasks\.parse\.mixtures\.default: 'parse/data' "
                                        "has no training file"):
        env_for(path, tmp_path / "cache")


def test_a_metric_beside_the_task_needs_no_pythonpath_and_failures_exit_1(
        tmp_path: Path, bases: dict[str, Path]) -> None:
    path = write_live_task(tmp_path, bases)
    task = yaml.safe_load(path.read_text())
    for stage in task["subtasks"]:
        stage["methods"] = ["none"]
    task["subtasks"][-1]["metric"] = "my_metric:strict"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    (tmp_path / "my_metric.py").write_text(
        "def strict(prediction, label):\n    raise RuntimeError('metric refuses ' + label)\n")
    elsewhere = tmp_path / "elsewhere"  # `python -m` puts the cwd on sys.path: not the task's
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PLANNER_CACHE"] = str(tmp_path / "cache")
    r = subprocess.run([sys.executable, "-m", "planner.cli", "optimize", str(path), "--trials",
                        "2", "--strategy", "random", "--db", f"sqlite:///{tmp_path / 'x.db'}"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: every trial failed (2); the first, trial 0: RuntimeError: "
                           "metric refuses"), last
