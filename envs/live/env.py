"""Live environment: evaluates an allocation by really training, sampling and scoring.

For each subtask, in the DAG's order:

1. its model: the base (method `none`) or the plan's artifact (`planner.artifact`): a
   fine-tune trained with `tools.train` on the mixture's qualified sources (`sub/src`: source
   `src` rendered with subtask `sub`'s template and label), cached by a content hash of the
   artifact's identity and content (base weights, method settings, each source's weight,
   file digest, template and label, and the tool's code). Subtasks whose plans share an
   artifact (a multi-task model) are served by one training;
2. N completions per prompt, drawn once per (model, prompt, decoding, N) and cached, so
   plans differing only in n or the aggregator sample nothing new; N is the study's draw of
   the arm (`planner.draws`: the most samples a plan of it within the budget reads), or
   max(samples) outside a study;
3. its own score: the expected score of the plan's aggregator with n of the N samples on its
   validation records, whose inputs are gold (so it measures this stage alone);
4. its pipeline output: on the final subtask's validation records, with each dependency's
   field replaced by that dependency's output, the aggregate of the first n samples.

A merge (method kind `merge`) resolves its components first, each the fine-tune a plan
serving it alone would train (so cached and trained once), then merges them with
`tools.merge` (cached by the base, its settings and the components' keys and weights). A
plan whose aggregator is `verifier` or `verifier_best` (n > 1) has its subtask's verifier
trained for its generator (`_verifier`: the generator samples `samples` completions of each
of `items` training items, each labelled by the subtask's metric on its answer, and the
verifier model is fine-tuned on them with `tools.verifier.train_verifier`; cached by the
generator's key and the verifier's settings), which scores each drawn sample once (the
scores are cached like samples, keyed by the verifier and the prompt); a sequential
verifier is the served model itself, the generator trained further on those labelled samples
(`Artifact.continues`; `tools.verifier.continue_verifier`), which samples and scores. A plan with a
cascade (`planner.cascade`) also samples its strong plan (that artifact's N-sample set,
cached like any plan's): the stage's score is the cascade's expected score over n-subsets,
escalated pipeline items take the strong plan's answer, and `escalated:SUBTASK` records the
share escalated (the measured cost adds the strong samples that answered pipeline items).

A screen (`evaluate(allocation, fidelity)`, fidelity < 1) does steps 2-4 on the first
ceil(fidelity * N) of each stage's validation records and of the pipeline's items, in file
order (the built-in tasks' records are drawn at random, smolmath's operations in turn, so a
prefix is a fair sample; a file sorted by difficulty would bias screens): scores, measured
sampling, escalated shares and verifier judging cover just those, and a later full
evaluation draws only the rest (samples are cached per prompt). A screen also trains each
resumable fine-tune (`FineTune.resumable`: every weight, or a peft adapter) for only
ceil(fidelity * steps) of its steps: the prefix of the full run (the learning rate follows
the whole run's schedule), cached with a Trainer checkpoint, which a later full evaluation
(or a longer screen) resumes, training only the remaining steps into the same weights as
an uninterrupted run. Its samples are another model's, cached apart. HFT, ProMoT and
verifiers train in full.

The end-to-end score is the final subtask's metric on the pipeline's output. `measured`
gives what the allocation costs on the validation set: training (seconds, tokens) of each
distinct fine-tune plus the pipeline's sampling, pro rata n/N; cached work reports what it
cost when it was done. `examples:SUB/SRC` counts the training examples drawn from each
qualified source, summed over the distinct fine-tunes: what the training data really was.

Measured cost, per part (`train_*` over the distinct fine-tunes, `sample_*` over the
pipeline's sampling, pro rata n/N): device seconds, tokens (`sample_tokens`: generated),
FLOPs (the cost model's formulas at the measured tokens and the real parameter counts) and
`*_capacity_flops` (the seconds times the device's peak: utilisation = FLOPs / capacity;
the peak is the task's `hardware.peak_flops` on a GPU, the measured fp32 matmul rate on a
CPU, whose seconds `cpu_seconds` counts), `peak_memory_bytes`. Work reused from the cache
reports what it measured when done and is flagged: `cached_trainings`,
`cached_train_seconds`, `cached_sample_seconds`; `spent_seconds` is what this evaluation
itself spent on the device (trained and sampled afresh), which a search adds up. Every
training and drawing is kept in the cache (artifact metadata, `Cache.samplings`), and
`calibration()` turns them into the utilisation the cost model prices with.

The tools that load torch (training, merging, verifiers, samplers, the device probe) are
imported where they run, so a trial the cache answers in full, or whose stages sample
through a server, loads no model library (unless a subtask's chat template needs its
model's tokenizer): a worker process per trial spent ~5 s importing them before each.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from envs.live.backends import Samplers, ServedModel, Target
from envs.live.cache import Cache, DrawnSamples, content_key, default_root
from envs.live.data import SubtaskData, load_subtask, read_records
from envs.live.scoring import (
    AGGREGATORS,
    aggregate,
    expected_cascade,
    expected_score,
    label_answer,
)
from envs.live.sources import check_source, resolve_source, weights_identity
from planner.artifact import Artifact, VerifierArtifact, artifact_of, verifier_of
from planner.cascade import Cascade, cascade_of, escalates, min_agreeing, strong_plan
from planner.cost import MeasuredCalibration, Utilization
from planner.draws import Draws, arm_of, samples_drawn
from planner.env import Observation, ScreenScores, check_fidelity, check_screen, screened
from planner.errors import SpecError
from planner.methods import KINDS, FineTune, Merge, Training
from planner.sampling import Backend, backend_of, check_backends, served_name
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, template_fields
from tools.evaluate import Extractor, Metric, load_extractor, load_metric

if TYPE_CHECKING:
    from tools.train import Example, TrainConfig, TrainResult

_Model = tuple[Path, str, dict]  # a served model: path, cache key, training metadata
log = logging.getLogger(__name__)


def _code_version(module: str) -> str:
    """Hash of a tool's source (the module named, read, not imported): changing the tool
    invalidates what it produced."""
    found = importlib.util.find_spec(module)
    assert found is not None and found.origin is not None, module
    return hashlib.sha256(Path(found.origin).read_bytes()).hexdigest()[:12]


def device_record() -> dict[str, object]:
    """Where work runs now and the peak FLOP/s its utilisation divides by: on a CPU its fp32
    matmul rate measured here (a GPU's is the task's `hardware.peak_flops`, read when the
    calibration is made)."""
    from tools.device import cpu_matmul_flops, current_device

    device = current_device()
    return {"device": device.describe(),
            "peak_flops": cpu_matmul_flops() if device.kind == "cpu" else None}


def _peak(record: dict, gpu_peak: float) -> float:
    """The peak FLOP/s a measured run's utilisation divides by (`device_record`)."""
    return record["peak_flops"] if record["device"] == "cpu" else gpu_peak


def peak_words(records: list[dict], hardware: str, gpu_peak: float) -> tuple[str, ...]:
    """The peaks that `records`' utilisation divides by, in words: a CPU's measured rate is
    named as such, never passed off as the task's GPU's."""
    words = []
    cpu = sorted(r["peak_flops"] for r in records if r["device"] == "cpu")
    if cpu:
        rate = f"{cpu[0]:.3g}" if cpu[0] == cpu[-1] else f"{cpu[0]:.3g}-{cpu[-1]:.3g}"
        words.append(f"this CPU's measured fp32 matmul rate, {rate} FLOP/s (CPU work; not "
                     f"{hardware}'s {gpu_peak:.3g})")
    gpus = sorted({r["device"].removeprefix("cuda:") for r in records if r["device"] != "cpu"})
    if gpus:
        words.append(f"{hardware}'s peak, {gpu_peak:.3g} FLOP/s (task hardware.peak_flops; "
                     f"GPU work on {', '.join(gpus)})")
    return tuple(words)


def training_measured(method: FineTune, result: TrainResult) -> dict[str, object]:
    """What a training measured, for its artifact's metadata: FLOPs (the method's formula at
    the tokens it saw and the base's real parameter count), throughput, memory, the loop's
    settings on the device, and the device with its peak (`device_record`)."""
    drawn = sum(result.examples.values())
    per_example = result.tokens_seen / max(drawn, 1)
    # a prefix of the run, or the steps a resumed run trained: that share of the whole's FLOPs
    share = drawn / (method.options.steps * method.options.batch_size) if method.resumable \
        else 1.0
    flops = share * method.model_copy(update={"train_tokens": None}).train_flops(
        result.params, per_example)
    return {"params": result.params, "train_flops": flops, "loop_seconds": result.loop_seconds,
            "tokens_per_second": result.tokens_per_second,
            "peak_memory_bytes": result.peak_memory_bytes, "precision": result.precision,
            "tf32": result.tf32, "grad_accum": result.grad_accum,
            "micro_batch_size": result.micro_batch_size,
            "examples_per_step": result.examples_per_step,
            **device_record(), "device": result.device}


def prefix_steps(steps: int, share: float) -> int:
    """The steps a screen at `share` trains of a `steps`-step run: ceil(share * steps), at
    least one; all of them at share 1 (or where one step is all there is)."""
    return min(steps, max(1, math.ceil(share * steps - 1e-9))) if share < 1.0 else steps


def train_config(options: Training) -> TrainConfig:
    """A method's typed options as `tools.train`'s loop settings (adapter fields aside)."""
    from tools.train import TrainConfig

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
        calibrate_on_cpu: let work measured on a CPU calibrate the cost model too (its
            utilisation, a fraction of the CPU's own matmul rate, then prices the task's GPU);
            by default only GPU work does, CPU work being reported, not applied.
    """

    def __init__(self, spec: TaskSpec, *, cache_dir: str | Path | None = None,
                 zoo_dir: str | Path | None = None, progress: bool = True,
                 calibrate_on_cpu: bool = False) -> None:
        self.spec = spec
        self.calibrate_on_cpu = calibrate_on_cpu
        self.space = SearchSpace(spec)
        self.cache = Cache(Path(cache_dir) if cache_dir is not None else default_root(),
                           zoo_dir=Path(zoo_dir) if zoo_dir is not None else None)
        self.progress = progress
        self._check_choices()
        # how each stage samples (planner/sampling.py), and the samplers loaded, reused
        self.backends: dict[str, Backend] = {s.name: backend_of(spec, s.name)
                                             for s in spec.subtasks}
        check_backends(spec, spec.name)
        self._check_weights()
        self.samplers = Samplers(task=spec.name, progress=progress)
        self.data: dict[str, SubtaskData] = {s.name: load_subtask(spec, s) for s in spec.subtasks}
        self.metrics: dict[str, Metric] = {s.name: self._metric(s.name) for s in spec.subtasks}
        self.answers: dict[str, Extractor] = {s.name: self._answer(s.name)
                                              for s in spec.subtasks}
        self.sink = self._sink()
        self.items = self._pipeline_records()
        self._check_verifier_items()
        self._bases: dict[str, Path] = {}
        self._versions = {"train": _code_version("tools.train"),
                          "infer": _code_version("tools.infer")}
        self._tokenizers: dict[str, object] = {}
        self._params: dict[Target, int] = {}
        self._spent = 0.0  # device seconds the current `run` trained and sampled afresh
        # id -> (samples, where they were drawn (`device_record`), drawn by the current run)
        self._drawn: dict[int, tuple[DrawnSamples, dict, bool]] = {}
        self._fresh: set[tuple[str, str]] = set()  # (sample set, prompt) the run drew
        self._check_chat_templates()

    def calibration(self) -> MeasuredCalibration:
        """What this cache's measurements say: the utilisation its trainings (artifact
        metadata) and samplings (`Cache.samplings`) achieved, FLOPs / (device seconds x
        peak), for `CostModel` to price with (`planner.cost.Utilization`). Work done on a
        GPU is measured against the task's `hardware.peak_flops`; work done on a CPU against
        the fp32 matmul rate measured on that CPU when it ran, and is left out (and said to
        be) unless `calibrate_on_cpu`: a tiny model's CPU loop says little of how a GPU
        would run the task, and would reprice every plan by it."""
        hw = self.spec.hardware
        trainings = [m for m in self.cache.metas() if m.get("train_flops")]
        samplings = [m for m in self.cache.samplings() if m.get("flops")]
        left_out = ""
        if not self.calibrate_on_cpu:
            cpu = [m for m in trainings + samplings if m["device"] == "cpu"]
            trainings = [m for m in trainings if m["device"] != "cpu"]
            samplings = [m for m in samplings if m["device"] != "cpu"]
            capacity = sum(m.get("wall_seconds", m.get("seconds", 0)) * m["peak_flops"]
                           for m in cpu)
            if capacity > 0:
                utilisation = sum(m.get("train_flops", m.get("flops", 0)) for m in cpu) / capacity
                left_out = (f"{len(cpu)} measured runs on a CPU (utilisation "
                            f"{utilisation:.3g} of its measured fp32 matmul rate) do not "
                            f"reprice {hw.name}: LiveEnvironment(calibrate_on_cpu=True) "
                            "would")

        def ratio(runs: list[dict], seconds: str, flops: str) -> float | None:
            capacity = sum(m[seconds] * _peak(m, hw.peak_flops) for m in runs)
            return sum(m[flops] for m in runs) / capacity if capacity > 0 else None

        return MeasuredCalibration(Utilization(
            train=ratio(trainings, "wall_seconds", "train_flops"),
            sample=ratio(samplings, "seconds", "flops"), trainings=len(trainings),
            samplings=len(samplings),
            peaks=peak_words(trainings + samplings, hw.name, hw.peak_flops), left_out=left_out))

    def evaluate(self, allocation: Allocation, fidelity: float = 1.0,
                 draws: Draws | None = None, screen: float | None = None) -> Observation:
        return self.run(allocation, fidelity, draws, screen).observation

    def validation_items(self) -> dict[str, int]:
        """Each stage samples its own validation records and the pipeline's items."""
        return {s: len(d.val) + len(self.items) for s, d in self.data.items()}

    def run(self, allocation: Allocation, fidelity: float = 1.0,
            draws: Draws | None = None, screen: float | None = None) -> PipelineRun:
        """Evaluate an allocation and keep each stage's pipeline prompts and outputs.

        `fidelity` in (0, 1] screens: each stage samples and scores only the first
        ceil(fidelity * N) of its validation records and the pipeline runs only the first
        ceil(fidelity * N) of its items (at least one of each, in file order); training is
        the same. ValueError outside (0, 1]. `draws`: the samples per item drawn of each
        arm (`planner.draws`; None, or an arm left out: the subtask's largest n).
        `screen` (fidelity 1 only): also score each stage and the pipeline on the items a
        screen at that share runs, from the same samples (`Observation.on_screen_items`)."""
        check_fidelity(fidelity)
        check_screen(fidelity, screen)
        self.space.validate(allocation)
        items = self.items[:screened(len(self.items), fidelity)]
        prompts: dict[str, list[str]] = {}
        outputs: dict[str, list[str]] = {}
        scores: dict[str, float] = {}
        on_screen: dict[str, float] = {}  # each stage's score on a screen's items
        measured: Counter[str] = Counter()
        self._spent, self._drawn, self._fresh = 0.0, {}, set()
        models: dict[Artifact, _Model] = {}  # a shared artifact is resolved (trained) once
        for name in self.spec.order():
            plan, data, metric = allocation[name], self.data[name], self.metrics[name]
            val = data.val[:screened(len(data.val), fidelity)]
            artifact = artifact_of(self.spec, name, plan)
            path, key = self._target(name, plan, artifact, models, fidelity)
            extract, model = self.answers[name], artifact.model
            deps = self.spec.subtask(name).depends_on
            inputs = [{**r, **{d: outputs[d][i] for d in deps}} for i, r in enumerate(items)]
            prompts[name] = [self.prompt(name, model, x) for x in inputs]
            own = [self.prompt(name, model, r) for r in val]
            n_drawn = samples_drawn(draws, arm_of(name, plan, artifact), plan.samples,
                                    max(self.spec.subtask(name).samples))
            # one batched call per stage: its validation prompts and its pipeline prompts
            found = self._samples(name, path, key, own + prompts[name], n_drawn)
            gold, pipeline = found[:len(own)], found[len(own):]
            verifier = verifier_of(self.spec, name, plan)  # None: the aggregator uses none
            if verifier is not None and verifier not in models:  # sequential: the served model
                models[verifier] = (models[artifact] if verifier.sequential
                                    else self._verifier(verifier, path, key))
            judged = self._judge(models.get(verifier), own + prompts[name], found, n_drawn)
            labels = [label_answer(r[data.label], extract) for r in val]
            answers = [[extract(t) for t in d.texts] for d in gold]
            scores[name] = expected_score(answers, labels, metric, plan.aggregator,
                                          plan.samples,
                                          None if judged is None else judged[:len(own)])
            kept = len(val) if screen is None else screened(len(val), screen)
            if screen is not None:
                on_screen[name] = expected_score(answers[:kept], labels[:kept], metric,
                                                 plan.aggregator, plan.samples,
                                                 None if judged is None else judged[:kept])
            outputs[name] = [aggregate([extract(t) for t in d.texts], plan.aggregator,
                                       plan.samples, metric, None if data.label not in r
                                       else label_answer(r[data.label], extract),
                                       None if judged is None else judged[len(own) + i])
                             for i, (d, r) in enumerate(zip(pipeline, items, strict=True))]
            self._count_sampling(measured, pipeline, plan.samples / n_drawn, path)  # n of N
            cascade = cascade_of(self.spec, name, plan)
            if cascade is not None:
                per_item, outputs[name], escalated, (used, by, n_strong) = self._escalate(
                    name, plan, cascade, val, gold, pipeline, inputs, outputs[name], models,
                    draws, fidelity)
                scores[name] = sum(per_item) / len(per_item)
                if screen is not None:
                    on_screen[name] = sum(per_item[:kept]) / kept
                measured[f"escalated:{name}"] = escalated
                self._count_sampling(measured, used, cascade.strong.samples / n_strong, by)
        trained = {key: meta for _, key, meta in models.values()}  # distinct fine-tunes
        measured.update(self._training_measured(list(trained.values())))
        measured["device_seconds"] += sum(m["wall_seconds"] for m in trained.values())
        measured["train_tokens"] += sum(m["tokens_seen"] for m in trained.values())
        for meta in trained.values():
            measured.update({f"examples:{src}": n for src, n in meta["examples"].items()})
            if meta.get("truncated"):  # drawn examples cut to max_length (said when trained)
                measured["truncated_examples"] += meta["truncated"]
        label, metric = self.data[self.sink].label, self.metrics[self.sink]
        final = [metric(out, label_answer(r[label], self.answers[self.sink]))
                 for out, r in zip(outputs[self.sink], items, strict=True)]
        part = final[:screened(len(final), screen)] if screen is not None else []
        return PipelineRun(prompts, outputs, Observation(
            score=sum(final) / len(final), subtask_scores=scores,
            measured={k: float(v) for k, v in measured.items()},
            on_screen_items=None if screen is None else ScreenScores(
                screen, sum(part) / len(part), on_screen)))

    def _escalate(self, name: str, plan: Plan, cascade: Cascade, val: list[dict[str, str]],
                  gold: list[DrawnSamples], drawn: list[DrawnSamples],
                  inputs: list[dict[str, str]], outputs: list[str],
                  models: dict[Artifact, _Model], draws: Draws | None, fidelity: float
                  ) -> tuple[list[float], list[str], float,
                             tuple[list[DrawnSamples], Target, int]]:
        """A cascade plan's stage score per validation item, pipeline outputs and
        escalated share (`planner.cascade`). The strong plan samples every evaluated
        validation record (`val`, with `gold` the cheap samples of each) and pipeline
        prompt (its arm's N-sample set, `draws`, cached like any plan's); an item's score is
        the expected score over n-subsets of its cheap samples, escalated ones scoring the
        strong plan's expected score (`scoring.expected_cascade`), and the share is the
        mean escalation probability; a
        pipeline item whose first n samples agree too little takes the strong plan's
        answer. Also the strong samples that answered pipeline items, their sampler and N."""
        strong, data, metric = cascade.strong, self.data[name], self.metrics[name]
        extract = self.answers[name]
        artifact = artifact_of(self.spec, name, strong)
        path, key = self._target(name, strong, artifact, models, fidelity)
        own = [self.prompt(name, strong.model, r) for r in val]
        n_drawn = samples_drawn(draws, arm_of(name, strong, artifact), strong.samples,
                                max(self.spec.subtask(name).samples))
        found = self._samples(name, path, key,
                              own + [self.prompt(name, strong.model, x) for x in inputs], n_drawn)
        need = min_agreeing(cascade.threshold, plan.samples)
        per_item, share = [], 0.0
        for cheap, sure, r in zip(gold, found[:len(own)], val, strict=True):
            label = label_answer(r[data.label], extract)
            escalated = expected_score([[extract(t) for t in sure.texts]], [label], metric,
                                       strong.aggregator, strong.samples)
            score, p = expected_cascade([extract(t) for t in cheap.texts], label, metric,
                                        plan.samples, need, escalated)
            per_item.append(score)
            share += p
        picked, used = [], []
        for out, cheap, sure in zip(outputs, drawn, found[len(own):], strict=True):
            if escalates([extract(t) for t in cheap.texts[:plan.samples]], cascade.threshold):
                out = aggregate([extract(t) for t in sure.texts], strong.aggregator,
                                strong.samples, metric)
                used.append(sure)
            picked.append(out)
        return per_item, picked, share / len(own), (used, path, n_drawn)

    def _count_sampling(self, measured: Counter[str], drawn: list[DrawnSamples], share: float,
                        path: Target) -> None:
        """Add a stage's pipeline sampling, pro rata `share` (n of the N samples), to
        `measured`."""
        measured["device_seconds"] += share * sum(d.seconds for d in drawn)
        measured["prompt_tokens"] += sum(d.prompt_tokens for d in drawn)
        measured["completion_tokens"] += share * sum(d.completion_tokens for d in drawn)
        measured.update(self._sampling_measured(drawn, share, self._served_params(path)))

    def _sampling_measured(self, drawn: list[DrawnSamples], share: float,
                           params: int) -> Counter[str]:
        """One stage's pipeline sampling, pro rata n/N like `device_seconds`: seconds,
        tokens generated, FLOPs (2 x params per prompt and generated token), the FLOPs the
        device's peak would do in those seconds (`*_capacity_flops`: utilisation = FLOPs /
        capacity), the seconds spent on a CPU, and those served from the cache."""
        gpu_peak, m = self.spec.hardware.peak_flops, Counter[str]()
        m.update(cpu_seconds=0.0, cached_sample_seconds=0.0)
        for d in drawn:
            _, where, fresh = self._drawn[id(d)]
            seconds = share * d.seconds
            m["sample_seconds"] += seconds
            m["sample_tokens"] += share * d.completion_tokens
            m["cached_sample_seconds"] += 0.0 if fresh else seconds
            if where["device"] == "server":  # another machine's time: no utilisation here
                continue
            m["sample_flops"] += share * 2 * params * (d.prompt_tokens + d.completion_tokens)
            m["sample_capacity_flops"] += seconds * _peak(where, gpu_peak)
            m["cpu_seconds"] += seconds if where["device"] == "cpu" else 0.0
        return m

    def _training_measured(self, metas: list[dict]) -> Counter[str]:
        """The distinct fine-tunes' measurements (their metadata; a cached one reports what
        its build measured): device seconds, FLOPs and their capacity at the device's peak,
        peak memory, CPU seconds; `cached_*` what came from the cache, `spent_seconds` the
        device seconds this evaluation itself spent (trained and sampled afresh), which is
        what a search adds up without counting reused work twice."""
        gpu_peak, m = self.spec.hardware.peak_flops, Counter[str]()
        m.update(cached_trainings=0, cached_train_seconds=0.0, spent_seconds=self._spent)
        for meta in (x for x in metas if "train_flops" in x):  # fine-tunes, not bases
            seconds = meta["wall_seconds"]
            m["train_seconds"] += seconds
            m["train_flops"] += meta["train_flops"]
            m["train_capacity_flops"] += seconds * _peak(meta, gpu_peak)
            m["peak_memory_bytes"] = max(m["peak_memory_bytes"], meta["peak_memory_bytes"])
            m["cpu_seconds"] += seconds if meta["device"] == "cpu" else 0.0
            if meta["cached"]:
                m["cached_trainings"] += 1
                m["cached_train_seconds"] += seconds
        return m

    def _model(self, artifact: Artifact, resolved: dict[Artifact, _Model] | None = None,
               share: float = 1.0) -> _Model:
        """The artifact's model (path, cache key, training metadata), trained unless cached;
        method `none` serves the base; a merge merges its components (those in `resolved`
        as they are, the others trained unless cached). A resumable fine-tune at `share` < 1
        trains ceil(share * steps) steps (`prefix_steps`), cached under its own key; any
        run resumes from the longest shorter prefix in the cache."""
        base, method = self.base_path(artifact.model), artifact.method
        if isinstance(method, Merge):
            return self._merged(artifact, base, resolved or {})
        if artifact.continues is not None:  # a sequential verifier: the generator, further
            generator = artifact.continues.generator
            path, key, _ = (resolved or {}).get(generator) or self._model(generator, resolved)
            return self._verifier(artifact.continues, path, key)
        if not isinstance(method, FineTune):  # kind none: _check_methods rejected the rest
            return base, weights_identity(base), {"tokens_seen": 0, "wall_seconds": 0.0,
                                                  "examples": {}}
        parts = self._identity(artifact, base)
        full, steps = content_key(parts), method.options.steps
        stop = prefix_steps(steps, share) if method.resumable else steps

        def build(out: Path) -> dict:
            from tools.train import checkpoint_of, train

            data = {q: self.examples(q, artifact.model) for q in artifact.sources}
            start = max((int(meta["steps_trained"]) for meta in self.cache.prefixes(full)
                         if int(meta["steps_trained"]) < stop), default=0)
            result = train(base, data, artifact.sources, out, train_config(method.options),
                           method.adapter(), progress=self.progress,
                           stop_after=stop if stop < steps else None,
                           resume=checkpoint_of(self.cache.prefix_path(full, start), start)
                           if start else None)
            if result.truncated:
                drawn = sum(result.examples.values())
                how = ("" if method.options.max_length else " (derived: the longest example, "
                       "up to the model's context and tools.train.MAX_LENGTH_CAP)")
                log.warning("warning: training %s with method %s cut %d of %d examples to "
                            "max_length %d%s; the longest has %d tokens; raise the method's "
                            "options.max_length to keep them", artifact.model, method.name,
                            result.truncated, drawn, result.max_length, how, result.longest)
            self._spent += result.wall_seconds
            built.append(key)
            return {**parts, "tokens_seen": result.tokens_seen, "examples": result.examples,
                    "wall_seconds": result.wall_seconds, "final_loss": result.final_loss,
                    "max_length": result.max_length, "truncated": result.truncated,
                    "steps_trained": stop, "resumed_from": start,
                    **training_measured(method, result)}

        key = full if stop == steps else self.cache.prefix_key(full, stop)
        built: list[str] = []
        path, meta = self.cache.artifact(key, build)
        return path, key, {**meta, "cached": not built}  # cached: what its build measured

    def _merged(self, artifact: Artifact, base: Path,
                resolved: dict[Artifact, _Model]) -> _Model:
        """A merge of its components' fine-tunes by `tools.merge.merge` (full weights),
        cached by the base, the merge's settings and each component's key and weight."""
        assert isinstance(artifact.method, Merge)
        o = artifact.method.options
        components = [(resolved.get(part) or self._model(part), weight)
                      for part, weight in artifact.parts]
        names = [f"c{i:02d}" for i in range(len(components))]  # tools.merge sorts by name
        parts = {"base": weights_identity(base), "settings": artifact.settings,
                 "components": [[key, weight] for (_, key, _), weight in components],
                 "code": _code_version("tools.merge")}

        def build(out: Path) -> dict:
            from tools.merge import merge

            start = time.perf_counter()
            merge(base, {n: path for n, ((path, _, _), _) in zip(names, components, strict=True)},
                  {n: weight for n, (_, weight) in zip(names, components, strict=True)},
                  o.method, out, density=o.density, majority_sign=o.majority_sign, beta=o.beta,
                  gamma=o.gamma, seed=o.seed)
            seconds = time.perf_counter() - start
            self._spent += seconds
            built.append(key)
            return {**parts, "tokens_seen": 0, "examples": {}, "wall_seconds": seconds}

        key, built = content_key(parts), []
        path, meta = self.cache.artifact(key, build)
        return path, key, {**meta, "cached": not built}

    def verifier_items(self, verifier: VerifierArtifact) -> list[dict[str, str]]:
        """The training items a verifier's generator is sampled on: `items` records drawn
        without replacement from the subtask's sources (pooled, sorted by source name),
        seeded by the verifier method's seed."""
        data = self.data[verifier.subtask]
        pool = [r for source in sorted(data.sources) for r in data.sources[source]]
        return random.Random(verifier.method.options.seed).sample(pool, verifier.items)

    def _verifier(self, verifier: VerifierArtifact, generator: Target,
                  generator_key: str) -> _Model:
        """The verifier of a subtask's samples from `generator` (what samples the stage and
        its key), trained unless cached: the generator samples `samples` completions of each
        training item (`verifier_items`; the subtask's decoding, cached like any samples),
        each is labelled right when the subtask's metric on its answer against the item's
        label is >= 0.5, and the verifier model is fine-tuned on them by its method
        (`tools.verifier.train_verifier`); a sequential one is the generator fine-tuned
        further on them, its subtask's training examples replayed beside them
        (`tools.verifier.continue_verifier`)."""
        name, s = verifier.subtask, self.spec.subtask(verifier.subtask)
        data, extract, metric = self.data[name], self.answers[name], self.metrics[name]
        method = verifier.method
        base = Path(generator) if verifier.sequential else self.base_path(verifier.model)
        assert isinstance(method, FineTune)  # the spec checked it
        records = self.verifier_items(verifier)
        prompts = [self.prompt(name, verifier.generator.model, r) for r in records]
        parts = {"generator": generator_key,
                 "sources": {q: data.digests[q] for q in sorted(data.sources)},
                 "prompt": data.template, "label": data.label, "chat_template": s.chat_template,
                 "metric": s.metric, "answer": s.answer, "decoding": s.decoding.model_dump(),
                 "verifier": {"base": generator_key if verifier.sequential
                              else weights_identity(base), "settings": verifier.settings,
                              "items": verifier.items, "samples": verifier.samples,
                              **({"sequential": True} if verifier.sequential else {})},
                 "code": {**self._versions, "verifier": _code_version("tools.verifier")}}

        def build(out: Path) -> dict:
            from tools.verifier import YES, continue_verifier, train_verifier, verifier_examples

            drawn = self._samples(name, generator, generator_key, prompts, n=verifier.samples)
            references = [label_answer(r[data.label], extract) for r in records]
            examples = verifier_examples(prompts, [d.texts for d in drawn], references,
                                         lambda text, ref: metric(extract(text) or "", ref))
            if verifier.sequential:
                replayed = [e for q in sorted(data.sources)
                            for e in self.examples(f"{name}/{q}", verifier.generator.model)]
                result = continue_verifier(base, examples, out, train_config(method.options),
                                           method.adapter(), generation=replayed)
            else:
                result = train_verifier(base, examples, out, train_config(method.options),
                                        method.adapter())
            self._spent += result.wall_seconds
            built.append(key)
            return {**parts, "tokens_seen": result.tokens_seen, "examples": {},
                    "verifier_examples": len(examples),
                    "verifier_right": sum(e["completion"] == YES for e in examples),
                    "wall_seconds": result.wall_seconds, "final_loss": result.final_loss,
                    "max_length": result.max_length, "truncated": result.truncated,
                    **training_measured(method, result)}

        key, built = content_key(parts), []
        path, meta = self.cache.artifact(key, build)
        return path, key, {**meta, "cached": not built}

    def _judge(self, verifier: _Model | None, prompts: list[str], drawn: list[DrawnSamples],
               n: int) -> list[list[float]] | None:
        """The verifier's score of each drawn sample (None without a verifier), each scored
        once: scores are kept as a sample set (texts: the scores) keyed by the verifier,
        which is keyed by the generator whose samples these are, and N (`n`)."""
        if verifier is None:
            return None
        path, key, _ = verifier
        texts = {p: d.texts for p, d in zip(prompts, drawn, strict=True)}
        set_key = content_key({"verifier": key, "n": n,
                               "scores": _code_version("tools.verifier")})

        def score(missing: list[str]) -> list[DrawnSamples]:
            from tools.verifier import Verifier

            judge, scored = Verifier(path), []
            for prompt in missing:
                start = time.perf_counter()
                values = judge.score(prompt, texts[prompt])
                scored.append(DrawnSamples([repr(v) for v in values], 0, 0,
                                           time.perf_counter() - start))
            self._spent += sum(x.seconds for x in scored)
            return scored

        return [[float(v) for v in x.texts] for x in self.cache.samples(set_key, prompts, score)]

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
            examples = [{**e, "prompt": self._chat(model, e["prompt"])} for e in examples]
        return examples

    def prompt(self, subtask: str, model: str, record: dict[str, str]) -> str:
        """The prompt `model` is given for a record of `subtask`: its template filled, in
        the model's chat template where the subtask sets `chat_template`."""
        text = self.data[subtask].prompt(record)
        if self.spec.subtask(subtask).chat_template:
            return self._chat(model, text)
        return text

    def train_length(self, artifact: Artifact) -> int | None:
        """Tokens per example the artifact's fine-tune keeps (its explicit max_length, or
        the one derived from its data); None for a base served as it is, or a continuation
        (its data is sampled as it trains)."""
        method = artifact.method
        if not isinstance(method, FineTune) or artifact.continues is not None:
            return None
        import tools.train

        data = {q: self.examples(q, artifact.model) for q in artifact.sources}
        return tools.train.train_length(self.base_path(artifact.model), data,
                                        artifact.sources, train_config(method.options),
                                        method.adapter())

    def _chat(self, model: str, text: str) -> str:
        """`text` as the user's turn in `model`'s chat template (`tools.train.chat_prompt`)."""
        from tools.train import chat_prompt

        return chat_prompt(self._tokenizer(model), text)

    def _tokenizer(self, model: str) -> object:
        from tools.train import load_tokenizer

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
            for c in s.cascades:  # the strong plan samples the subtask, may train on chat data
                strong = strong_plan(self.spec, s.name, c)
                for owner in [s.name, *(q.split("/", 1)[0] for q in artifact_of(
                        self.spec, s.name, strong).sources)]:
                    if owner in chat:
                        needs.setdefault(strong.model, owner)
        for m, owner in needs.items():
            if not getattr(self._tokenizer(m), "chat_template", None):
                raise SpecError(f"{self.spec.source}: subtasks.{owner}.chat_template: model "
                                f"{m!r} ({self.base_path(m)}) has no chat template in its "
                                "tokenizer; use a chat model (chat_template in its "
                                "tokenizer_config.json or chat_template.jinja) or remove "
                                "chat_template")

    def _source(self, qualified: str) -> tuple[SubtaskData, str]:
        """`sub/src` -> subtask `sub`'s data (its template and label) and source name `src`."""
        subtask, source = qualified.split("/", 1)
        return self.data[subtask], source

    def _target(self, subtask: str, plan: Plan, artifact: Artifact,
                models: dict[Artifact, _Model], share: float = 1.0) -> tuple[Target, str]:
        """What samples the stage, and its key in the sample cache: the artifact's local
        folder (trained unless cached, once per run in `models`; a screen's `share` of the
        steps of a resumable fine-tune) or, under `openai`, the name the server serves it
        under (`sampling.served`; a server trains nothing), keyed by that name and the
        artifact's identity (not the URL: a moved server keeps them)."""
        backend = self.backends[subtask]
        if backend.kind != "openai":
            for part in artifact.trains:  # a merge's components, then the merge
                if part not in models:
                    models[part] = self._model(part, models, share)
            path, key, _ = models[artifact]
            return path, key
        name = served_name(self.spec, backend, plan.model, plan.method, plan.mixture)
        assert name is not None  # check_backends refused the task otherwise
        served, model = ServedModel(name), self.spec.model(plan.model)
        self._params.setdefault(served, int(model.params or 0))  # the catalogue's count
        return served, content_key({"served": name, "source": model.source,
                                    "settings": artifact.settings, "data": artifact.data})

    def _samples(self, subtask: str, path: Target, model_key: str,
                 prompts: list[str], n: int) -> list[DrawnSamples]:
        """`n` completions per prompt, drawn once per (model, prompt, decoding, n)."""
        s, backend = self.spec.subtask(subtask), self.backends[subtask]
        parts = {"model": model_key, "decoding": s.decoding.model_dump(), "n": n,
                 "code": self._versions["infer"]}
        if backend.kind != "transformers":  # another backend draws other samples
            parts["backend"] = backend.kind
        set_key = content_key(parts)
        server = {"device": "server", "peak_flops": None}  # drawn elsewhere: not calibrated

        def draw(missing: list[str]) -> list[DrawnSamples]:
            d = s.decoding
            self.samplers.progress = self.progress
            out = self.samplers.sample(backend, path, missing, n,
                                       max_new_tokens=d.max_new_tokens,
                                       temperature=d.temperature, top_p=d.top_p,
                                       seed=[prompt_seed(d.seed, p) for p in missing])
            generated = sum(c for _, c in out.each)  # the call's time, shared by its tokens
            drawn = [DrawnSamples(texts, p, c, out.seconds * (c / generated if generated
                                                              else 1 / len(missing)))
                     for texts, (p, c) in zip(out.texts, out.each, strict=True)]
            seconds = out.seconds
            self._spent += seconds
            self._fresh.update((set_key, prompt) for prompt in missing)
            tokens = sum(x.prompt_tokens + x.completion_tokens for x in drawn)
            params = self._served_params(path)
            if backend.kind != "openai":
                self.cache.record_sampling(set_key, {
                    **device_record(), "seconds": seconds, "tokens": tokens, "params": params,
                    "completion_tokens": sum(x.completion_tokens for x in drawn),
                    "flops": 2 * params * tokens})
            return drawn

        found = self.cache.samples(set_key, prompts, draw)
        recorded = self.cache.samplings(set_key)  # where the set was drawn, if recorded
        where = (server if backend.kind == "openai" else
                 recorded[-1] if recorded else device_record())
        if "params" in where:  # counted when drawn: the cached path loads no model library
            self._params.setdefault(path, int(where["params"]))
        for x, prompt in zip(found, prompts, strict=True):  # held: no id is reused in a run
            self._drawn[id(x)] = (x, where, (set_key, prompt) in self._fresh)
        return found

    def _served_params(self, path: Target) -> int:
        """Parameters of a served model (an adapter's base's; the adapter's own are few; a
        server's model: its catalogue entry's `params`, set by `_target`)."""
        if path not in self._params:
            from tools.train import param_count

            assert isinstance(path, Path)
            config = path / "adapter_config.json"
            base = json.loads(config.read_text())["base_model_name_or_path"] \
                if config.is_file() else path
            self._params[path] = param_count(base)
        return self._params[path]

    def base_path(self, model: str) -> Path:
        """The model's weights: a local folder or file (a zoo model is built on first use)."""
        if model not in self._bases:
            self._bases[model] = resolve_source(self.spec, self.spec.model(model), self.cache.zoo)
        return self._bases[model]

    def _check_weights(self) -> None:
        """Each model whose weights are loaded here (the models of a subtask that samples
        with transformers or vLLM, and of its cascades; every verifier's, trained here) has a
        source that can be found (`check_source`, which builds and converts nothing): a bad
        source is a SpecError before the search, not a failed trial per plan using it."""
        models: set[str] = set()
        for s in self.spec.subtasks:
            if self.backends[s.name].kind != "openai":  # a server's models are its own
                models.update(s.model_names)
                models.update(c.model for c in s.cascades.values())
            models.update(v.model for v in s.verifiers.values() if v.model is not None)
        for model in sorted(models):
            check_source(self.spec, self.spec.model(model))

    def _check_choices(self) -> None:
        """Aggregators and methods the live environment can run; SpecError otherwise."""
        for s in self.spec.subtasks:
            if bad := sorted(set(s.aggregators) - set(AGGREGATORS)):
                raise SpecError(f"{self.spec.source}: subtasks.{s.name}.aggregators: {bad} are not "
                                f"live aggregators; use {list(AGGREGATORS)}")
        self._check_methods()
        self._check_sources()

    def _check_methods(self) -> None:
        """Kind `none` serves the base and fine-tuning kinds train; any other kind offered by
        a subtask (e.g. `pretrain`, a released checkpoint) cannot run live."""
        live = [k for k, cls in KINDS.items() if k in ("none", "merge") or cls.fine_tunes]
        used = {m for s in self.spec.subtasks for m in s.methods}
        for m in self.spec.methods:
            if m.name in used and m.kind not in live:
                raise SpecError(f"{self.spec.source}: methods.{m.name}: kind {m.kind!r} cannot run "
                                f"live; use one of {live}")

    def _check_sources(self) -> None:
        """Every qualified source a fine-tuning subtask's mixtures train on has a file."""
        for s in self.spec.subtasks:
            if not any(self.spec.method(m).fine_tunes for m in s.methods):
                continue
            for mixture in s.mixtures:
                if q := self._untrainable(s.name, mixture):
                    raise SpecError(f"{self.spec.source}: subtasks.{s.name}.mixtures.{mixture}: "
                                    f"{q!r} has no training file; give subtask "
                                    f"{q.split('/')[0]!r} data.sources")
        for s in self.spec.subtasks:
            for name in s.cascades:
                strong = strong_plan(self.spec, s.name, name)
                if self.spec.method(strong.method).fine_tunes and (
                        q := self._untrainable(s.name, strong.mixture)):
                    raise SpecError(f"{self.spec.source}: subtasks.{s.name}.cascades.{name}: "
                                    f"{q!r} has no training file; give subtask "
                                    f"{q.split('/')[0]!r} data.sources")
        used = {m for s in self.spec.subtasks for m in s.methods}
        for m in self.spec.methods:
            for j, c in enumerate(m.components if isinstance(m, Merge) and m.name in used
                                  else ()):
                mixture = c.mixture or next(iter(self.spec.subtask(c.subtask).mixtures))
                if q := self._untrainable(c.subtask, mixture):
                    raise SpecError(f"{self.spec.source}: methods.{m.name}.components[{j}]: "
                                    f"{q!r} has no training file; give subtask "
                                    f"{q.split('/')[0]!r} data.sources")

    def _untrainable(self, subtask: str, mixture: str) -> str | None:
        """The first source of the subtask's mixture (`owner/source`) with no training file."""
        for q in self.spec.mixture_weights(subtask, mixture):
            owner, src = q.split("/", 1)
            data = self.spec.subtask(owner).data
            if data is None or src not in data.sources:
                return q
        return None

    def _check_verifier_items(self) -> None:
        """Each verifier's `items` fit in its subtask's training records."""
        for s in self.spec.subtasks:
            pool = sum(len(r) for r in self.data[s.name].sources.values())
            for name, v in s.verifiers.items():
                if v.sequential and self.backends[s.name].kind == "openai":
                    raise SpecError(f"{self.spec.source}: subtasks.{s.name}.verifiers.{name}."
                                    "sequential: a server's model has no weights here to train "
                                    "further; sample with transformers or vllm, or train a "
                                    "verifier model (model: M)")
                if v.items > pool:
                    raise SpecError(f"{self.spec.source}: subtasks.{s.name}.verifiers.{name}."
                                    f"items: {v.items} training items, but the subtask's "
                                    f"sources hold {pool} records; lower items")

    def _metric(self, subtask: str) -> Metric:
        name = self.spec.subtask(subtask).metric
        try:
            return load_metric(name, self.spec.root)
        except (ValueError, ImportError, AttributeError, SyntaxError) as e:
            raise SpecError(f"{self.spec.source}: subtasks.{subtask}.metric: {e}") from None

    def _answer(self, subtask: str) -> Extractor:
        answer = self.spec.subtask(subtask).answer
        try:
            return load_extractor(answer, self.spec.root)
        except (ValueError, ImportError, AttributeError, SyntaxError) as e:
            raise SpecError(f"{self.spec.source}: subtasks.{subtask}.answer: cannot load "
                            f"{answer!r} ({type(e).__name__}: {e}); put the module beside the "
                            "task file (or on PYTHONPATH) and name a function in it") from None

    def _sink(self) -> str:
        sinks = [n for n in self.spec.order() if self.spec.graph().out_degree(n) == 0]
        if len(sinks) != 1:
            raise SpecError(f"{self.spec.source}: subtasks: a live pipeline needs one final "
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
