"""A fine-tune of the found allocation as a training config of LLaMA-Factory, Axolotl or TRL.

Each function takes one `Job` (a distinct fine-tune: base, method, mixture) and returns the
config as a dict plus what that tool cannot express. Paths are relative to the export folder,
from which the user runs the tool:

    data/MODEL.SUB.SRC.jsonl    {"prompt", "completion"} per line: source SRC of subtask SUB as
                                base MODEL trains on it, rendered with SUB's template and label
                                and, where SUB sets `chat_template`, in MODEL's chat template
                                (what planner trains on); for LLaMA-Factory, whose `empty`
                                template adds no special tokens, each example also carries
                                MODEL's BOS (where its tokenizer adds one) and EOS as text
    data/NAME.mixture.jsonl     the examples planner's training draws for job NAME (Axolotl)
    data/dataset_info.json      LLaMA-Factory's registry of its files
    outputs/NAME/               where each tool writes the trained model

Key names follow each tool's own schema (LLaMA-Factory `hparams`, Axolotl
`utils/schemas`, TRL `SFTConfig`/`ModelConfig`/`DatasetMixtureConfig`); the method's own
keys come from `FineTune.tool_config`, loop settings included (micro-batch and gradient
accumulation, gradient checkpointing, mixed precision: `auto` is bf16 as on any recent GPU,
Axolotl's own `bf16: auto`).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.methods import FineTune, Tool, ToolConfig

DATA_DIR = "data"


@dataclass(frozen=True)
class Job:
    """One distinct fine-tune of the allocation."""

    name: str
    """File stem: the subtasks it serves, joined by `_`."""
    serves: tuple[str, ...]
    model: str
    """The base's name in the task."""
    base: str
    """The base model as other tools load it: a local folder or a hub id."""
    method: FineTune
    sources: dict[str, float]
    """Qualified source `subtask/source` -> weight (sum 1)."""

    @property
    def output_dir(self) -> str:
        return f"outputs/{self.name}"


def dataset_name(qualified: str) -> str:
    """`sub/src` -> `sub.src`, the source's name in the exported data folder."""
    return qualified.replace("/", ".")


def dataset_stem(job: Job, qualified: str) -> str:
    """The name of a source as the job's base trains on it (its chat template, and for
    LLaMA-Factory its special tokens, in the text); the file is `data/NAME.jsonl`."""
    return f"{job.model}.{dataset_name(qualified)}"


def data_file(job: Job, qualified: str) -> str:
    return f"{DATA_DIR}/{dataset_stem(job, qualified)}.jsonl"


def mixture_file(job: Job) -> str:
    return f"{DATA_DIR}/{job.name}.mixture.jsonl"


def dataset_info(names: list[str]) -> dict[str, dict]:
    """LLaMA-Factory's `dataset_info.json`: each dataset file in the alpaca format, the prompt
    as the instruction and the completion as the response."""
    return {name: {"file_name": f"{name}.jsonl", "formatting": "alpaca",
                   "columns": {"prompt": "prompt", "response": "completion"}}
            for name in names}


def llamafactory(job: Job) -> ToolConfig:
    """`llamafactory-cli train` config. The `empty` template feeds the raw prompt, as planner
    does; a mixture interleaves the sources with its weights as probabilities."""
    own = job.method.tool_config("llamafactory")
    names = [dataset_stem(job, q) for q in job.sources]
    data: dict[str, object] = {"dataset": ",".join(names), "dataset_dir": DATA_DIR,
                               "template": "empty"}
    if len(names) > 1:
        data |= {"mix_strategy": "interleave_under",
                 "interleave_probs": ",".join(_weight(w) for w in job.sources.values())}
    keys = {"model_name_or_path": job.base, "stage": "sft", "do_train": True, **own.keys,
            **data, "output_dir": job.output_dir, "report_to": "none"}
    return ToolConfig(keys, own.unexpressed)


def axolotl(job: Job) -> ToolConfig:
    """`axolotl train` config. Axolotl has no per-dataset weight, so a mixture of several
    sources trains on the pre-sampled examples of `mixture_file` (planner's own draw)."""
    own = job.method.tool_config("axolotl")
    single = len(job.sources) == 1
    path = data_file(job, next(iter(job.sources))) if single else mixture_file(job)
    dataset = {"path": path, "ds_type": "json",
               "type": {"field_instruction": "prompt", "field_output": "completion",
                        "format": "{instruction}", "no_input_format": "{instruction}"}}
    unexpressed = list(own.unexpressed)
    if not single:
        unexpressed.append(f"mixture weights: Axolotl weighs no dataset; {path} holds the "
                           f"{job.method.options.steps * job.method.options.batch_size} "
                           "examples planner draws from the mixture")
    keys = {"base_model": job.base, **own.keys, "datasets": [dataset],
            "train_on_inputs": False, "output_dir": job.output_dir}
    return ToolConfig(keys, unexpressed)


def trl(job: Job) -> ToolConfig:
    """`trl sft --config` file: prompt/completion JSONL, the loss on completions only; a
    mixture gives each source its weight as `fraction`."""
    own = job.method.tool_config("trl")
    datasets: list[dict[str, object]] = [{"path": "json", "data_files": data_file(job, q),
                                          "split": "train"} for q in job.sources]
    if len(datasets) > 1:
        for entry, weight in zip(datasets, job.sources.values(), strict=True):
            entry["fraction"] = float(_weight(weight))
    keys = {"model_name_or_path": job.base, "datasets": datasets, **own.keys,
            "completion_only_loss": True, "output_dir": job.output_dir, "report_to": "none"}
    return ToolConfig(keys, own.unexpressed)


TRAIN_CONFIGS = {"llamafactory": llamafactory, "axolotl": axolotl, "trl": trl}
"""Tool -> config builder."""

CONFIG_FILES: dict[Tool, tuple[str, str]] = {
    "llamafactory": ("llamafactory/{}.yaml", "llamafactory-cli train {}"),
    "axolotl": ("axolotl/{}.yml", "axolotl train {}"),
    "trl": ("trl/{}.yaml", "trl sft --config {}"),
}
"""Tool -> (path of a job's config, command that runs it)."""


def _weight(w: float) -> str:
    return f"{w:.6g}"
