"""Plans, allocations and the search space a task defines.

A `Plan` is one subtask's choice (model, method, mixture, samples, aggregator); an
`Allocation` is one plan per subtask. Both are frozen and hashable so strategies can keep
sets of what was already tried.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

from planner.errors import SpaceError
from planner.spec import TaskSpec

PLAN_FIELDS = ("model", "method", "mixture", "samples", "aggregator")


@dataclass(frozen=True)
class Plan:
    """One subtask's choice."""

    model: str
    method: str = "none"
    mixture: str = "default"
    samples: int = 1
    aggregator: str = "first"

    def describe(self) -> str:
        """One readable line, e.g. `pythia-1.4b / ckpt-300B / n=16 oracle`."""
        parts = [self.model, self.method]
        if self.mixture != "default":
            parts.append(f"mix={self.mixture}")
        parts.append(f"n={self.samples} {self.aggregator}")
        return " / ".join(parts)


@dataclass(frozen=True)
class Allocation:
    """One plan per subtask, kept in the task's topological order."""

    plans: tuple[tuple[str, Plan], ...]

    @classmethod
    def of(cls, plans: Mapping[str, Plan]) -> Allocation:
        return cls(tuple(plans.items()))

    def __getitem__(self, subtask: str) -> Plan:
        return dict(self.plans)[subtask]

    def items(self) -> tuple[tuple[str, Plan], ...]:
        return self.plans

    def replace(self, subtask: str, plan: Plan) -> Allocation:
        return Allocation(tuple((s, plan if s == subtask else p) for s, p in self.plans))

    def to_dict(self) -> dict[str, dict]:
        return {s: asdict(p) for s, p in self.plans}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping]) -> Allocation:
        return cls(tuple((s, Plan(**dict(p))) for s, p in data.items()))

    def key(self) -> str:
        """Canonical JSON: equal allocations have equal keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> list[str]:
        return [f"{s}: {p.describe()}" for s, p in self.plans]


class SearchSpace:
    """The choices each subtask may take, read from a `TaskSpec`."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.subtasks = spec.order()

    def choices(self, subtask: str) -> dict[str, list]:
        """Plan field -> allowed values for one subtask (methods not per model)."""
        s = self.spec.subtask(subtask)
        return {
            "model": list(s.models),
            "method": list(s.methods),
            "mixture": list(s.mixtures),
            "samples": list(s.samples),
            "aggregator": list(s.aggregators),
        }

    def methods_for(self, subtask: str, model: str) -> list[str]:
        """Methods a subtask may use with this model."""
        allowed = self.spec.model(model).methods
        methods = self.spec.subtask(subtask).methods
        return [m for m in methods if allowed is None or m in allowed]

    def plans(self, subtask: str) -> Iterator[Plan]:
        """Every valid plan of one subtask."""
        c = self.choices(subtask)
        for model in c["model"]:
            for method, mixture, n, agg in itertools.product(
                self.methods_for(subtask, model), c["mixture"], c["samples"], c["aggregator"]
            ):
                yield Plan(model, method, mixture, n, agg)

    def size(self) -> int:
        total = 1
        for s in self.subtasks:
            total *= sum(1 for _ in self.plans(s))
        return total

    def validate(self, allocation: Allocation) -> None:
        """Raise `SpaceError` naming the first field that is not an allowed choice."""
        names = [s for s, _ in allocation.items()]
        if sorted(names) != sorted(self.subtasks):
            raise SpaceError(f"allocation must have exactly the subtasks {self.subtasks}, "
                             f"got {names}")
        for s, plan in allocation.items():
            c = self.choices(s)
            for field in PLAN_FIELDS:
                value = getattr(plan, field)
                if value not in c[field]:
                    raise SpaceError(f"{s}.{field}: {value!r} is not allowed; choose from "
                                     f"{c[field]}")
            if plan.method not in self.methods_for(s, plan.model):
                raise SpaceError(f"{s}.method: {plan.method!r} is not available for model "
                                 f"{plan.model!r}; choose from {self.methods_for(s, plan.model)}")

    def coerce(self, data: Mapping[str, Mapping]) -> Allocation:
        """Build and validate an allocation from plain data (e.g. parsed JSON or YAML)."""
        if not isinstance(data, Mapping):
            raise SpaceError("an allocation must map subtask names to plans")
        plans = {}
        for s in self.subtasks:
            raw = data.get(s)
            if not isinstance(raw, Mapping):
                raise SpaceError(f"{s}: missing plan; give model, method, mixture, samples, "
                                 "aggregator")
            unknown = set(raw) - set(PLAN_FIELDS)
            if unknown:
                raise SpaceError(f"{s}: unknown plan fields {sorted(unknown)}; allowed are "
                                 f"{list(PLAN_FIELDS)}")
            c = self.choices(s)
            if "model" not in raw or raw["model"] not in c["model"]:
                raise SpaceError(f"{s}.model: {raw.get('model')!r} is not allowed; choose from "
                                 f"{c['model']}")
            defaults = {
                "method": (self.methods_for(s, raw["model"]) or c["method"])[0],
                "mixture": c["mixture"][0],
                "samples": c["samples"][0],
                "aggregator": c["aggregator"][0],
            }
            try:
                plan = Plan(**{**defaults, **raw})
            except TypeError as e:
                raise SpaceError(f"{s}: {e}") from None
            if not isinstance(plan.samples, int) or isinstance(plan.samples, bool):
                raise SpaceError(f"{s}.samples: must be an integer from {c['samples']}")
            plans[s] = plan
        allocation = Allocation.of(plans)
        self.validate(allocation)
        return allocation
