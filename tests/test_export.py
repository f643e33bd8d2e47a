"""The exported plan: one training entry per distinct fine-tune, in other tools' terms."""

from __future__ import annotations

from planner.cost import Cost
from planner.export import plan_document
from planner.space import Allocation, Plan
from planner.spec import TaskSpec
from planner.store import StudyRecord, TrialRecord, TrialStatus

SPEC = TaskSpec.model_validate({
    "name": "t", "workload": {"queries": 1},
    "models": [{"name": "m", "params": 1e8, "source": "org/m"}],
    "methods": [{"name": "none", "kind": "none"},
                {"name": "lora", "kind": "lora", "options": {"steps": 10, "batch_size": 2}}],
    "subtasks": [{"name": s, "prompt_tokens": 4, "output_tokens": 6, "models": ["m"],
                  "methods": ["none", "lora"], "samples": [1, 4],
                  "aggregators": ["first", "majority"],
                  "mixtures": {"own": {}, "mt": {"x": 1, f"{other}/x": 1}}}
                 for s, other in (("a", "b"), ("b", "a"))]})
STUDY = StudyRecord("s", "t", "", {}, "1gpu-h", 1.0, "random", 0, 0.0)


def _trial(allocation: Allocation) -> TrialRecord:
    return TrialRecord(3, allocation, TrialStatus.OK, 0.5, {"a": 0.7, "b": 0.7}, Cost(0.1, 0.2))


def test_a_shared_fine_tune_is_exported_once() -> None:
    shared = Plan(model="m", method="lora", mixture="mt", samples=4, aggregator="majority")
    doc = plan_document(SPEC, STUDY, _trial(Allocation.of({"a": shared, "b": shared})))
    [entry] = doc["training"]
    assert entry["serves"] == ["a", "b"] and entry["base_model"] == "org/m"
    assert entry["kind"] == "lora" and entry["mixture"] == {"a/x": 0.5, "b/x": 0.5}
    assert entry["train_tokens"] == 10 * 2 * (4 + 6)
    assert entry["tools"]["llamafactory"]["keys"]["max_steps"] == 10
    assert doc["serving"]["b"] == {"base_model": "org/m", "method": "lora", "samples": 4,
                                   "aggregator": "majority"}


def test_private_fine_tunes_and_base_models() -> None:
    own = Plan(model="m", method="lora", mixture="own", samples=1, aggregator="first")
    base = Plan(model="m", method="none", mixture="own", samples=1, aggregator="first")
    doc = plan_document(SPEC, STUDY, _trial(Allocation.of({"a": own, "b": base})))
    assert [e["serves"] for e in doc["training"]] == [["a"]]
    assert doc["training"][0]["mixture"] == {"a/data": 1.0}  # no sources declared: the data
