"""planner: find a compute allocation for a multi-stage LLM pipeline under a budget."""

from planner.budget import Budget, parse_budget
from planner.cost import Cost, CostModel
from planner.env import Environment, Observation
from planner.errors import PlannerError, SpecError
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import Store, TrialRecord, TrialStatus
from planner.study import StudyResult, optimize

__all__ = ["Allocation", "Budget", "Cost", "CostModel", "Environment", "Observation",
           "Plan", "PlannerError", "SearchSpace", "SpecError", "Store", "StudyResult",
           "TaskSpec", "TrialRecord", "TrialStatus", "load_spec", "optimize", "parse_budget"]
