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
- GPU-hours = FLOPs / (peak FLOP/s · utilisation) / 3600, on the task's hardware.

Inference is multiplied by the task's workload (queries served).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from planner.artifact import Artifact, artifact_of, tokens_per_example
from planner.errors import SpecError
from planner.space import Allocation, Plan
from planner.spec import TaskSpec

# (subtask, model, method, mixture) -> recorded inference FLOPs per sample
Calibration = Mapping[tuple[str, str, str, str], float]


@dataclass(frozen=True)
class Cost:
    """Estimated compute of an allocation, in GPU-hours of the task's hardware."""

    train_gpu_hours: float
    inference_gpu_hours: float

    @property
    def total_gpu_hours(self) -> float:
        return self.train_gpu_hours + self.inference_gpu_hours


class CostModel:
    """Prices plans and allocations for one task."""

    def __init__(self, spec: TaskSpec, calibration: Calibration | None = None) -> None:
        self.spec = spec
        self.calibration = dict(calibration or {})
        self._flops_per_gpu_hour = spec.hardware.peak_flops * spec.hardware.utilization * 3600
        self._artifacts: dict[tuple[str, Plan], Artifact] = {}  # memo: searches price a lot

    def artifact(self, subtask: str, plan: Plan) -> Artifact:
        """The model a plan serves from: subtasks with equal artifacts pay training once."""
        key = (subtask, plan)
        if key not in self._artifacts:
            self._artifacts[key] = artifact_of(self.spec, subtask, plan)
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

    def _params(self, model: str) -> float:
        params = self.spec.model(model).params
        if params is None:
            raise SpecError(f"{self.spec.name}: model {model!r} has no `params`; give them, or "
                            "price it from a replay table (FLOPs, tokens or USD column)")
        return params

    def plan_cost(self, subtask: str, plan: Plan) -> Cost:
        """One subtask's cost, with its training counted in full."""
        infer = self.inference_flops_per_query(subtask, plan) * self.spec.workload.queries
        return Cost(self.train_flops(self.artifact(subtask, plan)) / self._flops_per_gpu_hour,
                    infer / self._flops_per_gpu_hour)

    def estimate(self, allocation: Allocation) -> Cost:
        """Whole allocation: inference summed, each distinct artifact trained once."""
        trained: dict[Artifact, float] = {}
        infer = 0.0
        for subtask, plan in allocation.items():
            artifact = self.artifact(subtask, plan)
            if artifact not in trained:
                trained[artifact] = self.train_flops(artifact)
            infer += self.inference_flops_per_query(subtask, plan) * self.spec.workload.queries
        return Cost(sum(trained.values()) / self._flops_per_gpu_hour,
                    infer / self._flops_per_gpu_hour)
