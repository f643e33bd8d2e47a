"""experiments/flat_tables.py: the suite's recordings with every Pythia checkpoint a model of
its own score as the suite's own tasks score them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from envs.replay.env import ReplayEnvironment
from planner.space import Plan
from planner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        from flat_tables import write_tasks
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    paths = write_tasks(tmp_path_factory.mktemp("flat"))
    return {load_spec(p).name: p for p in paths}


def _plan(model: str, method: str, n: int, aggregator: str = "oracle") -> Plan:
    return Plan(model=model, method=method, mixture="default", samples=n,
                aggregator=aggregator)


def test_a_checkpoint_as_a_model_scores_as_the_suites_checkpoint(flat: dict[str, Path]) -> None:
    math = ReplayEnvironment(load_spec(flat["pythia-checkpoints-math"]))
    suite = ReplayEnvironment(load_spec(ROOT / "envs" / "replay" / "tasks" / "monkeys_math.yaml"))
    assert len(load_spec(flat["pythia-checkpoints-math"]).models) == 72  # 9 sizes x 8
    for size, tokens, n in (("410m", "20B", 128), ("2.8b", "300B", 64), ("12b", "2M", 4)):
        assert math.subtask_score("solve", _plan(f"pythia-{size}-{tokens}", "none", n)) == (
            suite.subtask_score("solve", _plan(f"pythia-{size}", f"pretrain-{tokens}", n)))
    assert len(load_spec(flat["pythia-checkpoints-gsm8k"]).models) == 81  # 512M recorded


def test_the_pipeline_serves_each_llama_model_alone(flat: dict[str, Path]) -> None:
    spec = load_spec(flat["llama-llama-pythia"])
    assert [s.name for s in spec.subtasks] == ["mmlu", "gsm8k", "math"]
    pipeline = ReplayEnvironment(spec)
    cascades = ReplayEnvironment(load_spec(ROOT / "envs" / "replay" / "tasks"
                                           / "cascades_mmlu_gsm8k.yaml"))
    for stage in ("mmlu", "gsm8k"):
        assert pipeline.subtask_score(stage, _plan("llama3.1-70b", "none", 1, "first")) == (
            cascades.subtask_score(stage, _plan("llama3.1-70b", "alone", 1, "first")))
