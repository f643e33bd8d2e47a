"""Fine-tune a causal LM on a weighted mixture of prompt/completion data.

One call trains one artifact with transformers' `Trainer` (and peft for LoRA / prompt tuning)
and says what it cost. `load_model` turns any artifact back into a model and tokenizer.

Example:
    >>> result = train("models/tiny", "lora", {"add": examples}, {"add": 1.0}, "out/lora",
    ...                steps=50)
    >>> model, tokenizer = load_model(result.artifact)
"""

from __future__ import annotations

import random
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from peft import (
    LoraConfig,
    PeftConfig,
    PeftModel,
    PromptTuningConfig,
    PromptTuningInit,
    get_peft_model,
)
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

Method = Literal["none", "full", "lora", "prompt"]
Example = dict[str, str]  # {"prompt": ..., "completion": ...}


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced and what it cost."""

    artifact: Path
    """Full-weights folder ("full"), peft adapter folder ("lora", "prompt") or the base ("none")."""
    tokens_seen: int
    """Non-padding tokens fed to the model (prompt + completion + eos)."""
    wall_seconds: float
    peak_memory_bytes: int
    """Peak CUDA memory allocated on GPU; on CPU the process's peak RSS (lifetime, not per run)."""
    final_loss: float | None
    """Training loss of the last step; None for "none"."""
    losses: list[float]
    """Training loss of every step."""


def train(
    base_model: str | Path,
    method: Method,
    data: dict[str, list[Example]],
    mixture: dict[str, float],
    out_dir: str | Path,
    *,
    steps: int = 100,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_targets: list[str] | None = None,
    num_virtual_tokens: int = 8,
    max_length: int = 128,
    progress: bool = False,
) -> TrainResult:
    """Train `base_model` with `method` on `steps * batch_size` examples drawn from `mixture`.

    Args:
        base_model: HF model folder (or hub-style name already in the local cache) or a
            `.gguf` file.
        method: "none" returns the base unchanged; "full" updates every weight; "lora" and
            "prompt" train a peft adapter (LoRA / prompt tuning) saved without the base.
        data: source name -> examples with "prompt" and "completion" strings.
        mixture: source name -> sampling weight (need not sum to 1).
        out_dir: where the artifact is written.
        lora_targets: module names for LoRA; None uses peft's default for the architecture.
        progress: show a progress bar over steps on stderr.

    Loss is computed on completion tokens (and the eos appended to them) only.
    """
    if method == "none":
        return TrainResult(Path(base_model), 0, 0.0, _peak_memory_bytes(), None, [])
    if method not in ("full", "lora", "prompt"):
        raise ValueError(f"Unknown method {method!r}; use one of none, full, lora, prompt.")
    set_seed(seed)
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer = _load_base(base_model)
    if str(base_model).endswith(".gguf"):
        # Its weights are already dequantised to float32, but the GGUF quantizer left on it
        # makes Trainer refuse to train it and save_pretrained refuse to save it.
        model.hf_quantizer, model.is_quantized = None, False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    examples = sample_mixture(data, mixture, steps * batch_size, seed)
    features = [tokenize_example(tokenizer, ex, max_length) for ex in examples]
    if method == "lora":
        config = LoraConfig(
            task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_alpha, target_modules=lora_targets
        )
        model = get_peft_model(model, config)
    elif method == "prompt":
        config = PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=num_virtual_tokens,
            # Start from real token embeddings: peft's default N(0, 1) init dwarfs them.
            prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
        )
        model = get_peft_model(model, config)
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        seed=seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # library code does not print; losses come back
    if progress:
        trainer.add_callback(_StepProgress())
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]

    if method != "full":
        # Record the real base (a .gguf file included) so load_model can rebuild it.
        model.peft_config["default"].base_model_name_or_path = str(base_model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return TrainResult(
        artifact=Path(out_dir),
        tokens_seen=sum(len(f["input_ids"]) for f in features),
        wall_seconds=time.perf_counter() - start,
        peak_memory_bytes=_peak_memory_bytes(),
        final_loss=losses[-1],
        losses=losses,
    )


class _StepProgress(TrainerCallback):
    """A bar over training steps on stderr (Trainer's own bar also prints logs to stdout)."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: object) -> None:
        self.bar = tqdm(total=state.max_steps, desc="training", file=sys.stderr)

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        self.bar.update(1)

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: object) -> None:
        self.bar.close()


def load_model(artifact: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a `train` artifact (full folder, peft adapter folder or `.gguf` file) for inference."""
    path = Path(artifact)
    if (path / "adapter_config.json").exists():
        base, _ = _load_base(PeftConfig.from_pretrained(path).base_model_name_or_path)
        model = PeftModel.from_pretrained(base, path)
        tokenizer = _load_tokenizer(path)
    else:
        model, tokenizer = _load_base(path)
    return model.eval(), tokenizer


def sample_mixture(
    data: dict[str, list[Example]], mixture: dict[str, float], count: int, seed: int
) -> list[Example]:
    """Draw `count` examples: a source by weight, then an example uniformly (with replacement)."""
    unknown = set(mixture) - set(data)
    if unknown:
        raise ValueError(f"Mixture names sources without data: {sorted(unknown)}.")
    if any(w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
        raise ValueError(f"Mixture weights must be >= 0 with a positive sum, got {mixture}.")
    rng = random.Random(seed)
    sources = rng.choices(list(mixture), weights=list(mixture.values()), k=count)
    return [rng.choice(data[source]) for source in sources]


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int
) -> dict[str, list[int]]:
    """Token ids and labels for one example; labels are -100 on the prompt.

    Prompt and completion are tokenized separately, as at inference time, where the model sees
    the tokenized prompt (with the tokenizer's usual special tokens) and continues it.
    """
    prompt = tokenizer(example["prompt"])["input_ids"]
    completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
    completion = [*completion, tokenizer.eos_token_id]
    input_ids = (prompt + completion)[:max_length]
    labels = ([-100] * len(prompt) + completion)[:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def _load_base(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model folder or a `.gguf` file (dequantised to float32 by transformers)."""
    if str(path).endswith(".gguf"):
        folder, name = Path(path).parent, Path(path).name
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
        return model, _load_tokenizer(folder, gguf_file=name)
    return AutoModelForCausalLM.from_pretrained(path), _load_tokenizer(path)


def _load_tokenizer(path: str | Path, **kwargs: str) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"Tokenizer at {path} has no eos token; completions could not end.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _peak_memory_bytes() -> int:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
