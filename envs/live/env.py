"""Live environment: evaluates an allocation by really training, sampling and scoring.

For each subtask, in the DAG's order:

1. its model: the base (method `none`) or the plan's artifact (`planner.artifact`): a
   fine-tune trained with `tools.train` on the mixture's qualified sources (`sub/src`: source
   `src` rendered with subtask `sub`'s template and label), cached by a content hash of the
   artifact's identity and content (base weights, method settings, each source's weight,
   file digest, template and label, and the tool's code). Subtasks whose plans share an
   artifact (a multi-task model) are served by one training;
2. N = max(samples) completions per prompt, drawn once per (model, prompt, decoding, N) and
   cached, so plans differing only in n or the aggregator sample nothing new;
3. its own score: the expected score of the plan's aggregator with n of the N samples on its
   validation records, whose inputs are gold (so it measures this stage alone);
4. its pipeline output: on the final subtask's validation records, with each dependency's
   field replaced by that dependency's output, the aggregate of the first n samples.

The end-to-end score is the final subtask's metric on the pipeline's output. `measured`
gives what the allocation costs on the validation set: training (seconds, tokens) of each
distinct fine-tune plus the pipeline's sampling, pro rata n/N; cached work reports what it
cost when it was done. `examples:SUB/SRC` counts the training examples drawn from each
qualified source, summed over the distinct fine-tunes: what the training data really was.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import sys
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from tqdm.auto import tqdm

import tools.infer
import tools.train
from envs.live.cache import Cache, DrawnSamples, content_key, default_root
from envs.live.data import SubtaskData, load_subtask, read_records, template_fields
from envs.live.scoring import AGGREGATORS, aggregate, expected_score, label_answer
from envs.live.sources import resolve_source, weights_identity
from planner.artifact import Artifact, artifact_of
from planner.cost import Calibration
from planner.env import Observation
from planner.errors import SpecError
from planner.methods import KINDS, FineTune, Training
from planner.space import Allocation, SearchSpace
from planner.spec import TaskSpec
from tools.evaluate import Extractor, Metric, load_extractor, load_metric
from tools.infer import TransformersSampler
from tools.train import Example, TrainConfig, chat_prompt, load_tokenizer, train, train_length

_Model = tuple[Path, str, dict]  # a served model: path, cache key, training metadata
log = logging.getLogger(__name__)


def _code_version(module: object) -> str:
    """Hash of a tool's source: changing the tool invalidates what it produced."""
    return hashlib.sha256(Path(inspect.getfile(module)).read_bytes()).hexdigest()[:12]


def train_config(options: Training) -> TrainConfig:
    """A method's typed options as `tools.train`'s loop settings (adapter fields aside)."""
    return TrainConfig(**{f.name: getattr(options, f.name) for f in fields(TrainConfig)})


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
        zoo_dir: where zoo models are built (default: `zoo/` under the cache root).
        progress: progress bars for training and sampling, on stderr.
    """

    def __init__(self, spec: TaskSpec, *, cache_dir: str | Path | None = None,
                 zoo_dir: str | Path | None = None, progress: bool = True) -> None:
        self.spec = spec
        self.space = SearchSpace(spec)
        self.cache = Cache(Path(cache_dir) if cache_dir is not None else default_root(),
                           zoo_dir=Path(zoo_dir) if zoo_dir is not None else None)
        self.progress = progress
        self._check_choices()
        self.data: dict[str, SubtaskData] = {s.name: load_subtask(spec, s) for s in spec.subtasks}
        self.metrics: dict[str, Metric] = {s.name: self._metric(s.name) for s in spec.subtasks}
        self.answers: dict[str, Extractor] = {s.name: self._answer(s.name)
                                              for s in spec.subtasks}
        self.sink = self._sink()
        self.items = self._pipeline_records()
        self._bases: dict[str, Path] = {}
        self._versions = {"train": _code_version(tools.train), "infer": _code_version(tools.infer)}
        self._tokenizers: dict[str, object] = {}
        self._check_chat_templates()

    def calibration(self) -> Calibration:
        return {}

    def evaluate(self, allocation: Allocation) -> Observation:
        return self.run(allocation).observation

    def validation_items(self) -> dict[str, int]:
        """Each stage samples its own validation records and the pipeline's items."""
        return {s: len(d.val) + len(self.items) for s, d in self.data.items()}

    def run(self, allocation: Allocation) -> PipelineRun:
        """Evaluate an allocation and keep each stage's pipeline prompts and outputs."""
        self.space.validate(allocation)
        prompts: dict[str, list[str]] = {}
        outputs: dict[str, list[str]] = {}
        scores: dict[str, float] = {}
        measured: Counter[str] = Counter()
        models: dict[Artifact, _Model] = {}  # a shared artifact is resolved (trained) once
        for name in self.spec.order():
            plan, data, metric = allocation[name], self.data[name], self.metrics[name]
            artifact = artifact_of(self.spec, name, plan)
            if artifact not in models:
                models[artifact] = self._model(artifact)
            path, key, _ = models[artifact]
            extract, model = self.answers[name], artifact.model
            gold = self._samples(name, path, key, [self.prompt(name, model, r)
                                                   for r in data.val])
            labels = [label_answer(r[data.label], extract) for r in data.val]
            scores[name] = expected_score([[extract(t) for t in d.texts] for d in gold], labels,
                                          metric, plan.aggregator, plan.samples)
            deps = self.spec.subtask(name).depends_on
            prompts[name] = [self.prompt(name, model, {**r, **{d: outputs[d][i] for d in deps}})
                             for i, r in enumerate(self.items)]
            drawn = self._samples(name, path, key, prompts[name])
            outputs[name] = [aggregate([extract(t) for t in d.texts], plan.aggregator,
                                       plan.samples, metric, None if data.label not in r
                                       else label_answer(r[data.label], extract))
                             for d, r in zip(drawn, self.items, strict=True)]
            share = plan.samples / max(self.spec.subtask(name).samples)  # n of the N samples
            measured["device_seconds"] += share * sum(d.seconds for d in drawn)
            measured["prompt_tokens"] += sum(d.prompt_tokens for d in drawn)
            measured["completion_tokens"] += share * sum(d.completion_tokens for d in drawn)
        trained = {key: meta for _, key, meta in models.values()}  # distinct fine-tunes
        measured["device_seconds"] += sum(m["wall_seconds"] for m in trained.values())
        measured["train_tokens"] += sum(m["tokens_seen"] for m in trained.values())
        for meta in trained.values():
            measured.update({f"examples:{src}": n for src, n in meta["examples"].items()})
            if meta.get("truncated"):  # drawn examples cut to max_length (said when trained)
                measured["truncated_examples"] += meta["truncated"]
        label, metric = self.data[self.sink].label, self.metrics[self.sink]
        final = [metric(out, label_answer(r[label], self.answers[self.sink]))
                 for out, r in zip(outputs[self.sink], self.items, strict=True)]
        return PipelineRun(prompts, outputs, Observation(
            score=sum(final) / len(final), subtask_scores=scores,
            measured={k: float(v) for k, v in measured.items()}))

    def _model(self, artifact: Artifact) -> _Model:
        """The artifact's model (path, cache key, training metadata), trained unless cached;
        method `none` serves the base."""
        base, method = self.base_path(artifact.model), artifact.method
        if not isinstance(method, FineTune):  # kind none: _check_methods rejected the rest
            return base, weights_identity(base), {"tokens_seen": 0, "wall_seconds": 0.0,
                                                  "examples": {}}
        parts = self._identity(artifact, base)

        def build(out: Path) -> dict:
            data = {q: self.examples(q, artifact.model) for q in artifact.sources}
            result = train(base, data, artifact.sources, out, train_config(method.options),
                           method.adapter(), progress=self.progress)
            if result.truncated:
                drawn = sum(result.examples.values())
                how = ("" if method.options.max_length else " (derived: the longest example, "
                       "up to the model's context and tools.train.MAX_LENGTH_CAP)")
                log.warning("warning: training %s with method %s cut %d of %d examples to "
                            "max_length %d%s; the longest has %d tokens; raise the method's "
                            "options.max_length to keep them", artifact.model, method.name,
                            result.truncated, drawn, result.max_length, how, result.longest)
            return {**parts, "tokens_seen": result.tokens_seen, "examples": result.examples,
                    "wall_seconds": result.wall_seconds, "final_loss": result.final_loss,
                    "max_length": result.max_length, "truncated": result.truncated}

        key = content_key(parts)
        path, meta = self.cache.artifact(key, build)
        return path, key, meta

    def model_path(self, artifact: Artifact) -> Path:
        """The artifact's model folder: the base for kind `none`, else its fine-tune (trained
        unless cached)."""
        return self._model(artifact)[0]

    def _identity(self, artifact: Artifact, base: Path) -> dict[str, object]:
        """What determines a fine-tune: the artifact's identity, with its base and sources as
        content (weights fingerprint; each source's weight, file digest, template, label)."""
        sources = {}
        for q, weight in artifact.data:
            data, src = self._source(q)
            sources[q] = {"weight": weight, "digest": data.digests[src],
                          "prompt": data.template, "label": data.label}
            if self.spec.subtask(data.name).chat_template:  # rendered by the base's template
                sources[q]["chat_template"] = True
        return {"base": weights_identity(base), "settings": artifact.settings,
                "sources": sources, "code": self._versions["train"]}

    def examples(self, qualified: str, model: str | None = None) -> list[Example]:
        """Training examples of a qualified source, in its subtask's template and label;
        where that subtask sets `chat_template`, each prompt in `model`'s chat template
        (None: the raw prompts, as an export's data files hold them)."""
        data, source = self._source(qualified)
        examples = data.examples(source)
        if model is not None and self.spec.subtask(data.name).chat_template:
            tokenizer = self._tokenizer(model)
            examples = [{**e, "prompt": chat_prompt(tokenizer, e["prompt"])} for e in examples]
        return examples

    def prompt(self, subtask: str, model: str, record: dict[str, str]) -> str:
        """The prompt `model` is given for a record of `subtask`: its template filled, in
        the model's chat template where the subtask sets `chat_template`."""
        text = self.data[subtask].prompt(record)
        if self.spec.subtask(subtask).chat_template:
            return chat_prompt(self._tokenizer(model), text)
        return text

    def train_length(self, artifact: Artifact) -> int | None:
        """Tokens per example the artifact's fine-tune keeps (its explicit max_length, or
        the one derived from its data); None for a base served as it is."""
        method = artifact.method
        if not isinstance(method, FineTune):
            return None
        data = {q: self.examples(q, artifact.model) for q in artifact.sources}
        return train_length(self.base_path(artifact.model), data, artifact.sources,
                            train_config(method.options), method.adapter())

    def _tokenizer(self, model: str) -> object:
        if model not in self._tokenizers:
            self._tokenizers[model] = load_tokenizer(self.base_path(model))
        return self._tokenizers[model]

    def _check_chat_templates(self) -> None:
        """Every model that samples a `chat_template` subtask, or fine-tunes on one's
        sources, has a chat template; SpecError naming subtask and model otherwise."""
        chat = {s.name for s in self.spec.subtasks if s.chat_template}
        needs: dict[str, str] = {}  # model -> a chat subtask whose prompts it must render
        for s in self.spec.subtasks:
            for m in s.model_names:
                if s.name in chat:
                    needs.setdefault(m, s.name)
                if not any(self.spec.method(x).fine_tunes for x in s.methods_here(m)):
                    continue
                for mixture in s.mixtures:
                    for q in self.spec.mixture_weights(s.name, mixture):
                        if q.split("/", 1)[0] in chat:
                            needs.setdefault(m, q.split("/", 1)[0])
        for m, owner in needs.items():
            if not getattr(self._tokenizer(m), "chat_template", None):
                raise SpecError(f"{self.spec.name}: subtasks.{owner}.chat_template: model "
                                f"{m!r} ({self.base_path(m)}) has no chat template in its "
                                "tokenizer; use a chat model (chat_template in its "
                                "tokenizer_config.json or chat_template.jinja) or remove "
                                "chat_template")

    def _source(self, qualified: str) -> tuple[SubtaskData, str]:
        """`sub/src` -> subtask `sub`'s data (its template and label) and source name `src`."""
        subtask, source = qualified.split("/", 1)
        return self.data[subtask], source

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

    def base_path(self, model: str) -> Path:
        """The model's weights: a local folder or file (a zoo model is built on first use)."""
        if model not in self._bases:
            self._bases[model] = resolve_source(self.spec, self.spec.model(model), self.cache.zoo)
        return self._bases[model]

    def _check_choices(self) -> None:
        """Aggregators and methods the live environment can run; SpecError otherwise."""
        for s in self.spec.subtasks:
            if bad := sorted(set(s.aggregators) - set(AGGREGATORS)):
                raise SpecError(f"{self.spec.name}: subtasks.{s.name}.aggregators: {bad} are not "
                                f"live aggregators; use {list(AGGREGATORS)}")
        self._check_methods()
        self._check_sources()

    def _check_methods(self) -> None:
        """Kind `none` serves the base and fine-tuning kinds train; any other kind offered by
        a subtask (e.g. `pretrain`, a released checkpoint) cannot run live."""
        live = [k for k, cls in KINDS.items() if k == "none" or cls.fine_tunes]
        used = {m for s in self.spec.subtasks for m in s.methods}
        for m in self.spec.methods:
            if m.name in used and m.kind not in live:
                raise SpecError(f"{self.spec.name}: methods.{m.name}: kind {m.kind!r} cannot run "
                                f"live; use one of {live}")

    def _check_sources(self) -> None:
        """Every qualified source a fine-tuning subtask's mixtures train on has a file."""
        for s in self.spec.subtasks:
            if not any(self.spec.method(m).fine_tunes for m in s.methods):
                continue
            for mixture in s.mixtures:
                for q in self.spec.mixture_weights(s.name, mixture):
                    owner, src = q.split("/", 1)
                    data = self.spec.subtask(owner).data
                    if data is None or src not in data.sources:
                        raise SpecError(f"{self.spec.name}: subtasks.{s.name}.mixtures."
                                        f"{mixture}: {q!r} has no training file; give subtask "
                                        f"{owner!r} data.sources")

    def _metric(self, subtask: str) -> Metric:
        name = self.spec.subtask(subtask).metric
        try:
            return load_metric(name, self.spec.root)
        except (ValueError, ImportError, AttributeError, SyntaxError) as e:
            raise SpecError(f"{self.spec.name}: subtasks.{subtask}.metric: {e}") from None

    def _answer(self, subtask: str) -> Extractor:
        answer = self.spec.subtask(subtask).answer
        try:
            return load_extractor(answer, self.spec.root)
        except (ValueError, ImportError, AttributeError, SyntaxError) as e:
            raise SpecError(f"{self.spec.name}: subtasks.{subtask}.answer: cannot load "
                            f"{answer!r} ({type(e).__name__}: {e}); put the module beside the "
                            "task file (or on PYTHONPATH) and name a function in it") from None

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
