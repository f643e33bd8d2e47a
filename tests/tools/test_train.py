from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftConfig, PromptTuningConfig, PromptTuningInit
from transformers import DataCollatorForSeq2Seq

from tools.train import (
    HalfFineTuning,
    TrainConfig,
    balanced_loss,
    checkpoint_of,
    load_model,
    sample_mixture,
    tokenize_example,
    train,
)
from tools.zoo import addition_examples, char_tokenizer

# Every prompt maps to "777": learnable by each method within a few dozen steps.
CONST = {
    "const": [{"prompt": ex["prompt"], "completion": "777"} for ex in addition_examples(64, 1)]
}
LR = {"full": 3e-3, "lora": 3e-2, "prompt": 3e-2}


def _adapter(method: str) -> PeftConfig | None:
    if method == "lora":
        return LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16)
    if method == "prompt":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    return None


def _next_token_logits(artifact: Path, prompt: str) -> torch.Tensor:
    model, tokenizer = load_model(artifact)
    with torch.no_grad():
        return model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_training_changes_the_model(method: str, tiny_base: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=30, batch_size=8, lr=LR[method])
    result = train(tiny_base, CONST, {"const": 1.0}, tmp_path, config, _adapter(method))
    assert result.artifact == tmp_path
    assert len(result.losses) == 30 and result.final_loss == result.losses[-1]
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 0.3
    assert result.tokens_seen > 30 * 8 * len("1+2=777")
    assert result.wall_seconds > 0 and result.peak_memory_bytes > 0
    assert result.examples == {"const": 30 * 8}
    assert (tmp_path / "adapter_config.json").exists() == (method != "full")

    trained = _next_token_logits(result.artifact, "12+345=")
    base = _next_token_logits(tiny_base, "12+345=")
    seven = char_tokenizer().convert_tokens_to_ids("7")
    assert not torch.allclose(trained, base)
    assert trained.softmax(-1)[seven] > base.softmax(-1)[seven]


def test_examples_count_each_source_drawn(tiny_base: Path, tmp_path: Path) -> None:
    data = {**CONST, "sums": addition_examples(32, 2), "unused": addition_examples(4, 3)}
    mixture = {"const": 1.0, "sums": 3.0, "unused": 0.0}
    config = TrainConfig(steps=2, batch_size=100, lr=1e-3)
    adapter = LoraConfig(task_type="CAUSAL_LM", r=2)
    result = train(tiny_base, data, mixture, tmp_path, config, adapter)
    drawn = sample_mixture(data, mixture, 200, seed=0)
    assert result.examples == dict(Counter(source for source, _ in drawn))
    assert set(result.examples) == {"const", "sums"} and sum(result.examples.values()) == 200
    assert result.examples["sums"] / 200 == pytest.approx(0.75, abs=0.1)
    assert adapter.target_modules is None  # the caller's config is left as it was


def test_train_config_rejects_non_positive_settings() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TrainConfig(steps=0)


def test_tokenize_example_masks_the_prompt() -> None:
    tokenizer = char_tokenizer()
    features = tokenize_example(tokenizer, {"prompt": "1+2=", "completion": "3"}, max_length=64)
    three, eos = tokenizer.convert_tokens_to_ids("3"), tokenizer.eos_token_id
    assert features["input_ids"][-2:] == [three, eos]
    assert features["labels"] == [-100] * 4 + [three, eos]
    truncated = tokenize_example(tokenizer, {"prompt": "1+2=", "completion": "3"}, max_length=5)
    assert truncated["labels"] == [-100] * 4 + [three]


def test_sample_mixture_follows_weights_and_seed() -> None:
    data = {
        "a": [{"prompt": "a", "completion": str(i)} for i in range(5)],
        "b": [{"prompt": "b", "completion": "x"}],
        "c": [{"prompt": "c", "completion": "y"}],
    }
    drawn = sample_mixture(data, {"a": 3.0, "b": 1.0, "c": 0.0}, 4000, seed=7)
    assert all(ex["prompt"] == source for source, ex in drawn)
    counts = Counter(source for source, _ in drawn)
    assert counts["c"] == 0
    assert counts["a"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert drawn == sample_mixture(data, {"a": 3.0, "b": 1.0, "c": 0.0}, 4000, seed=7)
    assert drawn != sample_mixture(data, {"a": 3.0, "b": 1.0, "c": 0.0}, 4000, seed=8)
    with pytest.raises(ValueError, match="without data"):
        sample_mixture(data, {"d": 1.0}, 10, seed=0)
    with pytest.raises(ValueError, match="positive sum"):
        sample_mixture(data, {"a": 0.0}, 10, seed=0)


def test_a_loss_that_turns_nan_stops_the_run(tiny_base: Path, tmp_path: Path) -> None:
    examples = {"add": [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(20)]}
    with pytest.raises(FloatingPointError, match="training loss became nan at step"):
        train(tiny_base, examples, {"add": 1.0}, tmp_path / "out",
              TrainConfig(steps=6, batch_size=4, lr=1e38))
    assert not (tmp_path / "out" / "model.safetensors").exists()


# Two sources of very different lengths: one completion token (and eos) against twenty.
SHORT = [{"prompt": ex["prompt"], "completion": "7"} for ex in addition_examples(16, 4)]
LONG = [{"prompt": ex["prompt"], "completion": "1234567890" * 2} for ex in addition_examples(16, 5)]


def test_data_balance_weighs_each_source_equally(tiny_base: Path) -> None:
    model, tokenizer = load_model(tiny_base)
    examples = [SHORT[0], LONG[0], LONG[1], LONG[2]]  # 2 short tokens against 3 x 21 long
    source = torch.tensor([0, 1, 1, 1])
    features = [tokenize_example(tokenizer, ex, None) for ex in examples]
    batch = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)(features)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    # by hand: each completion token's -log p under the tiny model, example by example
    token_losses: list[list[float]] = []
    for row, f in enumerate(features):
        log_p = logits[row].log_softmax(-1)
        token_losses.append([-log_p[i - 1, f["labels"][i]].item()
                             for i in range(1, len(f["labels"])) if f["labels"][i] != -100])
    assert [len(t) for t in token_losses] == [2, 21, 21, 21]
    short, long = token_losses[0], [x for t in token_losses[1:] for x in t]
    per_source = [sum(short) / len(short), sum(long) / len(long)]
    assert abs(per_source[0] - per_source[1]) > 0.1  # the sources' losses differ
    data = balanced_loss(logits, batch["labels"], source, "data")
    assert data.item() == pytest.approx(sum(per_source) / 2, rel=1e-5)
    # the plain token mean lets the long source's 63 tokens outweigh the short one's 2
    plain = (sum(short) + sum(long)) / (len(short) + len(long))
    assert abs(plain - per_source[1]) < abs(data.item() - per_source[1])
    # focal: P_i the mean over the source's examples of their mean token probability
    probs = [sum(math.exp(-x) for x in t) / len(t) for t in token_losses]
    p = [probs[0], sum(probs[1:]) / 3]
    focal = sum(-(1 - q) ** 2 * math.log(q) for q in p) / 2
    assert balanced_loss(logits, batch["labels"], source, "focal").item() == pytest.approx(
        focal, rel=1e-5)
    # a source whose every example was cut to its prompt takes no part
    cut = batch["labels"].clone()
    cut[0] = -100
    assert balanced_loss(logits, cut, source, "data").item() == pytest.approx(
        per_source[1], rel=1e-5)


@pytest.mark.parametrize(("balance", "method"), [("data", "full"), ("focal", "prompt")])
def test_a_balanced_run_completes_and_changes_the_weights(tiny_base: Path, tmp_path: Path,
                                                          balance: str, method: str) -> None:
    config = TrainConfig(steps=6, batch_size=8, lr=LR[method], grad_accum=2,
                         loss_balance=balance)
    result = train(tiny_base, {"short": SHORT, "long": LONG}, {"short": 1.0, "long": 1.0},
                   tmp_path, config, _adapter(method))
    assert len(result.losses) == 6 and all(math.isfinite(x) for x in result.losses)
    assert set(result.examples) == {"short", "long"}
    trained = _next_token_logits(result.artifact, "12+345=")
    assert not torch.allclose(trained, _next_token_logits(tiny_base, "12+345="))


def test_loss_balance_is_checked() -> None:
    with pytest.raises(ValueError, match="loss_balance must be one of none, data, focal"):
        TrainConfig(loss_balance="tokens")


@pytest.mark.parametrize("method", ["full", "lora", "prompt"])
def test_a_run_stopped_part_way_resumes_to_the_uninterrupted_run(
        method: str, tiny_base: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=8, batch_size=4, lr=LR[method])
    whole = train(tiny_base, CONST, {"const": 1.0}, tmp_path / "whole", config, _adapter(method))
    part = train(tiny_base, CONST, {"const": 1.0}, tmp_path / "part", config, _adapter(method),
                 stop_after=3)
    assert part.losses == whole.losses[:3] and part.examples == {"const": 3 * 4}
    rest = train(tiny_base, CONST, {"const": 1.0}, tmp_path / "rest", config, _adapter(method),
                 resume=checkpoint_of(tmp_path / "part", 3))
    assert rest.losses == whole.losses and rest.examples == {"const": 5 * 4}
    assert part.tokens_seen + rest.tokens_seen == whole.tokens_seen
    finished, _ = load_model(tmp_path / "rest")
    uninterrupted, _ = load_model(tmp_path / "whole")
    stopped, _ = load_model(tmp_path / "part")
    for name, weight in uninterrupted.state_dict().items():
        assert torch.equal(finished.state_dict()[name], weight), name
    assert any(not torch.equal(stopped.state_dict()[n], w)
               for n, w in uninterrupted.state_dict().items())


def test_recipes_in_stages_refuse_to_stop_part_way(tiny_base: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot stop part-way"):
        train(tiny_base, CONST, {"const": 1.0}, tmp_path, TrainConfig(steps=4, batch_size=4),
              HalfFineTuning(round_steps=2), stop_after=2)
    with pytest.raises(ValueError, match="stop_after must be between"):
        train(tiny_base, CONST, {"const": 1.0}, tmp_path, TrainConfig(steps=4, batch_size=4),
              stop_after=4)
