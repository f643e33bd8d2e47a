"""Bring-your-own-table: a user's task.yaml over generated CSVs (counts and per-sample forms),
USD and token pricing, clear errors, and the exhaustive optimum against brute force."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from envs.replay.env import ReplayEnvironment
from envs.replay.optimum import exhaustive_optimum, near_optimal
from planner.cost import CostModel
from planner.errors import SpecError
from planner.space import Allocation, Plan
from planner.spec import load_spec
from planner.store import Store, TrialStatus
from planner.study import optimize

MODELS = {"small": 1e8, "mid": 4e8, "large": 1.6e9}
CHECKPOINTS = {"ckpt-1B": 1e9, "ckpt-4B": 4e9}


def _counts_table(rng: np.random.Generator, items: int = 12) -> pd.DataFrame:
    """One row per (model, checkpoint, item): 16 samples, more right for bigger/longer."""
    rows = []
    for (m, n_params), (c, tokens) in itertools.product(MODELS.items(), CHECKPOINTS.items()):
        p = min(0.9, 0.02 * np.log10(n_params * tokens) - 0.25)
        for item in range(items):
            rows.append({"model": m, "ckpt": c, "item": item, "n": 16,
                         "ok": int(rng.binomial(16, p * rng.uniform(0.2, 1.5)))})
    return pd.DataFrame(rows)


def _samples_table(rng: np.random.Generator, items: int = 10) -> pd.DataFrame:
    """One row per sample, with tokens and USD like an API log; `api` has no public size."""
    rows = []
    for m, p, usd in (("small", 0.3, 1e-5), ("large", 0.7, 8e-5), ("api", 0.8, 3e-4)):
        for item, _sample in itertools.product(range(items), range(4)):
            rows.append({"model": m, "query": item, "correct": int(rng.random() < p),
                         "in_tok": 200, "out_tok": int(rng.integers(50, 150)), "usd": usd})
    return pd.DataFrame(rows)


def _write_task(folder: Path, budget: str, stages: int = 2) -> Path:
    rng = np.random.default_rng(0)
    _counts_table(rng).to_csv(folder / "counts.csv", index=False)
    _samples_table(rng).to_csv(folder / "samples.csv.gz", index=False)
    counts_stage = {
        "prompt_tokens": 100, "output_tokens": 50, "models": list(MODELS),
        "methods": list(CHECKPOINTS), "samples": [1, 2, 4, 8], "aggregators": ["oracle"],
        "replay": {"table": "counts.csv", "item": "item",
                   "choices": {"model": "model", "method": "ckpt"},
                   "n_samples": "n", "n_correct": "ok"}}
    task = {
        "name": "user-task", "budget": budget,
        "hardware": {"usd_per_gpu_hour": 2.0},
        "workload": {"queries": 1_000_000},
        "models": [{"name": m, "params": p} for m, p in MODELS.items()] + [{"name": "api"}],
        "methods": [{"name": "none", "kind": "none"}]
        + [{"name": c, "kind": "pretrain", "train_tokens": t} for c, t in CHECKPOINTS.items()],
        "subtasks": [
            {"name": "route", "prompt_tokens": 200, "output_tokens": 100,
             "models": ["small", "large", "api"], "methods": ["none"], "samples": [1, 2, 4],
             "aggregators": ["oracle", "first"],
             "replay": {"table": "samples.csv.gz", "item": "query", "correct": "correct",
                        "input_tokens": "in_tok", "output_tokens": "out_tok",
                        "usd_per_sample": "usd"}},
            *({"name": f"solve{i}", "depends_on": ["route"], **counts_stage}
              for i in range(1, stages)),
        ],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def _every_allocation(path: Path) -> list[tuple[float, float]]:
    """(score, GPU-h) of every allocation, one at a time through the environment."""
    spec = load_spec(path)
    env = ReplayEnvironment(spec)
    cost = CostModel(spec, env.calibration())
    out = []
    for plans in itertools.product(*(list(env.space.plans(s)) for s in env.space.subtasks)):
        alloc = Allocation.of(dict(zip(env.space.subtasks, plans, strict=True)))
        out.append((env.evaluate(alloc).score, cost.estimate(alloc).total_gpu_hours))
    return out


@pytest.mark.parametrize("stages", [2, 3])
@pytest.mark.parametrize("budget", [1.0, 3.0, 8.0, 40.0, 700.0])
def test_exhaustive_optimum_equals_brute_force(tmp_path, stages, budget) -> None:
    path = _write_task(tmp_path, f"{budget}gpu-h", stages)
    opt = exhaustive_optimum(load_spec(path), budget)
    score, cost = max(((s, -c) for s, c in _every_allocation(path) if c <= budget))
    assert opt.score == pytest.approx(score, rel=1e-12)
    assert opt.cost_gpu_hours == pytest.approx(-cost, rel=1e-9)
    # route: 3 models x (n=1 first, n=2 oracle, n=4 oracle): `first` reads one sample, and
    # one sample is `first`; solve: 6 choices x 4 n
    assert opt.space_size == 9 * 24 ** (stages - 1)


@pytest.mark.parametrize("budget", [3.0, 40.0])
def test_near_optimal_counts_equal_brute_force(tmp_path, budget) -> None:
    path = _write_task(tmp_path, f"{budget}gpu-h", 3)
    scores = [s for s, c in _every_allocation(path) if c <= budget]
    fractions = [0.5, 0.9, 0.97, 1.0]
    fits, near = near_optimal(load_spec(path), budget, fractions)
    assert fits == len(scores)
    assert near == {f: sum(s >= f * max(scores) for s in scores) for f in fractions}
    assert near[1.0] >= 1 and near[0.5] > near[0.97]  # the counts discriminate


def test_usd_and_token_pricing(tmp_path) -> None:
    spec = load_spec(_write_task(tmp_path, "10gpu-h"))
    env = ReplayEnvironment(spec)
    table = pd.read_csv(tmp_path / "samples.csv.gz")
    flops = env.calibration()
    small = table[table.model == "small"]
    assert flops[("route", "small", "none", "default")] == pytest.approx(
        2 * MODELS["small"] * (small.in_tok + small.out_tok).mean())
    hw = spec.hardware
    assert flops[("route", "api", "none", "default")] == pytest.approx(
        3e-4 / 2.0 * hw.peak_flops * hw.utilization * 3600)
    assert env.items == {"route": 10, "solve1": 12}


@pytest.mark.parametrize("strategy", ["random", "optuna"])
def test_user_task_runs_within_budget(tmp_path, strategy) -> None:
    path = _write_task(tmp_path, "2gpu-h")
    spec = load_spec(path)
    result = optimize(spec, ReplayEnvironment(spec), store=Store("sqlite://"), budget="2gpu-h",
                      strategy=strategy, n_trials=10, seed=3)
    assert len(result.trials) == 10
    assert all(t.status is TrialStatus.OK for t in result.trials)
    assert all(t.cost.total_gpu_hours <= 2.0 for t in result.trials)
    assert result.best.score <= exhaustive_optimum(spec, 2.0).score + 1e-12


def _edit(path: Path, **replay: object) -> Path:
    task = yaml.safe_load(path.read_text())
    task["subtasks"][0]["replay"].update(replay)
    path.write_text(yaml.safe_dump(task))
    return path


def test_missing_column_names_it(tmp_path) -> None:
    path = _edit(_write_task(tmp_path, "2gpu-h"), correct="is_right")
    with pytest.raises(SpecError, match="is_right"):
        ReplayEnvironment(load_spec(path))


def test_unpriced_model_without_params_is_an_error(tmp_path) -> None:
    path = _edit(_write_task(tmp_path, "2gpu-h"), usd_per_sample=None)
    with pytest.raises(SpecError, match="'api' has no `params`"):
        ReplayEnvironment(load_spec(path))


def test_samples_beyond_the_recording_are_an_error(tmp_path) -> None:
    path = _write_task(tmp_path, "2gpu-h")
    task = yaml.safe_load(path.read_text())
    task["subtasks"][0]["samples"] = [1, 8]
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match=r"for 10 of its 10 items \(as few as 4\); lower"):
        ReplayEnvironment(load_spec(path))


def test_usd_column_needs_a_price(tmp_path) -> None:
    path = _write_task(tmp_path, "2gpu-h")
    task = yaml.safe_load(path.read_text())
    del task["hardware"]["usd_per_gpu_hour"]
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match="usd_per_gpu_hour"):
        load_spec(path)


def test_json_lines_tables_score_as_their_csv(tmp_path) -> None:
    """A harness's per-sample log (JSON Lines, gzipped or not) replays as the same table in
    CSV does, allocation for allocation; ids and answers written as lists or objects are
    read as their JSON text."""
    csv_task = _write_task(tmp_path, "8gpu-h")
    expected = _every_allocation(csv_task)
    pd.read_csv(tmp_path / "counts.csv").to_json(tmp_path / "counts.jsonl", orient="records",
                                                  lines=True)
    samples = pd.read_csv(tmp_path / "samples.csv.gz")
    samples["query"] = [{"doc_id": q} for q in samples["query"]]  # unhashable before
    samples.to_json(tmp_path / "samples.jsonl.gz", orient="records", lines=True,
                    compression="gzip")
    task = yaml.safe_load(csv_task.read_text())
    task["subtasks"][0]["replay"]["table"] = "samples.jsonl.gz"
    task["subtasks"][1]["replay"]["table"] = "counts.jsonl"
    jsonl_task = tmp_path / "jsonl.yaml"
    jsonl_task.write_text(yaml.safe_dump(task))
    assert _every_allocation(jsonl_task) == expected


def test_every_table_format_scores_as_its_csv(tmp_path) -> None:
    """TSV, a JSON array of rows (gzipped or not) and JSON Lines replay as the CSV does,
    every price read to its last digit (JSON Lines floats were parsed inexactly before); a
    trailing separator on every row reads as meant (it was a traceback: pandas took the
    first column for an index), and so does JSON after a byte-order mark or with its
    correctness as the texts "True" and "False" (a CSV reader takes those as booleans)."""
    csv_task = _write_task(tmp_path, "8gpu-h")
    samples = pd.read_csv(tmp_path / "samples.csv.gz")
    samples["usd"] = np.random.default_rng(1).uniform(1e-5, 3e-4, len(samples))
    samples.to_csv(tmp_path / "samples.csv.gz", index=False)
    expected = _every_allocation(csv_task)
    samples = pd.read_csv(tmp_path / "samples.csv.gz")
    samples.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    samples.to_csv(tmp_path / "samples.tsv.gz", sep="\t", index=False)
    rows = samples.to_dict("records")  # json writes every digit (pandas' to_json 10)
    (tmp_path / "samples.json").write_text(json.dumps(rows))
    (tmp_path / "samples.json.gz").write_bytes(gzip.compress(json.dumps(rows).encode()))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bom.jsonl").write_text("\ufeff" + (tmp_path / "samples.jsonl").read_text())
    (tmp_path / "words.jsonl").write_text("".join(  # correctness as the text "True"
        json.dumps({**r, "correct": str(bool(r["correct"]))}) + "\n" for r in rows))
    lines = samples.to_csv(index=False).splitlines()
    (tmp_path / "trailing.csv").write_text("\n".join([lines[0], *(f"{x}," for x in lines[1:])]))
    task = yaml.safe_load(csv_task.read_text())
    for table in ("samples.tsv", "samples.tsv.gz", "samples.json", "samples.json.gz",
                  "samples.jsonl", "bom.jsonl", "words.jsonl", "trailing.csv"):
        task["subtasks"][0]["replay"]["table"] = table
        path = tmp_path / f"{table}.yaml"
        path.write_text(yaml.safe_dump(task))
        assert _every_allocation(path) == expected, table


def test_a_row_longer_than_the_header_names_its_line(tmp_path) -> None:
    """A value past the header's fields is refused with its line, not dropped or read as an
    index that shifts the columns."""
    csv_task = _write_task(tmp_path, "8gpu-h")
    lines = pd.read_csv(tmp_path / "samples.csv.gz").to_csv(index=False).splitlines()
    lines[1] += ",7"  # the first row: pandas took its extra field for an index
    (tmp_path / "samples.csv").write_text("\n".join(lines))
    path = _edit(csv_task, table="samples.csv")
    with pytest.raises(SpecError, match="samples.csv: line 2 has 7 fields but the header has 6; "
                       "quote a text that holds the separator"):
        ReplayEnvironment(load_spec(path))


def test_parquet_lists_in_cells_read_as_their_json_text(tmp_path) -> None:
    """An item id written as a list in Parquet (numpy arrays when read) was unhashable, a
    pandas traceback; it replays as the flat ids do."""
    pytest.importorskip("pyarrow")
    csv_task = _write_task(tmp_path, "8gpu-h")
    expected = _every_allocation(csv_task)
    samples = pd.read_csv(tmp_path / "samples.csv.gz")
    samples["query"] = [[q, 0] for q in samples["query"]]
    samples.to_parquet(tmp_path / "samples.parquet")
    task = yaml.safe_load(csv_task.read_text())
    task["subtasks"][0]["replay"]["table"] = "samples.parquet"
    path = tmp_path / "parquet.yaml"
    path.write_text(yaml.safe_dump(task))
    assert _every_allocation(path) == expected


def test_partial_credit_per_sample(tmp_path) -> None:
    """`correct` may score a sample between 0 and 1 (an F1, a share of unit tests), as a live
    metric does: first is the mean score, oracle the expected best of n, majority the
    winning answer's score (before, anything but 0 or 1 was refused)."""
    rows = [("m", 0, "a", 0.5), ("m", 0, "b", 1.0), ("m", 0, "a", 0.5),
            ("m", 1, "x", 0.0), ("m", 1, "y", 0.25), ("m", 1, "y", 0.25)]
    pd.DataFrame(rows, columns=["model", "item", "answer", "correct"]).to_csv(
        tmp_path / "scored.csv", index=False)
    task = {"name": "scored", "environment": "replay", "budget": "1gpu-h",
            "workload": {"queries": 10}, "models": [{"name": "m", "params": 1e8}],
            "subtasks": [{"name": "s", "prompt_tokens": 10, "output_tokens": 10,
                          "models": ["m"], "samples": [1, 2, 3],
                          "aggregators": ["first", "oracle", "majority"],
                          "replay": {"table": "scored.csv", "item": "item",
                                     "correct": "correct", "answer": "answer"}}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    env = ReplayEnvironment(load_spec(tmp_path / "task.yaml"))

    def score(aggregator: str, n: int) -> float:
        return env.subtask_score("s", Plan(model="m", method="none", mixture="default",
                                           samples=n, aggregator=aggregator))

    # by hand, item 0 then item 1, over every n-subset of the three samples
    assert score("first", 3) == pytest.approx((2 / 3 + 1 / 6) / 2)
    assert score("oracle", 2) == pytest.approx((2.5 / 3 + 0.25) / 2)
    assert score("oracle", 3) == pytest.approx((1.0 + 0.25) / 2)
    assert score("majority", 2) == pytest.approx((2 / 3 + 1 / 6) / 2)  # ties split
    assert score("majority", 3) == pytest.approx((0.5 + 0.25) / 2)
    pd.DataFrame([("m", 0, "a", 1.5)], columns=["model", "item", "answer", "correct"]).to_csv(
        tmp_path / "scored.csv", index=False)
    with pytest.raises(SpecError, match="row 1: column 'correct' is not a score from 0 to 1"):
        ReplayEnvironment(load_spec(tmp_path / "task.yaml"))


def test_an_empty_item_cell_names_its_row(tmp_path) -> None:
    """A row that names no item was a numpy TypeError (text and NaN sorted together)."""
    path = _write_task(tmp_path, "8gpu-h")
    samples = pd.read_csv(tmp_path / "samples.csv.gz")
    samples["query"] = samples["query"].astype(str)
    samples.loc[6, "query"] = None
    samples.to_csv(tmp_path / "samples.csv.gz", index=False)
    with pytest.raises(SpecError, match=r"samples.csv.gz: row 7: column 'query' is empty"):
        ReplayEnvironment(load_spec(path))
