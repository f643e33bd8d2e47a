from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tools import zoo
from tools.zoo import (
    addition_examples,
    build_tiny_model,
    char_tokenizer,
    extraction_examples,
    synthetic_corpus,
    tiny_model,
)


def test_char_tokenizer_round_trips_and_saves(tmp_path: Path) -> None:
    tokenizer = char_tokenizer()
    text = "kim got 12 pens, then 345. sum:12+345"
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == ids
    assert reloaded.decode([*ids, reloaded.eos_token_id], skip_special_tokens=True) == text


def test_synthetic_data_is_correct_and_seeded() -> None:
    for ex in addition_examples(50, seed=3):
        a, b = ex["prompt"].rstrip("=").split("+")
        assert int(ex["completion"]) == int(a) + int(b)
    for ex in extraction_examples(50, seed=3):
        words = ex["prompt"].replace(",", "").replace(".", "").split()
        assert ex["completion"] == f"{words[2]}+{words[5]}"
    assert synthetic_corpus(20, seed=1) == synthetic_corpus(20, seed=1)
    assert synthetic_corpus(20, seed=1) != synthetic_corpus(20, seed=2)


@pytest.mark.parametrize("size", ["small", "base"])
def test_build_sizes(size: str, tmp_path: Path) -> None:
    path = build_tiny_model(size, synthetic_corpus(40, seed=0), tmp_path, steps=1, batch_size=4)
    config = AutoConfig.from_pretrained(path)
    assert (config.n_layer, config.n_embd) == (
        zoo.SIZES[size]["n_layer"],
        zoo.SIZES[size]["n_embd"],
    )


def test_tiny_model_builds_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(zoo.DEFAULT_STEPS, "tiny", 2)
    path = tiny_model("tiny", cache_dir=tmp_path)
    weights = path / "model.safetensors"
    built_at = weights.stat().st_mtime_ns
    assert tiny_model("tiny", cache_dir=tmp_path) == path
    assert weights.stat().st_mtime_ns == built_at
    assert [p for p in tmp_path.iterdir()] == [path]  # no leftover build folder
    assert path.name == "tiny-2x64"  # build settings name the folder


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_a_first_use_copies_the_shipped_build(size: str, tmp_path: Path) -> None:
    path = tiny_model(size, cache_dir=tmp_path)  # no build: seconds, not minutes
    assert path.name == f"{size}-{zoo.DEFAULT_STEPS[size]}x{zoo.DEFAULT_BATCH[size]}"
    assert (path / "model.safetensors").read_bytes() == (
        zoo.SHIPPED / path.name / "model.safetensors").read_bytes()
    config = AutoConfig.from_pretrained(path)
    assert (config.n_layer, config.n_embd) == (zoo.SIZES[size]["n_layer"],
                                               zoo.SIZES[size]["n_embd"])
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.num_parameters() == {"tiny": 114_624, "small": 425_856}[size]  # task.yaml's
    ids = tokenizer("12+34=", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(char_tokenizer())
