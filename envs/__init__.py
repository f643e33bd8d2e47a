"""Environments that evaluate allocations: `replay` (recorded tables), `live` (real runs)."""

from __future__ import annotations

from planner.artifact import artifact_of
from planner.env import Environment
from planner.errors import SpecError
from planner.export import Resolved
from planner.space import Allocation
from planner.spec import TaskSpec


def make_environment(spec: TaskSpec) -> Environment:
    """The environment a task declares."""
    if spec.environment == "replay":
        from envs.replay.env import ReplayEnvironment

        return ReplayEnvironment(spec)
    if spec.environment == "live":
        from envs.live.env import LiveEnvironment

        return LiveEnvironment(spec)
    raise SpecError(f"{spec.source}: environment: {spec.environment!r} is not available in this "
                    "version; use environment: replay or live")


def resolve_for_export(spec: TaskSpec, allocation: Allocation) -> Resolved:
    """The allocation's base models as other tools load them and, for a live task, the
    training examples of every source as each base trains on it: what `planner.export`
    writes."""
    models = {p.model for _, p in allocation.items()}
    if spec.environment != "live":
        return Resolved({m: spec.model(m).source or m for m in models})
    from envs.live.env import LiveEnvironment

    env = LiveEnvironment(spec, progress=False)
    exported = {s: artifact_of(spec, s, p).exported for s, p in allocation.items()}
    sources = {(q, a.model) for a in exported.values() for q in a.sources}  # as each trains
    from tools.train import special_text

    bases = {m: str(env.base_path(m)) for m in models}
    lengths = {s: env.train_length(exported[s]) for s, p in allocation.items()
               if spec.method(p.method).fine_tunes
               and spec.method(p.method).options.max_length is None}
    return Resolved(bases, {(q, m): env.examples(q, m) for q, m in sorted(sources)},
                    {m: special_text(path) for m, path in bases.items()},
                    {s: n for s, n in lengths.items() if n is not None})
