"""Per-subtask score model: every plan's predicted score, with an uncertainty.

A subtask's plans share structure that holds broadly, so one observation informs many plans:

- score versus samples n is close to linear in logit(score) against log2(n) (pass@k and
  majority curves rise and saturate); the slope is shared across arms and shrunk towards
  the aggregator's and the arm's own evidence;
- arms (model, method, mixture, aggregator) differ by additive effects of each field plus
  a smooth trend over the compute order (log parameters, log training tokens).

This is Bayesian regression on those features, written in its kernel form (a Gaussian
process with a sum kernel) so that its cost grows with observations, not with features.
Kernel weights are picked by marginal likelihood from a small grid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from planner.cost import CostModel
from planner.space import Plan, SearchSpace

_EPS = 1e-3  # scores are clipped to [eps, 1 - eps] before the logit
# kernel weights at amplitude 1: (constant, compute trend, model, method, mixture,
# aggregator, arm, slope, slope by aggregator, slope by model, slope by arm); noise apart
# the compute trend (an RBF over log size and log training tokens) weighs 3x: one probe then
# informs neighbouring checkpoints, which per-field effects cannot when the best checkpoint
# differs by model size
_WEIGHTS = np.array([1.0, 3.0, 0.5, 0.5, 0.3, 0.5, 0.5, 0.25, 0.1, 0.02, 0.05])
_NOISE = 0.02
_AMPLITUDES = (0.5, 1.0, 2.0, 4.0)
_LENGTHSCALES = (0.5, 1.0, 2.0)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def expit(y: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-y))


@dataclass(frozen=True)
class PlanTable:
    """One subtask's plans as arrays: codes of each field, compute features, exact costs."""

    subtask: str
    plans: list[Plan]
    index: dict[Plan, int]
    levels: tuple[list[str], ...]  # names of the codes of model, method, mixture, aggregator
    codes: np.ndarray  # (P, 5) int: model, method, mixture, aggregator, arm
    compute: np.ndarray  # (P, 2) standardised log serving cost per sample, log train tokens
    log_n: np.ndarray  # (P,) log2 samples
    cost: np.ndarray  # (P,) GPU-h of the plan alone (training + inference)
    train: np.ndarray  # (P,) GPU-h of its training
    artifact: np.ndarray  # (P,) id of a trained artifact other subtasks may share, or -1

    @classmethod
    def build(cls, space: SearchSpace, cost_model: CostModel, subtask: str,
              artifacts: dict[tuple[str, ...], int]) -> PlanTable:
        spec = space.spec
        plans = list(space.plans(subtask))
        fields = ("model", "method", "mixture", "aggregator")
        levels = tuple(list(space.choices(subtask)[f]) for f in fields)
        arms = sorted({(p.model, p.method, p.mixture, p.aggregator) for p in plans})
        arm_id = {a: i for i, a in enumerate(arms)}
        codes = np.array([[lv.index(getattr(p, f)) for f, lv in zip(fields, levels, strict=True)]
                          + [arm_id[(p.model, p.method, p.mixture, p.aggregator)]]
                          for p in plans])
        costs = [cost_model.plan_cost(subtask, p) for p in plans]
        # size proxy: serving GPU-h per sample (known even where a model's params are not)
        raw = np.array([[np.log(c.inference_gpu_hours / p.samples + 1e-30),
                         np.log1p(spec.method(p.method).train_tokens)]
                        for p, c in zip(plans, costs, strict=True)])
        spread = raw.std(axis=0)
        compute = (raw - raw.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        artifact = [artifacts.setdefault(cost_model.artifact(subtask, p), len(artifacts))
                    if spec.method(p.method).kind in ("none", "pretrain") else -1
                    for p in plans]
        return cls(subtask, plans, {p: i for i, p in enumerate(plans)}, levels, codes, compute,
                   np.log2([p.samples for p in plans]).astype(float),
                   np.array([c.total_gpu_hours for c in costs]),
                   np.array([c.train_gpu_hours for c in costs]), np.array(artifact))


def _kernel(t: PlanTable, a: np.ndarray, b: np.ndarray, amp: float, ell: float) -> np.ndarray:
    """Prior covariance of logit scores between plan indices `a` and `b`."""
    w = _WEIGHTS * amp
    ca, cb = t.codes[a][:, None, :], t.codes[b][None, :, :]
    same = (ca == cb).astype(float)  # (A, B, 5)
    d2 = ((t.compute[a][:, None, :] - t.compute[b][None, :, :]) ** 2).sum(-1)
    trend = np.exp(-d2 / (2 * ell * ell))
    level = w[0] + w[1] * trend + same @ w[2:7]
    slope = w[7] + w[8] * same[..., 3] + w[9] * same[..., 0] + w[10] * same[..., 4]
    return level + np.outer(t.log_n[a], t.log_n[b]) * slope


@dataclass(frozen=True)
class Prediction:
    """Posterior logit-score mean and standard deviation for every plan of a subtask."""

    mean: np.ndarray
    std: np.ndarray

    def score(self, kappa: float = 0.0) -> np.ndarray:
        """Score at `kappa` standard deviations above the mean (0: the mean)."""
        return expit(self.mean + kappa * self.std)


class SubtaskModel:
    """Fits observed (plan, score) pairs of one subtask and predicts all its plans."""

    def __init__(self, table: PlanTable) -> None:
        self.table = table

    def fit(self, observations: Iterable[tuple[Plan, float]]) -> Prediction:
        t = self.table
        scores: dict[int, list[float]] = {}
        for plan, score in observations:
            if plan in t.index:
                scores.setdefault(t.index[plan], []).append(score)
        if not scores:
            return Prediction(np.zeros(len(t.plans)), np.sqrt(self._prior_var(1.0)))
        idx = np.array(sorted(scores))
        y = logit(np.array([np.mean(scores[i]) for i in idx]))
        mu = y.mean()
        best = None
        for amp in _AMPLITUDES:
            for ell in _LENGTHSCALES:
                k = _kernel(t, idx, idx, amp, ell) + _NOISE * amp * np.eye(len(idx))
                chol = np.linalg.cholesky(k)
                alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y - mu))
                nll = 0.5 * (y - mu) @ alpha + np.log(np.diag(chol)).sum()
                if best is None or nll < best[0]:
                    best = (nll, amp, ell, chol, alpha)
        _, amp, ell, chol, alpha = best
        cross = _kernel(t, np.arange(len(t.plans)), idx, amp, ell)  # (P, O)
        v = np.linalg.solve(chol, cross.T)
        var = np.maximum(self._prior_var(amp) - (v * v).sum(axis=0), 1e-9)
        return Prediction(mu + cross @ alpha, np.sqrt(var))

    def _prior_var(self, amp: float) -> np.ndarray:
        return amp * (_WEIGHTS[:7].sum() + _WEIGHTS[7:].sum() * self.table.log_n ** 2)
