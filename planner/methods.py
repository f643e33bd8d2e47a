"""Fine-tuning methods: one class per kind, owning its options, its training FLOPs, its peft
adapter and how it reads in other tools' training configs.

task.yaml's `methods:` validates as the union of these classes, discriminated on `kind`, so
an option a kind does not take is an error that names the valid ones. Adding a kind means
adding one class here and listing it in `Method` (see DESIGN.md); a kind that trains on
task data subclasses `FineTune`.

Training FLOPs (N = parameters of the base, D = tokens trained on):

- full fine-tuning, pre-training: 6·N·D (forward 2ND + backward 4ND; Kaplan et al. 2020,
  "Scaling Laws for Neural Language Models", C ≈ 6ND);
- LoRA, prompt tuning: 4·N·D (the base is frozen: the backward pass still computes
  activation gradients, 2ND, but no weight gradients, 2ND; the adapter's own are negligible);
- half fine-tuning (HFT): 5·N·D (forward 2ND, activation gradients 2ND, weight gradients of
  the unfrozen half 1ND);
- ProMoT: 4·N·D1 + 6·N·D2 (stage 1 tunes a soft prompt on the frozen base over D1 tokens,
  stage 2 every weight over D2); D = D1 + D2, split by their steps;
- merge: ~0 (adding task vectors); its components (LoRA fine-tunes, `planner.artifact`
  parts) are priced as their own artifacts, once each, shared with plans that use them;
- D = steps x batch_size x mean tokens of the examples trained on (the mixture-weighted mean
  of the sources' prompt + output tokens), unless `train_tokens` is given (e.g. the tokens
  of a recorded run in a replay table);
- `options.loss_balance` (MFTCoder's per-source averaging) reweighs the loss, not the FLOPs:
  the same forward and backward passes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from planner.numbers import Count, Float, Int, Tokens

if TYPE_CHECKING:
    from peft import PeftConfig, PromptTuningConfig

    from tools.train import HalfFineTuning, ProMoT, Recipe

Tool = Literal["llamafactory", "axolotl", "trl"]
TOOLS: tuple[Tool, ...] = ("llamafactory", "axolotl", "trl")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Training(_Strict):
    """Settings of the training loop, shared by every kind that fine-tunes."""

    steps: Count = Field(100, description="optimizer steps")
    batch_size: Count = Field(16, description="examples per step")
    lr: Float = Field(1e-3, gt=0, le=1e3, description="peak learning rate")
    seed: Int = Field(0, ge=0, lt=2**32, description="seed of the data draw and the "
                      "initialisation")
    max_length: Count | None = Field(
        None, description="prompt + completion tokens kept; default: the longest example of "
        "the mixture's sources, up to the model's context and 2048 (tools.train)")
    grad_accum: Count = Field(
        1, description="micro-batches per optimizer step: a step still reads batch_size "
        "examples, as grad_accum micro-batches of batch_size / grad_accum (less memory)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass instead of keeping "
        "them: less memory, about a third more compute")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="the training loop's arithmetic: auto is bf16 mixed precision "
        "where the GPU has it, else fp16 on a GPU, else fp32 (a CPU)")
    loss_balance: Literal["none", "data", "focal"] = Field(
        "none", description="how a batch's loss weighs the mixture's sources (MFTCoder, Liu "
        "et al. 2023): none averages all its completion tokens; data averages within each "
        "source, then across sources, so a source of long or many examples does not dominate; "
        "focal is MFTCoder's task-level focal loss (tools.train.balanced_loss)")
    focal_gamma: Float = Field(2.0, ge=0, le=100, description="loss_balance focal: the "
                               "focusing exponent gamma of -(1 - P)^gamma log P")
    torch_compile: bool = Field(
        False, description="compile the model with torch.compile: about 1.3x the training "
        "tokens/s of a 0.5B model on an H200, for tens of seconds of compilation per run")

    @field_validator("grad_accum")
    @classmethod
    def _divides_batch(cls, grad_accum: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        if batch is not None and batch % grad_accum:
            raise PydanticCustomError(
                "grad_accum_divides", "batch_size {batch} is not a multiple of grad_accum "
                "{accum}: batch_size is examples per optimizer step, split into grad_accum "
                "equal micro-batches; make batch_size a multiple of grad_accum",
                {"batch": batch, "accum": grad_accum})
        return grad_accum

    @field_validator("focal_gamma")
    @classmethod
    def _gamma_is_focal(cls, gamma: float, info: ValidationInfo) -> float:
        balance = info.data.get("loss_balance")
        if gamma != 2.0 and balance is not None and balance != "focal":
            raise PydanticCustomError(
                "focal_gamma_unused", "focal_gamma is read by loss_balance focal only (it is "
                "{balance}); remove focal_gamma or set loss_balance: focal", {"balance": balance})
        return gamma

    @model_serializer(mode="wrap")
    def _omit_loop_defaults(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The loop options at their defaults are left out of dumps, so a task's canonical
        JSON (its study hash, its artifacts' settings) is what it was before they existed."""
        data = handler(self)
        for name, default in _LOOP_DEFAULTS.items():
            if getattr(self, name) == default:
                data.pop(name, None)
        return data

    @property
    def micro_batch_size(self) -> int:
        """Examples per forward and backward pass."""
        return self.batch_size // self.grad_accum


_LOOP_DEFAULTS = {"grad_accum": 1, "gradient_checkpointing": False, "precision": "auto",
                  "loss_balance": "none", "focal_gamma": 2.0, "torch_compile": False}


class LoraOptions(Training):
    lora_r: Count = Field(8, description="rank of the update")
    lora_alpha: Count = Field(16, description="scale numerator (update x alpha / r)")
    lora_dropout: Float = Field(0.0, ge=0, lt=1)
    lora_targets: tuple[str, ...] | None = Field(
        None, description="module names to adapt; None: peft's default for the architecture")


class PromptOptions(Training):
    num_virtual_tokens: Count = Field(8, description="length of the soft prompt")


class HftOptions(Training):
    round_steps: Count | None = Field(
        None, description="optimizer steps per round; each round freezes a fresh random half "
        "of each layer's parameter groups. None: steps / 4 rounded up (four rounds)")


class PromotOptions(Training):
    """`steps`, `lr` ... are stage 2's (every weight, the prompt attached and frozen)."""

    prompt_steps: Count = Field(100, description="stage 1: optimizer steps tuning the soft "
                                "prompt on the frozen base")
    prompt_lr: Float = Field(1e-2, gt=0, le=1e3, description="stage 1's peak learning rate "
                             "(a soft prompt wants a larger one than weights)")
    num_virtual_tokens: Count = Field(8, description="length of the soft prompt")
    keep_prompt: bool = Field(False, description="serve the tuned model with its soft prompt; "
                              "the paper drops it, so the weights alone answer")


@dataclass(frozen=True)
class ToolConfig:
    """A method's settings in another tool's training config, and what it cannot express."""

    keys: dict[str, object]
    unexpressed: list[str]


# Training-loop settings under each tool's key names (LLaMA-Factory hparams, Axolotl schema,
# TRL SFTConfig; see ../shared/REFERENCES.md). Each tool's batch key is the micro-batch (per
# device, per forward pass): batch_size / grad_accum, with gradient_accumulation_steps.
_LOOP_KEYS: dict[Tool, dict[str, str]] = {
    "llamafactory": {"steps": "max_steps", "micro_batch_size": "per_device_train_batch_size",
                     "grad_accum": "gradient_accumulation_steps", "lr": "learning_rate",
                     "seed": "seed", "max_length": "cutoff_len"},
    "axolotl": {"steps": "max_steps", "micro_batch_size": "micro_batch_size",
                "grad_accum": "gradient_accumulation_steps", "lr": "learning_rate",
                "seed": "seed", "max_length": "sequence_len"},
    "trl": {"steps": "max_steps", "micro_batch_size": "per_device_train_batch_size",
            "grad_accum": "gradient_accumulation_steps", "lr": "learning_rate", "seed": "seed",
            "max_length": "max_length"},
}

_PRECISION_KEYS: dict[Tool, dict[str, dict[str, object]]] = {
    # LLaMA-Factory and TRL have no "auto": bf16, as on any recent GPU (TRL's own default)
    "llamafactory": {"auto": {"bf16": True}, "bf16": {"bf16": True},
                     "fp16": {"bf16": False, "fp16": True},
                     "fp32": {"bf16": False, "fp16": False}},
    "axolotl": {"auto": {"bf16": "auto"}, "bf16": {"bf16": True},
                "fp16": {"bf16": False, "fp16": True}, "fp32": {"bf16": False, "fp16": False}},
    "trl": {"auto": {"bf16": True}, "bf16": {"bf16": True},
            "fp16": {"bf16": False, "fp16": True}, "fp32": {"bf16": False, "fp16": False}},
}
"""`Training.precision` in each tool's mixed-precision keys."""


def _checkpointing_keys(tool: Tool, on: bool) -> dict[str, object]:
    """Gradient checkpointing, said explicitly: LLaMA-Factory turns it on unless
    `disable_gradient_checkpointing`, and TRL's SFTConfig defaults to it."""
    if tool == "llamafactory":
        return {"disable_gradient_checkpointing": not on}
    return {"gradient_checkpointing": on}


class _Method(_Strict):
    """What every method kind has; subclasses set `kind` and the class constants."""

    name: str

    fine_tunes: ClassVar[bool] = False
    """Trains on the subtask's data, so the plan's mixture decides what it learns."""
    flops_per_param_token: ClassVar[float] = 0.0

    def settings(self) -> str:
        """Canonical JSON of everything but the name: equal settings train equal models."""
        return json.dumps(self.model_dump(mode="json", exclude={"name"}), sort_keys=True)

    def tokens(self, tokens_per_example: float) -> float:
        """Tokens trained on (D)."""
        return 0.0

    def train_flops(self, params: float, tokens_per_example: float) -> float:
        """FLOPs of training a base of `params` parameters (module docstring)."""
        return self.flops_per_param_token * params * self.tokens(tokens_per_example)


class NoneMethod(_Method):
    """The base model as it is: nothing trained, nothing paid."""

    kind: Literal["none"] = "none"


class Pretrain(_Method):
    """A released checkpoint (pre-trained, or fine-tuned by its publisher) whose training
    read `train_tokens` tokens of general data: the same artifact wherever it is used, so
    several subtasks using it pay for it once."""

    kind: Literal["pretrain"] = "pretrain"
    train_tokens: Tokens = Field(description="pre-training tokens of the checkpoint (D)")

    flops_per_param_token: ClassVar[float] = 6.0

    def tokens(self, tokens_per_example: float) -> float:
        return self.train_tokens


class FineTune(_Method):
    """A kind that trains on the subtask's data mixture with the shared training loop."""

    train_tokens: Tokens | None = Field(
        None, description="tokens trained on (D); default steps x batch_size x mean "
        "tokens of the mixture's examples")
    options: Training = Training()

    fine_tunes: ClassVar[bool] = True
    resumable: ClassVar[bool] = True
    """Trains in one loop, which a screen may stop part-way and the full run resume
    (`tools.train`'s `stop_after`, `resume`); recipes in stages of their own may not."""

    def tokens(self, tokens_per_example: float) -> float:
        if self.train_tokens is not None:
            return self.train_tokens
        return self.options.steps * self.options.batch_size * tokens_per_example

    def adapter(self) -> Recipe:
        """What `tools.train.train` trains: a peft config (the adapter), a recipe of its own
        loop over every weight (`HalfFineTuning`, `ProMoT`), or None (every weight)."""
        return None

    @property
    def serves_soft_prompt(self) -> bool:
        """Its model answers with a soft prompt in front, which vLLM cannot serve."""
        return False

    def tool_config(self, tool: Tool) -> ToolConfig:
        """This method's keys in `tool`'s training config (LLaMA-Factory, Axolotl, TRL): the
        loop (steps, micro-batch and accumulation, lr, seed, length), gradient checkpointing
        and mixed precision. TF32 is not exported: it is the GPU's choice, not the method's,
        and TrainingArguments refuses `tf32: true` on a machine without it."""
        o = self.options
        keys = {key: getattr(o, field) for field, key in _LOOP_KEYS[tool].items()
                if getattr(o, field) is not None}  # max_length: None derives it
        keys |= _checkpointing_keys(tool, o.gradient_checkpointing)
        keys |= _PRECISION_KEYS[tool][o.precision]
        if o.torch_compile:  # the same key in all three (TrainingArguments', Axolotl's own)
            keys["torch_compile"] = True
        unexpressed = []
        if o.loss_balance != "none":
            unexpressed.append(f"loss_balance {o.loss_balance}: {tool} averages the loss over "
                               "a batch's tokens whatever source they come from (it has no "
                               "MFTCoder per-source balancing), so a source of long or many "
                               "examples weighs more; train with planner (tools.train)")
        if tool == "llamafactory" and o.precision == "fp32":
            unexpressed.append("precision fp32: LLaMA-Factory has no fp32 switch; with bf16 "
                               "and fp16 off it loads the model in bf16 or fp16 on a GPU "
                               "(model/patcher.py infer_optim_dtype), so this config trains "
                               "in half precision there")
        return ToolConfig(keys, unexpressed)


_EVERY_WEIGHT: dict[Tool, dict[str, object]] = {
    "llamafactory": {"finetuning_type": "full"}, "axolotl": {"adapter": None},
    "trl": {"use_peft": False}}
"""Each tool's keys for training every weight (no adapter)."""


class Full(FineTune):
    """Every weight updated."""

    kind: Literal["full"] = "full"

    flops_per_param_token: ClassVar[float] = 6.0

    def tool_config(self, tool: Tool) -> ToolConfig:
        base = super().tool_config(tool)
        return ToolConfig({**_EVERY_WEIGHT[tool], **base.keys}, base.unexpressed)


class Lora(FineTune):
    """A low-rank update of the chosen modules (Hu et al. 2021), trained with peft."""

    kind: Literal["lora"] = "lora"
    options: LoraOptions = LoraOptions()

    flops_per_param_token: ClassVar[float] = 4.0

    def adapter(self) -> PeftConfig:
        from peft import LoraConfig

        o = self.options
        return LoraConfig(task_type="CAUSAL_LM", r=o.lora_r, lora_alpha=o.lora_alpha,
                          lora_dropout=o.lora_dropout,
                          target_modules=None if o.lora_targets is None else list(o.lora_targets))

    def tool_config(self, tool: Tool) -> ToolConfig:
        base = super().tool_config(tool)
        o = self.options
        rank = {"llamafactory": "lora_rank", "axolotl": "lora_r", "trl": "lora_r"}[tool]
        own: dict[str, object] = {rank: o.lora_r, "lora_alpha": o.lora_alpha,
                                  "lora_dropout": o.lora_dropout}
        own |= {"llamafactory": {"finetuning_type": "lora"}, "axolotl": {"adapter": "lora"},
                "trl": {"use_peft": True}}[tool]
        unexpressed = list(base.unexpressed)
        if o.lora_targets is None:  # each tool's "every linear layer", not peft's default
            own |= {"llamafactory": {"lora_target": "all"},
                    "axolotl": {"lora_target_linear": True},
                    "trl": {"lora_target_modules": "all-linear"}}[tool]
            unexpressed.append("lora_targets: planner trained peft's default modules for the "
                               "architecture; this config adapts every linear layer instead "
                               "(set lora_targets to export the same modules)")
        else:
            own["lora_target" if tool == "llamafactory" else "lora_target_modules"] = {
                "llamafactory": ",".join(o.lora_targets), "axolotl": list(o.lora_targets),
                "trl": _trl_targets(o.lora_targets)}[tool]
        return ToolConfig({**own, **base.keys}, unexpressed)


def _trl_targets(targets: tuple[str, ...]) -> list[str] | str:
    """TRL's ModelConfig turns a one-module list into a string, which peft reads as a regex
    over full module names: give one module as a regex that matches it at any depth."""
    if len(targets) != 1 or targets[0] == "all-linear":
        return list(targets)
    return rf"(.*\.)?{re.escape(targets[0])}"


class PromptTuning(FineTune):
    """A trained soft prompt in front of the frozen base (Lester et al. 2021), with peft."""

    kind: Literal["prompt"] = "prompt"
    options: PromptOptions = PromptOptions()

    flops_per_param_token: ClassVar[float] = 4.0

    def adapter(self) -> PeftConfig:
        return _soft_prompt(self.options.num_virtual_tokens)

    @property
    def serves_soft_prompt(self) -> bool:
        return True

    def tool_config(self, tool: Tool) -> ToolConfig:
        base = super().tool_config(tool)
        return ToolConfig(base.keys, [*base.unexpressed, f"kind prompt: {tool} has no prompt "
                                      "tuning; train this adapter with planner (tools.train)"])


def _soft_prompt(num_virtual_tokens: int) -> PromptTuningConfig:
    from peft import PromptTuningConfig, PromptTuningInit

    # start from real token embeddings: peft's default N(0, 1) init dwarfs them
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                              prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)


class Hft(FineTune):
    """Half fine-tuning (Hui et al. 2024, "HFT: Half Fine-Tuning for Large Language Models"):
    every weight trains, but each round a random half of each layer's parameter groups is
    frozen (seeded by `seed`), which keeps more of what the base knew; `tools.train` runs it."""

    kind: Literal["hft"] = "hft"
    options: HftOptions = HftOptions()

    flops_per_param_token: ClassVar[float] = 5.0
    resumable: ClassVar[bool] = False

    def adapter(self) -> HalfFineTuning:
        from tools.train import HalfFineTuning

        o = self.options
        return HalfFineTuning(o.round_steps or math.ceil(o.steps / 4))

    def tool_config(self, tool: Tool) -> ToolConfig:
        base = super().tool_config(tool)
        return ToolConfig({**_EVERY_WEIGHT[tool], **base.keys}, [
            *base.unexpressed, f"kind hft: {tool} cannot freeze a fresh random half of every "
            "layer each round (LLaMA-Factory's `freeze` and Axolotl's `unfrozen_parameters` fix "
            "one set for the run; BAdam and LISA rotate whole layers; TRL has none), so this "
            "config trains every weight at every step (kind full); train HFT with planner "
            "(tools.train)"])


class Promot(FineTune):
    """ProMoT (Wang et al. 2022, "Two-stage LLM Fine-tuning with Less Specialization and More
    Generalization"): a soft prompt tuned on the frozen base, then every weight tuned with
    that prompt attached and frozen, so the prompt takes up the task's format and the weights
    specialise less; served without the prompt unless `keep_prompt`. `tools.train` runs it."""

    kind: Literal["promot"] = "promot"
    options: PromotOptions = PromotOptions()

    flops_per_param_token: ClassVar[float] = 6.0
    """Stage 2's; `train_flops` adds stage 1 at 4."""
    resumable: ClassVar[bool] = False

    def tokens(self, tokens_per_example: float) -> float:
        if self.train_tokens is not None:
            return self.train_tokens
        o = self.options
        return (o.prompt_steps + o.steps) * o.batch_size * tokens_per_example

    def train_flops(self, params: float, tokens_per_example: float) -> float:
        o = self.options
        prompt_share = o.prompt_steps / (o.prompt_steps + o.steps)  # D1 / D
        rate = 4.0 * prompt_share + self.flops_per_param_token * (1 - prompt_share)
        return rate * params * self.tokens(tokens_per_example)

    def adapter(self) -> ProMoT:
        from tools.train import ProMoT

        o = self.options
        return ProMoT(_soft_prompt(o.num_virtual_tokens), o.prompt_steps, o.prompt_lr,
                      o.keep_prompt)

    @property
    def serves_soft_prompt(self) -> bool:
        return self.options.keep_prompt

    def tool_config(self, tool: Tool) -> ToolConfig:
        base = super().tool_config(tool)
        o = self.options
        return ToolConfig({**_EVERY_WEIGHT[tool], **base.keys}, [
            *base.unexpressed, f"kind promot: {tool} has no prompt tuning, so neither "
            f"stage 1 ({o.prompt_steps} steps tuning a {o.num_virtual_tokens}-token soft prompt "
            f"at lr {o.prompt_lr}) nor the prompt in stage 2: this config is stage 2 without "
            "it (kind full); train ProMoT with planner (tools.train)"])


MergeMethod = Literal["task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs"]

_MERGE_USES: dict[str, tuple[str, ...]] = {
    "density": ("ties", "dare_linear", "dare_ties"), "majority_sign": ("ties", "dare_ties"),
    "seed": ("dare_linear", "dare_ties"), "beta": ("breadcrumbs",), "gamma": ("breadcrumbs",)}
"""Merge option -> the merge methods that read it (`tools.merge.merge`)."""


class MergeComponent(_Strict):
    """One fine-tune a merge adds: the model a plan of `subtask` with `method` and `mixture`
    trains on the merge's base, so a plan that serves it alone shares it (trained once)."""

    method: str = Field(description="a method of kind lora in the catalogue")
    subtask: str = Field(description="the subtask whose mixture it trains on")
    mixture: str | None = Field(None, description="a mixture of that subtask (default: its "
                                "first)")
    weight: Float = Field(1.0, ge=-100, le=100, description="w_t: the scale of its task vector")


class MergeOptions(_Strict):
    """How the components' task vectors combine (`tools.merge.merge`)."""

    method: MergeMethod = Field("task_arithmetic", description="task_arithmetic (Ilharco et "
                                "al. 2023), ties (Yadav et al. 2023), dare_linear / dare_ties "
                                "(Yu et al. 2024), breadcrumbs (Davari & Belilovsky 2023)")
    density: Float = Field(1.0, gt=0, le=1, description="ties: fraction of each task vector "
                           "kept (largest magnitudes); dare: kept at random, rescaled")
    majority_sign: Literal["total", "frequency"] = Field(
        "total", description="ties, dare_ties: the sign election")
    seed: Int = Field(0, ge=0, lt=2**32, description="dare: seed of the random drop")
    beta: Float = Field(0.0, ge=0, lt=1, description="breadcrumbs: fraction of each tensor's "
                        "largest |tau| masked")
    gamma: Float = Field(0.0, ge=0, lt=1, description="breadcrumbs: fraction of each tensor's "
                         "smallest |tau| masked")


class Merge(_Method):
    """Merged fine-tunes (`tools.merge`): each component is a LoRA fine-tune of the plan's
    base on one subtask's data, trained (and paid) once whichever plans use it; the merge
    adds their weighted task vectors to the base (task arithmetic), trimmed and sign-elected
    (TIES), randomly dropped and rescaled (DARE) or with outliers and negligible entries
    masked (Model Breadcrumbs). The merge itself costs ~0 FLOPs and serves as the base."""

    kind: Literal["merge"] = "merge"
    components: tuple[MergeComponent, ...] = Field(min_length=1, max_length=64)
    options: MergeOptions = MergeOptions()

    @model_validator(mode="after")
    def _options_apply(self) -> Merge:
        o, defaults = self.options, MergeOptions()
        for name, methods in _MERGE_USES.items():
            if o.method not in methods and getattr(o, name) != getattr(defaults, name):
                raise PydanticCustomError(
                    "merge_option", "options.{name}: merge method {method} does not use it "
                    "(only {users} do); remove it or change options.method",
                    {"name": name, "method": o.method, "users": ", ".join(methods)})
        if o.beta + o.gamma >= 1:
            raise PydanticCustomError(
                "merge_option", "options.beta + options.gamma must be < 1 (they mask the "
                "largest and the smallest fractions of each tensor); lower them")
        if o.method not in ("task_arithmetic", "breadcrumbs") and len(self.components) < 2:
            raise PydanticCustomError(
                "merge_option", "components: merge method {method} elects signs or drops "
                "entries across two or more fine-tunes; list two or more, or use "
                "task_arithmetic", {"method": o.method})
        return self

    def settings(self) -> str:
        """The merge's own settings; its components are its artifact's parts (identified by
        what they train, not by their catalogue names)."""
        return json.dumps(self.model_dump(mode="json", exclude={"name", "components"}),
                          sort_keys=True)

    def tool_config(self, tool: Tool) -> ToolConfig:
        """No keys: the tools train fine-tunes but do not merge them."""
        o = self.options
        return ToolConfig({}, [
            f"kind merge: {tool} cannot merge fine-tunes (LLaMA-Factory, Axolotl and TRL train "
            "one model per config); train each component with its own config, then merge them "
            f"with mergekit (merge_method: {o.method}, one weight per component) or with "
            "planner (tools.merge)"])


Method = Annotated[NoneMethod | Pretrain | Full | Lora | PromptTuning | Hft | Promot | Merge,
                   Field(discriminator="kind")]
"""Any method kind, as task.yaml's `methods:` holds it."""

KINDS: dict[str, type[_Method]] = {cls.model_fields["kind"].default: cls
                                   for cls in get_args(get_args(Method)[0])}
"""Kind name -> class."""
