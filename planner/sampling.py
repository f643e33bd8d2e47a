"""How a live task draws its samples: the `sampling:` block of task.yaml (for the whole task,
and per subtask, where it overrides the task's field by field), and the `planner optimize`
flags that override both (`--backend`, `--base-url`, `--served`).

    sampling:                         # live tasks only
      backend: openai                 # transformers (default) | vllm | openai
      base_url: http://127.0.0.1:8000/v1
      api_key_env: OPENAI_API_KEY     # the variable holding the key; its value is never stored
      served: [m1]                    # the server serves base model m1, under the name m1
    subtasks:
      - name: add
        sampling:
          served:                     # a fine-tune the server serves (trained elsewhere)
            - {model: m1, method: lora-r8, mixture: own, name: add-lora}

Backends: `transformers` (in process, any artifact), `vllm` (vLLM's offline engine: prefix
caching, n samples per request, LoRA adapters; the `gpu` extra; no soft prompts) and
`openai` (any OpenAI-compatible completions server: `vllm serve`, llama.cpp's server ...).
A server cannot train, so under `openai` every artifact a subtask may choose must be named
in `served`: a base model (`MODEL`, or `{model, name}`), or, in that subtask's own block, a
fine-tune as `{model, method, mixture, name}`; `check_backends` refuses the rest.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from planner.errors import SpecError
from planner.numbers import Float, Int

if TYPE_CHECKING:
    from planner.spec import SubtaskSpec, TaskSpec

BACKENDS = ("transformers", "vllm", "openai")
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_Text = Annotated[str, Field(min_length=1, max_length=500)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Served(_Strict):
    """An artifact a server serves, and the model name it answers to. Without `method` (or
    with one of kind `none`) it is the base model as it is; with a fine-tuning `method` and
    its `mixture`, that fine-tune of the subtask whose block names it; with another method
    that makes a model (a `merge`), that model."""

    model: _Text
    method: _Text | None = None
    mixture: _Text | None = None
    name: _Text = Field(description="the model name the server serves it under")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, v: object) -> object:
        """`m1` is `{model: m1, name: m1}`: a base served under its catalogue name."""
        return {"model": v, "name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _mixture_needs_method(self) -> Served:
        if self.mixture is not None and self.method is None:
            raise ValueError("a mixture names a fine-tune: give its `method` too")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        return {k: v for k, v in handler(self).items() if v is not None}

    def label(self) -> str:
        what = self.model if self.method is None else (f"{self.model} / {self.method} / "
                                                       f"{self.mixture}")
        return f"{what} -> {self.name}"


class Sampling(_Strict):
    """A `sampling:` block; a field left out takes the task's (for a subtask) or the
    default. Only fields given are stored, so a task without the block hashes as before."""

    backend: Literal["transformers", "vllm", "openai"] | None = Field(
        None, description="transformers (default), vllm or openai")
    base_url: _Text | None = Field(None, description="openai: the server, e.g. "
                                   "http://127.0.0.1:8000/v1")
    api_key_env: Annotated[str, Field(pattern=_ENV_NAME, max_length=200)] | None = Field(
        None, description=f"openai: the environment variable holding the API key (default "
        f"{DEFAULT_API_KEY_ENV}; unset: EMPTY, which local servers ignore); the key itself "
        "is never stored")
    served: list[Served] | None = Field(None, description="openai: what the server serves, "
                                        "and under which names")
    timeout: Float | None = Field(None, gt=0, le=86400, description="openai: seconds per "
                                  "request (default 120)")
    max_retries: Int | None = Field(None, ge=0, le=100, description="openai: further "
                                    "attempts at a failed request, with backoff (default 5)")

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError(f"{v!r} is not an http(s) URL; write e.g. http://127.0.0.1:8000/v1")
        return v

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        return {k: v for k, v in handler(self).items() if v is not None}


@dataclass(frozen=True)
class Backend:
    """A subtask's sampling settings, the task's and its own merged, defaults filled in."""

    kind: str = "transformers"
    base_url: str | None = None
    api_key_env: str = DEFAULT_API_KEY_ENV
    served: tuple[Served, ...] = ()
    """The subtask's own entries first, then the task's."""
    timeout: float = 120.0
    max_retries: int = 5

    def served_name(self, model: str, method: str, *, base: bool,
                    mixture: str | None = None) -> str | None:
        """The served name of a plan's artifact, or None: `base` (method kind `none`) the
        model as it is; else the model `method` makes of it (`mixture`: a fine-tune's)."""
        for entry in self.served:
            if entry.model != model:
                continue
            if base and entry.method in (None, method):
                return entry.name
            if not base and (entry.method, entry.mixture) == (method, mixture):
                return entry.name
        return None


def served_name(spec: TaskSpec, backend: Backend, model: str, method: str,
                mixture: str) -> str | None:
    """The name `backend`'s server serves a plan's artifact under (None: not said)."""
    m = spec.method(method)
    return backend.served_name(model, method, base=m.kind == "none",
                               mixture=mixture if m.fine_tunes else None)


def backend_of(spec: TaskSpec, subtask: str) -> Backend:
    """The settings subtask `subtask` samples with."""
    task, own = spec.sampling, spec.subtask(subtask).sampling
    fields: dict[str, object] = {}
    for block in (task, own):
        if block is not None:
            fields.update({k: v for k, v in block if v is not None and k != "served"})
    served = [*((own.served or []) if own else []), *((task.served or []) if task else [])]
    fields["kind"] = fields.pop("backend", "transformers")
    return Backend(**fields, served=tuple(served))  # type: ignore[arg-type]


def check_references(spec: TaskSpec) -> None:
    """Names in `served` entries exist where they are used; ValueError(message, where)."""
    if spec.sampling is not None:
        if spec.environment != "live":
            raise ValueError("a replay task samples nothing (its answers come from the "
                             "tables); remove `sampling:`", "sampling")
        for j, entry in enumerate(spec.sampling.served or []):
            where = f"sampling.served[{j}]"
            if entry.model not in {m.name for m in spec.models}:
                raise ValueError(f"unknown model {entry.model!r}; known: "
                                 f"{sorted(m.name for m in spec.models)}", where)
            if entry.method is not None:
                if entry.method not in {m.name for m in spec.methods}:
                    raise ValueError(f"unknown method {entry.method!r}", where)
                if spec.method(entry.method).fine_tunes:
                    raise ValueError(f"{entry.method!r} fine-tunes, and a fine-tune belongs to "
                                     "one subtask: name it in that subtask's sampling.served",
                                     where)
        _distinct(spec.sampling.served or [], "sampling.served")
    for i, s in enumerate(spec.subtasks):
        for j, entry in enumerate(s.sampling.served or [] if s.sampling else []):
            _check_entry(spec, s, entry, f"subtasks[{i}].sampling.served[{j}]")
        if s.sampling is not None:
            _distinct(s.sampling.served or [], f"subtasks[{i}].sampling.served")


def _check_entry(spec: TaskSpec, s: SubtaskSpec, entry: Served, where: str) -> None:
    if entry.model not in s.model_names:
        raise ValueError(f"model {entry.model!r} is not one of this subtask's models "
                         f"{s.model_names}", where)
    if entry.method is None:
        return
    if entry.method not in s.methods_here(entry.model):
        raise ValueError(f"method {entry.method!r} is not offered here for {entry.model!r} "
                         f"(methods: {s.methods_here(entry.model)})", where)
    fine_tunes = spec.method(entry.method).fine_tunes
    if fine_tunes and entry.mixture not in s.mixtures:
        raise ValueError(f"a fine-tune is named with its mixture: give `mixture`, one of "
                         f"{sorted(s.mixtures)}", where)
    if not fine_tunes and entry.mixture is not None:
        raise ValueError(f"{entry.method!r} does not train on task data: remove `mixture`",
                         where)


def _distinct(entries: list[Served], where: str) -> None:
    seen: set[tuple] = set()
    for e in entries:
        key = (e.model, e.method, e.mixture)
        if key in seen:
            raise ValueError(f"{e.label()!r}: that artifact is listed twice; list it once",
                             where)
        seen.add(key)


def check_backends(spec: TaskSpec, source: str) -> None:
    """What each subtask's backend cannot sample, as one SpecError line naming `source`
    (the task file, or the task's name), the field and the fix: `openai` without a base URL,
    or with an artifact the server is not said to serve (a server cannot train); `vllm` with
    a method whose model answers behind a soft prompt."""
    for s in spec.subtasks:
        b = backend_of(spec, s.name)
        if b.kind == "openai":
            _check_served(spec, s, b, source)
        if b.kind == "vllm":
            for x in [*s.methods, *(c.method for c in s.cascades.values())]:
                if getattr(spec.method(x), "serves_soft_prompt", False):
                    raise SpecError(
                        f"{source}: subtasks.{s.name}.sampling.backend: vLLM serves no soft "
                        f"prompts, and method {x!r} (kind {spec.method(x).kind}) answers behind "
                        f"one; give subtask {s.name} `sampling: {{backend: transformers}}` or "
                        "drop the method")


def _check_served(spec: TaskSpec, s: SubtaskSpec, b: Backend, source: str) -> None:
    if b.base_url is None:
        raise SpecError(f"{source}: sampling.base_url: backend openai (subtask {s.name}) needs "
                        "the server's URL; give sampling.base_url, e.g. "
                        "http://127.0.0.1:8000/v1, or pass --base-url")
    for m in s.model_names:
        allowed = spec.model(m).methods
        for x in (x for x in s.methods_here(m) if allowed is None or x in allowed):
            method = spec.method(x)
            if method.kind == "none":
                if b.served_name(m, x, base=True) is None:
                    raise SpecError(
                        f"{source}: subtasks.{s.name}.sampling.served: backend openai does not "
                        f"know the name the server serves model {m!r} under; add `served: "
                        f"[{m}]` (the same name) or `{{model: {m}, name: SERVED_NAME}}` to "
                        f"sampling, or pass --served {m}=SERVED_NAME")
                continue
            if not method.fine_tunes:  # a model made of the base (a merge), not by training
                if b.served_name(m, x, base=False) is None:
                    raise SpecError(
                        f"{source}: subtasks.{s.name}.methods: {x!r} (kind {method.kind}) "
                        f"makes a new model of {m!r}, which a server cannot; if the server "
                        f"serves it, add {{model: {m}, method: {x}, name: SERVED_NAME}} to "
                        "sampling.served, else drop the method here or sample with --backend "
                        "transformers (or vllm)")
                continue
            for mix in s.mixtures:
                if b.served_name(m, x, base=False, mixture=mix) is None:
                    raise SpecError(
                        f"{source}: subtasks.{s.name}.methods: {x!r} fine-tunes {m!r} (mixture "
                        f"{mix!r}), and a server cannot train; if the server serves that "
                        f"fine-tune, add {{model: {m}, method: {x}, mixture: {mix}, name: "
                        f"SERVED_NAME}} to subtasks.{s.name}.sampling.served, else drop the "
                        "method here or sample with --backend transformers (or vllm)")
    for name, c in s.cascades.items():  # a strong plan: a base, or a fine-tune on a mixture
        base = spec.method(c.method).kind == "none"
        mix = None if base else c.mixture or next(iter(s.mixtures))
        if b.served_name(c.model, c.method, base=base, mixture=mix) is None:
            raise SpecError(
                f"{source}: subtasks.{s.name}.cascades.{name}: backend openai does not know "
                f"the name the server serves model {c.model!r} (method {c.method!r}) under; "
                f"add {{model: {c.model}, method: {c.method}"
                + ("" if base else f", mixture: {mix}") + ", name: SERVED_NAME} to "
                "sampling.served, or sample with --backend transformers (or vllm)")


def vllm_missing(spec: TaskSpec, source: str) -> str | None:
    """One line saying vLLM must be installed, where a subtask samples with it and this
    Python cannot import it; else None."""
    users = [s.name for s in spec.subtasks if backend_of(spec, s.name).kind == "vllm"]
    if not users or importlib.util.find_spec("vllm") is not None:
        return None
    return (f"{source}: sampling.backend: backend vllm (subtasks {', '.join(users)}) needs "
            "vLLM, which is not installed here; pip install 'planner[gpu]' (a CUDA machine), "
            "or sample with --backend transformers")


def with_flags(spec: TaskSpec, *, source: str, backend: str | None = None,
               base_url: str | None = None, served: list[str] | None = None) -> TaskSpec:
    """`spec` with the `planner optimize` sampling flags applied, and checked: `--backend`
    and `--base-url` set every subtask's (the flag wins over the file), each `--served
    MODEL[=NAME]` adds (or replaces) a base model's served name. The flags travel in the
    spec, so workers that build the environment from it sample alike. SpecError (one line)
    for a flag the task cannot take or a backend it cannot sample with."""
    if backend is not None and backend not in BACKENDS:
        raise SpecError(f"--backend {backend}: not a backend; use one of {', '.join(BACKENDS)}")
    given = {k: v for k, v in (("backend", backend), ("base_url", base_url)) if v is not None}
    if (given or served) and spec.environment != "live":
        flag = "--backend" if backend else "--base-url" if base_url else "--served"
        raise SpecError(f"{flag}: {source} is a {spec.environment} task: it samples nothing; "
                        "drop the flag")
    if given or served:
        spec = _override(spec, source, given, served or [])
    if spec.environment == "live":
        check_backends(spec, source)
        if (missing := vllm_missing(spec, source)) is not None:
            raise SpecError(missing)
    return spec


def _override(spec: TaskSpec, source: str, given: dict[str, str],
              served: list[str]) -> TaskSpec:
    top = spec.sampling.model_dump() if spec.sampling is not None else {}
    entries = [Served.model_validate(e) for e in top.get("served", [])]
    for flag in served:
        model, _, name = flag.partition("=")
        if model not in {m.name for m in spec.models}:
            raise SpecError(f"--served {flag}: {source} has no model {model!r}; models: "
                            f"{sorted(m.name for m in spec.models)}")
        entries = [e for e in entries if (e.model, e.method) != (model, None)]
        entries.append(Served(model=model, name=name or model))
    try:
        block = Sampling.model_validate({**top, **given, **({"served": [e.model_dump() for e
                                                                     in entries]}
                                                           if entries else {})})
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "--served"
        raise SpecError(f"{flag}: {err['msg']}") from None
    subtasks = [s if s.sampling is None else s.model_copy(update={"sampling": _without(
        s.sampling, given)}) for s in spec.subtasks]
    return spec.model_copy(update={"sampling": block, "subtasks": subtasks})


def _without(block: Sampling, given: dict[str, str]) -> Sampling | None:
    """A subtask's block less the fields a flag set for the whole task."""
    left = block.model_copy(update=dict.fromkeys(given))
    return left if left.model_dump() else None
