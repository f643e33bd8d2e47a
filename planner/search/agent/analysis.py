"""What the evaluated trials say: per-subtask score models, what each stage's trials lend
the others (a plan's twin in another stage: `_evidence`), and how stages combine.

`Analysis` is rebuilt from the trial history alone (never from hidden state), so a resumed
search reasons exactly as an uninterrupted one would.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from planner.artifact import Artifact
from planner.search._base import SearchContext
from planner.search.agent.screening import on_items
from planner.search.agent.surrogate import (
    PlanTable,
    Prediction,
    SubtaskModel,
    allocation_value,
    logit,
    screen_share,
)
from planner.search.search_cost import screens_another_model
from planner.space import Allocation, Plan
from planner.store import TrialRecord, TrialStatus

FLOOR = 1e-4  # scores are floored before taking logs


def stage_scores(trial: TrialRecord, subtasks: Sequence[str]) -> dict[str, float]:
    """Each subtask's own score in a trial; a one-subtask task falls back to the end score."""
    scores = dict(trial.subtask_scores)
    if len(subtasks) == 1 and subtasks[0] not in scores and trial.score is not None:
        scores[subtasks[0]] = trial.score
    return scores


@dataclass(frozen=True)
class Analysis:
    """Per-subtask predictions and the weights of log stage scores in the end score."""

    tables: list[PlanTable]
    predictions: list[Prediction]
    weights: np.ndarray  # (S,) log end score ~ sum_s weights[s] * log stage score
    trials: list[TrialRecord]  # finished, successful
    scores: np.ndarray  # (T, S) each trial's stage scores (`stage_scores`; NaN: none)
    at: np.ndarray  # (T, S) each trial's plan index in each table (-1: not in it)

    @cached_property
    def full(self) -> np.ndarray:
        """(T,) the trials that evaluated in full (not screens)."""
        return np.array([not t.screen for t in self.trials], dtype=bool)

    def observed(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Table `j`'s plans: the sum of the stage scores their full evaluations gave, and
        how many there were."""
        rows = self.full & (self.at[:, j] >= 0) & ~np.isnan(self.scores[:, j])
        size = len(self.tables[j].plans)
        # as floats even where no row is (`np.bincount` then gives integer zeros)
        return (np.bincount(self.at[rows, j], self.scores[rows, j], minlength=size).astype(float),
                np.bincount(self.at[rows, j], minlength=size).astype(float))

    def plan_values(self, kappa: float) -> list[np.ndarray]:
        """Each plan's contribution to the log end score at `kappa` std above the mean."""
        return [w * np.log(np.maximum(p.score(kappa), FLOOR))
                for w, p in zip(self.weights, self.predictions, strict=True)]

    @cached_property
    def full_scores(self) -> list[float]:
        """The end scores of the full trials, in order."""
        return [r.score for r, f in zip(self.trials, self.full, strict=True) if f]

    @cached_property
    def since_best(self) -> int:
        """How many full trials came after the first one to score the best score: the
        trials since the best last rose (0 before any)."""
        scores = self.full_scores
        return len(scores) - 1 - int(np.argmax(scores)) if scores else 0

    @cached_property
    def evaluated(self) -> tuple[list[np.ndarray], float]:
        """Per subtask, which plans a full trial (not a screen) evaluated; and the log of
        the best full trial's end score, floored at `FLOOR` as predictions are (-inf before
        any): a prediction at the floor beats no trial, not even one that scored 0."""
        masks = [np.zeros(len(t.plans), dtype=bool) for t in self.tables]
        for j, mask in enumerate(masks):
            mask[self.at[self.full & (self.at[:, j] >= 0), j]] = True
        scores = self.full_scores
        best = np.log(max(max(scores), FLOOR)) if scores else -np.inf
        return masks, float(best)

    @cached_property
    def known(self) -> list[np.ndarray]:
        """Per subtask, each plan's contribution to the log end score from its own full
        evaluations (weight x log of its mean stage score, floored at `FLOOR`); -inf for a
        plan none evaluated. What a recombination of evaluated plans will score: the score
        model smooths an observed 0 up to its clip (1e-3), which made a stage plan that
        scored 0 look like a small gain next to a best trial of 2e-4."""
        out = []
        for j, w in enumerate(self.weights):
            total, count = self.observed(j)
            mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
            out.append(np.where(count > 0, w * np.log(np.maximum(mean, FLOOR)), -np.inf))
        return out

    def known_value(self, allocation: Allocation) -> float:
        """An allocation's log end score from its stage plans' own full evaluations
        (`known`): -inf where a stage plan was never evaluated."""
        return allocation_value(self.tables, self.known, allocation)

    def predicted(self, allocation: Allocation, kappa: float = 0.0
                  ) -> tuple[float, dict[str, float]]:
        """An allocation's end score (the weighted product of its stage scores) and each
        stage's score, predicted `kappa` std above the mean (0: the mean)."""
        stages = {t.subtask: float(p.score(kappa)[t.index[allocation[t.subtask]]])
                  for t, p in zip(self.tables, self.predictions, strict=True)}
        end = 1.0
        for t, w in zip(self.tables, self.weights, strict=True):
            end *= stages[t.subtask] ** float(w)
        return end, stages


class Analyst:
    """Builds `Analysis` objects for one search context (plan tables are built once)."""

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        shared = shared_artifacts(ctx)
        self.tables = [PlanTable.build(ctx.space, ctx.cost_model, s, shared)
                       for s in ctx.space.subtasks]
        self._models = [SubtaskModel(t) for t in self.tables]
        self._twins = _twins(self.tables)
        self._cache: tuple[tuple[int, ...], Analysis] | None = None
        self._rows: dict[int, tuple[TrialRecord, _Row]] = {}  # trial number -> its row

    def analyse(self, history: Sequence[TrialRecord]) -> Analysis:
        ok = [t for t in history if t.status is TrialStatus.OK and t.score is not None]
        key = tuple(t.number for t in ok)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        subtasks = self.ctx.space.subtasks
        rows = [self._row(t) for t in ok]
        per = [r.scores for r in rows]
        shares = _screen_shares(ok, per, subtasks)
        predictions = [m.fit((r.at[j], r.scores[s], shares.get((t.fidelity, s), t.fidelity))
                             for t, r in zip(ok, rows, strict=True)
                             if s in r.scores and s not in r.another)
                       for j, (s, m) in enumerate(zip(subtasks, self._models, strict=True))]
        # each stage's mean also reads what the other stages' trials showed of its plans'
        # twins (`SubtaskModel.transferred`)
        residuals = [m.residual for m in self._models]
        predictions = [m.transferred(p, _evidence(t, residuals, twins)) if twins else p
                       for t, m, p, twins in zip(self.tables, self._models, predictions,
                                                 self._twins, strict=True)]
        scores = np.array([[p.get(s, np.nan) for s in subtasks] for p in per]).reshape(
            len(ok), len(subtasks))
        at = np.array([r.at for r in rows], dtype=int).reshape(len(ok), len(subtasks))
        analysis = Analysis(self.tables, predictions, _combination_weights(ok, per, subtasks),
                            ok, scores, at)
        self._cache = (key, analysis)
        return analysis

    def _row(self, trial: TrialRecord) -> _Row:
        """What the analysis reads of a trial, worked out once per trial: a finished trial
        does not change (the runner keeps its record; a pretend trial is worked out anew)."""
        kept = self._rows.get(trial.number)
        if kept is not None and kept[0] is trial:
            return kept[1]
        subtasks, cm = self.ctx.space.subtasks, self.ctx.cost_model
        row = _Row(stage_scores(trial, subtasks),
                   tuple(t.index.get(trial.allocation[t.subtask], -1) for t in self.tables),
                   # a screen's stage that sampled a fine-tune trained for a prefix of its
                   # steps scored another model than the plan's: it does not inform the plan
                   frozenset(s for s in subtasks if trial.screen
                             and screens_another_model(cm, s, trial.allocation[s])))
        self._rows[trial.number] = (trial, row)
        return row


@dataclass(frozen=True)
class _Row:
    """A trial as the analysis reads it."""

    scores: dict[str, float]  # each stage's score (`stage_scores`)
    at: tuple[int, ...]  # its plan's index in each table (-1: not in it)
    another: frozenset[str]  # the stages whose screen scored another model than the plan's


def _screen_shares(trials: Sequence[TrialRecord], per: Sequence[dict[str, float]],
                   subtasks: Sequence[str]) -> dict[tuple[float, str], float]:
    """(screen fidelity, stage) -> the share of the items a screen's stage score informs
    the score model as (`surrogate.screen_share`), from the full trials scored on the
    screen's items too: a few dozen items may rank plans unlike the whole, and then a
    screen says little."""
    shares = {}
    for fidelity in {t.fidelity for t in trials if t.screen}:
        paired = [(t.on_screen_items.subtask_scores, p) for t, p in zip(trials, per, strict=True)
                  if on_items(t, fidelity) is not None]
        for s in subtasks:
            errors = [float(logit(p[s]) - logit(there[s])) for there, p in paired
                      if s in p and s in there]
            shares[(fidelity, s)] = screen_share(errors, fidelity)
    return shares


def _twins(tables: Sequence[PlanTable]) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
    """Per table, for each other table that offers twins of some of its plans (the same
    n and the same value of every dimension both offer: model, method, aggregator ...):
    that table's number, those plans, and their twins' indices there."""
    out = []
    for t in tables:
        pairs = []
        for k, u in enumerate(tables):
            offered = {d.name for d in u.dims}
            common = [d.name for d in t.dims if d.name in offered]
            if u is t or "model" not in common:
                continue
            there = {key: i for i, key in enumerate(_keys(u.plans, common))}
            found = [(i, there[key]) for i, key in enumerate(_keys(t.plans, common))
                     if key in there]
            if found:
                mine, theirs = zip(*found, strict=True)
                pairs.append((k, np.array(mine), np.array(theirs)))
        out.append(pairs)
    return out


def _keys(plans: Sequence[Plan], dims: Sequence[str]) -> list[tuple]:
    """Each plan's n and its values of `dims`: equal keys, twin plans."""
    return [(p.samples, *(p[d] for d in dims)) for p in plans]


def _evidence(t: PlanTable, residuals: Sequence[np.ndarray],
              twins: Sequence[tuple[int, np.ndarray, np.ndarray]]) -> np.ndarray:
    """(P,) per plan of `t`, what the other stages' score models found of its twins (`_twins`)
    beyond their trends (`SubtaskModel.residual`), averaged over the stages, each centred
    on its twins; 0 where it has none. The residual, not the whole mean: each stage fits
    its own trend in size and training tokens (the whole means lent took 1,857 summed
    median trials on the random tables against 1,820; experiments/README.md)."""
    total, count = np.zeros(len(t.plans)), np.zeros(len(t.plans))
    for k, mine, theirs in twins:
        own = residuals[k][theirs]
        total[mine] += own - own.mean()
        count[mine] += 1
    return np.divide(total, count, out=total, where=count > 0)


def shared_artifacts(ctx: SearchContext) -> dict[Artifact, int]:
    """Artifacts that plans of more than one subtask use, numbered (training paid once)."""
    users = Counter(a for s in ctx.space.subtasks
                    for a in {ctx.cost_model.artifact(s, p) for p in ctx.space.plans(s)})
    shared = [a for a, n in users.items() if n > 1]
    return {a: i for i, a in enumerate(shared)}


def _combination_weights(trials: Sequence[TrialRecord], per: Sequence[dict[str, float]],
                         subtasks: Sequence[str]) -> np.ndarray:
    """Least squares of log end score on log stage scores, shrunk towards the product.

    For a pipeline whose end score is the product of stage scores this returns ones; for
    other combinations it learns how much each stage's score moves the end score. Trials
    with a score at or below the floor are left out: flooring the end score and the stage
    scores each on its own breaks the relation (three stages at 0.01 give an end score of
    1e-6, floored to 1e-4, which would read as stages that matter half as much).
    """
    rows = [(t.score, p) for t, p in zip(trials, per, strict=True)
            if all(s in p for s in subtasks)
            and min(t.score, *(p[s] for s in subtasks)) > FLOOR]
    prior = np.ones(len(subtasks))
    if len(rows) < len(subtasks) + 2:
        return prior
    x = np.log(np.maximum([[p[s] for s in subtasks] for _, p in rows], FLOOR))
    y = np.log(np.maximum([score for score, _ in rows], FLOOR))
    x = np.column_stack([x, np.ones(len(rows))])
    ridge = np.diag([1.0] * len(subtasks) + [1e-3])
    target = np.r_[prior, 0.0]
    coef = np.linalg.solve(x.T @ x + ridge, x.T @ y + ridge @ target)
    return np.clip(coef[:-1], 0.0, None)
