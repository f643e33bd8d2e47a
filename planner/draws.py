"""How many samples a study draws of each arm: the most that any plan within its budget reads.

An arm is one set of samples: a subtask's model, method and mixture (or a sequential
verifier's continuation of them). The live environment draws N completions of each
validation item from an arm once and estimates every n <= N and every aggregator from
them, so plans that differ only in n or the aggregator sample nothing new. N need not be
the subtask's largest n: it is the largest n that a plan of the arm within the study's
budget reads. A plan is within budget when its own cost (`CostModel.plan_cost`) plus the
cheapest inference of every other subtask is at most the budget; the other subtasks'
training is left out of that bound because they may share it. So a 12B model that the
budget lets serve 2 samples is sampled twice per item, not 128 times. A cascade's strong plan
is an arm too, read at the strong plan's n.

`SearchCost` prices sampling at these N, and the live environment draws them
(`Environment.evaluate(..., draws=)`). An arm that no plan within the budget reads, or an
evaluation outside a study, draws the subtask's largest n. The study's first run prices
the draws like its budget check and stores them with the study (`Store.keep_draws`): a
resumed run, or another driver, prices with the calibration measured since, but draws the
same samples.
"""

from __future__ import annotations

from collections.abc import Mapping

from planner.artifact import Artifact
from planner.cost import CostModel
from planner.space import Plan, SearchSpace

Arm = tuple[str, str, str, str, str | None]
"""One set of samples: subtask, model, method, mixture, and the sequential verifier whose
continuation of that generator samples instead (None: the generator samples)."""
Draws = Mapping[Arm, int]
"""Arm -> the completions per item a study draws of it."""

_SLACK = 1e-9  # a plan's cost and an allocation's are summed in other orders


def arm_of(subtask: str, plan: Plan, artifact: Artifact) -> Arm:
    """The samples a plan (serving `artifact`) reads: its generator's, or its sequential
    verifier's continuation's (the same model's size, so the same price, but other
    samples)."""
    continued = artifact.continues is not None
    return (subtask, plan.model, plan.method, plan.mixture,
            plan.verifier if continued else None)


def plan_arms(cost_model: CostModel, subtask: str, plan: Plan) -> tuple[tuple[Arm, int], ...]:
    """The arms a plan samples, each with the n it reads: its own, then a cascade's
    strong plan's."""
    cascade = cost_model.cascade(subtask, plan)
    plans = (plan,) if cascade is None else (plan, cascade.strong)
    return tuple((arm_of(subtask, p, cost_model.artifact(subtask, p)), p.samples)
                 for p in plans)


def study_draws(space: SearchSpace, cost_model: CostModel,
                budget_gpu_hours: float) -> dict[Arm, int]:
    """Each arm some plan within the budget reads, with the most samples such a plan reads."""
    costs = {s: {p: cost_model.plan_cost(s, p) for p in space.plans(s)} for s in space.subtasks}
    floors = {s: min(c.inference_gpu_hours for c in plans.values())
              for s, plans in costs.items()}
    draws: dict[Arm, int] = {}
    for s, plans in costs.items():
        room = (budget_gpu_hours - sum(floors.values()) + floors[s]) * (1 + _SLACK)
        for plan, cost in plans.items():
            if cost.total_gpu_hours <= room:
                for arm, n in plan_arms(cost_model, s, plan):
                    draws[arm] = max(n, draws.get(arm, 0))
    return draws


def samples_drawn(draws: Draws | None, arm: Arm, reads: int, largest: int) -> int:
    """N for a plan that reads `reads` samples of `arm`: the study's draw, or `largest`
    (the subtask's largest n) without one or where the draw is too small for the plan."""
    n = None if draws is None else draws.get(arm)
    return n if n is not None and n >= reads else largest
