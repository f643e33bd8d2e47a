"""Export a study's best allocation as plain YAML, and read it back (`--from plan.yaml`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from planner.artifact import Artifact
from planner.cost import CostModel
from planner.errors import SpaceError, SpecError
from planner.methods import TOOLS
from planner.space import Allocation, SearchSpace
from planner.spec import TaskSpec
from planner.store import StudyRecord, TrialRecord


def plan_document(spec: TaskSpec, study: StudyRecord, best: TrialRecord) -> dict:
    """Everything needed to run the allocation again: the choices, each distinct fine-tune
    (once, whichever subtasks it serves) with its settings in LLaMA-Factory, Axolotl and TRL
    terms, and how each subtask serves its answers."""
    cost_model = CostModel(spec)
    served: dict[Artifact, list[str]] = {}
    for subtask, plan in best.allocation.items():
        served.setdefault(cost_model.artifact(subtask, plan), []).append(subtask)
    training = [_training(spec, cost_model, a, subtasks) for a, subtasks in served.items()
                if a.method.fine_tunes]
    return {
        "task": spec.name,
        "study": study.name,
        "trial": best.number,
        "budget": study.budget,
        "score": best.score,
        "subtask_scores": dict(best.subtask_scores),
        "cost_gpu_hours": {"train": best.cost.train_gpu_hours,
                           "inference": best.cost.inference_gpu_hours},
        "allocation": best.allocation.to_dict(),
        "training": training,
        "serving": {s: {"base_model": _source(spec, p.model), "method": p.method,
                        "samples": p.samples, "aggregator": p.aggregator}
                    for s, p in best.allocation.items()},
    }


def _training(spec: TaskSpec, cost_model: CostModel, artifact: Artifact,
              subtasks: list[str]) -> dict:
    """One model to train: base, method settings, data mixture and other tools' keys."""
    method = artifact.method
    return {"serves": subtasks, "base_model": _source(spec, artifact.model),
            "params": spec.model(artifact.model).params, "method": method.name,
            **method.model_dump(mode="json", exclude={"name"}),
            "train_tokens": cost_model.train_tokens(artifact), "mixture": artifact.sources,
            "tools": {tool: asdict(method.tool_config(tool)) for tool in TOOLS}}


def _source(spec: TaskSpec, model: str) -> str:
    m = spec.model(model)
    return m.source or m.name


def write_plan(doc: dict, path: Path) -> None:
    """Write atomically: a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)


def read_plan(path: Path, space: SearchSpace) -> Allocation:
    """Read a plan.yaml's allocation and validate it against the task's space."""
    if not path.is_file():
        raise SpecError(f"{path}: no such plan file; write one with `planner export`")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("allocation"), dict):
        raise SpecError(f"{path}: allocation: missing; a plan file maps `allocation` to one "
                        "plan per subtask")
    try:
        return space.coerce(doc["allocation"])
    except SpaceError as e:
        raise SpecError(f"{path}: allocation.{e}") from None
