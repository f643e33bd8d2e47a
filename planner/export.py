"""Export a study's best allocation as plain YAML, and read it back (`--from plan.yaml`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from planner.errors import SpaceError, SpecError
from planner.space import Allocation, SearchSpace
from planner.spec import TaskSpec
from planner.store import StudyRecord, TrialRecord


def plan_document(spec: TaskSpec, study: StudyRecord, best: TrialRecord) -> dict:
    """Everything needed to run the allocation again: choices plus what they resolve to."""
    training = {}
    for subtask, plan in best.allocation.items():
        method = spec.method(plan.method)
        model = spec.model(plan.model)
        training[subtask] = {
            "base_model": model.source or model.name,
            "params": model.params,
            "method": method.kind,
            "train_tokens": method.train_tokens,
            "options": dict(method.options),
            "mixture": dict(spec.subtask(subtask).mixtures[plan.mixture]),
            "samples": plan.samples,
            "aggregator": plan.aggregator,
        }
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
    }


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
