"""`planner train DIR`: retrain and re-score an exported allocation, and say whether its
score agrees with the study's within the seeds' noise.

DIR is a `planner export --format planner` folder of a live task: `plan.yaml` (the
allocation and the study's score) and `task/` (the task and its data). The allocation is
evaluated by the live environment on a fresh cache, so every fine-tune is trained and every
answer sampled again, once per seed:

- seed +0 keeps the exported seeds: it reproduces the study's trial;
- seed +k moves every fine-tuning method's `options.seed` and every subtask's
  `decoding.seed` by k.

noise = max over k >= 1 of |score(+k) - score(+0)| (0 with one seed): how far the
end-to-end score moves when only the seeds change. The reproduction agrees iff
|score(+0) - study's score| <= noise (plus float rounding). Seed +0's fine-tunes are
copied (hard-linked where possible) to DIR/outputs/NAME, the folders serving.yaml serves.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from envs.live.cache import default_root
from envs.live.env import LiveEnvironment
from planner.artifact import artifact_of
from planner.errors import PlannerError, SpecError
from planner.export import PLAN_FILE, TASK_DIR, jobs_of, read_plan
from planner.methods import FineTune, Method
from planner.space import Allocation, SearchSpace
from planner.spec import TaskSpec, load_spec

CACHE_DIR = ".planner-cache"
EPSILON = 1e-9


@dataclass(frozen=True)
class SeedRun:
    """One evaluation of the allocation with every seed moved by `shift`."""

    shift: int
    score: float
    subtask_scores: dict[str, float]
    train_tokens: float
    """Tokens the allocation's fine-tunes trained on (`measured`)."""
    device_seconds: float
    """Training plus the pipeline's sampling on the validation set (`measured`)."""
    wall_seconds: float
    """Time this evaluation took here."""


@dataclass(frozen=True)
class Reproduction:
    """The study's result beside the reproduced one, per seed."""

    task: str
    study: str
    trial: int
    study_score: float
    study_subtask_scores: dict[str, float]
    runs: list[SeedRun]
    """Seed +0 first."""
    outputs: dict[str, str]
    """Fine-tune name -> its trained model (seed +0), relative to the export folder."""

    @property
    def score(self) -> float:
        """The reproduced score: seed +0's."""
        return self.runs[0].score

    @property
    def noise(self) -> float:
        """max over k >= 1 of |score(+k) - score(+0)|; 0 with one seed."""
        return max((abs(r.score - self.score) for r in self.runs[1:]), default=0.0)

    @property
    def agrees(self) -> bool:
        """|reproduced - study's score| is within the noise."""
        return abs(self.score - self.study_score) <= self.noise + EPSILON


def load_export(export_dir: Path) -> tuple[TaskSpec, Allocation, dict]:
    """A planner-format export of a live task: its task, allocation and plan document."""
    plan_file = export_dir / PLAN_FILE
    if not plan_file.is_file():
        raise SpecError(f"{export_dir}: not an export folder (no {PLAN_FILE}); write one with "
                        f"`planner export STUDY --format planner -o {export_dir}`")
    task_file = export_dir / TASK_DIR / "task.yaml"
    if not task_file.is_file():
        raise SpecError(f"{task_file}: missing; `planner train` needs a live task exported with "
                        "`planner export STUDY --format planner`")
    spec = load_spec(task_file)
    if spec.environment != "live":
        raise SpecError(f"{task_file}: environment: {spec.environment!r}; `planner train` "
                        "retrains live tasks only")
    allocation = read_plan(export_dir, SearchSpace(spec))
    doc = yaml.safe_load(plan_file.read_text())
    if missing := [k for k in ("study", "trial", "score") if k not in doc]:
        raise SpecError(f"{plan_file}: {', '.join(missing)}: missing; export the study again "
                        "with `planner export STUDY --format planner`")
    return spec, allocation, doc


def shift_seeds(spec: TaskSpec, shift: int) -> TaskSpec:
    """The task with every fine-tune's `options.seed` and every subtask's `decoding.seed`
    moved by `shift`."""

    def method(m: Method) -> Method:
        if not isinstance(m, FineTune):
            return m
        return m.model_copy(update={"options": m.options.model_copy(
            update={"seed": m.options.seed + shift})})

    subtasks = [s.model_copy(update={"decoding": s.decoding.model_copy(
        update={"seed": s.decoding.seed + shift})}) for s in spec.subtasks]
    return spec.model_copy(update={"methods": [method(m) for m in spec.methods],
                                   "subtasks": subtasks})


def reproduce(export_dir: Path, *, seeds: int = 2, cache_dir: Path | None = None,
              progress: bool = True,
              on_run: Callable[[SeedRun], None] | None = None) -> Reproduction:
    """Retrain and re-score the export's allocation with seeds +0 .. +(seeds - 1).

    Args:
        export_dir: a folder written by `planner export --format planner` for a live task.
        seeds: evaluations; the first keeps the exported seeds.
        cache_dir: artifact and sample cache; default DIR/.planner-cache, emptied first so
            everything is retrained. A given one is reused as it is.
        progress: training and sampling progress bars on stderr.
        on_run: called after each seed's evaluation.
    """
    if seeds < 1:
        raise PlannerError(f"seeds: {seeds}; give at least 1")
    spec, allocation, doc = load_export(export_dir)
    if cache_dir is None:
        cache_dir = export_dir / CACHE_DIR
        shutil.rmtree(cache_dir, ignore_errors=True)
    runs: list[SeedRun] = []
    outputs: dict[str, str] = {}
    for shift in range(seeds):
        env = LiveEnvironment(shift_seeds(spec, shift), cache_dir=cache_dir,
                              zoo_dir=default_root() / "zoo", progress=progress)
        start = time.perf_counter()
        obs = env.evaluate(allocation)
        run = SeedRun(shift, obs.score, dict(obs.subtask_scores),
                      obs.measured.get("train_tokens", 0.0),
                      obs.measured.get("device_seconds", 0.0), time.perf_counter() - start)
        runs.append(run)
        if shift == 0:
            outputs = _copy_outputs(env, allocation, export_dir)
        if on_run is not None:
            on_run(run)
    return Reproduction(spec.name, str(doc["study"]), int(doc["trial"]), float(doc["score"]),
                        dict(doc.get("subtask_scores") or {}), runs, outputs)


def _copy_outputs(env: LiveEnvironment, allocation: Allocation,
                  export_dir: Path) -> dict[str, str]:
    """Each distinct fine-tune's model to its `output_dir` under the export folder."""
    spec = env.spec
    bases = {p.model: str(env.base_path(p.model)) for _, p in allocation.items()}
    jobs = {j.name: j for j in jobs_of(spec, allocation, bases).values() if j}
    for job in jobs.values():
        first = job.serves[0]
        trained = env.model_path(artifact_of(spec, first, allocation[first]))
        target = export_dir / job.output_dir
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(trained, target, copy_function=_link_or_copy)
    return {name: job.output_dir for name, job in jobs.items()}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
