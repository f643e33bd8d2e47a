"""Open (create or resume) a study and run a strategy on it: the library's front door.

Example::

    spec = load_spec("envs/replay/tasks/monkeys_gsm8k.yaml")
    env = make_environment(spec)
    trials = optimize(spec, env, store=Store("sqlite:///planner.db"), budget="2000gpu-h",
                      strategy="optuna", n_trials=30)
"""

from __future__ import annotations

import hashlib
import json
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path

from planner.cost import CostModel
from planner.env import Environment
from planner.errors import StudyError
from planner.executors import Executor
from planner.search import AgentOptions, Runner, SearchContext, best_trial, make_strategy
from planner.search._runner import TrialCallback
from planner.space import Allocation
from planner.spec import TaskSpec
from planner.store import Store, StudyRecord, TrialRecord


@dataclass(frozen=True)
class StudyResult:
    study: StudyRecord
    trials: list[TrialRecord]
    stopped: str = ""
    """Why the search ended (trials run, search budget spent, converged, nothing left)."""
    notes: tuple[str, ...] = ()
    """Other things the user should hear, e.g. that the --from plan was evaluated before."""
    search_gpu_hours: float = 0.0
    """What evaluating the trials cost (`Runner.search_spent`)."""

    @property
    def best(self) -> TrialRecord | None:
        return best_trial(self.trials)


def default_study_name(spec: TaskSpec, strategy: str) -> str:
    return f"{spec.name}-{strategy}"


def task_hash(spec: TaskSpec) -> str:
    """sha256 of the task (canonical JSON) and of the content of the files it names."""
    digest = hashlib.sha256(json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode())
    for s in spec.subtasks:
        files = [s.replay.table] if s.replay else []
        files += [*s.data.sources.values(), s.data.val] if s.data else []
        for f in map(spec.path, files):
            if f.is_file():
                digest.update(f.read_bytes())
    return digest.hexdigest()


def open_study(store: Store, spec: TaskSpec, *, name: str, budget: str, strategy: str,
               seed: int, task_path: str = "", resume: bool = False, reasoner: str = "",
               allow_changed_task: bool = False) -> StudyRecord:
    """Create the study, or load it if it exists and was made with the same settings, task
    and reasoner (a study another process creates meanwhile is joined like that).
    `allow_changed_task` goes on with a changed task or reasoner, and records them."""
    existing = store.get_study(name)
    digest = task_hash(spec)
    if existing is None:
        if resume:
            raise StudyError(f"--resume: no study {name!r} in {store.url}; drop --resume to "
                             "start it")
        gpu_hours = spec.hardware.gpu_hours(budget)
        try:
            return store.create_study(name=name, task_name=spec.name, task_path=task_path,
                                      task=spec.model_dump(mode="json"), budget=budget,
                                      budget_gpu_hours=gpu_hours, strategy=strategy, seed=seed,
                                      task_hash=digest, reasoner=reasoner)
        except StudyError:
            existing = store.get_study(name)  # another driver created it first: join it
            if existing is None:
                raise
    for field, value in (("task_name", spec.name), ("budget", budget), ("strategy", strategy),
                         ("seed", seed)):
        if getattr(existing, field) != value:
            raise StudyError(f"study {name!r} was made with {field}={getattr(existing, field)!r},"
                             f" not {value!r}; pass the same value to resume it, or --study "
                             "NEW_NAME")
    changed = _identity_change(existing, digest, reasoner)
    if changed and not allow_changed_task:
        raise StudyError(f"study {name!r} was made with {changed}; pass --study NEW_NAME to "
                         "start another, or --allow-changed-task to continue it anyway")
    if (existing.task_hash, existing.reasoner) != (digest, reasoner):
        store.set_identity(name, task_hash=digest, reasoner=reasoner)
        existing = store.require_study(name)
    return existing


def _identity_change(study: StudyRecord, digest: str, reasoner: str) -> str:
    """What differs from the task and reasoner the study was made with ("" if nothing; a
    study made before they were stored differs in nothing)."""
    if study.task_hash and study.task_hash != digest:
        return "another version of the task (its task file or data changed since)"
    if study.task_hash and study.reasoner != reasoner:
        return f"--reasoner {study.reasoner or '(none)'}, not {reasoner or '(none)'}"
    return ""


def optimize(spec: TaskSpec, env: Environment, *, store: Store, budget: str, strategy: str,
             n_trials: int, seed: int = 0, study: str | None = None, task_path: str = "",
             resume: bool = False, start_from: Allocation | None = None,
             callback: TrialCallback | None = None, search_budget: str | None = None,
             agent: AgentOptions | None = None, allow_changed_task: bool = False,
             executor: Executor | None = None, retries: int = 1) -> StudyResult:
    """Run (or continue) a study until it holds `n_trials` trials or, with `search_budget`
    (e.g. "500gpu-h"), until its evaluated trials' estimated cost reaches that cap.
    `agent` sets the agent strategy's reasoner and stopping. Several processes may drive
    one study at once: each claims its trials, none runs an allocation another claimed,
    and together they stop at `n_trials`. `executor` runs the trials (default: one at a time
    in this process; closed, cancelling what still runs, when the call returns or raises);
    a transient failure is attempted `retries` more times."""
    name = study or default_study_name(spec, strategy)
    options = agent or AgentOptions()
    reasoner = options.reasoner if strategy == "agent" else ""
    record = open_study(store, spec, name=name, budget=budget, strategy=strategy, seed=seed,
                        task_path=task_path or str(Path(spec.root)), resume=resume,
                        reasoner=reasoner, allow_changed_task=allow_changed_task)
    cost_model = CostModel(spec, env.calibration())
    with store.driving(name) as driver, closing(executor) if executor else nullcontext():
        runner = Runner(env, store, name, cost_model, record.budget_gpu_hours, driver,
                        executor, retries, options.screen if strategy == "agent" else None)
        ctx = SearchContext(runner.space, cost_model, record.budget_gpu_hours, seed, store,
                            name, driver.token)
        runner.resume_interrupted(callback)
        notes = _start_from(runner, start_from, callback) if start_from is not None else ()
        cap = None if search_budget is None else spec.hardware.gpu_hours(search_budget)
        trials = runner.optimize(make_strategy(strategy, ctx, storage=store.url, agent=agent),
                                 n_trials, callback, cap)
    return StudyResult(record, trials, runner.stopped, notes, runner.search_spent(trials))


def _start_from(runner: Runner, allocation: Allocation,
                callback: TrialCallback | None) -> tuple[str, ...]:
    """Evaluate the --from allocation first, unless the study holds it already (say so)."""
    known = next((t for t in runner.history() if t.allocation.key() == allocation.key()), None)
    if known is not None:
        score = "-" if known.score is None else f"{known.score:.4g}"
        return (f"--from: the study evaluated this allocation before (trial {known.number}, "
                f"{known.status}, score {score}); not run again",)
    trial = runner.run_trial(allocation, source="from-plan")
    if trial is None:
        return ("--from: another driver on the study claimed this allocation first; not run "
                "twice",)
    if callback:
        callback(trial, best_trial(runner.history()))
    return ()


def delete_study(store: Store, name: str) -> list[str]:
    """Delete a study and what its strategies kept beside it in the same database (the
    agent's graph checkpoints, the Optuna baselines' own studies); say what went."""
    from planner.search._optuna import delete_internal_studies  # loads Optuna
    from planner.search.agent.strategy import delete_checkpoints  # loads LangGraph

    store.delete_study(name)
    gone = [f"study {name!r} with its trials, steps and insights"]
    if delete_checkpoints(store.url, name):
        gone.append("the agent's graph checkpoints")
    gone += [f"Optuna study {s!r}" for s in delete_internal_studies(store.url, name)]
    return gone
