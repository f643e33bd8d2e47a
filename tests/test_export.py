"""The exported plan: one training entry per distinct fine-tune, in other tools' terms."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from planner.cost import Cost
from planner.export import PLAN_FILE, Resolved, export_files, jobs_of
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec
from planner.store import StudyRecord, TrialRecord, TrialStatus
from planner.train_configs import axolotl, llamafactory, trl

TASK = {
    "name": "t", "workload": {"queries": 1},
    "models": [{"name": "m", "params": 1e8, "source": "org/m"}],
    "methods": [{"name": "none", "kind": "none"},
                {"name": "lora", "kind": "lora",
                 "options": {"steps": 10, "batch_size": 2, "lora_r": 12,
                             "lora_targets": ["q_proj", "v_proj"]}},
                {"name": "full", "kind": "full", "options": {"steps": 10, "batch_size": 2}},
                {"name": "soft", "kind": "prompt"}],
    "subtasks": [{"name": s, "prompt_tokens": 4, "output_tokens": 6, "models": ["m"],
                  "methods": ["none", "lora", "full", "soft"], "samples": [1, 4],
                  "aggregators": ["first", "majority", "oracle"],
                  "mixtures": {"own": {}, "mt": {"x": 1, f"{other}/x": 1}}}
                 for s, other in (("a", "b"), ("b", "a"))]}
SPEC = TaskSpec.model_validate(TASK)
STUDY = StudyRecord("s", "t", "", {}, "1gpu-h", 1.0, "random", 0, 0.0)
BASES = {"m": "org/m"}


def plan(method: str, mixture: str = "own", n: int = 4, aggregator: str = "majority") -> Plan:
    return Plan(model="m", method=method, mixture=mixture, samples=n, aggregator=aggregator)


def _trial(a: Plan, b: Plan) -> TrialRecord:
    return TrialRecord(3, Allocation.of({"a": a, "b": b}), TrialStatus.OK, 0.5,
                       {"a": 0.7, "b": 0.7}, Cost(0.1, 0.2))


def plan_document(trial: TrialRecord) -> dict:
    """The exported plan.yaml of `trial`, read back."""
    files, _ = export_files(SPEC, STUDY, trial, "planner", Resolved(BASES))
    return yaml.safe_load(files[PLAN_FILE])


def test_a_shared_fine_tune_is_exported_once() -> None:
    doc = plan_document(_trial(plan("lora", "mt"), plan("lora", "mt")))
    [entry] = doc["training"]
    assert entry["name"] == "a_b" and entry["serves"] == ["a", "b"]
    assert entry["base_model"] == "org/m" and entry["output_dir"] == "outputs/a_b"
    assert entry["kind"] == "lora" and entry["mixture"] == {"a/x": 0.5, "b/x": 0.5}
    assert entry["train_tokens"] == 10 * 2 * (4 + 6)


def test_private_fine_tunes_and_base_models() -> None:
    trial = _trial(plan("lora", n=1, aggregator="first"), plan("none", n=1, aggregator="first"))
    doc = plan_document(trial)
    assert [e["serves"] for e in doc["training"]] == [["a"]]
    assert doc["training"][0]["mixture"] == {"a/data": 1.0}  # no sources declared: the data


def test_tool_configs_carry_the_mixture_and_the_method() -> None:
    job = jobs_of(SPEC, _trial(plan("lora", "mt"), plan("lora", "mt")).allocation, BASES)["b"]
    assert job is not None and job.serves == ("a", "b")
    lf = llamafactory(job).keys
    assert lf["finetuning_type"] == "lora" and lf["lora_rank"] == 12
    assert lf["lora_target"] == "q_proj,v_proj" and lf["template"] == "empty"
    assert lf["dataset"] == "m.a.x,m.b.x" and lf["interleave_probs"] == "0.5,0.5"
    assert lf["mix_strategy"] == "interleave_under" and lf["max_steps"] == 10
    ax = axolotl(job)
    assert ax.keys["adapter"] == "lora" and ax.keys["lora_target_modules"] == ["q_proj", "v_proj"]
    assert ax.keys["datasets"][0]["path"] == "data/a_b.mixture.jsonl"
    assert any("mixture weights" in line for line in ax.unexpressed)
    t = trl(job).keys
    assert [(d["data_files"], d["fraction"]) for d in t["datasets"]] == [
        ("data/m.a.x.jsonl", 0.5), ("data/m.b.x.jsonl", 0.5)]
    assert t["use_peft"] is True and t["lora_r"] == 12 and t["completion_only_loss"] is True


def test_full_fine_tune_on_one_source() -> None:
    job = jobs_of(SPEC, _trial(plan("full"), plan("none")).allocation, BASES)["a"]
    assert job is not None
    lf = llamafactory(job).keys
    assert lf["finetuning_type"] == "full" and "mix_strategy" not in lf
    assert axolotl(job).keys["adapter"] is None
    assert axolotl(job).keys["datasets"][0]["path"] == "data/m.a.data.jsonl"
    assert "fraction" not in trl(job).keys["datasets"][0]
    assert trl(job).keys["use_peft"] is False


def test_serving_shares_one_server_per_base_and_names_what_vllm_cannot_do() -> None:
    files, unexpressed = export_files(SPEC, STUDY, _trial(plan("lora"), plan("soft")),
                                      "llamafactory", Resolved(BASES))
    serving = yaml.safe_load(files["serving.yaml"])
    [server] = serving["servers"]
    assert server["subtasks"] == ["a"]  # b's soft prompt has no vLLM server
    assert "--lora-modules a=outputs/a" in server["command"]
    assert "--max-lora-rank 16" in server["command"]  # r=12 rounded up to a vLLM rank
    assert "--generation-config vllm" in server["command"]
    assert serving["subtasks"]["a"]["request"]["model"] == "a"
    assert serving["subtasks"]["a"]["request"]["n"] == 4
    assert serving["subtasks"]["b"]["server"] is None
    assert any(line.startswith("b: prompt tuning: vLLM") for line in unexpressed)
    assert any(line.startswith("b: kind prompt: llamafactory has no") for line in unexpressed)
    info = json.loads(files["data/dataset_info.json"])
    assert info["m.a.data"]["columns"] == {"prompt": "prompt", "response": "completion"}
    readme = files["README.md"]
    assert "llamafactory-cli train llamafactory/a.yaml" in readme
    assert all(line in readme for line in unexpressed)


def test_a_full_fine_tune_is_served_as_its_own_model_and_oracle_is_named() -> None:
    trial = _trial(plan("full", aggregator="oracle"), plan("none", n=1, aggregator="first"))
    files, unexpressed = export_files(SPEC, STUDY, trial, "trl", Resolved(BASES))
    servers = {s["name"]: s for s in yaml.safe_load(files["serving.yaml"])["servers"]}
    assert servers["a"]["command"].startswith("vllm serve outputs/a ")
    assert servers["m"]["command"].startswith("vllm serve org/m ")
    assert "--enable-lora" not in servers["m"]["command"]
    assert any("aggregator oracle" in line for line in unexpressed)
    assert any(line.startswith("data: a replay task") for line in unexpressed)


def test_models_without_a_source_are_named_as_loaded_by_name() -> None:
    trial = _trial(plan("lora"), plan("none", n=1, aggregator="first"))
    unsourced = TaskSpec.model_validate({**TASK, "models": [{"name": "m", "params": 1e8}]})
    files, unexpressed = export_files(unsourced, STUDY, trial, "axolotl", Resolved({"m": "m"}))
    note = ("models m: the task gives no `source`, so the configs and `vllm serve` load them "
            "by name; set each model's `source:` to its Hugging Face id or folder")
    assert note in unexpressed and note in files["README.md"]
    assert not any("no `source`" in line
                   for line in export_files(SPEC, STUDY, trial, "axolotl", Resolved(BASES))[1])


def test_the_readme_multitask_example_shares_one_three_source_model() -> None:
    from planner.artifact import artifact_of
    from planner.export import read_plan
    from planner.spec import load_spec

    examples = Path(__file__).parents[1] / "envs" / "live" / "examples"
    spec = load_spec(examples / "wordsum_multitask.yaml")
    allocation = read_plan(examples / "multitask_plan.yaml", SearchSpace(spec))
    parse, add = (artifact_of(spec, s, allocation[s]) for s in ("parse", "add"))
    assert parse == add and len(parse.sources) == 3
    assert all(spec.path(p).is_file() for s in spec.subtasks if s.data
               for p in [*s.data.sources.values(), s.data.val])
