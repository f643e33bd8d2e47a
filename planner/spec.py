"""task.yaml -> a typed, validated `TaskSpec` (pydantic) whose subtasks form a DAG.

A task names a catalogue of models and fine-tuning methods once, then lists subtasks that
pick from it. Every path in the file is relative to the file's folder.

Example::

    spec = load_spec("envs/replay/tasks/monkeys_gsm8k.yaml")
    spec.subtask("solve").samples  # [1, 2, 4, ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import networkx as nx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from planner.budget import parse_budget
from planner.errors import BudgetError, SpecError

MethodKind = Literal["none", "full", "lora", "prompt", "pretrain"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Strict):
    """The accelerator the plan's cost is priced on."""

    name: str = "H100-SXM"
    peak_flops: float = Field(9.89e14, gt=0, description="dense bf16 FLOP/s of one GPU")
    utilization: float = Field(0.4, gt=0, le=1, description="achieved fraction of peak (MFU)")
    usd_per_gpu_hour: float | None = Field(
        None, gt=0, description="rental price of one GPU-hour; converts recorded USD costs")


class Workload(_Strict):
    """What the deployed pipeline must serve: inference cost scales with it."""

    queries: int = Field(gt=0, description="end-to-end queries the plan must serve")


class ModelSpec(_Strict):
    """A base model a subtask may use."""

    name: str
    params: float | None = Field(
        None, gt=0, description="parameter count N; None if undisclosed (then the replay "
        "table must price it, e.g. in USD, and it cannot be trained)")
    source: str = Field("", description="HF id, local folder, .gguf file, or a table label")
    methods: list[str] | None = Field(
        None, description="methods this model supports (default: every method of the subtask)"
    )


class MethodSpec(_Strict):
    """A fine-tuning method and its hyper-parameters."""

    name: str
    kind: MethodKind
    train_tokens: float = Field(0, ge=0, description="tokens the method trains on (D)")
    options: dict[str, float | int | str | list[str]] = Field(default_factory=dict)


class ReplaySpec(_Strict):
    """Where a replay subtask's recorded per-item results live and how columns map.

    `choices` maps plan fields (model, method, mixture) to table columns. Outcomes are
    either counts (`n_samples` + `n_correct` columns) or one row per sample (`correct`).
    """

    table: Path
    item: str = "item"
    choices: dict[Literal["model", "method", "mixture"], str] = Field(
        default_factory=lambda: {"model": "model"}
    )
    n_samples: str | None = "n_samples"
    n_correct: str | None = "n_correct"
    correct: str | None = None
    flops_per_sample: str | None = Field(
        None, description="column of recorded inference FLOPs per sample; else the cost model"
    )
    input_tokens: str | None = Field(
        None, description="column of recorded prompt tokens per sample (priced at 2N each)")
    output_tokens: str | None = Field(
        None, description="column of recorded generated tokens per sample (priced at 2N each)")
    usd_per_sample: str | None = Field(
        None, description="column of recorded USD per sample; needs hardware.usd_per_gpu_hour")

    @model_validator(mode="after")
    def _one_outcome_form(self) -> ReplaySpec:
        if self.correct is None and not (self.n_samples and self.n_correct):
            raise ValueError("give `correct`, or both `n_samples` and `n_correct`")
        if (self.input_tokens is None) != (self.output_tokens is None):
            raise ValueError("give both `input_tokens` and `output_tokens`, or neither")
        return self


class DataSpec(_Strict):
    """A live subtask's data: named training sources (JSONL) and a validation set, and how a
    record becomes a prompt and a label."""

    sources: dict[str, Path] = Field(default_factory=dict)
    val: Path
    prompt: str = Field("{prompt}", description="template of the model input: {field} is the "
                        "record's field, or, where field names a dependency, its output")
    label: str | None = Field(None, description="field holding the gold output (default: the "
                              "subtask's name, so dependents' {name} fields hold it too)")


class Decoding(_Strict):
    """How a live subtask samples its completions."""

    temperature: float = Field(0.8, ge=0, description="0 is greedy (n identical samples)")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(32, gt=0)
    seed: int = 0


class SubtaskSpec(_Strict):
    """One stage of the pipeline and the choices it may take."""

    name: str
    depends_on: list[str] = Field(default_factory=list)
    metric: str = "exact_match"
    prompt_tokens: int = Field(gt=0)
    output_tokens: int = Field(gt=0)
    models: list[str] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["none"])
    mixtures: dict[str, dict[str, float]] = Field(default_factory=lambda: {"default": {}})
    samples: list[int] = Field(default_factory=lambda: [1], min_length=1)
    aggregators: list[str] = Field(default_factory=lambda: ["first"], min_length=1)
    data: DataSpec | None = None
    decoding: Decoding = Field(default_factory=Decoding)
    replay: ReplaySpec | None = None

    @field_validator("samples")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError("every samples value must be >= 1")
        return sorted(set(v))


class TaskSpec(_Strict):
    """A whole task: catalogues, hardware, workload and the subtask DAG."""

    name: str
    description: str = ""
    environment: Literal["replay", "live"] = "replay"
    budget: str | None = Field(None, description="default --budget, e.g. 8gpu-h")
    hardware: Hardware = Field(default_factory=Hardware)
    workload: Workload
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [MethodSpec(name="none", kind="none")]
    )
    subtasks: list[SubtaskSpec] = Field(min_length=1)
    root: Path = Field(Path("."), exclude=True, description="folder relative paths start from")

    def subtask(self, name: str) -> SubtaskSpec:
        return next(s for s in self.subtasks if s.name == name)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def method(self, name: str) -> MethodSpec:
        return next(m for m in self.methods if m.name == name)

    def graph(self) -> nx.DiGraph:
        """The subtask DAG, edges from a dependency to its dependent."""
        g = nx.DiGraph()
        g.add_nodes_from(s.name for s in self.subtasks)
        g.add_edges_from((d, s.name) for s in self.subtasks for d in s.depends_on)
        return g

    def order(self) -> list[str]:
        """Subtask names in a topological order (dependencies first)."""
        return list(nx.topological_sort(self.graph()))

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.root / p


def _check_references(spec: TaskSpec) -> None:
    """Cross-field checks pydantic cannot express field by field."""
    model_names = {m.name for m in spec.models}
    method_names = {m.name for m in spec.methods}
    subtask_names = [s.name for s in spec.subtasks]
    if len(set(subtask_names)) != len(subtask_names):
        raise ValueError("subtasks: names must be unique", "subtasks")
    for i, s in enumerate(spec.subtasks):
        where = f"subtasks[{i}]"
        for m in s.models:
            if m not in model_names:
                raise ValueError(f"unknown model {m!r}; known: {sorted(model_names)}", where)
            allowed = spec.model(m).methods
            trained = [x for x in s.methods if x in method_names and spec.method(x).kind != "none"
                       and (allowed is None or x in allowed)]
            if spec.model(m).params is None and trained:
                raise ValueError(f"model {m!r} has no `params`, so methods {trained} cannot be "
                                 "priced; give its params or use methods of kind none", where)
        if (s.replay is not None and s.replay.usd_per_sample
                and spec.hardware.usd_per_gpu_hour is None):
            raise ValueError("replay.usd_per_sample needs hardware.usd_per_gpu_hour to convert "
                             "USD to GPU-hours", where)
        for m in s.methods:
            if m not in method_names:
                raise ValueError(f"unknown method {m!r}; known: {sorted(method_names)}", where)
        for d in s.depends_on:
            if d not in subtask_names:
                raise ValueError(
                    f"depends_on names missing subtask {d!r}; subtasks are {subtask_names}", where
                )
        if spec.environment == "replay" and s.replay is None:
            raise ValueError("a replay task needs `replay:` (table, columns) here", where)
        if spec.environment == "live" and s.data is None:
            raise ValueError("a live task needs `data:` (sources, val) here", where)
        for name, weights in s.mixtures.items():
            if s.data is not None and (bad := set(weights) - set(s.data.sources)):
                raise ValueError(
                    f"mixture {name!r} weights unknown sources {sorted(bad)}; "
                    f"sources are {sorted(s.data.sources)}",
                    where,
                )
        for path in _paths(s):
            if not spec.path(path).exists():
                raise ValueError(f"data file {str(path)!r} not found (relative to the task file)",
                                 where)
    cycles = list(nx.simple_cycles(spec.graph()))
    if cycles:
        raise ValueError(f"depends_on forms a cycle: {' -> '.join(cycles[0] + cycles[0][:1])}",
                         "subtasks")
    if spec.budget is not None:
        try:
            parse_budget(spec.budget)
        except BudgetError as e:
            raise ValueError(str(e), "budget") from e


def _paths(s: SubtaskSpec) -> list[Path]:
    paths = []
    if s.replay is not None:
        paths.append(s.replay.table)
    if s.data is not None:
        paths += [*s.data.sources.values(), s.data.val]
    return paths


def parse_spec(data: dict, *, root: Path = Path("."), source: str = "<task>") -> TaskSpec:
    """Validate a task mapping; raise `SpecError` with one line naming source and field."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = TaskSpec.model_validate({**data, "root": root})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling"
        elif err["type"] == "missing":
            msg = "required field is missing"
        raise SpecError(f"{source}: {loc}: {msg}") from None
    try:
        _check_references(spec)
    except ValueError as e:
        msg, where = e.args
        raise SpecError(f"{source}: {where}: {msg}") from None
    return spec


def load_spec(path: str | Path) -> TaskSpec:
    """Read and validate a task.yaml file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such task file; pass the path of a task.yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e.__class__.__name__}: "
                        f"{str(e).splitlines()[0]})") from None
    return parse_spec(data, root=path.resolve().parent, source=str(path))
