"""Typed dimensions, canonical (pruned) plans, validation and coercion."""

from __future__ import annotations

import pytest

from planner.errors import SpaceError
from planner.space import Allocation, Mixture, Ordinal, Plan, SearchSpace
from planner.spec import TaskSpec


@pytest.fixture
def space() -> SearchSpace:
    spec = TaskSpec.model_validate({
        "name": "t", "workload": {"queries": 1},
        "models": [{"name": "small", "params": 1e8}, {"name": "big", "params": 1e9}],
        "methods": [{"name": "base", "kind": "none"},
                    {"name": "ckpt", "kind": "pretrain", "train_tokens": 1e9},
                    {"name": "lora", "kind": "lora"}],
        "subtasks": [
            {"name": "a", "prompt_tokens": 10, "output_tokens": 5,
             "models": ["small", {"name": "big", "methods": ["base"]}],
             "methods": ["base", "ckpt", "lora"],
             "mixtures": {"own": {}, "mt": {"x": 1, "b/y": 1}, "heavy": {"x": 3, "b/y": 1}},
             "samples": [1, 2, 4], "aggregators": ["majority", "first", "oracle"]},
            {"name": "b", "depends_on": ["a"], "prompt_tokens": 10, "output_tokens": 5,
             "models": ["small"], "methods": ["base"], "samples": [2, 8],
             "aggregators": ["oracle"]}]})
    return SearchSpace(spec)


def plan(model: str = "small", method: str = "lora", mixture: str = "own", n: int = 2,
         agg: str = "majority") -> Plan:
    return Plan(model=model, method=method, mixture=mixture, samples=n, aggregator=agg)


def test_dimensions_are_typed(space: SearchSpace) -> None:
    dims = {d.name: d for d in space.dimensions("a")}
    assert list(dims) == ["model", "method", "mixture", "samples", "aggregator"]
    assert isinstance(dims["samples"], Ordinal) and dims["samples"].test_time
    mix = dims["mixture"]
    assert isinstance(mix, Mixture) and mix.sources == ("a/data", "a/x", "b/y")
    assert mix.mixture("heavy") == {"a/x": 0.75, "b/y": 0.25}
    assert mix.mixture("own") == {"a/data": 1.0}


def test_dead_combinations_are_pruned(space: SearchSpace) -> None:
    plans = set(space.plans("a"))
    # lora on small: 3 mixtures x (n=1 first, first, then majority/oracle at n = 2 and 4)
    lora = [p for p in plans if p.method == "lora"]
    assert len(lora) == 3 * (1 + 2 * 2)
    # a method that does not train on task data has the first mixture only
    assert {p.mixture for p in plans if p.method in ("base", "ckpt")} == {"own"}
    # `first` reads one sample; one sample makes every aggregator `first`
    assert all(p.samples == 1 for p in plans if p.aggregator == "first")
    assert all(p.aggregator == "first" for p in plans if p.samples == 1)
    # per-subtask (model, method) pairs: big offers only `base` here
    assert {p.method for p in plans if p.model == "big"} == {"base"}
    assert len(plans) == len(space.plans("a")) == 15 + 5 + 5 + 5
    # subtask b has no 1 in samples and no `first`: oracle at 2 and 8
    assert [p.samples for p in space.plans("b")] == [2, 8]
    assert space.size() == 30 * 2
    every = list(space.allocations())  # each pair of plans once, each one valid
    assert len(set(every)) == len(every) == space.size()
    assert all(space.validate(a) is None for a in every)


def test_canonical_maps_a_dead_plan_to_the_one_that_answers_alike(space: SearchSpace) -> None:
    assert space.canonical("a", plan(method="base", mixture="mt")) == plan(method="base")
    assert space.canonical("a", plan(agg="first", n=4)) == plan(agg="first", n=1)
    assert space.canonical("a", plan(agg="oracle", n=1)) == plan(agg="first", n=1)
    keep = plan(agg="oracle", n=4, mixture="mt")
    assert space.canonical("a", keep) is keep


def test_validate_names_the_field_or_the_pruning(space: SearchSpace) -> None:
    b = plan(method="base", mixture="own", n=2, agg="oracle")
    with pytest.raises(SpaceError, match=r"a: small / base / mix=mt / n=2 / majority is "
                                         r"pruned: it answers as small / base / mix=own"):
        space.validate(Allocation.of({"a": plan(method="base", mixture="mt"), "b": b}))
    with pytest.raises(SpaceError, match=r"a.method: 'lora' is not available for model 'big'"):
        space.validate(Allocation.of({"a": plan(model="big"), "b": b}))
    with pytest.raises(SpaceError, match=r"a.samples: 3 is not allowed"):
        space.validate(Allocation.of({"a": plan(n=3), "b": b}))
    with pytest.raises(SpaceError, match=r"a: a plan has exactly the fields"):
        space.validate(Allocation.of({"a": Plan(model="small"), "b": b}))


def test_coerce_fills_defaults_and_canonicalises(space: SearchSpace) -> None:
    alloc = space.coerce({"a": {"model": "small", "method": "ckpt", "mixture": "mt"},
                          "b": {"model": "small", "samples": 8}})
    assert alloc["a"] == plan(method="ckpt", mixture="own", n=1, agg="first")
    assert alloc["b"] == plan(method="base", mixture="default", n=8, agg="oracle")
    with pytest.raises(SpaceError, match=r"a: unknown plan fields \['temperature'\]"):
        space.coerce({"a": {"model": "small", "temperature": 1}, "b": {"model": "small"}})
    with pytest.raises(SpaceError, match=r"b.samples: must be an integer"):
        space.coerce({"a": {"model": "small"}, "b": {"model": "small", "samples": True}})


def test_plans_are_frozen_mappings_with_canonical_keys() -> None:
    p = plan()
    assert p == dict(p) and hash(p) == hash(Plan(dict(reversed(list(p.items())))))
    assert p.replace(samples=4).samples == 4 and p.samples == 2
    a = Allocation.of({"a": p})
    assert Allocation.from_dict(a.to_dict()) == a
    assert a.key() == Allocation.of({"a": Plan(dict(reversed(list(p.items()))))}).key()
