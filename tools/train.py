"""Fine-tune a causal LM on a weighted mixture of prompt/completion data.

One call trains one artifact with transformers' `Trainer` (every weight, a peft adapter such
as LoRA or prompt tuning, or a recipe: `HalfFineTuning`, `ProMoT`) and says what it cost and
what it trained on. `load_model` turns any artifact back into a model and tokenizer.

Example:
    >>> from peft import LoraConfig
    >>> result = train("models/tiny", {"add": examples}, {"add": 1.0}, "out/lora",
    ...                TrainConfig(steps=50), LoraConfig(task_type="CAUSAL_LM"))
    >>> model, tokenizer = load_model(result.artifact)
"""

from __future__ import annotations

import copy
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, PromptTuningConfig, get_peft_model
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
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

from tools.device import PRECISIONS, choose_precision, current_device, use_tf32

Example = dict[str, str]  # {"prompt": ..., "completion": ...}

LOSS_BALANCES = ("none", "data", "focal")
"""`TrainConfig.loss_balance` values (`balanced_loss`)."""

HFT_SCHEDULE = "half_fine_tuning.json"
"""File of a `HalfFineTuning` artifact: the parameters frozen in each round."""
SOFT_PROMPT = "soft_prompt"
"""Folder of a `ProMoT(keep_prompt=True)` artifact: the soft prompt, a peft adapter on the
tuned weights beside it."""


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
    max_length: int | None = None
    """Prompt + completion tokens kept per example (the rest is cut); None derives it from
    the data: the longest example of the mixture's sources, up to the model's context
    (less soft-prompt tokens) and `MAX_LENGTH_CAP` (`derived_max_length`)."""

    grad_accum: int = 1
    """Micro-batches per optimizer step: each step still reads `batch_size` examples, as
    `grad_accum` micro-batches of `batch_size / grad_accum` (less memory, same update)."""
    gradient_checkpointing: bool = False
    """Keep only each layer's inputs and recompute the rest in the backward pass: activation
    memory for one more forward pass (about a third more compute)."""
    precision: str = "auto"
    """`auto`, `bf16`, `fp16` or `fp32` (`tools.device.choose_precision`): mixed precision
    keeps fp32 weights and computes in 16 bits; auto is bf16 where the GPU has it, else fp16
    on a GPU, else fp32."""
    loss_balance: str = "none"
    """How a batch's token losses are averaged across its sources (`balanced_loss`; MFTCoder,
    Liu et al. 2023): `none` over all its completion tokens, `data` within each source then
    across sources, `focal` MFTCoder's task-level focal loss."""
    focal_gamma: float = 2.0
    """The focal loss's focusing exponent gamma (`loss_balance` focal)."""
    torch_compile: bool = False
    """Compile the model with `torch.compile` (Trainer's `torch_compile`): fused kernels, about
    1.3x the tokens/s of a 0.5B model on an H200 (experiments/README_parallel.md), for a
    compilation of tens of seconds at the first steps; pays off on trials of minutes."""

    def __post_init__(self) -> None:
        length = 1 if self.max_length is None else self.max_length
        if min(self.steps, self.batch_size, length) <= 0 or self.lr <= 0:
            raise ValueError(f"steps, batch_size, max_length and lr must be positive: {self}")
        if self.grad_accum <= 0 or self.batch_size % self.grad_accum:
            raise ValueError(f"grad_accum {self.grad_accum} must divide batch_size "
                             f"{self.batch_size}: each step's examples are split into "
                             "grad_accum equal micro-batches")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of "
                             f"{', '.join(PRECISIONS)}")
        if self.loss_balance not in LOSS_BALANCES or self.focal_gamma < 0:
            raise ValueError(f"loss_balance must be one of {', '.join(LOSS_BALANCES)} and "
                             f"focal_gamma >= 0: {self}")

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward and backward pass."""
        return self.batch_size // self.grad_accum


@dataclass(frozen=True)
class HalfFineTuning:
    """Half fine-tuning (HFT; Hui et al. 2024, "HFT: Half Fine-Tuning for Large Language
    Models", arXiv 2404.18466): every weight is trained, but in each round of `round_steps`
    optimizer steps a random half of each layer's parameter groups (`parameter_groups`) is
    frozen, a new half each round, drawn from the run's seed. A frozen tensor takes no
    gradient (`requires_grad` off, so the backward pass skips its weight gradient), so the
    optimizer skips it: it stays bit-identical through the round, and AdamW's moments and
    weight decay of it wait for a round in which it trains. The rounds' frozen parameters
    are written to the artifact's `HFT_SCHEDULE`."""

    round_steps: int

    def __post_init__(self) -> None:
        if self.round_steps <= 0:
            raise ValueError(f"round_steps must be positive: {self}")


@dataclass(frozen=True)
class ProMoT:
    """Prompt tuning with model tuning (ProMoT; Wang et al. 2022, "Two-stage LLM Fine-tuning
    with Less Specialization and More Generalization", arXiv 2211.00635). Stage 1 trains the
    soft prompt `prompt` on the frozen base for `prompt_steps` steps at `prompt_lr`; stage 2
    trains every weight of the model with that prompt attached and frozen, under the run's
    `TrainConfig`. The prompt absorbs the task's format, so the weights specialise less. The
    artifact is the tuned model without the prompt (the paper's use on other tasks); with
    `keep_prompt` the prompt is saved beside it (`SOFT_PROMPT`) and `load_model` attaches it."""

    prompt: PromptTuningConfig
    prompt_steps: int
    prompt_lr: float
    keep_prompt: bool = False

    def __post_init__(self) -> None:
        if self.prompt_steps <= 0 or self.prompt_lr <= 0:
            raise ValueError(f"prompt_steps and prompt_lr must be positive: {self}")


Recipe = PeftConfig | HalfFineTuning | ProMoT | None
"""What `train` trains: a peft adapter, every weight by a recipe, or (None) every weight."""


def resumable(adapter: Recipe) -> bool:
    """Whether `train` can stop a run of `adapter` part-way and resume it (`stop_after`,
    `resume`): one Trainer loop, every weight or a peft adapter (HFT's rounds and ProMoT's
    stages are not)."""
    return adapter is None or isinstance(adapter, PeftConfig)


def checkpoint_of(out_dir: str | Path, step: int) -> Path:
    """The resumable checkpoint a `train(..., stop_after=step)` run saved in `out_dir`."""
    return Path(out_dir) / f"checkpoint-{step}"  # Trainer's own folder name


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced, what it trained on and what it cost."""

    artifact: Path
    """Full-weights folder (no adapter, or a recipe) or peft adapter folder."""
    tokens_seen: int
    """Non-padding tokens fed to the model (prompt + completion + eos)."""
    wall_seconds: float
    peak_memory_bytes: int
    """Peak CUDA memory allocated on GPU; on CPU the process's peak RSS (lifetime, not per run)."""
    final_loss: float
    """Training loss of the last step."""
    losses: list[float]
    """Training loss of every step (ProMoT: stage 1's, then stage 2's)."""
    examples: dict[str, int]
    """Source -> examples drawn from it (`steps * batch_size` in all, ProMoT's stage 1 steps
    included); undrawn sources absent."""
    max_length: int
    """Tokens kept per example: `TrainConfig.max_length`, or the one derived from the data."""
    truncated: int
    """Drawn examples longer than `max_length`, so cut (counted per draw)."""
    longest: int
    """Tokens of the longest drawn example, before cutting."""
    params: int = 0
    """Parameters of the base model (embeddings included; an adapter's own not counted)."""
    loop_seconds: float = 0.0
    """Seconds in the training loop(s) alone (`wall_seconds` less loading, tokenizing and
    saving)."""
    device: str = "cpu"
    """Where it trained (`tools.device.Device.describe`): `cpu` or `cuda:<GPU name>`."""
    precision: str = "fp32"
    """The precision the loop ran in (`TrainConfig.precision` resolved for the device)."""
    tf32: bool = False
    """TF32 matmuls were on (a GPU of compute capability 8.0 or newer)."""
    micro_batch_size: int = 0
    """Examples per forward and backward pass (`batch_size / grad_accum`)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    examples_per_step: float = 0.0
    """Examples the loop fed the model per optimizer step, counted as they were collated:
    `batch_size` whatever `grad_accum` is."""

    @property
    def tokens_per_second(self) -> float:
        """Training throughput: tokens fed per second of the loop."""
        return self.tokens_seen / self.loop_seconds if self.loop_seconds > 0 else 0.0


def train(
    base_model: str | Path,
    data: dict[str, list[Example]],
    mixture: dict[str, float],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    adapter: Recipe = None,
    *,
    progress: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
    stop_after: int | None = None,
    resume: str | Path | None = None,
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
            and save it without the base; None updates every weight and saves them all; a
            `HalfFineTuning` or `ProMoT` recipe trains every weight its way and saves them all.
        progress: show a progress bar over steps on stderr.
        callbacks: more `TrainerCallback`s for the Trainer (ProMoT: stage 2's only), e.g. to
            watch the weights between steps.
        stop_after: stop the run after this many of its `config.steps` optimizer steps (the
            learning rate follows the whole run's schedule) and save, besides the model, a
            Trainer checkpoint of that step in `out_dir` (`checkpoint_of`): a screen's
            training, the prefix of the full run.
        resume: a checkpoint saved by a `stop_after` run of the same arguments: train only
            the remaining steps. The artifact equals the uninterrupted run's (Trainer restores
            the optimizer, scheduler, RNG and data order); the result counts this call's
            steps, and its losses are the whole run's.
        `stop_after` and `resume` need a single training loop: every weight, or a peft
        adapter (`resumable`); HFT's and ProMoT's recipes refuse them.

    Loss is computed on completion tokens (and the eos appended to them) only; averaged over
    all of a batch's, or per source first (`config.loss_balance`, `balanced_loss`).
    """
    if (stop_after is not None or resume is not None) and not resumable(adapter):
        raise ValueError(f"{type(adapter).__name__} trains in stages of its own: it cannot "
                         "stop part-way or resume (stop_after, resume)")
    if stop_after is not None and not 0 < stop_after < config.steps:
        raise ValueError(f"stop_after must be between 0 and steps ({config.steps}), "
                         f"got {stop_after}")
    set_seed(config.seed)
    start = time.perf_counter()
    device = current_device()
    loop = _Loop(choose_precision(config.precision, device), use_tf32(device))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer = _load_base(base_model)
    params = sum(p.numel() for p in model.parameters())  # tied weights once; before adapters
    if str(base_model).endswith(".gguf"):
        # Its weights are already dequantised to float32, but the GGUF quantizer left on it
        # makes Trainer refuse to train it and save_pretrained refuse to save it.
        model.hf_quantizer, model.is_quantized = None, False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    steps = config.steps + (adapter.prompt_steps if isinstance(adapter, ProMoT) else 0)
    drawn = sample_mixture(data, mixture, steps * config.batch_size, config.seed)
    whole = _tokenized(tokenizer, data, mixture)  # each source example once, uncut
    max_length = config.max_length if config.max_length is not None else derived_max_length(
        [len(f["input_ids"]) for f in whole.values()], _context(model.config, adapter))
    uncut = [whole[ex["prompt"], ex["completion"]] for _, ex in drawn]
    features = [{k: v[:max_length] for k, v in f.items()} for f in uncut]  # fresh dicts
    if config.loss_balance != "none":  # the loss averages per source: each example says its own
        ids = {source: i for i, source in enumerate(sorted(mixture))}
        for feature, (source, _) in zip(features, drawn, strict=True):
            feature["source"] = ids[source]
    out, callbacks = Path(out_dir), list(callbacks)
    if isinstance(adapter, ProMoT):
        losses = _promot(model, tokenizer, features, config, adapter, base_model, out, progress,
                         callbacks, loop)
    elif isinstance(adapter, HalfFineTuning):
        half = _HalfFreeze(model, adapter.round_steps, config.seed)
        losses = _fit(model, tokenizer, features, config, out, progress, [half, *callbacks],
                      loop)
        model.save_pretrained(out)
        (out / HFT_SCHEDULE).write_text(json.dumps(
            {"round_steps": adapter.round_steps, "frozen": half.rounds}, indent=1))
    else:
        if adapter is not None:
            model = get_peft_model(model, copy.deepcopy(adapter))  # peft fills in the copy
        if stop_after is not None:
            callbacks.append(_StopAfter(stop_after))
        losses = _fit(model, tokenizer, features, config, out, progress, callbacks, loop,
                      resume)
        if adapter is not None:
            # Record the real base (a .gguf file included) so load_model can rebuild it.
            model.peft_config["default"].base_model_name_or_path = str(base_model)
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    span = slice(_done_steps(resume) * config.batch_size,
                 (stop_after or steps) * config.batch_size)  # the examples this call trained on
    return TrainResult(
        artifact=Path(out_dir),
        tokens_seen=sum(len(f["input_ids"]) for f in features[span]),
        wall_seconds=time.perf_counter() - start,
        peak_memory_bytes=_peak_memory_bytes(),
        final_loss=losses[-1],
        losses=losses,
        examples=dict(sorted(Counter(source for source, _ in drawn[span]).items())),
        max_length=max_length,
        truncated=sum(len(f["input_ids"]) > max_length for f in uncut),
        longest=max(len(f["input_ids"]) for f in uncut),
        params=params,
        loop_seconds=loop.seconds,
        device=device.describe(),
        precision=loop.precision,
        tf32=loop.tf32,
        micro_batch_size=config.micro_batch_size,
        grad_accum=config.grad_accum,
        examples_per_step=loop.examples / max(loop.steps, 1),
    )


MAX_LENGTH_CAP = 2048
"""The most tokens per example a derived `max_length` keeps (an explicit one may be more)."""


def derived_max_length(lengths: Sequence[int], context: int | None) -> int:
    """`max_length` from the data: the longest example's tokens, capped at the tokens the
    model can take (`context`, None if unknown) and at `MAX_LENGTH_CAP`."""
    cap = MAX_LENGTH_CAP if context is None else min(MAX_LENGTH_CAP, context)
    return max(1, min(max(lengths, default=1), cap))


def train_length(base_model: str | Path, data: dict[str, list[Example]],
                 mixture: dict[str, float], config: TrainConfig = TrainConfig(),
                 adapter: Recipe = None) -> int:
    """The `max_length` `train` would use with these arguments, without training (an
    explicit `config.max_length`, else the one derived from the data)."""
    if config.max_length is not None:
        return config.max_length
    tokenizer = load_tokenizer(base_model)
    path = Path(base_model)
    if str(path).endswith(".gguf"):
        model_config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    else:
        model_config = AutoConfig.from_pretrained(path)
    whole = _tokenized(tokenizer, data, mixture)
    return derived_max_length([len(f["input_ids"]) for f in whole.values()],
                              _context(model_config, adapter))


def param_count(base_model: str | Path) -> int:
    """Parameters of a model folder or `.gguf` file, as `TrainResult.params` counts them
    (tied weights once), from its config alone: the model is built on the meta device, so
    no weight is read or allocated."""
    path = Path(base_model)
    if str(path).endswith(".gguf"):
        model_config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    else:
        model_config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters())


def _tokenized(tokenizer: PreTrainedTokenizerBase, data: dict[str, list[Example]],
               mixture: dict[str, float]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """(prompt, completion) -> its uncut features, for every example of the sources the
    mixture draws from (weight > 0), each tokenized once."""
    whole: dict[tuple[str, str], dict[str, list[int]]] = {}
    for source, weight in mixture.items():
        for ex in data[source] if weight > 0 else ():
            key = (ex["prompt"], ex["completion"])
            if key not in whole:
                whole[key] = tokenize_example(tokenizer, ex, None)
    return whole


def _context(model_config: object, adapter: Recipe) -> int | None:
    """Positions the model takes (None if its config does not say), less a soft prompt's
    virtual tokens (prompt tuning, ProMoT), which precede the example."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    prompt = adapter.prompt if isinstance(adapter, ProMoT) else adapter
    virtual = getattr(prompt, "num_virtual_tokens", None) or 0
    return max(1, positions - virtual)


def _promot(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            features: list[dict[str, list[int]]], config: TrainConfig, recipe: ProMoT,
            base_model: str | Path, out: Path, progress: bool,
            callbacks: list[TrainerCallback], loop: _Loop) -> list[float]:
    """ProMoT's two stages on `features` (stage 1 reads the first `prompt_steps` batches);
    saves the tuned weights (and, if kept, the prompt) in `out`; the loss of every step."""
    split = recipe.prompt_steps * config.batch_size
    peft_model = get_peft_model(model, copy.deepcopy(recipe.prompt))  # base frozen by peft
    stage1 = replace(config, steps=recipe.prompt_steps, lr=recipe.prompt_lr)
    losses = _fit(peft_model, tokenizer, features[:split], stage1, out, progress, (), loop)
    prompt = {id(param) for param in peft_model.prompt_encoder.parameters()}
    for param in peft_model.parameters():
        param.requires_grad_(id(param) not in prompt)  # stage 2: the weights, prompt frozen
    losses += _fit(peft_model, tokenizer, features[split:], config, out, progress, callbacks,
                   loop)
    model.save_pretrained(out)  # the tuned weights alone: peft's prompt wraps, not edits, them
    if recipe.keep_prompt:  # records the base it came from; load_model puts it on `out`
        peft_model.peft_config["default"].base_model_name_or_path = str(base_model)
        peft_model.save_pretrained(out / SOFT_PROMPT)
    return losses


class _HalfFreeze(TrainerCallback):
    """HFT's rounds: at the first step of each round, freeze a fresh random half of each
    layer's parameter groups and unfreeze the rest; `rounds` lists each round's frozen names."""

    def __init__(self, model: PreTrainedModel, round_steps: int, seed: int) -> None:
        self.params = dict(model.named_parameters())
        self.groups = parameter_groups(model)
        self.round_steps, self.seed = round_steps, seed
        self.rounds: list[list[str]] = []

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: object) -> None:
        if state.global_step % self.round_steps:
            return
        frozen = frozen_half(self.groups, self.seed, state.global_step // self.round_steps)
        for name, param in self.params.items():
            param.requires_grad_(name not in frozen)
        self.rounds.append(sorted(frozen))

    def on_train_end(self, args: TrainingArguments, state: TrainerState,
                     control: TrainerControl, **kwargs: object) -> None:
        for param in self.params.values():
            param.requires_grad_(True)


def parameter_groups(model: torch.nn.Module) -> dict[str, list[list[str]]]:
    """HFT's unit of freezing: layer -> its parameter groups, each the parameter names of one
    module (a weight and its bias). A layer is a numbered block (`transformer.h.3`); the
    parameters outside any (embeddings, final norm) form the layer ''."""
    layers: dict[str, dict[str, list[str]]] = {}
    for name, _ in model.named_parameters():
        module = name.rpartition(".")[0]
        parts = module.split(".")
        number = next((i for i, part in enumerate(parts) if part.isdigit()), None)
        layer = ".".join(parts[:number + 1]) if number is not None else ""
        layers.setdefault(layer, {}).setdefault(module, []).append(name)
    return {layer: list(groups.values()) for layer, groups in layers.items()}


def frozen_half(groups: dict[str, list[list[str]]], seed: int, round_index: int) -> set[str]:
    """The parameter names HFT freezes in round `round_index`: half of each layer's groups
    (of an odd count, one more or one fewer by a coin flip), drawn from `seed` and the round."""
    rng = random.Random(f"hft:{seed}:{round_index}")
    frozen: set[str] = set()
    for layer in sorted(groups):
        count = len(groups[layer])
        for group in rng.sample(groups[layer], count // 2 + (count % 2) * rng.randint(0, 1)):
            frozen.update(group)
    return frozen


def _fit(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
         features: list[dict[str, list[int]]], config: TrainConfig, out_dir: Path,
         progress: bool, callbacks: Sequence[TrainerCallback] = (),
         loop: _Loop | None = None, resume: str | Path | None = None) -> list[float]:
    """Run Trainer over `features` in order (from the checkpoint `resume`, if given); the
    loss of every step. `loop` sets the precision and TF32 (default: chosen for this machine)
    and adds up the loop's seconds, optimizer steps and the examples collated."""
    if loop is None:
        device = current_device()
        loop = _Loop(choose_precision(config.precision, device), use_tf32(device))
    args = TrainingArguments(
        output_dir=str(out_dir),
        seed=config.seed,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss is logged as such (`_FiniteLoss` stops it)
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,  # a balanced loss reads each example's `source`
        **loop_arguments(config, loop.precision, loop.tf32),
    )
    collator = _Counting(DataCollatorForSeq2Seq(tokenizer, padding=True,
                                                label_pad_token_id=-100), loop)
    if config.loss_balance == "none":
        trainer = Trainer(model=model, args=args, train_dataset=features, data_collator=collator)
    else:
        trainer = _BalancedTrainer(config.loss_balance, config.focal_gamma, model=model,
                                   args=args, train_dataset=features, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # library code does not print; losses come back
    if progress:
        trainer.add_callback(_StepProgress())
    for callback in callbacks:
        trainer.add_callback(callback)
    trainer.add_callback(_FiniteLoss())
    start, before = time.perf_counter(), _done_steps(resume)
    try:
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    finally:
        loop.seconds += time.perf_counter() - start
        loop.steps += trainer.state.global_step - before
        if config.gradient_checkpointing:  # saved and served models recompute nothing
            model.gradient_checkpointing_disable()
    return [log["loss"] for log in trainer.state.log_history if "loss" in log]


def loop_arguments(config: TrainConfig, precision: str, tf32: bool) -> dict[str, object]:
    """`TrainingArguments` of the loop's settings: `batch_size` examples per optimizer step as
    `grad_accum` micro-batches, gradient checkpointing (non-reentrant, so it works with a
    frozen base under an adapter), mixed precision (`precision` from `choose_precision`) and
    TF32 matmuls where `tf32` (from `use_tf32`; None leaves torch's default), and
    `torch.compile` where asked."""
    return {
        "max_steps": config.steps,
        "learning_rate": config.lr,
        "per_device_train_batch_size": config.micro_batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_checkpointing": config.gradient_checkpointing,
        "gradient_checkpointing_kwargs": ({"use_reentrant": False}
                                          if config.gradient_checkpointing else None),
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "tf32": True if tf32 else None,
        "torch_compile": config.torch_compile,
    }


@dataclass
class _Loop:
    """A training run's loop settings for the device, and what its loops did."""

    precision: str
    tf32: bool
    seconds: float = 0.0
    steps: int = 0
    examples: int = 0


class _Counting:
    """A data collator that counts the examples it collates into `loop.examples`."""

    def __init__(self, collator: DataCollatorForSeq2Seq, loop: _Loop) -> None:
        self.collator, self.loop = collator, loop

    def __call__(self, features: list[dict]) -> dict:
        self.loop.examples += len(features)
        if "source" not in features[0]:
            return self.collator(features)
        batch = self.collator([{k: v for k, v in f.items() if k != "source"} for f in features])
        batch["source"] = torch.tensor([f["source"] for f in features])
        return batch


def balanced_loss(logits: torch.Tensor, labels: torch.Tensor, source: torch.Tensor,
                  balance: str, gamma: float = 2.0) -> torch.Tensor:
    """A batch's loss balanced across its sources (MFTCoder: Liu et al. 2023, "MFTCoder:
    Boosting Code LLMs with Multitask Fine-Tuning", arXiv 2311.02303, section 3.3).

    With l_ijk = -log p(t_ijk) the loss of completion token k of example j of source i
    (labels -100 are not tokens; logits predict the next label, as in a causal LM's loss),
    T_ij the example's completion tokens and N the sources present in the batch:

    - `data`: (1/N) sum_i [sum_jk l_ijk / sum_j T_ij]: each source's mean token loss, then
      their mean, so a source of long or many examples weighs as much as any other;
    - `focal`: with P_i = mean_j [(1/T_ij) sum_k p(t_ijk)] (source i's mean token
      probability), (1/N) sum_i -(1 - P_i)^gamma log P_i: sources the model already predicts
      well weigh less (alpha_i = 1).

    `logits` may hold more positions than `labels` in front (a soft prompt's): the last ones
    are the example's. Examples with no completion token left (cut) take no part."""
    logits = logits[:, -labels.shape[1]:-1].float()
    target = labels[:, 1:]
    mask = target != -100
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
        reduction="none").view(target.shape)
    tokens = mask.sum(dim=1)
    per_source = []
    for s in source[tokens > 0].unique():
        rows = (source == s) & (tokens > 0)
        if balance == "data":
            per_source.append(losses[rows].sum() / tokens[rows].sum())
        elif balance == "focal":
            p = ((-losses[rows]).exp() * mask[rows]).sum(dim=1) / tokens[rows]
            mean_p = p.mean()
            per_source.append(-(1 - mean_p) ** gamma * mean_p.log())
        else:
            raise ValueError(f"loss_balance {balance!r} is not one of data, focal")
    if not per_source:
        return logits.sum() * 0.0  # nothing to learn from in this batch
    return torch.stack(per_source).mean()


class _BalancedTrainer(Trainer):
    """A Trainer whose loss is `balanced_loss` over each micro-batch's sources."""

    loss_is_scaled_for_ga = False  # a micro-batch's mean: Trainer divides by the micro-batches

    def __init__(self, balance: str, gamma: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.balance, self.gamma = balance, gamma

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None,
                     ) -> torch.Tensor | tuple[torch.Tensor, object]:
        inputs = dict(inputs)
        source, labels = inputs.pop("source"), inputs.pop("labels")
        outputs = model(**inputs)
        loss = balanced_loss(outputs.logits, labels, source, self.balance, self.gamma)
        return (loss, outputs) if return_outputs else loss


class _StopAfter(TrainerCallback):
    """Stops the run after `steps` optimizer steps and has Trainer save a checkpoint there."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: object) -> None:
        if state.global_step >= self.steps:
            control.should_training_stop = control.should_save = True


def _done_steps(checkpoint: str | Path | None) -> int:
    """The optimizer steps a Trainer checkpoint had taken (0 for none)."""
    if checkpoint is None:
        return 0
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


class _FiniteLoss(TrainerCallback):
    """Stop a run whose loss is NaN or infinite: the trial fails with the step and the
    cause instead of saving a broken model."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict | None = None, **kwargs: object) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {state.global_step}"
                                     f"; lower the learning rate ({args.learning_rate:g})")


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
    """Load a `train` artifact (full folder, peft adapter folder or `.gguf` file) for inference;
    a ProMoT artifact that kept its prompt comes with the prompt attached."""
    path = Path(artifact)
    if (path / "adapter_config.json").exists():
        base, _ = _load_base(PeftConfig.from_pretrained(path).base_model_name_or_path)
        model = PeftModel.from_pretrained(base, path)
        tokenizer = _load_tokenizer(path)
    else:
        model, tokenizer = _load_base(path)
        if (path / SOFT_PROMPT / "adapter_config.json").exists():
            model = PeftModel.from_pretrained(model, path / SOFT_PROMPT)
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
    tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int | None
) -> dict[str, list[int]]:
    """Token ids and labels for one example; labels are -100 on the prompt; the first
    `max_length` tokens (None: all).

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


def load_tokenizer(base_model: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer `train` uses for a model folder or `.gguf` file."""
    path = Path(base_model)
    if str(path).endswith(".gguf"):
        return _load_tokenizer(path.parent, gguf_file=path.name)
    return _load_tokenizer(path)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """`prompt` as the user's turn in the tokenizer's chat template, ending where the
    assistant's answer starts (`add_generation_prompt`). A BOS the template writes is left
    to the tokenizer, which adds it when the text is tokenized (so it is there once).
    ValueError if the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=False)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("a")["input_ids"][:1] == [
            tokenizer.bos_token_id]:
        text = text[len(bos):]
    return text


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
