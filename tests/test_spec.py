from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from planner.errors import SpecError
from planner.spec import load_spec
from tests.conftest import write_tiny_task


def _edit(path: Path, change) -> Path:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_valid_task_loads_in_dag_order(tiny_task_path: Path) -> None:
    spec = load_spec(tiny_task_path)
    assert spec.order() == ["extract", "solve"]
    assert spec.subtask("solve").samples == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d.update(colour="blue"), r"colour: unknown key"),
    (lambda d: d["subtasks"][0].update(depends_on=["solve"]), r"cycle: .*extract"),
    (lambda d: d["subtasks"][1].update(models=["small", "huge"]),
     r"subtasks\[1\]: unknown model 'huge'; known: \['large', 'small'\]"),
    (lambda d: d["subtasks"][1].update(depends_on=["parse"]),
     r"subtasks\[1\]: depends_on names missing subtask 'parse'"),
    (lambda d: d.update(budget="8 hours"), r"budget: bad budget '8 hours'.*e.g. 8gpu-h"),
    (lambda d: d["subtasks"][0]["replay"].update(table="nope.csv"),
     r"subtasks\[0\]: data file 'nope.csv' not found"),
    (lambda d: d["subtasks"][0].pop("prompt_tokens"),
     r"subtasks.0.prompt_tokens: required field is missing"),
    (lambda d: d["subtasks"][0].update(samples=[0, 4]), r"samples.*>= 1"),
    (lambda d: d["subtasks"][0].update(methods=["ckpt-z"]), r"unknown method 'ckpt-z'"),
    (lambda d: d["models"].append({"name": "small", "params": 1}),
     r"models: names must be unique; 'small' is used twice"),
    (lambda d: d["subtasks"][0].update(models=["small", {"name": "large", "methods": ["x"]}]),
     r"subtasks\[0\]: models: 'large' lists methods \['x'\] that the subtask's `methods`"),
    (lambda d: d["subtasks"][0].update(models=["small", "small"]),
     r"subtasks\[0\]: models: 'small' is listed twice"),
    (lambda d: d["subtasks"][0].update(mixtures={"m": {"a": -1}}),
     r"subtasks\[0\].mixtures.m: weights must be finite numbers >= 0"),
    (lambda d: d["subtasks"][0].update(mixtures={"m": {"a": 0}}),
     r"subtasks\[0\].mixtures.m: at least one weight must be positive"),
    (lambda d: d["subtasks"][0].update(mixtures={"m": {"parse/a": 1}}),
     r"subtasks\[0\].mixtures.m: 'parse/a' names no subtask 'parse'; write SUBTASK/SOURCE"),
])
def test_invalid_task_one_line_naming_file_and_field(tmp_path: Path, change,
                                                     expected: str) -> None:
    path = _edit(write_tiny_task(tmp_path), change)
    with pytest.raises(SpecError, match=expected) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "\n" not in message


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such task file"):
        load_spec(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_per_subtask_model_methods(tmp_path: Path) -> None:
    path = _edit(write_tiny_task(tmp_path), lambda d: d["subtasks"][1].update(
        models=["small", {"name": "large", "methods": ["ckpt-b"]}]))
    solve = load_spec(path).subtask("solve")
    assert solve.model_names == ["small", "large"]
    assert solve.methods_here("large") == ["ckpt-b"]
    assert solve.methods_here("small") == ["ckpt-a", "ckpt-b"]


def test_mixture_weights_are_normalised_over_qualified_sources(tmp_path: Path) -> None:
    path = _edit(write_tiny_task(tmp_path), lambda d: d["subtasks"][1].update(
        mixtures={"own": {}, "mt": {"x": 1, "extract/y": 3, "z": 0}}))
    spec = load_spec(path)
    assert spec.mixture_weights("solve", "own") == {"solve/data": 1.0}
    assert spec.mixture_weights("solve", "mt") == {"extract/y": 0.75, "solve/x": 0.25}
