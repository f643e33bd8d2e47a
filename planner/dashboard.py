"""Planner studies mirrored as Optuna studies, so optuna-dashboard shows the planner's own
trials for every strategy (`planner dashboard`).

Each planner study becomes an Optuna study of the same name, maximising the end score; each
planner trial one Optuna trial with each stage's dimensions as parameters (as the Optuna
baseline names and distributes them), the end score as its value, and per-stage scores,
estimated cost, source and error as user attributes. An over-budget trial, never evaluated,
is PRUNED with a `why` attribute; a failed one FAIL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import warnings
from collections.abc import Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from planner.search._optuna import distributions, params
from planner.space import SearchSpace
from planner.store import StudyRecord, TrialRecord, TrialStatus

STATES = {TrialStatus.OK: TrialState.COMPLETE, TrialStatus.FAILED: TrialState.FAIL,
          TrialStatus.OVER_BUDGET: TrialState.PRUNED, TrialStatus.RUNNING: TrialState.RUNNING}


def optuna_trial(space: SearchSpace, t: TrialRecord) -> FrozenTrial:
    """One planner trial as an Optuna trial, with its own start and end times."""
    attrs: dict[str, object] = {
        "planner_trial": t.number, "status": t.status.value, "source": t.source,
        "est_gpu_hours": t.cost.total_gpu_hours, "est_train_gpu_hours": t.cost.train_gpu_hours,
        "est_inference_gpu_hours": t.cost.inference_gpu_hours,
        **{f"score.{s}": v for s, v in t.subtask_scores.items()}}
    if t.error:
        attrs["error"] = t.error
    if t.status is TrialStatus.OVER_BUDGET:
        attrs["why"] = "over budget: never evaluated"
    trial = optuna.trial.create_trial(
        state=STATES[t.status], value=t.score if t.status is TrialStatus.OK else None,
        params=params(space, t.allocation), distributions=distributions(space),
        user_attrs=attrs)
    trial.datetime_start = dt.datetime.fromtimestamp(t.started)
    if t.status.is_finished():
        trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=t.duration_s or 0)
    return trial


def write_dashboard(storage: str, study: StudyRecord, space: SearchSpace,
                    trials: Sequence[TrialRecord]) -> optuna.Study:
    """(Re)write one planner study into the Optuna `storage` under its own name."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with contextlib.suppress(KeyError):  # not there yet
        optuna.delete_study(study_name=study.name, storage=storage)
    mirror = optuna.create_study(study_name=study.name, storage=storage, direction="maximize")
    with warnings.catch_warnings():  # metric names are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        mirror.set_metric_names(["score"])
    for key, value in (("task", study.task_name), ("strategy", study.strategy),
                       ("budget", study.budget), ("seed", study.seed)):
        mirror.set_user_attr(key, value)
    mirror.add_trials([optuna_trial(space, t) for t in trials])
    return mirror
