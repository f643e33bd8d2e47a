"""What searching costs: the GPU-hours a live run spends evaluating trials, cache-aware.

Evaluating an allocation trains each fine-tune it serves from that no earlier trial
trained (a fine-tune is cached by its artifact identity; a base model or a released
checkpoint is downloaded, not trained), and samples, per (subtask, model, method, mixture)
no earlier trial sampled, max-n completions for each of the subtask's validation items
(every smaller n and every aggregator is then estimated from those samples, as the live
environment does). A trial that changes only n or the aggregator of evaluated arms costs
nothing, except a verifier aggregator (`verifier`, `verifier_best`) with a verifier no
earlier trial used on that generator: it trains the verifier (sampling its training set and
fine-tuning, `CostModel.verifier_gpu_hours`) and scores the arm's max-n samples of each
validation item once (2·N_ver·(P + O) each); a sequential verifier's continuation is a
fine-tune of its own (trained after sampling its generator) and an arm of its own. A merge
trains each of its components that no earlier trial trained (alone or in another merge);
merging itself is free. A cascade's strong plan (`planner.cascade`) is one more fine-tune
and arm, paid once like any: the live environment samples it max-n on every validation
item, whatever share escalates.

This is what a user pays for a search, as opposed to what the found allocation
costs to deploy (`CostModel.estimate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from planner.artifact import Artifact, VerifierArtifact
from planner.cost import CostModel
from planner.space import Allocation, Plan

Arm = tuple[str, str, str, str, str | None]
"""One set of samples: subtask, model, method, mixture, and the sequential verifier whose
continuation of that generator samples instead (None: the generator samples)."""
Trained = Artifact | VerifierArtifact  # what a trial may train once for every later one


class SearchCost:
    """Cumulative and marginal evaluation cost of trials, in GPU-hours.

    Args:
        cost_model: prices training and sampling.
        items: subtask -> validation items one evaluation samples (default 1 each).
    """

    def __init__(self, cost_model: CostModel, items: Mapping[str, int] | None = None) -> None:
        self.cost_model = cost_model
        self.items = dict(items or {})
        self.trained: set[Trained] = set()
        self.sampled: set[Arm] = set()
        self.gpu_hours = 0.0
        self._arm_cost: dict[Arm, float] = {}

    def parts(self, allocation: Allocation) -> tuple[dict[Trained, float], dict[Arm, float]]:
        """The fine-tunes (a merge's components, a cascade's strong plan) and verifiers the
        allocation trains and the arms it samples (a cascade's strong plan's too), with
        their cost, whether or not earlier trials paid for them."""
        cm = self.cost_model
        trains: dict[Trained, float] = {}
        arms: dict[Arm, float] = {}
        for s, p in allocation.items():
            for artifact in cm.trains(s, p):
                if artifact.method.fine_tunes:
                    trains[artifact] = cm.train_gpu_hours(artifact)
            verifier = cm.verifier(s, p)
            if verifier is not None:
                trains[verifier] = self._verifier_cost(verifier)
            cascade = cm.cascade(s, p)
            for q in (p,) if cascade is None else (p, cascade.strong):
                arm = self._arm(s, q)
                arms[arm] = self._sample_cost(arm)
        return trains, arms

    def marginal(self, allocation: Allocation) -> float:
        """GPU-hours evaluating `allocation` would add now."""
        return self._unpaid(*self.parts(allocation))

    def add(self, allocation: Allocation) -> float:
        """Pay for an evaluated allocation; the cumulative GPU-hours."""
        trains, arms = self.parts(allocation)
        self.gpu_hours += self._unpaid(trains, arms)
        self.trained |= trains.keys()
        self.sampled |= arms.keys()
        return self.gpu_hours

    def add_all(self, allocations: Iterable[Allocation]) -> float:
        for allocation in allocations:
            self.add(allocation)
        return self.gpu_hours

    def _unpaid(self, trains: dict[Trained, float], arms: dict[Arm, float]) -> float:
        return (sum(c for a, c in trains.items() if a not in self.trained)
                + sum(c for a, c in arms.items() if a not in self.sampled))

    def _arm(self, subtask: str, plan: Plan) -> Arm:
        """The samples a plan reads: its generator's, or its sequential verifier's
        continuation's (the same model's size, so the same price, but other samples)."""
        continued = self.cost_model.artifact(subtask, plan).continues is not None
        return (subtask, plan.model, plan.method, plan.mixture,
                plan.verifier if continued else None)

    def _sample_cost(self, arm: Arm) -> float:
        """Max-n samples of the arm for each validation item of its subtask."""
        if arm not in self._arm_cost:
            cm = self.cost_model
            subtask, model, method, mixture, _ = arm
            spec = cm.spec.subtask(subtask)
            widest = Plan(model=model, method=method, mixture=mixture,
                          samples=max(spec.samples), aggregator=spec.aggregators[0])
            per_query = (cm.plan_cost(subtask, widest).inference_gpu_hours
                         / cm.spec.workload.queries)
            self._arm_cost[arm] = per_query * self.items.get(subtask, 1)
        return self._arm_cost[arm]

    def _verifier_cost(self, verifier: VerifierArtifact) -> float:
        """Training the verifier, then scoring the max-n samples of each validation item."""
        cm, subtask = self.cost_model, verifier.subtask
        scored = self.items.get(subtask, 1) * max(cm.spec.subtask(subtask).samples)
        return cm.verifier_gpu_hours(verifier) + cm.verifier_scoring_gpu_hours(verifier, scored)
