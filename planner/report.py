"""Plain-data views of a study (leaderboard, summary, timeline) for the CLI and --json."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

from planner.search import best_trial, standing
from planner.search.agent.steps import (
    AnsweredStep,
    InitStep,
    ProposeStep,
    ReflectStep,
    read_step,
)
from planner.store import StepRecord, StudyRecord, TrialRecord, TrialStatus


def score_text(score: float | None) -> str:
    """A score as printed: 4 decimals, or 3 significant digits when it is near zero (so
    0.00012 does not read as 0.0000); "-" when there is none."""
    if score is None:
        return "-"
    return f"{score:.4f}" if score == 0 or abs(score) >= 1e-3 else f"{score:.3g}"


def failure(trials: Sequence[TrialRecord]) -> str | None:
    """Why a study achieved nothing (no successful trial), or None when one succeeded."""
    if any(t.status is TrialStatus.OK for t in trials):
        return None
    failed = [t for t in trials if t.status is TrialStatus.FAILED]
    if failed:
        first = (failed[0].error or "no error recorded").strip().splitlines()[-1]
        return f"every trial failed ({len(failed)}); the first, trial {failed[0].number}: {first}"
    if trials:
        return f"no trial was evaluated: all {len(trials)} were over budget"
    return "no trial was run"


def unsolved(trials: Sequence[TrialRecord], live: bool) -> list[str]:
    """A note for each stage that scored 0 in every evaluated trial (screens included): a
    search that never saw a right answer there found nothing, whatever its leaderboard
    ranks first. On a live task the usual cause is the stage's prompt or answer format."""
    ok = [t for t in trials if t.status is TrialStatus.OK]
    stages = dict.fromkeys(s for t in ok for s in t.subtask_scores)
    zero = [s for s in stages
            if all(t.subtask_scores[s] <= 0.0 for t in ok if s in t.subtask_scores)]
    hint = ("; check that its `prompt` asks for what its labels hold and that its `answer:` "
            "extracts it (README, \"Real models\")" if live else "")
    return [f"stage {s} scored 0 in every evaluated trial ({len(ok)}): no plan tried "
            f"answered one of its validation items right{hint}" for s in zero]


def trial_row(t: TrialRecord) -> dict:
    return {
        "number": t.number,
        "status": t.status.value,
        "score": t.score,
        "fidelity": t.fidelity,
        "subtask_scores": dict(t.subtask_scores),
        "on_screen_items": None if t.on_screen_items is None else asdict(t.on_screen_items),
        "cost_gpu_hours": {"train": t.cost.train_gpu_hours,
                           "inference": t.cost.inference_gpu_hours,
                           "total": t.cost.total_gpu_hours},
        "measured": dict(t.measured),
        "allocation": t.allocation.to_dict(),
        "source": t.source,
        "duration_s": t.duration_s,
        "error": t.error,
    }


def leaderboard(trials: Sequence[TrialRecord], top: int = 10) -> list[dict]:
    """The best `top` finished trials by `standing` (the first is `best_trial`'s); screens
    (scored on a share of the items) are not ranked."""
    ok = [t for t in trials if t.final]
    ranked = sorted(ok, key=standing, reverse=True)[:top]
    return [{"rank": i + 1, **trial_row(t)} for i, t in enumerate(ranked)]


def summary(study: StudyRecord, trials: Sequence[TrialRecord]) -> dict:
    """Best allocation, its per-subtask scores and cost split, and what the search spent."""
    best = best_trial(trials)
    counts = {s.value: sum(t.status is s for t in trials) for s in TrialStatus}
    return {
        "study": study.name,
        "task": study.task_name,
        "strategy": study.strategy,
        "seed": study.seed,
        "budget": study.budget,
        "budget_gpu_hours": study.budget_gpu_hours,
        "trials": len(trials),
        "trials_by_status": counts,
        "screens": sum(t.screen for t in trials),
        "search_seconds": sum(t.duration_s or 0.0 for t in trials),
        "search_measured": _sum_measured(trials),
        "best": trial_row(best) if best else None,
    }


def reasoner_fallbacks(steps: Sequence[StepRecord]) -> dict | None:
    """How often the builtin reasoner answered for a language model (in init, reflect and
    propose steps), and why; None when no step asked one."""
    typed = [read_step(s) for s in steps
             if s.node in (InitStep.node, ReflectStep.node, ProposeStep.node)]
    asked = [p for p in typed if isinstance(p, AnsweredStep) and (p.attempts or p.fallback)]
    if not asked:
        return None
    reasons = [p.fallback for p in asked if p.fallback]
    return {"propose_steps": sum(isinstance(p, ProposeStep) for p in typed),
            "reflect_steps": sum(isinstance(p, ReflectStep) for p in asked),
            "init_steps": sum(isinstance(p, InitStep) for p in asked),
            "fallbacks": len(reasons), "reasons": list(dict.fromkeys(reasons))}


def timeline(trials: Sequence[TrialRecord], steps: Sequence[StepRecord]) -> list[dict]:
    """Trials and agent steps merged in time order."""
    events = [{"kind": "trial", "time": t.started, **trial_row(t)} for t in trials]
    events += [{"kind": "step", "time": s.created, "number": s.number, "node": s.node,
                "payload": s.payload} for s in steps]
    return sorted(events, key=lambda e: e["time"])


def _sum_measured(trials: Sequence[TrialRecord]) -> dict[str, float]:
    total: dict[str, float] = {}
    for t in trials:
        for k, v in t.measured.items():
            total[k] = total.get(k, 0.0) + v
    return total
