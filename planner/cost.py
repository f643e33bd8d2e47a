"""Cost model: an allocation's training + inference compute in GPU-hours.

Formulas (N = parameters, P/O = prompt/output tokens, n = samples):

- training: the method's own formula (`planner.methods`: 6ND for full fine-tuning and
  pre-training, 4ND for LoRA and prompt tuning, D derived from the steps, the batch and the
  mixture's example lengths unless given), once per distinct artifact (`planner.artifact`);
- inference per query: 2·N·P for the prompt, processed once and shared by the n samples
  (prefix caching), plus n·2·N·O for generating (Kaplan et al. 2020: 2N FLOPs per token);
  where a replay table records FLOPs per sample for the plan's model, method and mixture
  (or tokens, priced at 2N each, or USD, converted at the hardware's USD per GPU-hour),
  n times that figure is used instead;
- GPU-hours = FLOPs / (peak FLOP/s · utilisation) / 3600, on the task's hardware. The
  utilisation is the task's `hardware.utilization` unless the environment measured one
  (`MeasuredCalibration`: the live environment's trainings and samplings so far), which
  then prices training and inference separately.
- a merge (`planner.methods.Merge`): ~0 FLOPs of its own; its components are artifacts of
  their own, trained once per allocation whichever plans (merged or alone) use them;
  served as the base;
- a verifier (aggregators `verifier`, `verifier_best`; Liu et al. 2023), once per
  (generator artifact, verifier) pair: sampling the generator on its training items,
  items·(2·N_gen·P + s·2·N_gen·O) for s samples each (priced as inference), plus the
  verifier's fine-tune, its method's formula on N_ver with D = steps x batch x (P + O)
  (6·N_ver·D for full); per query n verifier prefill passes, n·2·N_ver·(P + O). A
  sequential verifier is the generator trained further: the same sampling, then one more
  training of the generator (its method's formula on N_gen, D as above), priced as the
  served artifact (`Artifact.continues`); per query one model generates and scores,
  N_ver = N_gen (no second model is served).
- a cascade (`planner.cascade`; Yue et al. 2024, FrugalGPT): the strong plan's training
  (once per artifact, like any), and per query its inference times the expected escalated
  share, assumed to be the threshold clipped to [0, 1] (the live environment measures it).

Inference is multiplied by the task's workload (queries served).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from planner.artifact import (
    Artifact,
    Generators,
    VerifierArtifact,
    artifact_of,
    tokens_per_example,
    verifier_of,
)
from planner.cascade import Cascade, cascade_of
from planner.errors import SpecError
from planner.space import Allocation, Plan
from planner.spec import TaskSpec

# (subtask, model, method, mixture) -> recorded inference FLOPs per sample
Calibration = Mapping[tuple[str, str, str, str], float]


@dataclass(frozen=True)
class Utilization:
    """Achieved fraction of peak FLOP/s that live runs measured: FLOPs done / (device seconds
    x peak FLOP/s), summed over runs (a time-weighted mean). FLOPs are the formulas above at
    the measured tokens and the models' real parameter counts; seconds are device wall time
    (loading and saving included). The peak is the task's `hardware.peak_flops` for work on
    a GPU and, for work on a CPU (whose peak is not the task's GPU's), the fp32 matmul rate
    measured there (`tools.device.cpu_matmul_flops`); `peaks` says which were used."""

    train: float | None
    """Over the trainings measured; None if none."""
    sample: float | None
    """Over the samplings measured; None if none."""
    trainings: int = 0
    samplings: int = 0
    peaks: tuple[str, ...] = ()
    """Each peak FLOP/s a ratio divides by, in words."""
    left_out: str = ""
    """Measurements not used, and why (the live environment leaves CPU work out by
    default), in words; '' if none."""


@dataclass(frozen=True)
class MeasuredCalibration(Mapping[tuple[str, str, str, str], float]):
    """A `Calibration` (recorded FLOPs per sample: `flops`) that also carries measured
    utilisation, which `CostModel` uses in place of `hardware.utilization`."""

    utilization: Utilization
    flops: Mapping[tuple[str, str, str, str], float] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, str, str, str]) -> float:
        return self.flops[key]

    def __iter__(self) -> Iterator[tuple[str, str, str, str]]:
        return iter(self.flops)

    def __len__(self) -> int:
        return len(self.flops)


@dataclass(frozen=True)
class Cost:
    """Estimated compute of an allocation, in GPU-hours of the task's hardware."""

    train_gpu_hours: float
    inference_gpu_hours: float

    @property
    def total_gpu_hours(self) -> float:
        return self.train_gpu_hours + self.inference_gpu_hours


@dataclass(frozen=True)
class _Parts:
    """What a subtask's plan costs is made of: the artifacts serving it trains (a merge's
    components first, a cascade's strong plan's), its verifier, and the FLOPs of answering
    one query (sampling, scoring with the verifier, escalating)."""

    trains: tuple[Artifact, ...]
    verifier: VerifierArtifact | None
    flops_per_query: float


class CostModel:
    """Prices plans and allocations for one task."""

    def __init__(self, spec: TaskSpec, calibration: Calibration | None = None) -> None:
        self.spec = spec
        self.measured = (calibration.utilization
                         if isinstance(calibration, MeasuredCalibration) else None)
        """Measured utilisation, where the environment had some."""
        self.calibration = dict(calibration or {})
        hw, measured = spec.hardware, self.measured
        self.train_utilization = (measured.train if measured and measured.train
                                  else hw.utilization)
        self.inference_utilization = (measured.sample if measured and measured.sample
                                      else hw.utilization)
        self._train_flops_per_gpu_hour = hw.peak_flops * self.train_utilization * 3600
        self._infer_flops_per_gpu_hour = hw.peak_flops * self.inference_utilization * 3600
        self._artifacts: dict[tuple[str, Plan], Artifact] = {}  # memo: searches price a lot
        self._generators: Generators = {}
        self._verifiers: dict[tuple[str, str, Plan], VerifierArtifact | None] = {}
        self._cascades: dict[tuple[str, Plan], Cascade | None] = {}
        self._plan_costs: dict[tuple[str, Plan], Cost] = {}
        self._parts: dict[tuple[str, Plan], _Parts] = {}
        self._model_params = {m.name: m.params for m in spec.models}

    def artifact(self, subtask: str, plan: Plan) -> Artifact:
        """The model a plan serves from: subtasks with equal artifacts pay training once."""
        key = (subtask, plan)
        if key not in self._artifacts:
            self._artifacts[key] = artifact_of(self.spec, subtask, plan, self._generators)
        return self._artifacts[key]

    def train_tokens(self, artifact: Artifact) -> float:
        """Tokens the artifact's training reads (D)."""
        return artifact.method.tokens(tokens_per_example(self.spec, artifact))

    def train_flops(self, artifact: Artifact) -> float:
        """FLOPs to produce the artifact (0 for a base model)."""
        if artifact.method.flops_per_param_token == 0:
            return 0.0
        return artifact.method.train_flops(self._params(artifact.model),
                                           tokens_per_example(self.spec, artifact))

    def inference_flops_per_query(self, subtask: str, plan: Plan) -> float:
        """FLOPs to answer one query with n samples: 2NP + n·2NO, or n·(recorded)."""
        recorded = self.calibration.get((subtask, plan.model, plan.method, plan.mixture))
        if recorded is not None:
            return plan.samples * recorded
        s = self.spec.subtask(subtask)
        n_params = self._params(plan.model)
        return 2 * n_params * s.prompt_tokens + plan.samples * 2 * n_params * s.output_tokens

    def train_gpu_hours(self, artifact: Artifact) -> float:
        """GPU-hours to produce the artifact alone (a merge's components not included)."""
        return self.train_flops(artifact) / self._train_flops_per_gpu_hour

    def verifier(self, subtask: str, plan: Plan) -> VerifierArtifact | None:
        """The verifier the plan re-ranks with (None: its aggregator uses none)."""
        key = ("verifier", subtask, plan)
        if key not in self._verifiers:
            self._verifiers[key] = verifier_of(self.spec, subtask, plan, self._generators)
        return self._verifiers[key]

    def cascade(self, subtask: str, plan: Plan) -> Cascade | None:
        """The cascade the plan escalates by (None: it escalates nothing)."""
        key = (subtask, plan)
        if key not in self._cascades:
            self._cascades[key] = cascade_of(self.spec, subtask, plan)
        return self._cascades[key]

    def trains(self, subtask: str, plan: Plan) -> tuple[Artifact, ...]:
        """What serving the plan trains: its artifact (a merge's components first) and a
        cascade's strong plan's, each once."""
        cascade = self.cascade(subtask, plan)
        strong = () if cascade is None else self.artifact(subtask, cascade.strong).trains
        return tuple(dict.fromkeys((*self.artifact(subtask, plan).trains, *strong)))

    def escalation_flops_per_query(self, subtask: str, plan: Plan) -> float:
        """A cascade's strong plan's inference per query times the expected escalated
        share; 0 without a cascade."""
        cascade = self.cascade(subtask, plan)
        if cascade is None:
            return 0.0
        return cascade.expected_share * self.inference_flops_per_query(subtask, cascade.strong)

    def verifier_sampling_flops(self, verifier: VerifierArtifact) -> float:
        """Sampling its training set: items·(2·N_gen·P + s·2·N_gen·O)."""
        s, n_gen = self.spec.subtask(verifier.subtask), self._params(verifier.generator.model)
        return verifier.items * (2 * n_gen * s.prompt_tokens
                                 + verifier.samples * 2 * n_gen * s.output_tokens)

    def verifier_train_flops(self, verifier: VerifierArtifact) -> float:
        """Its fine-tune on N_ver, D = steps x batch x (P + O) (6·N_ver·D for full)."""
        s = self.spec.subtask(verifier.subtask)
        return verifier.method.train_flops(self._params(verifier.model),
                                           s.prompt_tokens + s.output_tokens)

    def verifier_gpu_hours(self, verifier: VerifierArtifact) -> float:
        """GPU-hours of producing it: training-set sampling + fine-tune (a sequential one's
        fine-tune is its served continuation's training, priced as that artifact's)."""
        train = 0.0 if verifier.sequential else self.verifier_train_flops(verifier)
        return (self.verifier_sampling_flops(verifier) / self._infer_flops_per_gpu_hour
                + train / self._train_flops_per_gpu_hour)

    def verifier_flops_per_query(self, subtask: str, plan: Plan) -> float:
        """Scoring the n samples of one query: n·2·N_ver·(P + O); 0 without a verifier."""
        verifier = self.verifier(subtask, plan)
        if verifier is None:
            return 0.0
        s = self.spec.subtask(subtask)
        return plan.samples * self.verifier_score_flops(verifier, s.prompt_tokens
                                                        + s.output_tokens)

    def verifier_score_flops(self, verifier: VerifierArtifact, tokens: float) -> float:
        """One prefill pass of the verifier over `tokens` tokens: 2·N_ver·tokens."""
        return 2 * self._params(verifier.model) * tokens

    def verifier_scoring_gpu_hours(self, verifier: VerifierArtifact, samples: int) -> float:
        """GPU-hours of scoring `samples` samples of its subtask: each 2·N_ver·(P + O)."""
        s = self.spec.subtask(verifier.subtask)
        flops = samples * self.verifier_score_flops(verifier, s.prompt_tokens + s.output_tokens)
        return flops / self._infer_flops_per_gpu_hour

    def _params(self, model: str) -> float:
        params = self._model_params[model]
        if params is None:
            raise SpecError(f"{self.spec.source}: model {model!r} has no `params`; give them, or "
                            "price it from a replay table (FLOPs, tokens or USD column)")
        return params

    def plan_cost(self, subtask: str, plan: Plan) -> Cost:
        """One subtask's cost, with its training (a merge's components, its verifier and a
        cascade's strong plan included) counted in full."""
        key = (subtask, plan)
        if key not in self._plan_costs:
            self._plan_costs[key] = self._plan_cost(subtask, plan)
        return self._plan_costs[key]

    def _plan_cost(self, subtask: str, plan: Plan) -> Cost:
        parts = self._parts_of(subtask, plan)
        train = sum(self.train_gpu_hours(a) for a in parts.trains)
        if parts.verifier is not None:
            train += self.verifier_gpu_hours(parts.verifier)
        infer = parts.flops_per_query * self.spec.workload.queries
        return Cost(train, infer / self._infer_flops_per_gpu_hour)

    def _parts_of(self, subtask: str, plan: Plan) -> _Parts:
        """What pricing a subtask's plan reads (memo: an allocation's estimate reads every
        subtask's, and searches estimate many)."""
        key = (subtask, plan)
        found = self._parts.get(key)
        if found is None:
            found = self._parts[key] = _Parts(
                self.trains(subtask, plan), self.verifier(subtask, plan),
                self.inference_flops_per_query(subtask, plan)
                + self.verifier_flops_per_query(subtask, plan)
                + self.escalation_flops_per_query(subtask, plan))
        return found

    def estimate(self, allocation: Allocation) -> Cost:
        """Whole allocation: inference summed, each distinct artifact trained once."""
        trained: dict[Artifact, float] = {}
        verifiers: dict[VerifierArtifact, float] = {}
        infer = 0.0
        for subtask, plan in allocation.items():
            parts = self._parts_of(subtask, plan)
            for artifact in parts.trains:  # a merge's parts first
                if artifact not in trained:
                    trained[artifact] = self.train_flops(artifact)
            verifier = parts.verifier
            if verifier is not None and verifier not in verifiers:
                verifiers[verifier] = self.verifier_gpu_hours(verifier)
            infer += parts.flops_per_query * self.spec.workload.queries
        return Cost(sum(trained.values()) / self._train_flops_per_gpu_hour
                    + sum(verifiers.values()), infer / self._infer_flops_per_gpu_hour)
