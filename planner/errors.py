"""Error types. Each message names the field and the fix; the CLI prints it and exits 2."""

from __future__ import annotations


class PlannerError(Exception):
    """Base class of every error planner raises on purpose."""


class SpecError(PlannerError):
    """A task.yaml (or plan.yaml) is invalid: the message names file, field and fix."""


class BudgetError(PlannerError):
    """A budget string cannot be parsed."""


class SpaceError(PlannerError):
    """An allocation does not fit the task's search space."""


class StudyError(PlannerError):
    """A study cannot be created, found or resumed as asked."""
