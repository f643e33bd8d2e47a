"""Cost model: an allocation's training + inference compute in GPU-hours.

Formulas (N = parameters, D = training tokens, P/O = prompt/output tokens, n = samples):

- training, full fine-tuning or pre-training: 6·N·D FLOPs (forward 2ND + backward 4ND;
  Kaplan et al. 2020, "Scaling Laws for Neural Language Models", C ≈ 6ND);
- training, LoRA or prompt tuning: 4·N·D FLOPs (the base weights are frozen, so the
  backward pass computes activation gradients, 2ND, but no weight gradients, 2ND);
- inference per query: 2·N·P for the prompt, processed once and shared by the n samples
  (prefix caching), plus n·2·N·O for generating (Kaplan et al.: 2N FLOPs per token);
  where a replay table records FLOPs per sample (or tokens, priced at 2N each, or USD,
  converted at the hardware's USD per GPU-hour), n times that figure is used instead;
- GPU-hours = FLOPs / (peak FLOP/s · utilisation) / 3600, on the task's hardware.

Inference is multiplied by the task's workload (queries served). A pre-trained checkpoint
shared by several subtasks is paid once; a fine-tune is per subtask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from planner.errors import SpecError
from planner.space import Allocation, Plan
from planner.spec import TaskSpec

_TRAIN_FLOPS_PER_PARAM_TOKEN = {"none": 0.0, "full": 6.0, "pretrain": 6.0, "lora": 4.0,
                                "prompt": 4.0}

# (subtask, model, method) -> recorded inference FLOPs per sample
Calibration = Mapping[tuple[str, str, str], float]


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

    def train_flops(self, plan: Plan) -> float:
        """FLOPs to produce the plan's model: 6ND (full, pretrain), 4ND (lora, prompt), 0."""
        method = self.spec.method(plan.method)
        if method.kind == "none":
            return 0.0
        return (_TRAIN_FLOPS_PER_PARAM_TOKEN[method.kind] * self._params(plan.model)
                * method.train_tokens)

    def inference_flops_per_query(self, subtask: str, plan: Plan) -> float:
        """FLOPs to answer one query with n samples: 2NP + n·2NO, or n·(recorded)."""
        recorded = self.calibration.get((subtask, plan.model, plan.method))
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
        return Cost(self.train_flops(plan) / self._flops_per_gpu_hour,
                    infer / self._flops_per_gpu_hour)

    def artifact(self, subtask: str, plan: Plan) -> tuple[str, ...]:
        """Key of the trained model a plan uses: subtasks with equal keys pay training once.

        Base and pre-trained checkpoints are shared across subtasks; fine-tunes are not."""
        if self.spec.method(plan.method).kind in ("none", "pretrain"):
            return (plan.model, plan.method)
        return (subtask, plan.model, plan.method, plan.mixture)

    def estimate(self, allocation: Allocation) -> Cost:
        """Whole allocation: inference summed, each distinct trained artifact paid once."""
        trained: dict[tuple, float] = {}
        infer = 0.0
        for subtask, plan in allocation.items():
            trained[self.artifact(subtask, plan)] = self.train_flops(plan)
            infer += self.inference_flops_per_query(subtask, plan) * self.spec.workload.queries
        return Cost(sum(trained.values()) / self._flops_per_gpu_hour,
                    infer / self._flops_per_gpu_hour)
