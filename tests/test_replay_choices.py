"""Which rows a plan reads and what it pays: every choice field (model, method, mixture) is
told apart by a column and priced from its own rows; (model, method) pairs per subtask;
the README's example task runs as written."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from envs.replay.env import ReplayEnvironment
from planner.cost import CostModel
from planner.errors import SpecError
from planner.space import Plan
from planner.spec import load_spec

README = Path(__file__).parents[1] / "envs" / "replay" / "README.md"
PARAMS = 1e8


def _samples(rng: np.random.Generator, **choice: str) -> list[dict]:
    """Four samples for each of 6 items of one choice, 0/1 correct, tokens per sample."""
    out_tokens = 400 if choice.get("mix") == "long" else 50
    return [{**choice, "item": item, "ok": int(rng.random() < 0.5), "in_tok": 100,
             "out_tok": out_tokens} for item, _ in itertools.product(range(6), range(4))]


def _mixture_task(folder: Path, *, mixture_column: bool = True, method: str = "lora") -> Path:
    """Two subtasks; `b` fine-tunes on its own data (`short`) or with `a`'s too (`long`),
    and the table records the second with 8x the output tokens."""
    rng = np.random.default_rng(0)
    pd.DataFrame(_samples(rng, model="m")).to_csv(folder / "a.csv", index=False)
    pd.DataFrame([row for mix in ("short", "long") for row in _samples(rng, model="m", mix=mix)]
                 ).to_csv(folder / "b.csv", index=False)
    replay = {"item": "item", "correct": "ok", "input_tokens": "in_tok",
              "output_tokens": "out_tok"}
    b_choices = {"model": "model", "mixture": "mix"} if mixture_column else {"model": "model"}
    task = {
        "name": "mixtures", "budget": "10gpu-h", "workload": {"queries": 1000},
        "models": [{"name": "m", "params": PARAMS}],
        "methods": [{"name": "ft", "kind": method, **({"train_tokens": 1e6}
                                                      if method == "lora" else {})}],
        "subtasks": [
            {"name": "a", "prompt_tokens": 10, "output_tokens": 10, "models": ["m"],
             "methods": ["ft"], "samples": [1, 2], "aggregators": ["oracle"],
             "replay": {"table": "a.csv", **replay}},
            {"name": "b", "prompt_tokens": 10, "output_tokens": 10, "models": ["m"],
             "methods": ["ft"], "mixtures": {"short": {}, "long": {"data": 1, "a/data": 1}},
             "samples": [1, 2], "aggregators": ["oracle"],
             "replay": {"table": "b.csv", **replay, "choices": b_choices}},
        ],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_mixtures_are_priced_from_their_own_rows(tmp_path) -> None:
    spec = load_spec(_mixture_task(tmp_path))
    env = ReplayEnvironment(spec)
    flops = env.calibration()
    assert flops[("b", "m", "ft", "short")] == pytest.approx(2 * PARAMS * (100 + 50))
    assert flops[("b", "m", "ft", "long")] == pytest.approx(2 * PARAMS * (100 + 400))
    cost = CostModel(spec, flops)
    plans = {p.mixture: p for p in env.space.plans("b") if p.samples == 2}
    short, long = (cost.plan_cost("b", plans[m]).inference_gpu_hours for m in ("short", "long"))
    assert long == pytest.approx(short * 500 / 150)
    # the two mixtures train different artifacts, and score from different rows
    assert cost.artifact("b", plans["short"]) != cost.artifact("b", plans["long"])
    table = pd.read_csv(tmp_path / "b.csv")
    for mix, plan in plans.items():
        rows = table[table["mix"] == mix].groupby("item")["ok"].agg(["size", "sum"])
        expected = np.mean([1 - (n - c) * (n - c - 1) / (n * (n - 1))
                            for n, c in zip(rows["size"], rows["sum"], strict=True)])
        assert env.subtask_score("b", plan) == pytest.approx(expected)


def test_mixture_without_a_column_is_an_error(tmp_path) -> None:
    path = _mixture_task(tmp_path, mixture_column=False)
    with pytest.raises(SpecError, match=r"subtasks\.b\.replay\.choices: mixture takes values "
                       r"\['long', 'short'\] but no column"):
        ReplayEnvironment(load_spec(path))


def test_mixture_of_a_method_that_does_not_train_needs_no_column(tmp_path) -> None:
    env = ReplayEnvironment(load_spec(_mixture_task(tmp_path, mixture_column=False,
                                                    method="none")))
    assert len({p.mixture for p in env.space.plans("b")}) == 1  # the first mixture


def _pairs_task(folder: Path, restrict: bool) -> Path:
    """Subtask `x` records every (model, checkpoint); `y` lacks small with ckpt-b."""
    rng = np.random.default_rng(1)
    pairs = [("small", "ckpt-a"), ("small", "ckpt-b"), ("large", "ckpt-a"), ("large", "ckpt-b")]
    for name, kept in (("x", pairs), ("y", pairs[:1] + pairs[2:])):
        rows = [{"model": m, "ckpt": c, "item": i, "n": 8, "c": int(rng.integers(0, 9))}
                for m, c in kept for i in range(5)]
        pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)
    y_models = [{"name": "small", "methods": ["ckpt-a"]}, "large"] if restrict \
        else ["small", "large"]
    task = {
        "name": "pairs", "workload": {"queries": 100},
        "models": [{"name": "small", "params": 1e8}, {"name": "large", "params": 1e9}],
        "methods": [{"name": "ckpt-a", "kind": "pretrain", "train_tokens": 1e9},
                    {"name": "ckpt-b", "kind": "pretrain", "train_tokens": 4e9}],
        "subtasks": [{"name": name, "prompt_tokens": 10, "output_tokens": 10,
                      "models": models, "methods": ["ckpt-a", "ckpt-b"], "samples": [1, 4],
                      "aggregators": ["oracle"],
                      "replay": {"table": f"{name}.csv", "item": "item",
                                 "choices": {"model": "model", "method": "ckpt"},
                                 "n_samples": "n", "n_correct": "c"}}
                     for name, models in (("x", ["small", "large"]), ("y", y_models))],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_model_method_pairs_per_subtask(tmp_path) -> None:
    env = ReplayEnvironment(load_spec(_pairs_task(tmp_path, restrict=True)))

    def pairs(s: str) -> set[tuple[str, str]]:
        return {(p.model, p.method) for p in env.space.plans(s)}

    assert ("small", "ckpt-b") in pairs("x")
    assert pairs("y") == {("small", "ckpt-a"), ("large", "ckpt-a"), ("large", "ckpt-b")}


def test_unrecorded_pair_names_the_file_and_the_per_subtask_form(tmp_path) -> None:
    path = _pairs_task(tmp_path, restrict=False)
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}: subtasks\.y\.replay: no "
                       r"rows for small/ckpt-b/default.*\{name: small, methods: \[\.\.\.\]\}"):
        ReplayEnvironment(load_spec(path))


def test_method_without_a_column_is_an_error(tmp_path) -> None:
    path = _pairs_task(tmp_path, restrict=True)
    task = yaml.safe_load(path.read_text())
    task["subtasks"][0]["replay"]["choices"] = {"model": "model"}
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match=r"subtasks\.x\.replay\.choices: method takes values "
                       r"\['ckpt-a', 'ckpt-b'\].*add `method: COLUMN`"):
        ReplayEnvironment(load_spec(path))


def test_model_without_a_column_is_an_error(tmp_path) -> None:
    path = _pairs_task(tmp_path, restrict=True)
    task = yaml.safe_load(path.read_text())
    task["subtasks"][0]["replay"]["choices"] = {"method": "ckpt"}
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match="choices: model takes values"):
        ReplayEnvironment(load_spec(path))


def _readme_example() -> dict:
    text = README.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    return yaml.safe_load(block.group(1))


def test_readme_example_runs_as_written(tmp_path) -> None:
    task = _readme_example()
    rng = np.random.default_rng(2)
    rows = []
    for model, ckpt in (("small", "none"), ("small", "ckpt-20B"), ("api-model", "none")):
        for query, _sample in itertools.product(range(5), range(8)):
            answer = str(int(rng.integers(0, 3)))
            rows.append({"query_id": query, "model": model, "checkpoint": ckpt,
                         "final_answer": answer, "is_correct": int(answer == "0"),
                         "prompt_tokens": 200, "completion_tokens": 90, "cost_usd": 1e-4})
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv.gz", index=False)
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    env = ReplayEnvironment(load_spec(tmp_path / "task.yaml"))
    plans = env.space.plans("answer")
    assert {(p.model, p.method) for p in plans} == {("small", "none"), ("small", "ckpt-20B"),
                                                    ("api-model", "none")}
    plan = Plan(model="api-model", method="none", mixture="default", samples=8,
                aggregator="majority")
    assert 0 < env.subtask_score("answer", plan) < 1
