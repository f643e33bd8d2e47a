"""Plain-data views over a study's trials: the trial list, best-so-far against trials and
search GPU-hours, each stage's score against n per arm, the best's cost split and choices,
a row for comparing studies side by side (`planner trials`, `compare`, `report`), and what
live trials measured against what was estimated (`planner show`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from planner import report
from planner.cascade import assumed_share, threshold_of
from planner.cost import CostModel
from planner.search import best_trial
from planner.search.search_cost import SearchCost
from planner.space import Ordinal, Plan, SearchSpace
from planner.spec import Hardware
from planner.store import StudyRecord, TrialRecord, TrialStatus

CACHE_AWARE = "cache-aware: each fine-tune and each sampled arm paid once"


@dataclass(frozen=True)
class StudyData:
    """A study, its trials, and what pricing its search and judging its best take.

    `cost_model` and `items` (validation items per subtask) meter the search like
    `Runner.search_spent`; without a cost model (the environment could not be built) the
    search is priced as the sum of its evaluated trials' estimated costs, and
    `metering` says so. `optimum` is the exact best score where the task knows it.
    """

    record: StudyRecord
    trials: list[TrialRecord]
    space: SearchSpace
    cost_model: CostModel | None = None
    items: Mapping[str, int] = field(default_factory=dict)
    metering: str = CACHE_AWARE
    optimum: float | None = None


def trial_list(trials: Sequence[TrialRecord], status: TrialStatus | None = None) -> list[dict]:
    """The trials (of one status, if given) as `report.trial_row`s."""
    return [report.trial_row(t) for t in trials if status is None or t.status is status]


def search_curve(data: StudyData) -> list[dict]:
    """Per trial, in order: its score and fidelity, the best score so far (screens are
    not counted) and the search GPU-hours spent so far (failed and over-budget trials are
    not evaluated, so cost nothing)."""
    meter = (SearchCost(data.cost_model, data.items, data.record.draws)  # as its runs drew
             if data.cost_model else None)
    spent, best, rows = 0.0, None, []
    for t in data.trials:
        if t.status is TrialStatus.OK:
            spent = (meter.add(t.allocation, t.fidelity) if meter
                     else spent + t.cost.total_gpu_hours)
            if t.final and (best is None or t.score > best):
                best = t.score
        rows.append({"number": t.number, "status": t.status.value, "score": t.score,
                     "fidelity": t.fidelity, "best": best, "search_gpu_hours": spent})
    return rows


def stage_curves(data: StudyData) -> dict[str, dict]:
    """Each stage's observed score against its ordinal dimension (n), per arm: the plan
    without that dimension, as one readable line. Points sorted by n."""
    curves: dict[str, dict] = {}
    for s in data.space.subtasks:
        ordinal = next(d for d in data.space.dimensions(s) if isinstance(d, Ordinal))
        arms: dict[str, dict] = {}
        for t in data.trials:
            if t.status is not TrialStatus.OK or s not in t.subtask_scores:
                continue
            plan = t.allocation[s]
            arm = Plan({k: v for k, v in plan.items() if k != ordinal.name}).describe()
            arms.setdefault(arm, {})[plan[ordinal.name]] = t.subtask_scores[s]
        curves[s] = {"dimension": ordinal.name,
                     "arms": {a: sorted(points.items()) for a, points in arms.items()}}
    return curves


def best_choices(data: StudyData) -> list[dict]:
    """Per stage of the best trial: each dimension's value, the stage's score and its cost
    split (training, inference GPU-hours). Empty without a successful trial."""
    best = best_trial(data.trials)
    if best is None:
        return []
    rows = []
    for s, plan in best.allocation.items():
        cost = best.subtask_costs.get(s)
        rows.append({"stage": s, "plan": dict(plan), "score": best.subtask_scores.get(s),
                     "train_gpu_hours": cost.train_gpu_hours if cost else None,
                     "inference_gpu_hours": cost.inference_gpu_hours if cost else None})
    return rows


def comparison(data: StudyData) -> dict:
    """One study's column of `planner compare`: its best, the trials and search GPU-hours
    it took to reach it, the gap to the optimum, and the best's per-stage choices."""
    record, best = data.record, best_trial(data.trials)
    row = {"study": record.name, "task": record.task_name, "strategy": record.strategy,
           "budget": record.budget, "trials": len(data.trials), "best_score": None,
           "trials_to_best": None, "search_gpu_hours_to_best": None,
           "search_gpu_hours": None, "search_cost": data.metering, "optimum": data.optimum,
           "fraction_of_optimum": None, "best_cost_gpu_hours": None, "choices": {}}
    curve = search_curve(data)
    if curve:
        row["search_gpu_hours"] = curve[-1]["search_gpu_hours"]
    if best is None:
        return row
    at = next(i for i, t in enumerate(data.trials) if t.number == best.number)
    row.update(best_score=best.score, trials_to_best=at + 1,
               search_gpu_hours_to_best=curve[at]["search_gpu_hours"],
               best_cost_gpu_hours=best.cost.total_gpu_hours,
               choices={c["stage"]: {**c["plan"], "score": c["score"]}
                        for c in best_choices(data)})
    if data.optimum:
        row["fraction_of_optimum"] = best.score / data.optimum
    return row


def report_data(data: StudyData, top: int = 10) -> dict:
    """Everything the HTML report shows, as plain data."""
    return {**report.summary(data.record, data.trials),
            "leaderboard": report.leaderboard(data.trials, top),
            "comparison": comparison(data), "curve": search_curve(data),
            "stage_curves": stage_curves(data), "choices": best_choices(data),
            "dimensions": {s: [d.name for d in data.space.dimensions(s)]
                           for s in data.space.subtasks}}


def measured_vs_estimated(record: StudyRecord, trials: Sequence[TrialRecord]) -> dict | None:
    """What live trials measured beside what the cost model estimated: per successful trial
    with measurements, the estimated training GPU-hours, the measured training and sampling
    device-hours and the utilisation they imply (FLOPs / (device seconds x peak)), and in
    `peak` which peak FLOP/s that is (a CPU's measured matmul rate, or the task hardware's);
    per cascade plan, the escalated share the cost model assumed and the one measured
    (`planner.cascade`). None when no trial measured anything (replay)."""
    hardware = Hardware.model_validate(record.task.get("hardware") or {})
    rows, cpu_peaks, on_gpu = [], [], False
    for t in trials:
        m = t.measured
        if t.status is not TrialStatus.OK or not ({"train_seconds", "sample_seconds"} & set(m)):
            continue
        seconds = m.get("train_seconds", 0.0) + m.get("sample_seconds", 0.0)
        capacity = m.get("train_capacity_flops", 0.0) + m.get("sample_capacity_flops", 0.0)
        if seconds > 0 and m.get("cpu_seconds", 0.0) >= seconds * (1 - 1e-9):
            cpu_peaks.append(capacity / seconds)  # all of it on a CPU: its peak
        elif capacity > 0:
            on_gpu = True
        rows.append({
            "number": t.number, "score": t.score,
            "estimated_train_gpu_hours": t.cost.train_gpu_hours,
            "train_device_hours": _hours(m, "train_seconds"),
            "train_utilization": _ratio(m, "train_flops", "train_capacity_flops"),
            "train_tokens_per_second": _ratio(m, "train_tokens", "train_seconds"),
            "sample_device_hours": _hours(m, "sample_seconds"),
            "sample_utilization": _ratio(m, "sample_flops", "sample_capacity_flops"),
            "cached_trainings": int(m.get("cached_trainings", 0)),
            "spent_device_hours": _hours(m, "spent_seconds"),
            "escalated": {s: {"assumed": assumed_share(threshold_of(str(p.cascade))),
                              "measured": m[f"escalated:{s}"]}
                          for s, p in t.allocation.items() if f"escalated:{s}" in m}})
    if not rows:
        return None
    peak = []
    if cpu_peaks:
        low, high = min(cpu_peaks), max(cpu_peaks)
        rate = f"{low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{low:.3g}-{high:.3g}"
        peak.append(f"this CPU's measured fp32 matmul rate, {rate} FLOP/s (trials run on a "
                    f"CPU: their device-hours are CPU hours, not {hardware.name}'s, whose "
                    f"peak is {hardware.peak_flops:.3g} FLOP/s)")
    if on_gpu:
        peak.append(f"{hardware.name}'s {hardware.peak_flops:.3g} FLOP/s (the task's "
                    "hardware.peak_flops), for work on a GPU")
    return {"rows": rows, "peak": "; ".join(peak), "hardware": hardware.name,
            "assumed_utilization": hardware.utilization,
            "spent_device_hours": sum(r["spent_device_hours"] or 0.0 for r in rows)}


def _hours(measured: Mapping[str, float], key: str) -> float | None:
    return measured[key] / 3600 if key in measured else None


def _ratio(measured: Mapping[str, float], top: str, bottom: str) -> float | None:
    if top not in measured or not measured.get(bottom):
        return None
    return measured[top] / measured[bottom]
