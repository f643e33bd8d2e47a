"""Replay environment: answers allocations from recorded per-item results.

Each replay subtask points at a table (CSV, CSV.gz or Parquet) with one row per
(choice, item) holding sample counts (`n_samples`, `n_correct`), or one row per sample
holding `correct` (0/1). A plan's subtask score is the mean over the choice's items of the
expected score of its aggregator with n samples:

- `oracle` (best-of-n with a perfect verifier, i.e. pass@n): 1 - C(N-c, n)/C(N, n), the
  unbiased estimator of Chen et al. 2021 from N recorded samples with c correct;
- `first` (one answer, whatever n): c/N.

A query must pass every stage, so the end-to-end score is the product of stage scores
(stages are drawn from independent item sets).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tools.evaluate import pass_at_k

from planner.cost import Calibration
from planner.env import Observation
from planner.errors import SpecError
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import ReplaySpec, TaskSpec

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
        for s in spec.subtasks:
            assert s.replay is not None  # guaranteed by spec validation for replay tasks
            self._load(s.name, s.replay)

    def _load(self, subtask: str, rs: ReplaySpec) -> None:
        where = f"{self.spec.name}: subtasks.{subtask}.replay"
        table = read_table(self.spec.path(rs.table))
        outcome = [rs.correct] if rs.correct else [rs.n_samples, rs.n_correct]
        needed = [*rs.choices.values(), rs.item, *outcome]
        if rs.flops_per_sample:
            needed.append(rs.flops_per_sample)
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise SpecError(f"{where}: table lacks columns {missing}; it has {list(table.columns)}")
        bad_aggs = set(self.spec.subtask(subtask).aggregators) - set(AGGREGATORS)
        if bad_aggs:
            raise SpecError(f"{where}: aggregators {sorted(bad_aggs)} cannot be replayed from "
                            f"counts; use {list(AGGREGATORS)}")
        if rs.correct:  # one row per sample -> counts per (choice, item)
            keys = [*rs.choices.values(), rs.item]
            grouped = table.groupby(keys, as_index=False)
            table = grouped.agg(n_samples=(rs.correct, "size"), n_correct=(rs.correct, "sum"),
                                **({"flops": (rs.flops_per_sample, "median")}
                                   if rs.flops_per_sample else {}))
            n_col, c_col, f_col = "n_samples", "n_correct", "flops" if rs.flops_per_sample else None
        else:
            n_col, c_col, f_col = rs.n_samples, rs.n_correct, rs.flops_per_sample
        for plan_choice in self._choices(subtask):
            mask = np.ones(len(table), dtype=bool)
            for field, column in rs.choices.items():
                mask &= table[column].astype(str).to_numpy() == getattr(plan_choice, field)
            rows = table[mask]
            if rows.empty:
                raise SpecError(f"{where}: no rows for {plan_choice.model}/{plan_choice.method}"
                                f"/{plan_choice.mixture}; restrict the model's `methods` or "
                                "add the rows")
            n = rows[n_col].to_numpy(dtype=np.int64)
            c = rows[c_col].to_numpy(dtype=np.int64)
            scores = {k: float(np.mean([pass_at_k(int(ni), int(ci), k)
                                        for ni, ci in zip(n, c, strict=True)]))
                      for k in self.spec.subtask(subtask).samples}
            scores[0] = float(np.mean(c / n))  # key 0 holds the single-answer accuracy c/N
            self._scores[(subtask, plan_choice)] = scores
            if f_col:
                self._flops[(subtask, plan_choice.model, plan_choice.method)] = float(
                    rows[f_col].median())

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
