"""Open (create or resume) a study and run a strategy on it: the library's front door.

Example::

    spec = load_spec("envs/replay/tasks/monkeys_gsm8k.yaml")
    env = make_environment(spec)
    trials = optimize(spec, env, store=Store("sqlite:///planner.db"), budget="2000gpu-h",
                      strategy="optuna", n_trials=30)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from planner.cost import CostModel
from planner.env import Environment
from planner.errors import StudyError
from planner.search import AgentOptions, Runner, SearchContext, best_trial, make_strategy
from planner.search._runner import TrialCallback
from planner.space import Allocation
from planner.spec import TaskSpec
from planner.store import Store, StudyRecord, TrialRecord


@dataclass(frozen=True)
class StudyResult:
    study: StudyRecord
    trials: list[TrialRecord]

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.trials)


def default_study_name(spec: TaskSpec, strategy: str) -> str:
    return f"{spec.name}-{strategy}"


def open_study(store: Store, spec: TaskSpec, *, name: str, budget: str, strategy: str,
               seed: int, task_path: str = "", resume: bool = False) -> StudyRecord:
    """Create the study, or load it if it exists and was made with the same settings."""
    existing = store.get_study(name)
    if existing is None:
        if resume:
            raise StudyError(f"--resume: no study {name!r} in {store.url}; drop --resume to "
                             "start it")
        gpu_hours = spec.hardware.gpu_hours(budget)
        return store.create_study(name=name, task_name=spec.name, task_path=task_path,
                                  task=spec.model_dump(mode="json"), budget=budget,
                                  budget_gpu_hours=gpu_hours, strategy=strategy, seed=seed)
    for field, value in (("task_name", spec.name), ("budget", budget), ("strategy", strategy),
                         ("seed", seed)):
        if getattr(existing, field) != value:
            raise StudyError(f"study {name!r} was made with {field}={getattr(existing, field)!r},"
                             f" not {value!r}; pass the same value to resume it, or --study "
                             "NEW_NAME")
    return existing


def optimize(spec: TaskSpec, env: Environment, *, store: Store, budget: str, strategy: str,
             n_trials: int, seed: int = 0, study: str | None = None, task_path: str = "",
             resume: bool = False, start_from: Allocation | None = None,
             callback: TrialCallback | None = None, search_budget: str | None = None,
             agent: AgentOptions | None = None) -> StudyResult:
    """Run (or continue) a study until it holds `n_trials` trials or, with `search_budget`
    (e.g. "500gpu-h"), until its evaluated trials' estimated cost reaches that cap.
    `agent` sets the agent strategy's reasoner and stopping."""
    name = study or default_study_name(spec, strategy)
    record = open_study(store, spec, name=name, budget=budget, strategy=strategy, seed=seed,
                        task_path=task_path or str(Path(spec.root)), resume=resume)
    cost_model = CostModel(spec, env.calibration())
    runner = Runner(env, store, name, cost_model, record.budget_gpu_hours)
    ctx = SearchContext(runner.space, cost_model, record.budget_gpu_hours, seed, store, name)
    runner.resume_interrupted(callback)
    if start_from is not None and start_from.key() not in {
            t.allocation.key() for t in runner.history()}:
        trial = runner.run_trial(start_from, source="from-plan")
        if callback:
            callback(trial, best_trial(runner.history()))
    cap = None if search_budget is None else spec.hardware.gpu_hours(search_budget)
    trials = runner.optimize(make_strategy(strategy, ctx, storage=store.url, agent=agent),
                             n_trials, callback, cap)
    return StudyResult(record, trials)
