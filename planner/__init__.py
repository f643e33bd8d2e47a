"""planner: find a compute allocation for a multi-stage LLM pipeline under a budget.

The names below are imported on first use, so a process that needs only part of planner
(a trial's worker process: the spec, the space, an environment) does not pay for the
search strategies' imports (LangGraph, Optuna, openai).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner._lazy import lazy_attributes

_HOMES = {
    "planner.budget": ["Budget", "parse_budget"],
    "planner.cost": ["Cost", "CostModel"],
    "planner.env": ["Environment", "Observation"],
    "planner.errors": ["PlannerError", "SpecError"],
    "planner.space": ["Allocation", "Plan", "SearchSpace"],
    "planner.spec": ["TaskSpec", "load_spec"],
    "planner.store": ["Store", "TrialRecord", "TrialStatus"],
    "planner.study": ["StudyResult", "optimize"],
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
__all__ = ["Allocation", "Budget", "Cost", "CostModel", "Environment", "Observation",
           "Plan", "PlannerError", "SearchSpace", "SpecError", "Store", "StudyResult",
           "TaskSpec", "TrialRecord", "TrialStatus", "load_spec", "optimize", "parse_budget"]

if TYPE_CHECKING:
    from planner.budget import Budget, parse_budget
    from planner.cost import Cost, CostModel
    from planner.env import Environment, Observation
    from planner.errors import PlannerError, SpecError
    from planner.space import Allocation, Plan, SearchSpace
    from planner.spec import TaskSpec, load_spec
    from planner.store import Store, TrialRecord, TrialStatus
    from planner.study import StudyResult, optimize


__getattr__ = lazy_attributes(__name__, _HOME)
