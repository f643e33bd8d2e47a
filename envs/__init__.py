"""Environments that evaluate allocations: `replay` (recorded tables), `live` (real runs)."""

from __future__ import annotations

from pathlib import Path

from planner.env import Environment
from planner.errors import SpecError
from planner.spec import TaskSpec

BUILTIN_TASKS = Path(__file__).parent / "replay" / "tasks"


def make_environment(spec: TaskSpec) -> Environment:
    """The environment a task declares."""
    if spec.environment == "replay":
        from envs.replay.env import ReplayEnvironment

        return ReplayEnvironment(spec)
    if spec.environment == "live":
        from envs.live.env import LiveEnvironment

        return LiveEnvironment(spec)
    raise SpecError(f"{spec.name}: environment: {spec.environment!r} is not available in this "
                    "version; use environment: replay or live")
