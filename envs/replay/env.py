"""Replay environment: answers allocations from recorded per-item results.

Each replay subtask points at a table (CSV, CSV.gz or Parquet) with one row per
(choice, item) holding sample counts (`n_samples`, `n_correct`), or one row per sample
holding `correct` (0/1) and, optionally, the sample's final `answer`. A choice is a
(model, method, mixture) of the search space; its rows are those whose `choices` columns
hold its values. A plan's subtask score is the mean over the choice's items of the
expected score of its aggregator with n samples, each from N recorded samples:

- `oracle` (best-of-n with a perfect verifier, i.e. pass@n): 1 - C(N-c, n)/C(N, n), the
  unbiased estimator of Chen et al. 2021 with c of the N samples correct;
- `majority` (the most frequent answer of n, ties broken at random; needs `answer`): its
  exact expectation over the n-subsets of the N samples (`tools.evaluate.
  expected_majority_at_k`); answers are compared as text;
- `first` (one answer, whatever n): c/N.

Inference cost per sample comes from the choice's own rows where the table has cost
columns (FLOPs; tokens, priced at 2N each; USD, converted at the hardware's price per
GPU-hour), else from the cost model (2N per prompt and output token declared in task.yaml).

A query must pass every stage, so the end-to-end score is the product of stage scores
(stages are drawn from independent item sets).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from planner.cost import Calibration
from planner.env import Observation
from planner.errors import SpecError
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import ReplaySpec, SubtaskSpec, TaskSpec
from tools.evaluate import expected_majority_at_k, pass_at_k

AGGREGATORS = ("oracle", "first", "majority")
USES_N = ("oracle", "majority")  # aggregators whose score depends on n
FIELDS = ("model", "method", "mixture")  # the plan fields that pick a table's rows


@dataclass(frozen=True)
class _Choice:
    model: str
    method: str
    mixture: str

    def label(self) -> str:
        return f"{self.model}/{self.method}/{self.mixture}"


@dataclass(frozen=True)
class _Outcomes:
    """One choice's recorded outcomes, per item: N samples, c correct and, where the table
    has answers, every sample's (answer, correct) for the vote."""

    n: np.ndarray
    c: np.ndarray
    votes: tuple[tuple[list[str], list[int]], ...] = ()


def read_table(path: Path, text: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV (optionally gzipped) or Parquet table; `text` columns as strings (a
    missing value is the empty string)."""
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    for column in text:
        if column in table.columns:
            table[column] = table[column].fillna("").astype(str)
    return table


class ReplayEnvironment:
    """Looks allocations up in recorded tables; every score is precomputed at load."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.space = SearchSpace(spec)
        # (subtask, choice) -> aggregator -> {n: score}
        self._scores: dict[tuple[str, _Choice], dict[str, dict[int, float]]] = {}
        # (subtask, model, method, mixture) -> FLOPs per sample
        self._flops: dict[tuple[str, str, str, str], float] = {}
        self.items: dict[str, int] = {}  # subtask -> recorded items (the validation set size)
        for s in spec.subtasks:
            assert s.replay is not None  # guaranteed by spec validation for replay tasks
            self._load(s.name, s.replay)

    def _load(self, subtask: str, rs: ReplaySpec) -> None:
        where = f"{self.spec.name}: subtasks.{subtask}.replay"
        sub = self.spec.subtask(subtask)
        _check_aggregators(where, sub, rs)
        table = read_table(self.spec.path(rs.table), [rs.answer] if rs.answer else [])
        outcome = [rs.correct] if rs.correct else [rs.n_samples, rs.n_correct]
        costs = [rs.flops_per_sample, rs.input_tokens, rs.output_tokens, rs.usd_per_sample]
        needed = [*rs.choices.values(), rs.item, *outcome, rs.answer, *costs]
        missing = [c for c in needed if c and c not in table.columns]
        if missing:
            raise SpecError(f"{where}: table lacks columns {missing}; it has {list(table.columns)}")
        choices = list(self._choices(subtask))
        _check_choice_columns(where, rs, choices)
        self.items[subtask] = int(table[rs.item].nunique())
        columns = {column: table[column].astype(str).to_numpy() for column in rs.choices.values()}
        for choice in choices:
            mask = np.ones(len(table), dtype=bool)
            for field, column in rs.choices.items():
                mask &= columns[column] == getattr(choice, field)
            rows = table[mask]
            if rows.empty:
                raise SpecError(f"{where}: no rows for {choice.label()}; add the rows, or offer "
                                f"only recorded methods (`models: [{{name: {choice.model}, "
                                "methods: [...]}]` in this subtask)")
            outcomes = _outcomes(where, rows, rs)
            if any(a in USES_N for a in sub.aggregators) and max(sub.samples) > outcomes.n.min():
                raise SpecError(f"{where}: samples go up to {max(sub.samples)} but "
                                f"{choice.label()} has only {outcomes.n.min()} recorded samples "
                                "for some item; lower `samples`")
            self._scores[(subtask, choice)] = _score_curves(sub, outcomes)
            self._price(where, subtask, choice, rows, rs)

    def _price(self, where: str, subtask: str, choice: _Choice, rows: pd.DataFrame,
               rs: ReplaySpec) -> None:
        """Record the choice's inference FLOPs per sample from its own rows' cost columns."""
        flops = self._recorded_flops(rows, rs, choice.model)
        if flops is not None:
            self._flops[(subtask, choice.model, choice.method, choice.mixture)] = flops
        elif self.spec.model(choice.model).params is None:
            raise SpecError(f"{where}: model {choice.model!r} has no `params` and the table no "
                            "cost column; give flops_per_sample, tokens or usd_per_sample")

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
        """The distinct (model, method, mixture) of the subtask's canonical plans."""
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
        return scores[plan.aggregator][plan.samples]

    def validation_items(self) -> dict[str, int]:
        return dict(self.items)

    def evaluate(self, allocation: Allocation) -> Observation:
        self.space.validate(allocation)
        per = {s: self.subtask_score(s, p) for s, p in allocation.items()}
        return Observation(score=float(np.prod(list(per.values()))), subtask_scores=per)


def _check_aggregators(where: str, sub: SubtaskSpec, rs: ReplaySpec) -> None:
    """Every aggregator can be replayed from this table's form."""
    bad = sorted(set(sub.aggregators) - set(AGGREGATORS))
    if bad:
        raise SpecError(f"{where}: aggregators {bad} cannot be replayed; use "
                        f"{list(AGGREGATORS)}")
    if "majority" in sub.aggregators and not rs.answer:
        raise SpecError(f"{where}.answer: aggregator `majority` votes over each sample's "
                        "answer; give `answer: COLUMN` with the per-sample form (`correct:`), "
                        "or drop `majority` from `aggregators`")


def _check_choice_columns(where: str, rs: ReplaySpec, choices: list[_Choice]) -> None:
    """A plan field whose values the table must tell apart has a column in `choices`: a
    field with several values among choices otherwise alike would score them alike."""
    for field in FIELDS:
        if field in rs.choices:
            continue
        values: dict[tuple[str, ...], set[str]] = {}
        for choice in choices:
            rest = tuple(getattr(choice, f) for f in FIELDS if f != field)
            values.setdefault(rest, set()).add(getattr(choice, field))
        several = next((v for v in values.values() if len(v) > 1), None)
        if several:
            raise SpecError(f"{where}.choices: {field} takes values {sorted(several)} but no "
                            f"column tells them apart (they would score alike); add `{field}: "
                            f"COLUMN` to `choices`, or offer one {field}")


def _outcomes(where: str, rows: pd.DataFrame, rs: ReplaySpec) -> _Outcomes:
    """Per-item counts of one choice's rows (and votes, where the table has answers)."""
    if not rs.correct:
        return _Outcomes(rows[rs.n_samples].to_numpy().astype(np.int64),
                         rows[rs.n_correct].to_numpy().astype(np.int64))
    per_item = rows.groupby(rs.item)[rs.correct].agg(["size", "sum"])
    n = per_item["size"].to_numpy().astype(np.int64)
    c = per_item["sum"].to_numpy().astype(np.int64)
    if not rs.answer:
        return _Outcomes(n, c)
    mixed = rows.groupby([rs.item, rs.answer])[rs.correct].nunique()
    if (mixed > 1).any():
        item, answer = mixed.index[int(np.argmax(mixed.to_numpy() > 1))]
        raise SpecError(f"{where}.answer: item {item!r} has answer {answer!r} marked both "
                        f"correct and wrong; equal answers must score equally in `correct`")
    votes = tuple((g[rs.answer].tolist(), g[rs.correct].astype(int).tolist())
                  for _, g in rows.groupby(rs.item))
    return _Outcomes(n, c, votes)


def _score_curves(sub: SubtaskSpec, o: _Outcomes) -> dict[str, dict[int, float]]:
    """Aggregator -> n -> mean expected score over items (module docstring)."""
    curves: dict[str, dict[int, float]] = {}
    for agg in sub.aggregators:
        if agg == "first":
            curves[agg] = dict.fromkeys(sub.samples, float(np.mean(o.c / o.n)))
        elif agg == "oracle":
            curves[agg] = {k: float(np.mean([pass_at_k(int(ni), int(ci), k)
                                             for ni, ci in zip(o.n, o.c, strict=True)]))
                           for k in sub.samples}
        else:
            curves[agg] = {k: float(np.mean([expected_majority_at_k(a, c, k)
                                             for a, c in o.votes]))
                           for k in sub.samples}
    return curves
