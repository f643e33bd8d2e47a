"""Fine-tune a causal LM on a weighted mixture of prompt/completion data.

One call trains one artifact with transformers' `Trainer` (every weight, or a peft adapter
such as LoRA or prompt tuning) and says what it cost and what it trained on. `load_model`
turns any artifact back into a model and tokenizer.

Example:
    >>> from peft import LoraConfig
    >>> result = train("models/tiny", {"add": examples}, {"add": 1.0}, "out/lora",
    ...                TrainConfig(steps=50), LoraConfig(task_type="CAUSAL_LM"))
    >>> model, tokenizer = load_model(result.artifact)
"""

from __future__ import annotations

import copy
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, get_peft_model
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

Example = dict[str, str]  # {"prompt": ..., "completion": ...}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training loop."""

    steps: int = 100
    """Optimizer steps."""
    batch_size: int = 16
    """Examples per step: `steps * batch_size` examples are drawn from the mixture."""
    lr: float = 1e-3
    """Peak learning rate (transformers' default linear decay, no warm-up)."""
    seed: int = 0
    """Seed of the data draw, the initialisation (adapters) and the data order."""
    max_length: int = 128
    """Prompt + completion tokens kept per example (the rest is cut)."""

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.max_length) <= 0 or self.lr <= 0:
            raise ValueError(f"steps, batch_size, max_length and lr must be positive: {self}")


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced, what it trained on and what it cost."""

    artifact: Path
    """Full-weights folder (no adapter) or peft adapter folder."""
    tokens_seen: int
    """Non-padding tokens fed to the model (prompt + completion + eos)."""
    wall_seconds: float
    peak_memory_bytes: int
    """Peak CUDA memory allocated on GPU; on CPU the process's peak RSS (lifetime, not per run)."""
    final_loss: float
    """Training loss of the last step."""
    losses: list[float]
    """Training loss of every step."""
    examples: dict[str, int]
    """Source -> examples drawn from it (`steps * batch_size` in all); undrawn sources absent."""


def train(
    base_model: str | Path,
    data: dict[str, list[Example]],
    mixture: dict[str, float],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    adapter: PeftConfig | None = None,
    *,
    progress: bool = False,
) -> TrainResult:
    """Train `base_model` on `config.steps * config.batch_size` examples drawn from `mixture`.

    Args:
        base_model: HF model folder (or hub-style name already in the local cache) or a
            `.gguf` file.
        data: source name -> examples with "prompt" and "completion" strings.
        mixture: source name -> sampling weight (need not sum to 1).
        out_dir: where the artifact is written.
        config: the training loop's settings.
        adapter: a peft config (e.g. `LoraConfig`, `PromptTuningConfig`): train that adapter
            and save it without the base; None updates every weight and saves them all.
        progress: show a progress bar over steps on stderr.

    Loss is computed on completion tokens (and the eos appended to them) only.
    """
    set_seed(config.seed)
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
    drawn = sample_mixture(data, mixture, config.steps * config.batch_size, config.seed)
    features = [tokenize_example(tokenizer, ex, config.max_length) for _, ex in drawn]
    if adapter is not None:
        model = get_peft_model(model, copy.deepcopy(adapter))  # peft fills in the copy
    losses = _fit(model, tokenizer, features, config, Path(out_dir), progress)
    if adapter is not None:
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
        examples=dict(sorted(Counter(source for source, _ in drawn).items())),
    )


def _fit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
         features: list[dict[str, list[int]]], config: TrainConfig, out_dir: Path,
         progress: bool) -> list[float]:
    """Run Trainer over `features` in order; the loss of every step."""
    args = TrainingArguments(
        output_dir=str(out_dir),
        max_steps=config.steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        seed=config.seed,
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
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


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
) -> list[tuple[str, Example]]:
    """Draw `count` (source, example) pairs: a source by weight, then one of its examples
    uniformly (with replacement)."""
    unknown = set(mixture) - set(data)
    if unknown:
        raise ValueError(f"Mixture names sources without data: {sorted(unknown)}.")
    if any(w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
        raise ValueError(f"Mixture weights must be >= 0 with a positive sum, got {mixture}.")
    rng = random.Random(seed)
    sources = rng.choices(list(mixture), weights=list(mixture.values()), k=count)
    return [(source, rng.choice(data[source])) for source in sources]


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


def special_text(base_model: str | Path) -> tuple[str, str]:
    """The text of the special tokens `tokenize_example` puts around an example with this
    base's tokenizer: the BOS it adds before a prompt ('' if none) and the EOS after a
    completion. A tool that adds neither gets the same tokens from this text."""
    path = Path(base_model)
    if str(path).endswith(".gguf"):
        tokenizer = _load_tokenizer(path.parent, gguf_file=path.name)
    else:
        tokenizer = _load_tokenizer(path)
    ids = tokenizer("a")["input_ids"]
    adds_bos = tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]
    return (tokenizer.bos_token if adds_bos else ""), tokenizer.eos_token


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
