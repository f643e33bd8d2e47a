"""task.yaml -> a typed, validated `TaskSpec` (pydantic) whose subtasks form a DAG.

A task names a catalogue of models and fine-tuning methods once, then lists subtasks that
pick from it. Every path in the file is relative to the file's folder.

Example::

    spec = load_spec("envs/replay/tasks/monkeys_gsm8k.yaml")
    spec.subtask("solve").samples  # [1, 2, 4, ...]
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path
from typing import Annotated, Literal

import networkx as nx
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from planner.budget import parse_budget
from planner.errors import BudgetError, SpecError
from planner.methods import KINDS, FineTune, Lora, Merge, MergeComponent, Method, NoneMethod
from planner.numbers import MAX_PARAMS, MAX_SAMPLES, Count, Float, Int
from planner.sampling import Sampling
from planner.sampling import check_references as _check_sampling

MAX_TASK_BYTES = 1 << 20  # a task file is a few KB; more is not a task file
MAX_DEPTH = 32  # YAML nesting levels
MAX_NODES = 100_000  # YAML values after expanding aliases (a "billion laughs" stops here)


def _distinct(values: list | None) -> list | None:
    if values is not None and len(set(values)) != len(values):
        raise ValueError(f"{_repeated(values)!r} is listed twice; list each value once")
    return values


Distinct = AfterValidator(_distinct)
Name = Annotated[str, Field(min_length=1, max_length=200)]  # a non-empty name
Column = Annotated[str, Field(min_length=1)]  # a table column's name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hardware(_Strict):
    """The accelerator the plan's cost is priced on."""

    name: str = "H100-SXM"
    peak_flops: Float = Field(9.89e14, ge=1e6, le=1e21,
                              description="dense bf16 FLOP/s of one GPU")
    utilization: Float = Field(0.4, ge=1e-3, le=1, description="achieved fraction of peak (MFU)")
    usd_per_gpu_hour: Float | None = Field(
        None, gt=0, le=1e6, description="rental price of one GPU-hour; converts recorded USD costs "
        "and budgets in USD")

    def gpu_hours(self, budget: str) -> float:
        """A budget string (`8gpu-h`, `3.5e18flop`, `50usd`, ...) in GPU-hours of this
        hardware."""
        return parse_budget(budget).gpu_hours(self.peak_flops, self.utilization,
                                              self.usd_per_gpu_hour)


class Workload(_Strict):
    """What the deployed pipeline must serve: inference cost scales with it."""

    queries: Int = Field(gt=0, le=10**15, description="end-to-end queries the plan must serve")


class ModelSpec(_Strict):
    """A base model a subtask may use."""

    name: Name
    params: Float | None = Field(
        None, ge=1, le=MAX_PARAMS, description="parameter count N; None if undisclosed (then "
        "the replay table must price it, e.g. in USD, and it cannot be trained)")
    source: str = Field("", description="HF id, local folder, .gguf file, or a table label")
    methods: Annotated[list[str] | None, Distinct] = Field(
        None, min_length=1,
        description="methods this model supports (default: every method of the subtask)")


class ModelChoice(_Strict):
    """A subtask's model, and the methods it may use there where they are fewer than the
    subtask's (e.g. a replay table records only some (model, method) pairs here)."""

    name: Name
    methods: Annotated[list[str] | None, Distinct] = Field(None, min_length=1,
                                                           description="default: all of them")


class ReplaySpec(_Strict):
    """Where a replay subtask's recorded per-item results live and how columns map.

    `choices` maps plan fields (model, method, mixture) to table columns. Outcomes are
    either counts (`n_samples` + `n_correct` columns) or one row per sample (`correct`, and
    `answer` where majority vote is replayed).
    """

    table: Path
    item: Column = "item"
    choices: dict[Literal["model", "method", "mixture"], Column] = Field(
        default_factory=lambda: {"model": "model"}, min_length=1,
        description="plan field -> table column; at least the model's")
    n_samples: Column | None = "n_samples"
    n_correct: Column | None = "n_correct"
    correct: Column | None = None
    answer: Column | None = Field(
        None, description="per-sample form: column of each sample's final answer (majority)")
    flops_per_sample: Column | None = Field(
        None, description="column of recorded inference FLOPs per sample; else the cost model"
    )
    input_tokens: Column | None = Field(
        None, description="column of recorded prompt tokens per sample (priced at 2N each)")
    output_tokens: Column | None = Field(
        None, description="column of recorded generated tokens per sample (priced at 2N each)")
    usd_per_sample: Column | None = Field(
        None, description="column of recorded USD per sample; needs hardware.usd_per_gpu_hour")

    @model_validator(mode="after")
    def _one_outcome_form(self) -> ReplaySpec:
        if self.correct is None and not (self.n_samples and self.n_correct):
            raise ValueError("give `correct`, or both `n_samples` and `n_correct`")
        if self.answer is not None and self.correct is None:
            raise ValueError("`answer` needs the per-sample form: give `correct` too")
        if (self.input_tokens is None) != (self.output_tokens is None):
            raise ValueError("give both `input_tokens` and `output_tokens`, or neither")
        return self


def template_fields(template: str) -> list[str]:
    """Names of the `{field}` placeholders of a template, in order (a `{}` is named '');
    ValueError where a brace is unmatched."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


class DataSpec(_Strict):
    """A live subtask's data: named training sources (JSONL) and a validation set, and how a
    record becomes a prompt and a label."""

    sources: dict[Name, Path] = Field(default_factory=dict)
    val: Path
    prompt: str = Field("{prompt}", description="template of the model input: {field} is the "
                        "record's field, or, where field names a dependency, its output")
    label: Name | None = Field(None, description="field holding the gold output (default: the "
                               "subtask's name, so dependents' {name} fields hold it too)")

    @field_validator("prompt")
    @classmethod
    def _names_fields(cls, prompt: str) -> str:
        try:
            fields = template_fields(prompt)
        except ValueError as e:  # an unmatched brace
            raise ValueError(f"{prompt!r} is no template ({e}); write a record's field as "
                             "{field}, and a literal brace twice: {{ or }}") from None
        if "" in fields:
            raise ValueError(f"{prompt!r} has an empty {{}}: name a record's field in it, e.g. "
                             "'{question}'")
        if not fields:
            raise ValueError(f"{prompt!r} names no record field, so every item would get the "
                             "same prompt; write e.g. '{question} Answer:'")
        return prompt


class Decoding(_Strict):
    """How a live subtask samples its completions."""

    temperature: Float = Field(0.8, ge=0, le=100, description="0 is greedy (n identical "
                               "samples)")
    top_p: Float = Field(1.0, gt=0, le=1)
    max_new_tokens: Count = 32
    seed: Int = Field(0, ge=0, lt=2**32)


VERIFIER_AGGREGATORS = ("verifier", "verifier_best")
"""Aggregators that re-rank samples by a trained verifier's scores (Liu et al. 2023):
verifier-weighted majority over answer clusters, and best-of-n by score."""


class VerifierSpec(_Strict):
    """A verifier a subtask may re-rank its samples with (aggregators `verifier`,
    `verifier_best`): `model` fine-tuned by `method` on `samples` generator samples of each
    of `items` training items, labelled right or wrong by the subtask's metric. One is
    trained per generator (the plan's model) it judges. A `sequential` one is no second
    model: the generator itself, further fine-tuned by `method` on that data, then both
    generates and scores (Liu et al. 2023's sequential multi-task fine-tuning)."""

    model: Name | None = Field(None, description="the catalogue model the verifier is "
                               "trained from (not with sequential)")
    method: Name = Field(description="the catalogue fine-tuning method that trains it")
    items: Count = Field(200, description="training items of the subtask sampled for it")
    samples: Count = Field(4, le=MAX_SAMPLES, description="generator samples per training item")
    sequential: bool = Field(False, description="continue the generator on the verification "
                             "data instead of training `model`: one served model generates "
                             "and scores")

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        """`sequential` unset (and `model` with it) is left out: a task hashes as before."""
        data = handler(self)
        if not self.sequential:
            data.pop("sequential", None)
        if self.model is None:
            data.pop("model", None)
        return data


CASCADE_NONE = "none"
"""The `cascade` value of a plan that never escalates."""


def cascade_value(name: str, threshold: float) -> str:
    """A `cascade` dimension value: `NAME@THRESHOLD`, e.g. `big@0.75`."""
    return f"{name}@{threshold:g}"


class CascadeSpec(_Strict):
    """A stronger plan a subtask may escalate its doubtful items to (`cascades:`; Yue et
    al. 2024, FrugalGPT 2023): an item whose plan's n samples agree with their majority
    answer less than `threshold` (a share of n) takes this plan's answer instead. Each
    threshold is a value of the subtask's `cascade` dimension (planner/cascade.py)."""

    model: Name = Field(description="the catalogue model of the strong plan")
    method: Name = Field("none", description="the catalogue method it serves with (kind none "
                         "or a fine-tuning kind)")
    mixture: Name | None = Field(None, description="one of the subtask's mixtures, where the "
                                 "method fine-tunes (default: its first)")
    samples: Count = Field(1, description="its samples per item, at most the subtask's "
                           "largest `samples`")
    aggregator: Literal["first", "majority"] = "majority"
    thresholds: Annotated[list[Annotated[Float, Field(ge=0)]], Distinct] = Field(
        min_length=1, description="agreement thresholds to search: the share of the n "
        "samples that must agree with the vote to keep it (0: never escalates; above 1: "
        "always)")


class SubtaskSpec(_Strict):
    """One stage of the pipeline and the choices it may take."""

    name: Annotated[Name, Field(pattern=r"^[^/]+$")]
    depends_on: Annotated[list[str], Distinct] = Field(default_factory=list)
    metric: str = "exact_match"
    prompt_tokens: Count
    output_tokens: Count
    models: list[ModelChoice] = Field(
        min_length=1, description="model names, or {name, methods} to restrict its methods here")
    methods: Annotated[list[str], Distinct] = Field(default_factory=lambda: ["none"],
                                                    min_length=1)
    mixtures: dict[Name, dict[str, Float]] = Field(
        default_factory=lambda: {"default": {}}, min_length=1,
        description="named weightings of training data: a source of this subtask, or "
        "`subtask/source` of another; empty: this subtask's sources, equally")
    samples: Annotated[list[Int], Distinct] = Field(default_factory=lambda: [1], min_length=1)
    aggregators: Annotated[list[str], Distinct] = Field(default_factory=lambda: ["first"],
                                                        min_length=1)
    data: DataSpec | None = None
    decoding: Decoding = Field(default_factory=Decoding)
    answer: str | dict[str, str] | None = Field(
        None, description="what a completion answers, for voting and scoring: last_number, "
        "{regex: PATTERN} (its first group), or module:function; default: the stripped text")
    chat_template: bool = Field(False, description="wrap each prompt in the model's chat "
                                "template (sampling and training)")
    replay: ReplaySpec | None = None
    sampling: Sampling | None = Field(None, description="how this subtask samples, over the "
                                      "task's `sampling:` (planner/sampling.py)")
    verifiers: dict[Name, VerifierSpec] = Field(
        default_factory=dict, description="named verifiers the `verifier` aggregators may use "
        "(a searched dimension); live tasks only")
    cascades: dict[Annotated[Name, Field(pattern=r"^[^@]+$")], CascadeSpec] = Field(
        default_factory=dict, description="named stronger plans to escalate doubtful items "
        "to (the `cascade` dimension); live tasks only")

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_form(cls, v: object) -> object:
        return _answer_extractor(v)

    @model_serializer(mode="wrap")
    def _omit_unset_options(self, handler: SerializerFunctionWrapHandler) -> dict:
        """`answer`, `chat_template`, `verifiers` and `cascades` are left out while unset,
        so a task that does not use them dumps (and hashes) as it did before they existed."""
        data = handler(self)
        for key in ("answer", "chat_template", "verifiers", "sampling", "cascades"):
            if not getattr(self, key):
                data.pop(key, None)
        return data

    @field_validator("models", mode="before")
    @classmethod
    def _names_are_choices(cls, v: object) -> object:
        if not isinstance(v, list):
            return v
        if any(not isinstance(m, str | dict) for m in v):
            raise ValueError("each entry is a model name or {name: MODEL, methods: [...]}")
        return [{"name": m} if isinstance(m, str) else m for m in v]

    @field_validator("samples")
    @classmethod
    def _positive_sorted(cls, v: list[int]) -> list[int]:
        if any(not 1 <= n <= MAX_SAMPLES for n in v):
            raise ValueError(f"every samples value must be >= 1 and <= {MAX_SAMPLES:,}")
        return sorted(v)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    def methods_here(self, model: str) -> list[str]:
        """The subtask's methods, restricted where its `models:` entry lists some."""
        entry = next(m for m in self.models if m.name == model)
        return self.methods if entry.methods is None else [x for x in self.methods
                                                           if x in entry.methods]


ANSWER_NAMES = ("last_number",)
_MODULE_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _answer_extractor(v: object) -> object:
    """`answer:` is a built-in name, {regex: PATTERN} (compiles) or module:function."""
    fix = ("write last_number, {regex: PATTERN} (its first group is the answer) or "
           "module:function (a function of the completion, in a .py file beside the task)")
    if v is None:
        return v
    if isinstance(v, str):
        if v in ANSWER_NAMES or _MODULE_FUNCTION.match(v):
            return v
        raise ValueError(f"{v!r} is not an answer extractor; {fix}")
    if isinstance(v, dict):
        if set(v) != {"regex"} or not isinstance(v["regex"], str):
            raise ValueError(f"{v!r}: a regex extractor is one key, `regex: PATTERN`; {fix}")
        try:
            re.compile(v["regex"])
        except re.error as e:
            raise ValueError(f"regex {v['regex']!r} does not compile ({e}); fix the "
                             "pattern") from None
        return dict(v)
    raise ValueError(f"{v!r} is not an answer extractor; {fix}")


class TaskSpec(_Strict):
    """A whole task: catalogues, hardware, workload and the subtask DAG."""

    name: Name
    description: str = ""
    environment: Literal["replay", "live"] = "replay"
    budget: str | None = Field(None, description="default --budget, e.g. 8gpu-h")
    hardware: Hardware = Field(default_factory=Hardware)
    workload: Workload
    models: list[ModelSpec] = Field(min_length=1)
    methods: list[Method] = Field(default_factory=lambda: [NoneMethod(name="none")],
                                  min_length=1)
    subtasks: list[SubtaskSpec] = Field(min_length=1)
    sampling: Sampling | None = Field(None, description="live: the sampling backend "
                                      "(transformers, vllm, openai; planner/sampling.py)")
    root: Path = Field(Path("."), exclude=True, description="folder relative paths start from")
    source: str = Field("<task>", exclude=True, description="what it was read from (a task "
                        "file, a study), as errors name it")

    @model_serializer(mode="wrap")
    def _omit_unset_sampling(self, handler: SerializerFunctionWrapHandler) -> dict:
        """`sampling` is left out while unset: a task without it hashes as before."""
        data = handler(self)
        if self.sampling is None:
            data.pop("sampling", None)
        return data

    def subtask(self, name: str) -> SubtaskSpec:
        return next(s for s in self.subtasks if s.name == name)

    def model(self, name: str) -> ModelSpec:
        return next(m for m in self.models if m.name == name)

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def mixture_weights(self, subtask: str, mixture: str) -> dict[str, float]:
        """A mixture as weights summing to 1 over qualified sources `subtask/source`.

        An empty mixture is the subtask's own sources, equally (a replay subtask, which has
        no source files, is one source: `subtask/data`). A plain key is a source of this
        subtask; `other/source` a source of another subtask (multi-task training)."""
        s = self.subtask(subtask)
        own = list(s.data.sources) if s.data is not None and s.data.sources else ["data"]
        raw = s.mixtures[mixture] or dict.fromkeys(own, 1.0)
        weights = {(k if "/" in k else f"{subtask}/{k}"): w for k, w in raw.items() if w > 0}
        total = sum(weights.values())
        return {k: w / total for k, w in sorted(weights.items())}

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
    for field, names in (("models", [m.name for m in spec.models]),
                         ("methods", [m.name for m in spec.methods]),
                         ("subtasks", subtask_names)):
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique; {_repeated(names)!r} is used twice", field)
    for i, m in enumerate(spec.models):
        if bad := sorted(set(m.methods or []) - method_names):
            raise ValueError(f"names unknown methods {bad}; known: {sorted(method_names)}",
                             f"models[{i}] ({m.name}).methods")
    for i, s in enumerate(spec.subtasks):
        where = f"subtasks[{i}]"
        for m in s.methods:
            if m not in method_names:
                raise ValueError(f"unknown method {m!r}; known: {sorted(method_names)}", where)
        if len(set(s.model_names)) != len(s.model_names):
            raise ValueError(f"models: {_repeated(s.model_names)!r} is listed twice", where)
        for entry in s.models:
            m = entry.name
            if m not in model_names:
                raise ValueError(f"unknown model {m!r}; known: {sorted(model_names)}", where)
            if entry.methods is not None and (bad := set(entry.methods) - set(s.methods)):
                raise ValueError(f"models: {m!r} lists methods {sorted(bad)} that the subtask's "
                                 f"`methods` ({s.methods}) does not offer", where)
            allowed = spec.model(m).methods
            trained = [x for x in s.methods_here(m) if (spec.method(x).flops_per_param_token > 0
                       or isinstance(spec.method(x), Merge)) and (allowed is None or x in allowed)]
            if not [x for x in s.methods_here(m) if allowed is None or x in allowed]:
                raise ValueError(f"model {m!r} has no method here: its `methods` {allowed} and "
                                 f"this subtask's {s.methods_here(m)} share none; list a "
                                 "method it supports", where)
            if spec.model(m).params is None and trained:
                raise ValueError(f"model {m!r} has no `params`, so methods {trained} cannot be "
                                 "priced; give its params or use methods of kind none", where)
        if (s.replay is not None and s.replay.usd_per_sample
                and spec.hardware.usd_per_gpu_hour is None):
            raise ValueError("replay.usd_per_sample needs hardware.usd_per_gpu_hour to convert "
                             "USD to GPU-hours", where)
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
            _check_mixture(spec, s, weights, f"{where}.mixtures.{name}")
        _check_verifiers(spec, s, where)
        _check_cascades(spec, s, where)
        for path in _paths(s):
            _check_path(spec, path, where, table=s.replay is not None
                        and path == s.replay.table)
    for i, m in enumerate(spec.methods):
        if isinstance(m, Merge):
            _check_merge(spec, m, f"methods[{i}] ({m.name})")
    _check_sampling(spec)
    cycles = list(nx.simple_cycles(spec.graph()))
    if cycles:
        raise ValueError(f"depends_on forms a cycle: {' -> '.join(cycles[0] + cycles[0][:1])}",
                         "subtasks")
    if spec.budget is not None:
        try:
            spec.hardware.gpu_hours(spec.budget)
        except BudgetError as e:
            raise ValueError(str(e), "budget") from e


def _repeated(names: list) -> object:
    return next(n for n in names if names.count(n) > 1)


def _check_verifiers(spec: TaskSpec, s: SubtaskSpec, where: str) -> None:
    """The verifier aggregators run live and name a verifier; each verifier names a model
    with params and a fine-tuning method, and trains on the subtask's own sources."""
    used = [a for a in s.aggregators if a in VERIFIER_AGGREGATORS]
    if used and spec.environment == "replay":
        raise ValueError(f"{used} re-rank each sample by a trained verifier's score, and a "
                         "replay table holds no per-sample scores (nor the samples to score); "
                         "use oracle, majority or first, or a live task", f"{where}.aggregators")
    if used and not s.verifiers:
        raise ValueError(f"aggregators {used} need a verifier; add `verifiers: {{NAME: {{model: "
                         "M, method: FINE_TUNE, items: 200, samples: 4}}}}`", f"{where}.verifiers")
    if s.verifiers and not used:
        raise ValueError("no aggregator uses them; add verifier or verifier_best to "
                         "`aggregators`, or remove `verifiers`", f"{where}.verifiers")
    for name, v in s.verifiers.items():
        at = f"{where}.verifiers.{name}"
        if v.sequential:
            _check_sequential(spec, s, v, at)
        elif v.model is None:
            raise ValueError("required: the catalogue model the verifier is trained from (or "
                             "`sequential: true` to train the generator itself further)",
                             f"{at}.model")
        else:
            _check_priced_model(spec, v.model, "training and running the verifier", at)
        method = _known_method(spec, v.method, at)
        if not isinstance(method, FineTune) or method.serves_soft_prompt:
            raise ValueError(f"{v.method!r} is kind {method.kind}; a verifier is fine-tuned on "
                             "labelled samples: name a method of kind full, lora or hft",
                             f"{at}.method")
        if s.data is not None and not s.data.sources:
            raise ValueError("the verifier trains on samples of this subtask's training items; "
                             "give data.sources", at)


def _check_priced_model(spec: TaskSpec, model: str, what: str, at: str) -> None:
    """`model` (of the entry at `at`) is in the catalogue, with the `params` that price
    `what`."""
    if model not in {m.name for m in spec.models}:
        raise ValueError(f"unknown model {model!r}; known: "
                         f"{sorted(m.name for m in spec.models)}", f"{at}.model")
    if spec.model(model).params is None:
        raise ValueError(f"model {model!r} has no `params`, so {what} cannot be priced; give "
                         "its params", f"{at}.model")


def _known_method(spec: TaskSpec, name: str, at: str) -> Method:
    """The method `name` (of the entry at `at`), which must be in the task's `methods`."""
    if name not in {m.name for m in spec.methods}:
        raise ValueError(f"unknown method {name!r}; known: "
                         f"{sorted(m.name for m in spec.methods)}", f"{at}.method")
    return spec.method(name)


def _check_cascades(spec: TaskSpec, s: SubtaskSpec, where: str) -> None:
    """Each cascade names a priced model, a method of kind none or a fine-tuning kind, one
    of the subtask's mixtures and at most its largest n; some plan can read an agreement
    (majority at n >= 2); thresholds are distinct once written as dimension values."""
    if s.cascades and ("majority" not in s.aggregators or max(s.samples) < 2):
        raise ValueError("a cascade escalates by the agreement of a majority vote over n >= 2 "
                         "samples, which no plan here has; add majority to `aggregators` and "
                         "a samples value >= 2, or remove `cascades`", f"{where}.cascades")
    if s.cascades and spec.environment == "replay":
        raise ValueError(f"the replay environment ignores `cascades` "
                         f"({IGNORED_FIELDS['replay']['cascades']}); remove it",
                         f"{where}.cascades")
    for name, c in s.cascades.items():
        at = f"{where}.cascades.{name}"
        if name == CASCADE_NONE:
            raise ValueError(f"{CASCADE_NONE!r} is the value of plans that do not escalate; "
                             "rename the cascade", at)
        _check_priced_model(spec, c.model, "the escalated items", at)
        method = _known_method(spec, c.method, at)
        if method.kind != "none" and not isinstance(method, FineTune):
            raise ValueError(f"{c.method!r} is kind {method.kind}; the strong plan serves a "
                             "base (kind none) or a fine-tune: name such a method",
                             f"{at}.method")
        if c.mixture is not None and c.mixture not in s.mixtures:
            raise ValueError(f"no mixture {c.mixture!r} here; the subtask's mixtures are "
                             f"{sorted(s.mixtures)}", f"{at}.mixture")
        if c.samples > max(s.samples):
            raise ValueError(f"{c.samples} samples, above the subtask's largest n "
                             f"({max(s.samples)}), which every model here draws; lower it",
                             f"{at}.samples")
        values = [cascade_value(name, t) for t in c.thresholds]
        if len(set(values)) != len(values):
            raise ValueError(f"thresholds {c.thresholds} write {_repeated(values)!r} twice; "
                             "keep one", f"{at}.thresholds")


def _check_sequential(spec: TaskSpec, s: SubtaskSpec, v: VerifierSpec, at: str) -> None:
    """A sequential verifier names no model of its own, and every generator it continues
    (each model and method of the subtask) is priced and has weights to train further."""
    if v.model is not None:
        raise ValueError(f"a sequential verifier is the generator itself, trained further; "
                         f"remove model {v.model!r} (or sequential, to train {v.model!r} as a "
                         "second model)", f"{at}.model")
    if unpriced := [m for m in s.model_names if spec.model(m).params is None]:
        raise ValueError(f"models {unpriced} have no `params`, so continuing them as their own "
                         "verifier cannot be priced; give their params", f"{at}.sequential")
    for m in s.methods:
        method = spec.method(m)
        if isinstance(method, FineTune) and method.serves_soft_prompt:
            raise ValueError(f"method {m!r} serves a soft prompt, which a sequential verifier "
                             "cannot train further; offer it in another subtask or remove "
                             "sequential", f"{at}.sequential")


def _check_merge(spec: TaskSpec, m: Merge, where: str) -> None:
    """Each component names a LoRA method, a subtask and one of its mixtures."""
    methods, subtasks = {x.name for x in spec.methods}, [s.name for s in spec.subtasks]
    for j, c in enumerate(m.components):
        at = f"{where}.components[{j}]"
        if c.method not in methods:
            raise ValueError(f"unknown method {c.method!r}; known: {sorted(methods)}",
                             f"{at}.method")
        if not isinstance(spec.method(c.method), Lora):
            raise ValueError(f"{c.method!r} is kind {spec.method(c.method).kind}; a merge adds "
                             "LoRA fine-tunes: name a method of kind lora", f"{at}.method")
        if c.subtask not in subtasks:
            raise ValueError(f"unknown subtask {c.subtask!r}; subtasks are {subtasks}",
                             f"{at}.subtask")
        if c.mixture is not None and c.mixture not in spec.subtask(c.subtask).mixtures:
            raise ValueError(f"subtask {c.subtask!r} has no mixture {c.mixture!r}; its mixtures "
                             f"are {sorted(spec.subtask(c.subtask).mixtures)}", f"{at}.mixture")


# subtask fields each environment ignores, and why: a task file that writes one is refused
IGNORED_FIELDS = {"replay": {"metric": "scores come from the table",
                      "data": "answers come from the table",
                      "decoding": "samples come from the table",
                      "answer": "the table holds the answers, extracted: `replay.answer`",
                      "chat_template": "no prompt is sent to a model",
                      "verifiers": "no sample is drawn, so none is scored",
                      "cascades": "no sample is drawn to agree (a table records cascades "
                      "as methods: envs/replay/tasks/cascades_mmlu_gsm8k.yaml)",
                      "sampling": "no sample is drawn"},
            "live": {"replay": "it trains, samples and scores for real"}}


def _check_written_fields(data: object, source: str) -> None:
    """A field the task file writes that its environment would ignore is refused, never
    silently dropped (a stored study's task, which holds every field, is not checked)."""
    if not isinstance(data, dict) or not isinstance(data.get("subtasks"), list):
        return  # the schema's checks say what is wrong
    env = data.get("environment", "replay")
    if not isinstance(env, str) or env not in IGNORED_FIELDS:
        return
    other = "live" if env == "replay" else "replay"
    for i, written in enumerate(data["subtasks"]):
        for field, why in IGNORED_FIELDS[env].items():
            if isinstance(written, dict) and field in written:
                raise SpecError(f"{source}: subtasks[{i}].{field}: the {env} environment "
                                f"ignores `{field}` ({why}); remove it (the {other} "
                                "environment uses it)")


def _check_path(spec: TaskSpec, path: Path, where: str, *, table: bool) -> None:
    """A data file exists and is a regular file (a FIFO or device would hang the read); a
    relative table path stays inside the task's folder."""
    if table and not path.is_absolute() and Path(os.path.normpath(path)).parts[:1] == ("..",):
        raise ValueError(f"table {str(path)!r} leaves the task's folder; move the table into "
                         "it, or give its absolute path", f"{where}.replay.table")
    full = spec.path(path)
    if not full.exists():
        raise ValueError(f"data file {str(path)!r} not found (relative to the task file)", where)
    if not full.is_file():
        raise ValueError(f"data file {str(path)!r} is not a regular file (a directory, FIFO or "
                         "device); point it at a file", where)


def outside_tables(spec: TaskSpec) -> list[Path]:
    """Replay tables given by absolute paths outside the task's folder (shown to the user)."""
    tables = {Path(os.path.normpath(s.replay.table)) for s in spec.subtasks
              if s.replay is not None and s.replay.table.is_absolute()}
    return sorted(p for p in tables if not p.is_relative_to(Path(spec.root).resolve()))


def _check_mixture(spec: TaskSpec, s: SubtaskSpec, weights: dict[str, float], where: str) -> None:
    """Weights are finite, >= 0, not all zero, and name sources that exist."""
    if any(not 0 <= w < float("inf") for w in weights.values()):
        raise ValueError("weights must be finite numbers >= 0", where)
    if weights and sum(weights.values()) <= 0:
        raise ValueError("at least one weight must be positive (or leave the mixture empty "
                         "for the subtask's own sources)", where)
    for key in weights:
        owner, _, source = key.rpartition("/")
        owner = owner or s.name
        if owner not in {t.name for t in spec.subtasks}:
            raise ValueError(f"{key!r} names no subtask {owner!r}; write SUBTASK/SOURCE", where)
        data = spec.subtask(owner).data
        if data is not None and source not in data.sources:
            raise ValueError(f"{key!r}: subtask {owner!r} has no source {source!r}; its sources "
                             f"are {sorted(data.sources)}", where)


def _paths(s: SubtaskSpec) -> list[Path]:
    paths = []
    if s.replay is not None:
        paths.append(s.replay.table)
    if s.data is not None:
        paths += [*s.data.sources.values(), s.data.val]
    return paths


def parse_spec(data: dict, *, root: Path = Path("."), source: str = "<task>") -> TaskSpec:
    """Validate a task mapping; raise `SpecError` with one line naming source and field."""
    if data is None:
        raise SpecError(f"{source}: (top level): the file is empty; write a task (name, "
                        "workload, models, subtasks: see envs/replay/README.md)")
    if not isinstance(data, dict):
        raise SpecError(f"{source}: (top level): expected a mapping, got "
                        f"{type(data).__name__}; a task maps name, workload, models and "
                        "subtasks at the top level")
    for key, note in (("root", "paths are relative to the task file's folder"),
                      ("source", "errors name the task file")):
        if key in data:
            raise SpecError(f"{source}: {key}: unknown key; remove it ({note})")
    try:
        spec = TaskSpec.model_validate({**data, "root": root, "source": source})
    except ValidationError as e:
        raise SpecError(f"{source}: {_describe(e.errors()[0], data)}") from None
    try:
        _check_references(spec)
    except ValueError as e:
        msg, where = e.args
        raise SpecError(f"{source}: {where}: {msg}") from None
    return spec


def _describe(err: dict, data: dict) -> str:
    """`field: message` for pydantic's first error; a method's unknown option names the
    method and the keys its kind takes."""
    loc = list(err["loc"])
    if loc[:1] == ["methods"] and len(loc) >= 2 and isinstance(loc[1], int):
        entry = data["methods"][loc[1]]
        name = entry.get("name", "?") if isinstance(entry, dict) else "?"
        if err["type"] == "union_tag_not_found":
            return (f"methods[{loc[1]}] ({name}).kind: required; use one of {sorted(KINDS)}")
        if err["type"] == "union_tag_invalid":
            return (f"methods[{loc[1]}] ({name}).kind: {entry.get('kind')!r} is not a method "
                    f"kind; use one of {sorted(KINDS)}")
        if err["type"] == "extra_forbidden" and len(loc) >= 4:
            cls = KINDS[loc[2]]
            if loc[3] == "options" and len(loc) == 5:
                valid = sorted(cls.model_fields["options"].annotation.model_fields)
                return (f"methods[{loc[1]}] ({name}).options.{loc[4]}: kind {loc[2]} takes no "
                        f"option {loc[4]!r}; valid options: {', '.join(valid)}")
            if len(loc) == 6 and loc[3] == "components":  # a merge's component
                valid = sorted(MergeComponent.model_fields)
                return (f"methods[{loc[1]}] ({name}).components[{loc[4]}].{loc[5]}: a merge "
                        f"component takes no key {loc[5]!r}; valid keys: {', '.join(valid)}")
            valid = sorted(cls.model_fields)
            return (f"methods[{loc[1]}] ({name}).{loc[3]}: kind {loc[2]} takes no key "
                    f"{loc[3]!r}; valid keys: {', '.join(valid)}")
        loc = [f"methods[{loc[1]}] ({name})", *loc[3:]]
    where = ".".join(str(p) for p in loc) or "(top level)"
    if isinstance(err.get("input"), bool) and err["type"] in ("int_type", "float_type"):
        return f"{where}: {str(err['input']).lower()} is a boolean, not a number; write a number"
    return f"{where}: {_MESSAGES.get(err['type'], err['msg'])}"


_MESSAGES = {
    "extra_forbidden": "unknown key; remove it or check its spelling",
    "missing": "required field is missing; add it",
    "finite_number": "must be a finite number (not .inf or .nan)",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
}


def load_spec(path: str | Path) -> TaskSpec:
    """Read and validate a task.yaml file."""
    path = Path(path)
    data = load_yaml(path, "task")
    _check_written_fields(data, str(path))
    return parse_spec(data, root=path.resolve().parent, source=str(path))


def load_yaml(path: Path, what: str = "task") -> object:
    """A YAML file's document, read with `_Loader`'s limits; `SpecError` (one line naming
    the file) if it is missing, not a regular file, too big, not UTF-8 text or not YAML."""
    if not path.exists():
        raise SpecError(f"{path}: no such {what} file; pass the path of a {what}.yaml")
    if not path.is_file():
        raise SpecError(f"{path}: not a regular file (a directory, FIFO or device); pass the "
                        f"path of a {what}.yaml")
    if path.stat().st_size > MAX_TASK_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size:,} bytes is too big for a {what} file "
                        f"(at most {MAX_TASK_BYTES:,}); pass the path of a {what}.yaml")
    text = _text(path, path.read_bytes())
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader with limits)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(f"{path}: {where}not valid YAML ({e.problem or e.context}); fix the "
                        "file") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the "
                        "file") from None


def _text(path: Path, data: bytes) -> str:
    """A file's bytes as UTF-8 text (a UTF-8 byte-order mark is dropped)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(f"{path}: the file is UTF-16 text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: byte {e.start + 1} is not UTF-8 text (a binary file, or "
                        "another encoding such as Latin-1); save the file as UTF-8") from None
    if "\x00" in text:
        raise SpecError(f"{path}: the file holds NUL bytes (a binary file?); pass a YAML text "
                        "file")
    return text


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: no duplicate keys, nesting up to `MAX_DEPTH`
    levels, at most `MAX_NODES` values once aliases are expanded, no alias to its own
    parent; `1e9` is a number, as in YAML 1.2."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} "
                                              "levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if _expanded_size(node, {}, set()) > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"more than {MAX_NODES:,} values "
                                              "once aliases are expanded", node.start_mark)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key.value!r} appears twice; keep one",
                        key.start_mark)
                seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Values under `node` with every alias expanded (memoised per node)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to its own parent",
                                          node.start_mark)
    open_.add(id(node))
    children = (node.value if isinstance(node, yaml.SequenceNode) else
                [n for pair in node.value for n in pair]
                if isinstance(node, yaml.MappingNode) else [])
    sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(_expanded_size(c, sizes, open_)
                                                 for c in children))
    return sizes[id(node)]
