"""Live environment: evaluates an allocation by really training, sampling and scoring.

For each subtask, in the DAG's order:

1. its model: the base (method `none`) or a fine-tune trained with `tools.train` on the
   plan's mixture, cached by a content hash of base weights, method, options, mixture, data,
   prompt template and the tool's code;
2. N = max(samples) completions per prompt, drawn once per (model, prompt, decoding, N) and
   cached, so plans differing only in n or the aggregator sample nothing new;
3. its own score: the expected score of the plan's aggregator with n of the N samples on its
   validation records, whose inputs are gold (so it measures this stage alone);
4. its pipeline output: on the final subtask's validation records, with each dependency's
   field replaced by that dependency's output, the aggregate of the first n samples.

The end-to-end score is the final subtask's metric on the pipeline's output. `measured`
gives what the allocation costs on the validation set: training (seconds, tokens) of each
distinct fine-tune plus the pipeline's sampling, pro rata n/N; cached work reports what it
cost when it was done.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

import tools.infer
import tools.train
from envs.live.cache import Cache, DrawnSamples, content_key, default_root
from envs.live.data import SubtaskData, load_subtask, read_records, template_fields
from envs.live.scoring import AGGREGATORS, aggregate, expected_score
from envs.live.sources import resolve_source, weights_identity
from planner.cost import Calibration
from planner.env import Observation
from planner.errors import SpecError
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec
from tools.evaluate import Metric, load_metric
from tools.infer import TransformersSampler
from tools.train import train

_TRAINABLE = ("none", "full", "lora", "prompt")
# train() arguments a method's `options` may set
_TRAIN_OPTIONS = set(inspect.signature(train).parameters) - {
    "base_model", "method", "data", "mixture", "out_dir", "progress"}


def _code_version(module: object) -> str:
    """Hash of a tool's source: changing the tool invalidates what it produced."""
    return hashlib.sha256(Path(inspect.getfile(module)).read_bytes()).hexdigest()[:12]


def prompt_seed(seed: int, prompt: str) -> int:
    """Per-prompt sampling seed: a prompt's samples do not depend on what is sampled with it."""
    return seed + int(hashlib.sha256(prompt.encode()).hexdigest()[:12], 16)


@dataclass(frozen=True)
class PipelineRun:
    """One evaluation: each stage's pipeline prompts and outputs (one per validation record
    of the final subtask) and the observation."""

    prompts: dict[str, list[str]]
    outputs: dict[str, list[str]]
    observation: Observation


class LiveEnvironment:
    """Trains, samples and scores allocations of a live task, through a shared cache.

    Args:
        spec: a task with `environment: live`.
        cache_dir: cache root (default `$PLANNER_CACHE`, else `~/.cache/planner`).
        progress: progress bars for training and sampling, on stderr.
    """

    def __init__(self, spec: TaskSpec, *, cache_dir: str | Path | None = None,
                 progress: bool = True) -> None:
        self.spec = spec
        self.space = SearchSpace(spec)
        self.cache = Cache(Path(cache_dir) if cache_dir is not None else default_root())
        self.progress = progress
        self._check_choices()
        self.data: dict[str, SubtaskData] = {s.name: load_subtask(spec, s) for s in spec.subtasks}
        self.metrics: dict[str, Metric] = {s.name: self._metric(s.name) for s in spec.subtasks}
        self.sink = self._sink()
        self.items = self._pipeline_records()
        self._bases: dict[str, Path] = {}
        self._versions = {"train": _code_version(tools.train), "infer": _code_version(tools.infer)}

    def calibration(self) -> Calibration:
        return {}

    def evaluate(self, allocation: Allocation) -> Observation:
        return self.run(allocation).observation

    def run(self, allocation: Allocation) -> PipelineRun:
        """Evaluate an allocation and keep each stage's pipeline prompts and outputs."""
        self.space.validate(allocation)
        prompts: dict[str, list[str]] = {}
        outputs: dict[str, list[str]] = {}
        scores: dict[str, float] = {}
        measured: Counter[str] = Counter()
        trained: dict[str, dict] = {}
        for name in self.spec.order():
            plan, data, metric = allocation[name], self.data[name], self.metrics[name]
            path, key, meta = self._model(name, plan)
            trained[key] = meta
            gold = self._samples(name, path, key, [data.prompt(r) for r in data.val])
            labels = [r[data.label] for r in data.val]
            scores[name] = expected_score([d.texts for d in gold], labels, metric,
                                          plan.aggregator, plan.samples)
            deps = self.spec.subtask(name).depends_on
            prompts[name] = [data.prompt({**r, **{d: outputs[d][i] for d in deps}})
                             for i, r in enumerate(self.items)]
            drawn = self._samples(name, path, key, prompts[name])
            outputs[name] = [aggregate(d.texts, plan.aggregator, plan.samples, metric,
                                       r.get(data.label))
                             for d, r in zip(drawn, self.items, strict=True)]
            share = plan.samples / max(self.spec.subtask(name).samples)  # n of the N samples
            measured["device_seconds"] += share * sum(d.seconds for d in drawn)
            measured["prompt_tokens"] += sum(d.prompt_tokens for d in drawn)
            measured["completion_tokens"] += share * sum(d.completion_tokens for d in drawn)
        measured["device_seconds"] += sum(m["wall_seconds"] for m in trained.values())
        measured["train_tokens"] += sum(m["tokens_seen"] for m in trained.values())
        label, metric = self.data[self.sink].label, self.metrics[self.sink]
        final = [metric(out, r[label]) for out, r in zip(outputs[self.sink], self.items,
                                                          strict=True)]
        return PipelineRun(prompts, outputs, Observation(
            score=sum(final) / len(final), subtask_scores=scores,
            measured={k: float(v) for k, v in measured.items()}))

    def _model(self, subtask: str, plan: Plan) -> tuple[Path, str, dict]:
        """The plan's model (path, cache key, training metadata), trained unless cached."""
        base = self._base(plan.model)
        method = self.spec.method(plan.method)
        if method.kind == "none":
            return base, weights_identity(base), {"tokens_seen": 0, "wall_seconds": 0.0}
        data = self.data[subtask]
        weights = self.spec.subtask(subtask).mixtures[plan.mixture] or dict.fromkeys(data.sources,
                                                                                     1.0)
        total = sum(weights.values())
        mixture = {s: w / total for s, w in weights.items() if w > 0}
        parts = {"base": weights_identity(base), "kind": method.kind, "options": method.options,
                 "mixture": mixture, "data": {s: data.digests[s] for s in mixture},
                 "prompt": data.template, "label": data.label, "code": self._versions["train"]}

        def build(out: Path) -> dict:
            result = train(base, method.kind, {s: data.examples(s) for s in mixture}, mixture,
                           out, progress=self.progress, **method.options)  # type: ignore[arg-type]
            return {**parts, "tokens_seen": result.tokens_seen,
                    "wall_seconds": result.wall_seconds, "final_loss": result.final_loss}

        key = content_key(parts)
        path, meta = self.cache.artifact(key, build)
        return path, key, meta

    def _samples(self, subtask: str, path: Path, model_key: str,
                 prompts: list[str]) -> list[DrawnSamples]:
        s = self.spec.subtask(subtask)
        n_max = max(s.samples)
        set_key = content_key({"model": model_key, "decoding": s.decoding.model_dump(),
                               "n": n_max, "code": self._versions["infer"]})

        def draw(missing: list[str]) -> list[DrawnSamples]:
            sampler = TransformersSampler(path)
            d = s.decoding
            drawn = []
            for prompt in tqdm(missing, desc=f"sampling {subtask}", file=sys.stderr,
                               disable=not self.progress):
                out = sampler.sample([prompt], n_max, max_new_tokens=d.max_new_tokens,
                                     temperature=d.temperature, top_p=d.top_p,
                                     seed=prompt_seed(d.seed, prompt))
                drawn.append(DrawnSamples(out.texts[0], out.prompt_tokens,
                                          out.completion_tokens, out.seconds))
            return drawn

        return self.cache.samples(set_key, prompts, draw)

    def _base(self, model: str) -> Path:
        if model not in self._bases:
            self._bases[model] = resolve_source(self.spec, self.spec.model(model), self.cache.zoo)
        return self._bases[model]

    def _check_choices(self) -> None:
        """Aggregators and methods the live environment can run; SpecError otherwise."""
        for s in self.spec.subtasks:
            if bad := sorted(set(s.aggregators) - set(AGGREGATORS)):
                raise SpecError(f"{self.spec.name}: subtasks.{s.name}.aggregators: {bad} are not "
                                f"live aggregators; use {list(AGGREGATORS)}")
        for m in self.spec.methods:
            where = f"{self.spec.name}: methods.{m.name}"
            if m.kind not in _TRAINABLE:
                raise SpecError(f"{where}: kind {m.kind!r} cannot run live; use one of "
                                f"{list(_TRAINABLE)}")
            if bad := sorted(set(m.options) - _TRAIN_OPTIONS):
                raise SpecError(f"{where}.options: unknown {bad}; tools.train takes "
                                f"{sorted(_TRAIN_OPTIONS)}")

    def _metric(self, subtask: str) -> Metric:
        name = self.spec.subtask(subtask).metric
        try:
            return load_metric(name)
        except (ValueError, ImportError, AttributeError) as e:
            raise SpecError(f"{self.spec.name}: subtasks.{subtask}.metric: {e}") from None

    def _sink(self) -> str:
        sinks = [n for n in self.spec.order() if self.spec.graph().out_degree(n) == 0]
        if len(sinks) != 1:
            raise SpecError(f"{self.spec.name}: subtasks: a live pipeline needs one final "
                            f"subtask (no dependents), found {sinks}")
        return sinks[0]

    def _pipeline_records(self) -> list[dict[str, str]]:
        """The final subtask's validation records, which must hold every field the stages
        read from the item (and each stage's label where `oracle` may pick its answer)."""
        fields: list[str] = []
        for s in self.spec.subtasks:
            data = self.data[s.name]
            fields += [f for f in template_fields(data.template) if f not in s.depends_on]
            if "oracle" in s.aggregators or s.name == self.sink:
                fields.append(data.label)
        sink = self.spec.subtask(self.sink)
        assert sink.data is not None  # load_subtask checked it
        return read_records(self.spec.path(sink.data.val), list(dict.fromkeys(fields)))
