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
unsampled (the live environment caches samples per prompt). Where the environment screens
training (`planner.env.screens_training`: the live one), a screen trains each resumable
fine-tune (`FineTune.resumable`) for f of its steps and pays f of its training (the
steps beyond the longest prefix trained before); a full evaluation resumes from the
longest prefix and pays the rest. An arm served by such a prefix is another model: its
samples are paid apart and not reused by the finished model's arm. Other training (a
recorded table's, a verifier, HFT, ProMoT) a screen pays in full.

This is what a user pays for a search, as opposed to what the found allocation
costs to deploy (`CostModel.estimate`).
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.artifact import Artifact, VerifierArtifact
from planner.cost import CostModel
from planner.draws import Arm, Draws, plan_arms, samples_drawn
from planner.env import screens_training
from planner.space import Allocation, Plan

Trained = Artifact | VerifierArtifact  # what a trial may train once for every later one


def trains_prefix(cost_model: CostModel, trained: Trained) -> bool:
    """Whether a screen trains only a prefix of `trained`'s steps: a resumable fine-tune
    (`FineTune.resumable`) where the environment screens training."""
    return (screens_training(cost_model.spec) and isinstance(trained, Artifact)
            and trained.method.fine_tunes and trained.method.resumable)


def screens_another_model(cost_model: CostModel, subtask: str, plan: Plan) -> bool:
    """Whether a screen of the plan samples another model than its full evaluation: one
    with a fine-tune trained for only a prefix of its steps (`trains_prefix`)."""
    return any(trains_prefix(cost_model, a) for a in cost_model.trains(subtask, plan))


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
        self.trained: set[Trained] = set()  # trained in full
        self.prefixes: dict[Trained, set[float]] = {}  # shares of its steps screens trained
        # (arm, share of its model's training) -> share of its validation items sampled
        self.sampled: dict[tuple[Arm, float], float] = {}
        self.gpu_hours = 0.0
        self._arm_cost: dict[tuple[Arm, int], float] = {}
        self._served: dict[Arm, Artifact] = {}  # the model each arm samples

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
            cascade = cm.cascade(s, p)
            served = (p,) if cascade is None else (p, cascade.strong)  # as plan_arms orders
            for (arm, n), plan in zip(drawn_of, served, strict=True):
                arms[arm] = self._sample_cost(arm, n)
                self._served[arm] = cm.artifact(s, plan)
        return trains, arms

    def marginal(self, allocation: Allocation, fidelity: float = 1.0) -> float:
        """GPU-hours evaluating `allocation` at `fidelity` would add now."""
        trains, arms = self.parts(allocation)
        return self._unpaid_training(trains, fidelity) + self._unpaid_sampling(arms, fidelity)

    def add(self, allocation: Allocation, fidelity: float = 1.0) -> float:
        """Pay for an allocation evaluated at `fidelity`; the cumulative GPU-hours."""
        trains, arms = self.parts(allocation)
        self.gpu_hours += (self._unpaid_training(trains, fidelity)
                           + self._unpaid_sampling(arms, fidelity))
        for trained in trains:
            share = self.trained_share(trained, fidelity)
            if share < 1.0:
                self.prefixes.setdefault(trained, set()).add(share)
            else:
                self.trained.add(trained)
        for arm in arms:
            key = (arm, self._model_share(arm, fidelity))
            self.sampled[key] = max(fidelity, self.sampled.get(key, 0.0))
        return self.gpu_hours

    def trained_share(self, trained: Trained, fidelity: float) -> float:
        """The share of its training steps an evaluation at `fidelity` trains: `fidelity`
        for a resumable fine-tune screened where the environment screens training, else 1."""
        return fidelity if fidelity < 1.0 and trains_prefix(self.cost_model, trained) else 1.0

    def _unpaid_training(self, trains: Mapping[Trained, float], fidelity: float = 1.0) -> float:
        """What training them for an evaluation at `fidelity` costs: each one's share of
        its steps (`trained_share`) beyond the longest shorter prefix trained, nothing for
        one trained that far already."""
        total = 0.0
        for trained, cost in trains.items():
            share, done = self.trained_share(trained, fidelity), self.prefixes.get(trained, ())
            if share in done or (share == 1.0 and trained in self.trained):
                continue
            total += cost * (share - max((d for d in done if d < share), default=0.0))
        return total

    def _unpaid_sampling(self, arms: Mapping[Arm, float], fidelity: float = 1.0) -> float:
        """What sampling the arms on a `fidelity` share of the items costs beyond the
        share of them sampled already from the same model."""
        return sum(c * max(0.0, fidelity - self.sampled.get((a, self._model_share(a, fidelity)),
                                                            0.0))
                   for a, c in arms.items())

    def opens(self, allocation: Allocation) -> bool:
        """Whether the allocation samples an arm whose finished model no trial sampled yet,
        on any share of the items."""
        return any((a, 1.0) not in self.sampled for a in self.parts(allocation)[1])

    def _model_share(self, arm: Arm, fidelity: float) -> float:
        """The share of its training the model an arm samples at `fidelity` has had: the
        least of what it trains (a merge's components), 1 for a model trained in full."""
        return min((self.trained_share(a, fidelity) for a in self._served[arm].trains),
                   default=1.0)

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
