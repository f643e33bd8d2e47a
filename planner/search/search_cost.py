"""What searching costs: the GPU-hours a live run spends evaluating trials, cache-aware.

Evaluating an allocation trains each fine-tune it serves from that no earlier trial
trained (a fine-tune is cached by its artifact identity; a base model or a released
checkpoint is downloaded, not trained), and samples, per (subtask, model, method, mixture)
no earlier trial sampled, N completions for each of the subtask's validation items, N the
study's draw of that arm (`planner.draws`: the most samples a plan of it within the budget
reads; the subtask's largest n without draws). Every smaller n and every aggregator is
then estimated from those samples, as the live environment does. A trial that changes only
n or the aggregator of evaluated arms costs nothing, except a verifier aggregator
(`verifier`, `verifier_best`) with a verifier no earlier trial used on that generator: it
trains the verifier (sampling its training set and fine-tuning,
`CostModel.verifier_gpu_hours`) and scores the arm's N samples of each validation item
once (2·N_ver·(P + O) each); a sequential verifier's continuation is a fine-tune of its
own (trained after sampling its generator) and an arm of its own. A merge trains each of
its components that no earlier trial trained (alone or in another merge); merging itself
is free. A cascade's strong plan (`planner.cascade`) is one more fine-tune and arm, paid
once like any: the live environment samples it N times on every validation item, whatever
share escalates.

A screen (a trial at `fidelity` f < 1) samples its arms on that share of the validation
items, and pays f of each arm's price; a later trial of the arm pays only the share still
unsampled (the live environment caches samples per prompt). Training is never screened: a
screen trains (and pays for) its fine-tunes and verifiers in full.

This is what a user pays for a search, as opposed to what the found allocation
costs to deploy (`CostModel.estimate`).
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.artifact import Artifact, VerifierArtifact
from planner.cost import CostModel
from planner.draws import Arm, Draws, plan_arms, samples_drawn
from planner.space import Allocation, Plan

Trained = Artifact | VerifierArtifact  # what a trial may train once for every later one


class SearchCost:
    """Cumulative and marginal evaluation cost of trials, in GPU-hours.

    Args:
        cost_model: prices training and sampling.
        items: subtask -> validation items one evaluation samples (default 1 each).
        draws: arm -> completions per item the study draws (`planner.draws.study_draws`;
            None: the subtask's largest n).
    """

    def __init__(self, cost_model: CostModel, items: Mapping[str, int] | None = None,
                 draws: Draws | None = None) -> None:
        self.cost_model = cost_model
        self.items = dict(items or {})
        self.draws = draws
        self.trained: set[Trained] = set()
        self.sampled: dict[Arm, float] = {}  # arm -> share of its validation items sampled
        self.gpu_hours = 0.0
        self._arm_cost: dict[tuple[Arm, int], float] = {}

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
            largest = max(cm.spec.subtask(s).samples)
            drawn_of = [(arm, samples_drawn(self.draws, arm, n, largest))
                        for arm, n in plan_arms(cm, s, p)]
            verifier = cm.verifier(s, p)
            if verifier is not None:  # it scores the plan's own arm's samples
                trains[verifier] = self._verifier_cost(verifier, drawn_of[0][1])
            for arm, n in drawn_of:
                arms[arm] = self._sample_cost(arm, n)
        return trains, arms

    def marginal(self, allocation: Allocation, fidelity: float = 1.0) -> float:
        """GPU-hours evaluating `allocation` at `fidelity` would add now."""
        trains, arms = self.parts(allocation)
        return self.unpaid_training(trains) + self.unpaid_sampling(arms, fidelity)

    def add(self, allocation: Allocation, fidelity: float = 1.0) -> float:
        """Pay for an allocation evaluated at `fidelity`; the cumulative GPU-hours."""
        trains, arms = self.parts(allocation)
        self.gpu_hours += self.unpaid_training(trains) + self.unpaid_sampling(arms, fidelity)
        self.trained |= trains.keys()
        for arm in arms:
            self.sampled[arm] = max(fidelity, self.sampled.get(arm, 0.0))
        return self.gpu_hours

    def unpaid_training(self, trains: Mapping[Trained, float]) -> float:
        """What training those not trained yet costs."""
        return sum(c for a, c in trains.items() if a not in self.trained)

    def unpaid_sampling(self, arms: Mapping[Arm, float], fidelity: float = 1.0) -> float:
        """What sampling the arms on a `fidelity` share of the items costs beyond the
        share sampled already."""
        return sum(c * max(0.0, fidelity - self.sampled.get(a, 0.0)) for a, c in arms.items())

    def _sample_cost(self, arm: Arm, n: int) -> float:
        """n samples of the arm for each validation item of its subtask."""
        if (arm, n) not in self._arm_cost:
            cm = self.cost_model
            subtask, model, method, mixture, _ = arm
            plan = Plan(model=model, method=method, mixture=mixture, samples=n,
                        aggregator=cm.spec.subtask(subtask).aggregators[0])
            per_query = (cm.plan_cost(subtask, plan).inference_gpu_hours
                         / cm.spec.workload.queries)
            self._arm_cost[arm, n] = per_query * self.items.get(subtask, 1)
        return self._arm_cost[arm, n]

    def _verifier_cost(self, verifier: VerifierArtifact, n: int) -> float:
        """Training the verifier, then scoring the n samples of each validation item."""
        cm = self.cost_model
        scored = self.items.get(verifier.subtask, 1) * n
        return cm.verifier_gpu_hours(verifier) + cm.verifier_scoring_gpu_hours(verifier, scored)
