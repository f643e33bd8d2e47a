"""Majority vote replayed from per-sample answers, on the real MoT table (Llama-2-13B,
GSM8K, two program-of-thought prompts): it matches `expected_majority_at_k` item by item,
and sits about 20 points below pass@n, so `oracle` is no substitute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from envs.replay.build_tables import MOT_MIN_SAMPLES, convert_mot
from envs.replay.env import ReplayEnvironment, read_table
from planner.errors import SpecError
from planner.space import Plan
from planner.spec import load_spec
from tools.evaluate import expected_majority_at_k, pass_at_k

REPLAY = Path(__file__).parents[1] / "envs" / "replay"
EXAMPLE = REPLAY / "examples" / "mot_gsm8k_llama2.yaml"
TABLE = REPLAY / "data" / "mot_gsm8k_llama2.csv.gz"
SHARED = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def env() -> ReplayEnvironment:
    return ReplayEnvironment(load_spec(EXAMPLE))


def _plan(prompt: str, n: int, aggregator: str) -> Plan:
    return Plan(model="llama2-13b", method=prompt, mixture="default", samples=n,
                aggregator=aggregator)


def _direct(prompt: str, n: int) -> tuple[float, float]:
    """Majority@n and pass@n of one prompt, computed from the table file item by item."""
    table = pd.read_csv(TABLE, dtype={"answer": str})
    majority, oracle = [], []
    for _, rows in table[table["prompt"] == prompt].groupby("question"):
        answers, correct = rows["answer"].tolist(), rows["correct"].tolist()
        majority.append(expected_majority_at_k(answers, correct, n))
        oracle.append(pass_at_k(len(correct), sum(correct), n))
    return float(np.mean(majority)), float(np.mean(oracle))


def test_table_keeps_questions_with_enough_samples() -> None:
    table = read_table(TABLE, ["answer"])
    counts = table.groupby(["question", "prompt"]).size().unstack()
    assert list(counts.columns) == ["pot1", "pot2"]
    assert len(counts) == 357 and counts.min().min() == MOT_MIN_SAMPLES == 16
    assert counts.max().max() == 24 and len(table) == 16_417
    assert (table.groupby(["prompt", "question", "answer"])["correct"].nunique() == 1).all()


@pytest.mark.skipif(not (SHARED / "mot").is_dir(), reason="shared/data/mot not present")
def test_converter_rebuilds_the_shipped_table() -> None:
    built = convert_mot(SHARED).reset_index(drop=True)
    shipped = pd.read_csv(TABLE, dtype={"answer": str})
    pd.testing.assert_frame_equal(built, shipped, check_dtype=False)


@pytest.mark.parametrize(("prompt", "n"), [("pot1", 4), ("pot2", 8), ("pot2", 16)])
def test_majority_matches_direct_estimate(env, prompt, n) -> None:
    majority, oracle = _direct(prompt, n)
    assert env.subtask_score("gsm8k", _plan(prompt, n, "majority")) == pytest.approx(
        majority, rel=1e-12)
    assert env.subtask_score("gsm8k", _plan(prompt, n, "oracle")) == pytest.approx(
        oracle, rel=1e-12)


def test_majority_is_about_20_points_below_oracle(env) -> None:
    for prompt in ("pot1", "pot2"):
        def score(n: int, agg: str, prompt: str = prompt) -> float:
            return env.subtask_score("gsm8k", _plan(prompt, n, agg))

        gap = score(8, "oracle") - score(8, "majority")
        assert 0.19 < gap < 0.22
        assert score(16, "oracle") - score(16, "majority") > 0.22
        first = score(1, "first")
        assert score(2, "majority") == pytest.approx(first)  # a split vote is a coin flip
        assert first < score(4, "majority") < score(8, "majority") < score(16, "majority")


def test_evaluate_and_space(env) -> None:
    plans = env.space.plans("gsm8k")
    assert len(plans) == 18  # 2 prompts x (n=1 first + 4 n x {majority, oracle})
    assert {p.aggregator for p in plans} == {"first", "majority", "oracle"}
    obs = env.evaluate(env.space.coerce({"gsm8k": dict(_plan("pot2", 8, "majority"))}))
    assert obs.score == pytest.approx(0.4232, abs=5e-5)


def _edited_example(tmp_path: Path, drop: tuple[str, ...] = (), **subtask: object) -> Path:
    """The example task with `drop` removed from `replay:` and `subtask` fields replaced."""
    task = yaml.safe_load(EXAMPLE.read_text())
    sub = task["subtasks"][0]
    sub["replay"]["table"] = str(TABLE)
    for key in drop:
        del sub["replay"][key]
    sub.update(subtask)
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task))
    return path


def test_majority_without_answer_is_an_error(tmp_path) -> None:
    path = _edited_example(tmp_path, drop=("answer",))
    with pytest.raises(SpecError, match=r"replay\.answer: aggregator `majority`.*`answer:"):
        ReplayEnvironment(load_spec(path))
    # without majority the same table replays first and oracle
    path = _edited_example(tmp_path, drop=("answer",), aggregators=["first", "oracle"])
    assert ReplayEnvironment(load_spec(path)).items == {"gsm8k": 357}


def test_majority_beyond_recorded_samples_is_an_error(tmp_path) -> None:
    path = _edited_example(tmp_path, samples=[1, 24], aggregators=["majority"])
    with pytest.raises(SpecError, match=r"for 115 of its 357 items \(as few as 16\); lower"):
        ReplayEnvironment(load_spec(path))


def test_unknown_aggregator_is_an_error(tmp_path) -> None:
    path = _edited_example(tmp_path, aggregators=["best_of_n"])
    with pytest.raises(SpecError, match=r"\['best_of_n'\] cannot be replayed"):
        ReplayEnvironment(load_spec(path))


def test_equal_answers_scored_differently_are_an_error(tmp_path) -> None:
    table = pd.read_csv(TABLE, dtype={"answer": str})
    table.loc[0, "correct"] = 1 - table.loc[0, "correct"]
    table.to_csv(tmp_path / "bad.csv", index=False)
    task = yaml.safe_load(EXAMPLE.read_text())
    task["subtasks"][0]["replay"]["table"] = "bad.csv"
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    # the first two rows, in file order, of a choice's (item, answer) scored two ways
    choice = table[(table.model == table.model[0]) & (table.prompt == table.prompt[0])]
    mixed = choice.groupby(["question", "answer"])["correct"].transform("nunique") > 1
    first, second = (choice.index[mixed.to_numpy()][:2] + 1).tolist()
    with pytest.raises(SpecError, match=rf"rows {first} and {second} give one item the same "
                       r"answer, scored differently \(say, right "):
        ReplayEnvironment(load_spec(tmp_path / "task.yaml"))


def test_a_sample_without_an_answer_abstains_as_in_a_live_vote(tmp_path) -> None:
    """An empty answer cell is no answer: it never wins a vote (before, the empty answers of
    an item voted together and outvoted its one right answer)."""
    rows = [("m", 0, answer, int(answer == "7")) for answer in ["", "", "", "7"]]
    rows += [("m", 1, answer, int(answer == "3")) for answer in ["3", "4", "4", ""]]
    pd.DataFrame(rows, columns=["model", "item", "answer", "correct"]).to_csv(
        tmp_path / "votes.csv", index=False)
    task = {"name": "votes", "environment": "replay", "budget": "1gpu-h",
            "workload": {"queries": 10}, "models": [{"name": "m", "params": 1e8}],
            "subtasks": [{"name": "s", "prompt_tokens": 10, "output_tokens": 10,
                          "models": ["m"], "samples": [1, 4], "aggregators": ["majority"],
                          "replay": {"table": "votes.csv", "item": "item",
                                     "correct": "correct", "answer": "answer"}}]}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    env = ReplayEnvironment(load_spec(tmp_path / "task.yaml"))
    at = {n: env.subtask_score("s", Plan(model="m", method="none", mixture="default",
                                         samples=n, aggregator="majority")) for n in (1, 4)}
    # item 0: "7" is the only answer of 4; item 1: "4" leads "3", the blank does not vote
    assert at[4] == pytest.approx((1.0 + 0.0) / 2)
    assert at[1] == pytest.approx((1 / 4 + 1 / 4) / 2)  # one sample: right 1 in 4 each


def _as_lists(table: pd.DataFrame) -> pd.DataFrame:
    """The per-sample table as a row per item, its samples' answers and scores as lists (as
    Large Language Monkeys' release keeps them: `samples`, `is_corrects`)."""
    return (table.groupby(["model", "prompt", "question"], sort=False)
            .agg(samples=("answer", list), is_corrects=("correct", lambda c: [bool(x) for x in c]))
            .reset_index())


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".parquet"])
def test_a_row_of_lists_per_item_replays_as_a_row_per_sample(tmp_path, suffix) -> None:
    """Each item's samples as lists in one row (JSON Lines or Parquet) score every plan as
    the same samples a row each do; before, the lists were text and `correct` "not a
    number"."""
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    flat = read_table(TABLE, ["answer"])
    lists = _as_lists(flat)
    lists["completions"] = [[f"print({a})" for a in row] for row in lists["samples"]]  # unread
    table = tmp_path / f"lists{suffix}"
    if suffix == ".parquet":
        lists.to_parquet(table)
    else:
        lists.to_json(table, orient="records", lines=True, compression="gzip")
    path = _edited_example(tmp_path)
    task = yaml.safe_load(path.read_text())
    task["subtasks"][0]["replay"].update(table=table.name, correct="is_corrects",
                                         answer="samples")
    path.write_text(yaml.safe_dump(task))
    read = read_table(table, ["samples"], ["is_corrects", "samples"],
                      ["model", "prompt", "question", "is_corrects", "samples"])
    assert list(read.columns) == ["model", "prompt", "question", "is_corrects", "samples"]
    assert len(read) == len(flat)
    expected, found = ReplayEnvironment(load_spec(EXAMPLE)), ReplayEnvironment(load_spec(path))
    plans = expected.space.plans("gsm8k")
    assert [found.subtask_score("gsm8k", p) for p in plans] == [
        expected.subtask_score("gsm8k", p) for p in plans]


def test_lists_of_unequal_length_name_the_row(tmp_path) -> None:
    lists = _as_lists(read_table(TABLE, ["answer"]))
    lists.at[2, "samples"] = lists.at[2, "samples"][:-1]
    lists.to_json(tmp_path / "lists.jsonl", orient="records", lines=True)
    path = _edited_example(tmp_path)
    task = yaml.safe_load(path.read_text())
    task["subtasks"][0]["replay"].update(table="lists.jsonl", correct="is_corrects",
                                         answer="samples")
    path.write_text(yaml.safe_dump(task))
    with pytest.raises(SpecError, match=r"lists.jsonl: row 3: column 'samples' holds a list of "
                       r"another length than column 'is_corrects'"):
        ReplayEnvironment(load_spec(path))
