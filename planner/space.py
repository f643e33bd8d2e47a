"""Search dimensions, plans, allocations and the search space a task defines.

Each subtask's choice is a `Plan`: a frozen mapping over the subtask's dimensions, which
are the model and the method (categorical), the data mixture (categorical, each value
carrying its weights over data sources), the samples n (ordinal) and the aggregator
(categorical). An `Allocation` is one plan per subtask. Both are hashable, so strategies
keep sets of what was tried, and their JSON keys are canonical.

Dead combinations are pruned when the space is built; `SearchSpace.canonical` maps any
plan to the one that stands for it:

- a method that does not train on task data (`none`, `pretrain`) ignores the mixture: the
  plan takes the subtask's first mixture;
- the `first` aggregator reads one sample: more samples only cost, so n is the smallest;
- with one sample every aggregator gives that sample: the aggregator is `first` where the
  subtask offers it, else its first one that needs no verifier, else its first one;
- a subtask that offers verifiers (`verifiers:`) has a `verifier` dimension, which only
  matters to the aggregators that use one (`verifier`, `verifier_best`) at n > 1: the
  other plans take its first verifier;
- a subtask that offers cascades (`cascades:`) has a `cascade` dimension (`none`, and
  `NAME@THRESHOLD` per cascade and threshold), which only matters to a majority vote at
  n > 1, whose agreement decides the escalation: the other plans take `none`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property

from planner.errors import SpaceError
from planner.spec import CASCADE_NONE, VERIFIER_AGGREGATORS, TaskSpec, cascade_value

Value = str | int
SINGLE_SAMPLE = "first"  # the aggregator that reads one sample whatever n is
ORACLE = "oracle"  # solved if any sample is correct: the score never falls as n grows


@dataclass(frozen=True)
class Dimension:
    """One knob of a subtask's plan and the values it may take (categorical)."""

    name: str
    values: tuple[Value, ...]
    test_time: bool = False
    """Decides how the served model is used (n, aggregator), not which model is served."""

    def index(self, value: Value) -> int:
        """The position of `value` in `values` (ValueError where it is not one of them)."""
        try:
            return self._positions[value]
        except KeyError:
            raise ValueError(f"{value!r} is not a value of {self.name}") from None

    @cached_property
    def _positions(self) -> dict[Value, int]:
        """Each value's first position: a look-up, where `tuple.index` compared them all."""
        return {v: i for i, v in reversed(list(enumerate(self.values)))}


@dataclass(frozen=True)
class Ordinal(Dimension):
    """Ordered numeric values (samples n): strategies may exploit the order."""


@dataclass(frozen=True)
class Mixture(Dimension):
    """Named data mixtures; row i of `weights` is value i's weights (sum 1) over `sources`,
    so mixtures that share sources are alike to a model of the scores."""

    sources: tuple[str, ...] = ()
    weights: tuple[tuple[float, ...], ...] = ()

    def mixture(self, value: Value) -> dict[str, float]:
        """A value's weights by source (zero weights left out)."""
        row = self.weights[self.index(value)]
        return {s: w for s, w in zip(self.sources, row, strict=True) if w > 0}


class Plan(Mapping[str, Value]):
    """One subtask's choice: dimension name -> value. Frozen and hashable."""

    __slots__ = ("_hash", "_values")

    def __init__(self, values: Mapping[str, Value] | None = None, /, **more: Value) -> None:
        self._values: dict[str, Value] = {**(values or {}), **more}
        self._hash: int | None = None  # computed on first use: plans key many dicts

    def __getitem__(self, name: str) -> Value:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # the dict's own, where Mapping's go through __getitem__ (the cost model asks often)
    def __contains__(self, name: object) -> bool:
        return name in self._values

    def get(self, name: str, default: Value | None = None) -> Value | None:
        return self._values.get(name, default)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._values.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Plan):  # the common case (dict look-ups): no copy
            return self._values == other._values
        return isinstance(other, Mapping) and self._values == dict(other)

    def __repr__(self) -> str:
        return f"Plan({self._values!r})"

    def __reduce__(self) -> tuple:
        # without the cached hash: string hashes differ between processes (a worker's)
        return Plan, (self._values,)

    def replace(self, **changes: Value) -> Plan:
        return Plan(self._values, **changes)

    # the knobs the cost model and the environments read by name
    @property
    def model(self) -> str:
        return str(self._values["model"])

    @property
    def method(self) -> str:
        return str(self._values["method"])

    @property
    def mixture(self) -> str:
        return str(self._values["mixture"])

    @property
    def samples(self) -> int:
        return int(self._values["samples"])

    @property
    def aggregator(self) -> str:
        return str(self._values["aggregator"])

    @property
    def verifier(self) -> str | None:
        """The verifier's name, where the subtask offers verifiers."""
        value = self._values.get("verifier")
        return None if value is None else str(value)

    @property
    def cascade(self) -> str | None:
        """`none` or `NAME@THRESHOLD`, where the subtask offers cascades."""
        value = self._values.get("cascade")
        return None if value is None else str(value)

    def describe(self) -> str:
        """One readable line, e.g. `pythia-1.4b / ckpt-300B / n=16 / oracle`; the verifier
        only where the aggregator uses it (the other plans hold the first, unused)."""
        parts = []
        for name, value in self._values.items():
            if name == "samples":
                parts.append(f"n={value}")
            elif name == "mixture":
                if value != "default":
                    parts.append(f"mix={value}")
            elif name == "verifier":
                if self.aggregator in VERIFIER_AGGREGATORS and self.samples > 1:
                    parts.append(f"{name}={value}")
            elif name == "cascade":
                parts.append(f"{name}={value}")
            else:
                parts.append(str(value))
        return " / ".join(parts)


@dataclass(frozen=True)
class Allocation:
    """One plan per subtask, kept in the task's topological order."""

    plans: tuple[tuple[str, Plan], ...]

    @classmethod
    def of(cls, plans: Mapping[str, Plan]) -> Allocation:
        return cls(tuple(plans.items()))

    def __getitem__(self, subtask: str) -> Plan:
        return self._by_subtask[subtask]

    @cached_property
    def _by_subtask(self) -> dict[str, Plan]:
        """The plans by subtask, built once (the agent reads each trial's plans per trial)."""
        return dict(self.plans)

    def items(self) -> tuple[tuple[str, Plan], ...]:
        return self.plans

    def replace(self, subtask: str, plan: Plan) -> Allocation:
        return Allocation(tuple((s, plan if s == subtask else p) for s, p in self.plans))

    def to_dict(self) -> dict[str, dict]:
        return {s: dict(p._values) for s, p in self.plans}  # a copy without Mapping's calls

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping]) -> Allocation:
        return cls(tuple((s, Plan(p)) for s, p in data.items()))

    def key(self) -> str:
        """Canonical JSON: equal allocations have equal keys."""
        return self._key

    @cached_property
    def _key(self) -> str:
        """The key, serialised once per allocation (strategies build sets of them per ask)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def describe(self) -> list[str]:
        return [f"{s}: {p.describe()}" for s, p in self.plans]


class SearchSpace:
    """The dimensions of each subtask and its valid, canonical plans, read from a spec."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.subtasks = spec.order()
        self._dims = {s: self._dimensions(s) for s in self.subtasks}
        self._by_name = {s: {d.name: d for d in dims} for s, dims in self._dims.items()}
        self._plans = {s: tuple(dict.fromkeys(self._enumerate(s))) for s in self.subtasks}
        self._valid = {s: frozenset(p) for s, p in self._plans.items()}

    def _dimensions(self, subtask: str) -> tuple[Dimension, ...]:
        s = self.spec.subtask(subtask)
        mixes = {name: self.spec.mixture_weights(subtask, name) for name in s.mixtures}
        sources = tuple(sorted({src for w in mixes.values() for src in w}))
        return (Dimension("model", tuple(s.model_names)),
                Dimension("method", tuple(s.methods)),
                Mixture("mixture", tuple(mixes), sources=sources,
                        weights=tuple(tuple(w.get(src, 0.0) for src in sources)
                                      for w in mixes.values())),
                Ordinal("samples", tuple(s.samples), test_time=True),
                Dimension("aggregator", tuple(s.aggregators), test_time=True),
                *([Dimension("verifier", tuple(s.verifiers),  # a sequential one is served
                             test_time=not any(v.sequential for v in s.verifiers.values()))]
                  if s.verifiers else []),
                *([Dimension("cascade", (CASCADE_NONE, *(
                    cascade_value(name, t) for name, c in s.cascades.items()
                    for t in c.thresholds)), test_time=True)] if s.cascades else []))

    def dimensions(self, subtask: str) -> tuple[Dimension, ...]:
        """The subtask's dimensions, in the order plans list them."""
        return self._dims[subtask]

    def dimension(self, subtask: str, name: str) -> Dimension:
        return self._by_name[subtask][name]

    def methods_for(self, subtask: str, model: str) -> list[str]:
        """Methods a subtask may use with this model (the model's and the subtask's lists)."""
        allowed = self.spec.model(model).methods
        return [m for m in self.spec.subtask(subtask).methods_here(model)
                if allowed is None or m in allowed]

    def canonical(self, subtask: str, plan: Plan) -> Plan:
        """The plan that stands for `plan` once dead combinations are pruned (module doc)."""
        mixtures = self.dimension(subtask, "mixture").values
        samples = self.dimension(subtask, "samples").values
        aggregators = self.dimension(subtask, "aggregator").values
        changes: dict[str, Value] = {}
        if not self.spec.method(plan.method).fine_tunes:
            changes["mixture"] = mixtures[0]
        if plan.get("aggregator") == SINGLE_SAMPLE:
            changes["samples"] = min(samples)
        if changes.get("samples", plan.get("samples")) == 1:
            unverified = [a for a in aggregators if a not in VERIFIER_AGGREGATORS]
            changes["aggregator"] = SINGLE_SAMPLE if SINGLE_SAMPLE in aggregators \
                else (unverified or aggregators)[0]
        if "verifier" in plan and (
                changes.get("aggregator", plan.get("aggregator")) not in VERIFIER_AGGREGATORS
                or changes.get("samples", plan.get("samples")) == 1):
            changes["verifier"] = self.dimension(subtask, "verifier").values[0]
        if "cascade" in plan and (changes.get("aggregator", plan.get("aggregator")) != "majority"
                                  or changes.get("samples", plan.get("samples")) == 1):
            changes["cascade"] = CASCADE_NONE
        return plan.replace(**changes) if changes else plan

    def _enumerate(self, subtask: str) -> Iterator[Plan]:
        dims = self._dims[subtask]
        names = [d.name for d in dims]
        for model in dims[0].values:
            rest = [self.methods_for(subtask, str(model)), *(d.values for d in dims[2:])]
            for combo in itertools.product(*rest):
                yield self.canonical(subtask, Plan(dict(zip(names, (model, *combo), strict=True))))

    def plans(self, subtask: str) -> tuple[Plan, ...]:
        """Every valid canonical plan of one subtask."""
        return self._plans[subtask]

    def allocations(self) -> Iterator[Allocation]:
        """Every allocation of the space, one at a time (`size()` of them)."""
        for combo in itertools.product(*(self._plans[s] for s in self.subtasks)):
            yield Allocation(tuple(zip(self.subtasks, combo, strict=True)))

    def size(self) -> int:
        total = 1
        for s in self.subtasks:
            total *= len(self._plans[s])
        return total

    def validate(self, allocation: Allocation) -> None:
        """Raise `SpaceError` naming the first value that is not allowed, or the pruned plan."""
        names = [s for s, _ in allocation.items()]
        if sorted(names) != sorted(self.subtasks):
            raise SpaceError(f"allocation must have exactly the subtasks {self.subtasks}, "
                             f"got {names}")
        for s, plan in allocation.items():
            if plan in self._valid[s]:
                continue
            dims = self._dims[s]
            if set(plan) != {d.name for d in dims}:
                raise SpaceError(f"{s}: a plan has exactly the fields {[d.name for d in dims]}, "
                                 f"got {list(plan)}")
            for d in dims:
                if plan[d.name] not in d.values:
                    raise SpaceError(f"{s}.{d.name}: {plan[d.name]!r} is not allowed; choose "
                                     f"from {list(d.values)}")
            if plan.method not in self.methods_for(s, plan.model):
                raise SpaceError(f"{s}.method: {plan.method!r} is not available for model "
                                 f"{plan.model!r}; choose from {self.methods_for(s, plan.model)}")
            raise SpaceError(f"{s}: {plan.describe()} is pruned: it answers as "
                             f"{self.canonical(s, plan).describe()}, which costs no more")

    def coerce(self, data: Mapping[str, Mapping]) -> Allocation:
        """Build and validate an allocation from plain data (e.g. parsed JSON or YAML);
        missing fields take the first allowed value and pruned plans their canonical form."""
        if not isinstance(data, Mapping):
            raise SpaceError("an allocation must map subtask names to plans")
        plans = {}
        for s in self.subtasks:
            dims = self._dims[s]
            names = [d.name for d in dims]
            raw = data.get(s)
            if not isinstance(raw, Mapping):
                raise SpaceError(f"{s}: missing plan; give {', '.join(names)}")
            if unknown := set(raw) - set(names):
                raise SpaceError(f"{s}: unknown plan fields {sorted(unknown)}; allowed are "
                                 f"{names}")
            models = dims[0].values
            if raw.get("model") not in models:
                raise SpaceError(f"{s}.model: {raw.get('model')!r} is not allowed; choose from "
                                 f"{list(models)}")
            n = raw.get("samples")
            if n is not None and (not isinstance(n, int) or isinstance(n, bool)):
                raise SpaceError(f"{s}.samples: must be an integer from "
                                 f"{list(self.dimension(s, 'samples').values)}")
            methods = self.methods_for(s, str(raw["model"])) or list(dims[1].values)
            values = {d.name: raw.get(d.name, methods[0] if d.name == "method" else d.values[0])
                      for d in dims}
            plan = Plan(values)
            if plan.method in self.spec.subtask(s).methods:
                plan = self.canonical(s, plan)
            plans[s] = plan
        allocation = Allocation.of(plans)
        self.validate(allocation)
        return allocation
