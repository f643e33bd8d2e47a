"""Replay environment: answers allocations from recorded per-item results.

Each replay subtask points at a table (CSV, CSV.gz or Parquet) with one row per
(choice, item) holding sample counts (`n_samples`, `n_correct`), or one row per sample
holding `correct` (0/1). A plan's subtask score is the mean over the choice's items of the
expected score of its aggregator with n samples:

- `oracle` (best-of-n with a perfect verifier, i.e. pass@n): 1 - C(N-c, n)/C(N, n), the
  unbiased estimator of Chen et al. 2021 from N recorded samples with c correct;
- `first` (one answer, whatever n): c/N.

Inference cost per sample comes from the table's cost columns where it has them (FLOPs;
tokens, priced at 2N each; USD, converted at the hardware's price per GPU-hour), else from
the cost model (2N per prompt and output token declared in task.yaml).

A query must pass every stage, so the end-to-end score is the product of stage scores
(stages are drawn from independent item sets).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from planner.cost import Calibration
from planner.env import Observation
from planner.errors import SpecError
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import ReplaySpec, TaskSpec
from tools.evaluate import pass_at_k

AGGREGATORS = ("oracle", "first")


@dataclass(frozen=True)
class _Choice:
    model: str
    method: str
    mixture: str


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or Parquet table."""
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)


class ReplayEnvironment:
    """Looks allocations up in recorded tables; every score is precomputed at load."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.space = SearchSpace(spec)
        # (subtask, choice) -> {n: score}; (subtask, model, method) -> FLOPs per sample
        self._scores: dict[tuple[str, _Choice], dict[int, float]] = {}
        self._flops: dict[tuple[str, str, str], float] = {}
        self.items: dict[str, int] = {}  # subtask -> recorded items (the validation set size)
        for s in spec.subtasks:
            assert s.replay is not None  # guaranteed by spec validation for replay tasks
            self._load(s.name, s.replay)

    def _load(self, subtask: str, rs: ReplaySpec) -> None:
        where = f"{self.spec.name}: subtasks.{subtask}.replay"
        table = read_table(self.spec.path(rs.table))
        outcome = [rs.correct] if rs.correct else [rs.n_samples, rs.n_correct]
        costs = [rs.flops_per_sample, rs.input_tokens, rs.output_tokens, rs.usd_per_sample]
        needed = [*rs.choices.values(), rs.item, *outcome, *(c for c in costs if c)]
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise SpecError(f"{where}: table lacks columns {missing}; it has {list(table.columns)}")
        sub = self.spec.subtask(subtask)
        bad_aggs = set(sub.aggregators) - set(AGGREGATORS)
        if bad_aggs:
            raise SpecError(f"{where}: aggregators {sorted(bad_aggs)} cannot be replayed from "
                            f"counts; use {list(AGGREGATORS)}")
        self.items[subtask] = int(table[rs.item].nunique())
        columns = {column: table[column].astype(str).to_numpy() for column in rs.choices.values()}
        for plan_choice in self._choices(subtask):
            mask = np.ones(len(table), dtype=bool)
            for field, column in rs.choices.items():
                mask &= columns[column] == getattr(plan_choice, field)
            rows = table[mask]
            label = f"{plan_choice.model}/{plan_choice.method}/{plan_choice.mixture}"
            if rows.empty:
                raise SpecError(f"{where}: no rows for {label}; restrict the model's `methods` or "
                                "add the rows")
            if rs.correct:  # one row per sample -> counts per item
                per_item = rows.groupby(rs.item)[rs.correct].agg(["size", "sum"])
                n, c = per_item["size"].to_numpy(), per_item["sum"].to_numpy()
            else:
                n, c = rows[rs.n_samples].to_numpy(), rows[rs.n_correct].to_numpy()
            n, c = n.astype(np.int64), c.astype(np.int64)
            if "oracle" in sub.aggregators and max(sub.samples) > n.min():
                raise SpecError(f"{where}: samples go up to {max(sub.samples)} but {label} has "
                                f"only {n.min()} recorded samples for some item; lower `samples`")
            scores = {k: float(np.mean([pass_at_k(int(ni), int(ci), k)
                                        for ni, ci in zip(n, c, strict=True)]))
                      for k in sub.samples}
            scores[0] = float(np.mean(c / n))  # key 0 holds the single-answer accuracy c/N
            self._scores[(subtask, plan_choice)] = scores
            flops = self._recorded_flops(rows, rs, plan_choice.model)
            if flops is not None:
                self._flops[(subtask, plan_choice.model, plan_choice.method)] = flops
            elif self.spec.model(plan_choice.model).params is None:
                raise SpecError(f"{where}: model {plan_choice.model!r} has no `params` and the "
                                "table no cost column; give flops_per_sample, tokens or "
                                "usd_per_sample")

    def _recorded_flops(self, rows: pd.DataFrame, rs: ReplaySpec, model: str) -> float | None:
        """Mean inference FLOPs per sample from the table's cost columns, in order of
        preference: FLOPs; tokens at 2N each (models with known params); USD converted at
        the hardware's price of a GPU-hour. None: no column applies (the cost model prices)."""
        hw = self.spec.hardware
        params = self.spec.model(model).params
        if rs.flops_per_sample:
            return float(rows[rs.flops_per_sample].mean())
        if rs.input_tokens and rs.output_tokens and params is not None:
            return 2 * params * float((rows[rs.input_tokens] + rows[rs.output_tokens]).mean())
        if rs.usd_per_sample and hw.usd_per_gpu_hour is not None:
            gpu_hours = float(rows[rs.usd_per_sample].mean()) / hw.usd_per_gpu_hour
            return gpu_hours * hw.peak_flops * hw.utilization * 3600
        return None

    def _choices(self, subtask: str) -> Iterator[_Choice]:
        seen = set()
        for p in self.space.plans(subtask):
            choice = _Choice(p.model, p.method, p.mixture)
            if choice not in seen:
                seen.add(choice)
                yield choice

    def calibration(self) -> Calibration:
        return dict(self._flops)

    def subtask_score(self, subtask: str, plan: Plan) -> float:
        """Expected score of one stage under `plan`."""
        scores = self._scores[(subtask, _Choice(plan.model, plan.method, plan.mixture))]
        return scores[0] if plan.aggregator == "first" else scores[plan.samples]

    def evaluate(self, allocation: Allocation) -> Observation:
        self.space.validate(allocation)
        per = {s: self.subtask_score(s, p) for s, p in allocation.items()}
        return Observation(score=float(np.prod(list(per.values()))), subtask_scores=per)
