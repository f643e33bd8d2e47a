"""The environment protocol: `evaluate(allocation) -> Observation`.

Environments live in the top-level `envs` package (replay tables, live training and
sampling); the search sees them only through this protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from planner.cost import Calibration
from planner.draws import Draws
from planner.sampling import backend_of
from planner.space import Allocation
from planner.spec import TaskSpec


@dataclass(frozen=True)
class Observation:
    """What evaluating one allocation showed.

    `score` is the end-to-end metric; `subtask_scores` each stage's own metric, which the
    agent uses to search stage by stage; `measured` holds measured costs such as
    `device_seconds` or `tokens` (empty for replay).
    """

    score: float
    subtask_scores: Mapping[str, float]
    measured: Mapping[str, float] = field(default_factory=dict)
    on_screen_items: ScreenScores | None = None  # asked for with `evaluate(..., screen=)`


@dataclass(frozen=True)
class ScreenScores:
    """A full evaluation's scores on the items a screen at `fidelity` evaluates: what a
    screen of the same allocation sampling the same model scores, so that a screen is
    compared with full trials on its own items (a small share of the items may be far
    easier or harder than the whole; `search.agent.screening`)."""

    fidelity: float
    score: float
    subtask_scores: Mapping[str, float]


class Environment(Protocol):
    """Evaluates allocations of one task."""

    spec: TaskSpec

    def calibration(self) -> Calibration:
        """Recorded inference FLOPs per sample, for the cost model (may be empty); a
        `MeasuredCalibration` also carries the utilisation measured runs achieved."""
        ...

    def evaluate(self, allocation: Allocation, fidelity: float = 1.0,
                 draws: Draws | None = None, screen: float | None = None) -> Observation:
        """Run (or look up) the allocation and report its scores. `fidelity` in (0, 1] is
        the share of validation items evaluated (a screen): the first ceil(fidelity * N)
        of a fixed order, the same for every allocation, so screens compare fairly; where
        `screens_training`, also the share of each resumable fine-tune's steps trained.
        `draws` says how many samples per item to draw of each arm (`planner.draws`; None:
        the subtask's largest n); an environment that draws none ignores it. `screen`
        (a full evaluation only): also report the scores on the items a screen at that
        share evaluates (`Observation.on_screen_items`), from the same samples."""
        ...

    def validation_items(self) -> Mapping[str, int]:
        """Subtask -> the items one evaluation samples it on (prices a search)."""
        ...


def screens_training(spec: TaskSpec) -> bool:
    """Whether a screen of the task also trains less: the live environment trains each
    resumable fine-tune (`FineTune.resumable`) for the screen's share of its steps, a prefix
    of the full run that a full evaluation resumes. A recorded table holds finished
    trainings only, and a server (an `openai` backend) serves finished models."""
    return spec.environment == "live" and all(
        backend_of(spec, s.name).kind != "openai" for s in spec.subtasks)


def check_fidelity(fidelity: float) -> None:
    """Refuse a share of validation items outside (0, 1]."""
    if not 0.0 < fidelity <= 1.0:
        raise ValueError(f"fidelity must be in (0, 1] (a share of the validation items), "
                         f"got {fidelity}")


def check_screen(fidelity: float, screen: float | None) -> None:
    """Refuse a `screen` share outside (0, 1], or asked of a screen (`fidelity` < 1)."""
    if screen is None:
        return
    check_fidelity(screen)
    if fidelity < 1.0:
        raise ValueError(f"scores on a screen's items come with a full evaluation "
                         f"(fidelity 1), got fidelity {fidelity}")


def screened(total: int, fidelity: float) -> int:
    """How many of `total` items a screen at `fidelity` evaluates: at least one."""
    check_fidelity(fidelity)
    return max(1, math.ceil(total * fidelity - 1e-9))
