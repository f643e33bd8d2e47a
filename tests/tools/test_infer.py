from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from peft import LoraConfig

from tools.infer import TransformersSampler, VLLMSampler, make_sampler
from tools.train import TrainConfig, train
from tools.zoo import addition_examples

PROMPTS = [ex["prompt"] for ex in addition_examples(5, seed=2)]


@pytest.fixture(scope="module")
def sampler(tiny_base: Path) -> TransformersSampler:
    return TransformersSampler(tiny_base, batch_size=2)


def test_samples_have_n_per_prompt_and_repeat_with_the_seed(sampler: TransformersSampler) -> None:
    first = sampler.sample(PROMPTS, 4, max_new_tokens=6, temperature=1.0, seed=3)
    again = sampler.sample(PROMPTS, 4, max_new_tokens=6, temperature=1.0, seed=3)
    other = sampler.sample(PROMPTS, 4, max_new_tokens=6, temperature=1.0, seed=4)
    assert [len(texts) for texts in first.texts] == [4] * len(PROMPTS)
    assert first.texts == again.texts
    assert first.texts != other.texts
    assert len({text for texts in first.texts for text in texts}) > len(PROMPTS)  # it samples
    # The character tokenizer makes token counts easy to check.
    assert first.prompt_tokens == sum(len(p) for p in PROMPTS)
    assert len(PROMPTS) * 4 <= first.completion_tokens <= len(PROMPTS) * 4 * 6
    assert first.seconds > 0


def test_greedy_copies_and_does_not_depend_on_batching(
    sampler: TransformersSampler, tiny_base: Path
) -> None:
    greedy = sampler.sample(PROMPTS, 3, max_new_tokens=6, temperature=0)
    assert all(len(set(texts)) == 1 and len(texts) == 3 for texts in greedy.texts)
    one_by_one = TransformersSampler(tiny_base, batch_size=1)
    assert one_by_one.sample(PROMPTS, 3, max_new_tokens=6, temperature=0).texts == greedy.texts


def test_samples_from_an_adapter(tiny_base: Path, tmp_path: Path) -> None:
    data = {"add": addition_examples(32, seed=0)}
    adapter = train(tiny_base, data, {"add": 1.0}, tmp_path, TrainConfig(steps=2, batch_size=4),
                    LoraConfig(task_type="CAUSAL_LM"))
    samples = make_sampler("transformers", adapter.artifact).sample(PROMPTS[:2], 2, seed=0)
    assert [len(texts) for texts in samples.texts] == [2, 2]


def test_make_sampler_rejects_unknown_backends() -> None:
    with pytest.raises(ValueError, match="Unknown backend"):
        make_sampler("tgi", "model")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_sampler_names_the_extra_to_install() -> None:
    with pytest.raises(ImportError, match=r"planner\[gpu\]"):
        VLLMSampler("model")
