"""Per-subtask score model: every plan's predicted score, with an uncertainty.

A subtask's plans share structure that holds broadly, so one observation informs many plans:

- score versus samples n is close to linear in logit(score) against log2(n) (pass@k and
  majority curves rise and saturate); the slope is shared across arms and shrunk towards
  the aggregator's and the arm's own evidence. Its prior mean is a rise of `_SLOPE_MEAN`
  per doubling (under `oracle`, pass@n, the steeper rise of the recordings: `_prior_rise`),
  so before any arm was tried at two n, more samples are expected to help (not to be worth
  nothing). Log n is centred on the middle of the subtask's n grid, as
  a random slope's covariate is: an arm's effect is its level there, so its uncertainty
  at a large n is not its slope's uncertainty times log n (measured from n = 1, an arm
  never tried looked near-perfect at a large n, whatever its size);
- arms (every dimension but n: model, method, mixture, aggregator) differ by additive
  effects of each dimension's value plus a trend over the compute order (log parameters,
  log training tokens; one size per arm), linear in the mean, so that beyond the sizes
  seen a prediction continues the trend, and smooth around it; curved (squares and product
  of the two) where the trials' evidence favours a curve (Pythia's MATH scores are 0 up to
  a few billion tokens, jump by 20B and stay level); mixtures are compared by
  their weight vectors, so what one mixture scores informs the mixtures that share its
  sources. One sample reads the same under every aggregator, so a plan at n = 1 (written
  `first`) is coded under the first aggregator that reads several: it is that curve's
  first point, not an arm of its own;
- an `oracle` plan (solved if any sample is correct) cannot score above its own arm at a
  larger n, which reads the same samples and more: its predicted score, at any optimism, is
  capped by theirs. Without the cap the score model, sure of an arm at n = 128 and unsure
  how its curve falls to n = 1, rated it higher at n = 1 (an optimistic 0.83 against 0.78
  on Pythia GSM8K), and a two-stage search spent a trial on a stage at n = 1.

This is Bayesian regression on those features, written in its kernel form (a Gaussian
process with a sum kernel) so that its cost grows with observations, not with features.
Kernel weights are picked by marginal likelihood from a small grid. A plan evaluated k
times is observed as the mean of its scores, with 1/k the noise of one evaluation (in a
pipeline the same stage plan recurs in many allocations; one noise for all of them kept
its optimism, and so proposals recombining it, undiminished however often it was seen).
A screen (a score on a share f of the items) is observed with 1/f times the noise of a
full evaluation, and a full evaluation of the plan supersedes its screens.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from planner.artifact import Artifact
from planner.cost import CostModel
from planner.space import (
    ORACLE,
    SINGLE_SAMPLE,
    Allocation,
    Dimension,
    Mixture,
    Plan,
    SearchSpace,
)

_EPS = 1e-3  # scores are clipped to [eps, 1 - eps] before the logit
# Kernel weights at amplitude 1. Level: a constant, the compute trend (an RBF over log size
# and log training tokens, weighed 3x: one probe then informs neighbouring checkpoints, which
# per-value effects cannot when the best checkpoint differs by model size), each dimension's
# effect (equal values, or for a mixture the cosine of the weight vectors) and the arm's own.
# Slope in log n: shared, by aggregator, by model and by arm. Dimensions not named here get
# the default level weight and no slope term.
_CONSTANT, _TREND, _ARM = 1.0, 3.0, 0.5
# Prior variance of the compute trend's coefficients (`SubtaskModel._predict`). At 1 the RBF took up
# much of the trend the sizes seen showed, so beyond them the mean fell back towards their
# average; 3 lifted best@10 on tutor from 0.77 to 0.94, and with the oracle cap (`Prediction`)
# lowered the summed medians on budgets the suite was not tuned on (experiments/README.md).
_LINEAR = 3.0
# Prior variances the trend's curvature terms (`PlanTable.curvature`) may take, each weighed
# against the linear trend alone by marginal likelihood, as the kernel's weights are: the
# trend curves only as far as the trials bear a curve out. Always curved at a variance of 3,
# the trend took monkeys-math to 13 trials but cascades-mmlu-gsm8k at half its budget from 6
# to 18 and the random tables 98 trials further; weighed so, monkeys-math takes 16, and of
# the other recorded and random tables only a five-stage one moves, by a trial
# (experiments/README.md, "A trend that curves where the trials show a curve").
_CURVATURE = (0.1, 0.3, 1.0, 3.0)
_LEVEL = {"model": 0.5, "method": 0.5, "mixture": 0.3, "aggregator": 0.5}
_LEVEL_DEFAULT = 0.5
_SLOPE, _SLOPE_ARM = 0.25, 0.05
_SLOPE_BY = {"aggregator": 0.1, "model": 0.02}
# Prior mean of the slope: logit score gained per doubling of n. Measured on the replay suite
# and wordsum (experiments/README.md): 0 left a stage's n at 1 until a trial showed it rise
# (wordsum: 16 trials to 99%, 0.2 too); 0.25-0.5 gave 5 there, and 0.3 and 0.5 the same
# suite medians within a trial.
_SLOPE_MEAN = 0.3
# Under `oracle` the recordings rise faster while few items are solved: ln 2 per doubling at
# small n (a question solved with chance p in one sample is solved in n with chance about
# n p), 0.54-0.58 at n = 128 and 0.25 from n = 1,024 (experiments/oracle_slopes.py). An oracle
# plan's prior rises `_ORACLE_SLOPE_MEAN` per doubling up to n = 2 ** `_ORACLE_BEND`, then
# `_SLOPE_MEAN`: with 0.3 throughout, a large model the budget lets sample twice read as a
# weak model, not as few samples (experiments/README.md, "The prior rise of pass@n").
_ORACLE_SLOPE_MEAN = float(np.log(2))
_ORACLE_BEND = 7.0
_NOISE = 0.02
_AMPLITUDES = (0.5, 1.0, 2.0, 4.0)
_LENGTHSCALES = (0.5, 1.0, 2.0)
_N = "samples"  # the dimension the logit-linear-in-log-n structure is about


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def expit(y: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-y))


def screen_share(errors: Sequence[float], fidelity: float) -> float:
    """The share of the items a screen at `fidelity` counts as in the score model (its
    noise is a full trial's over the share): `fidelity`, or less where the full trials
    scored on the screen's items too (at least two) missed their full logit scores there
    by more, the noise then being the mean square of those `errors`."""
    if len(errors) < 2:
        return fidelity
    return min(fidelity, _NOISE / max(float(np.mean(np.square(errors))), 1e-12))


@dataclass(frozen=True)
class PlanTable:
    """One subtask's plans as arrays: value codes per dimension, compute features, costs."""

    subtask: str
    plans: tuple[Plan, ...]
    index: dict[Plan, int]
    dims: tuple[Dimension, ...]  # every dimension but samples, in plan order
    codes: np.ndarray  # (P, D + 1) int: each dimension's value index (n = 1 plans: see
    # `build`), then the arm's
    mixes: dict[int, np.ndarray]  # column of a mixture dimension -> (P, S) unit weight vectors
    compute: np.ndarray  # (P, 2) standardised log serving cost per sample, log train tokens
    log_n: np.ndarray  # (P,) log2 samples
    cost: np.ndarray  # (P,) GPU-h of the plan alone (training + inference)
    train: np.ndarray  # (P,) GPU-h of its training
    artifact: np.ndarray  # (P,) id of a trained artifact other subtasks may share, or -1

    @classmethod
    def build(cls, space: SearchSpace, cost_model: CostModel, subtask: str,
              shared: dict[Artifact, int]) -> PlanTable:
        """`shared` numbers the artifacts that plans of several subtasks may use."""
        plans = space.plans(subtask)
        dims = tuple(d for d in space.dimensions(subtask) if d.name != _N)
        values = np.array([[d.index(p[d.name]) for d in dims] for p in plans])
        for j, d in enumerate(dims):
            if d.name == "aggregator" and SINGLE_SAMPLE in d.values and len(d.values) > 1:
                # one sample reads the same under every aggregator: a plan at n = 1 (which
                # the space writes as `first`) is coded as `oracle` where it is offered (the
                # aggregator no other outscores), else as the first aggregator that reads
                # several, so it shares that aggregator's and arm's effects (as `first`, the
                # score model took it for an arm of its own, and spent trials trying n = 1)
                several = d.index(ORACLE) if ORACLE in d.values else next(
                    i for i, v in enumerate(d.values) if v != SINGLE_SAMPLE)
                values[values[:, j] == d.index(SINGLE_SAMPLE), j] = several
        arms = {a: i for i, a in enumerate(sorted({tuple(v) for v in values.tolist()}))}
        codes = np.column_stack([values, [arms[tuple(v)] for v in values]])
        mixes = {j: _unit(np.array(d.weights))[values[:, j]] for j, d in enumerate(dims)
                 if isinstance(d, Mixture)}
        costs = [cost_model.plan_cost(subtask, p) for p in plans]
        artifacts = [cost_model.artifact(subtask, p) for p in plans]
        # size proxy: serving GPU-h per sample (known even where a model's params are not)
        raw = np.array([[np.log(c.inference_gpu_hours / p.samples + 1e-30),
                         np.log1p(cost_model.train_tokens(a))]
                        for p, c, a in zip(plans, costs, artifacts, strict=True)])
        # one size per arm: the prompt is paid once, so the cost per sample falls with n,
        # and a size that did so would lend the compute trend a slope in n
        arm = codes[:, -1]
        raw[:, 0] = (np.bincount(arm, raw[:, 0]) / np.bincount(arm))[arm]
        spread = raw.std(axis=0)
        compute = (raw - raw.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
        return cls(subtask, plans, {p: i for i, p in enumerate(plans)}, dims, codes, mixes,
                   compute, np.log2([p.samples for p in plans]).astype(float),
                   np.array([c.total_gpu_hours for c in costs]),
                   np.array([c.train_gpu_hours for c in costs]),
                   np.array([shared.get(a, -1) for a in artifacts]))

    def column(self, name: str) -> int:
        """The codes column of a dimension."""
        return next(j for j, d in enumerate(self.dims) if d.name == name)

    @cached_property
    def oracle(self) -> np.ndarray:
        """(P,) the plans under `oracle` (a plan at n = 1 is coded so where it is offered:
        `build`); none where it is not offered."""
        j = self.column("aggregator")
        aggregator = self.dims[j]
        if ORACLE not in aggregator.values:
            return np.zeros(len(self.plans), dtype=bool)
        return self.codes[:, j] == aggregator.index(ORACLE)

    def largest_n(self, groups: np.ndarray, among: np.ndarray) -> np.ndarray:
        """(P,) per plan, the largest log2 n of the `among` plans in its group (`groups`: a
        number per plan), -inf where there is none."""
        top = np.full(groups.max() + 1, -np.inf)
        np.maximum.at(top, groups[among], self.log_n[among])
        return top[groups]

    @cached_property
    def oracle_runs(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The `oracle` plans' indices, arm by arm and from the largest n down, and twice
        each one's arm's rank in that order (`Prediction.score` caps along them); None
        where no plan is oracle."""
        if not self.oracle.any():
            return None
        oracle = np.flatnonzero(self.oracle)
        arm = self.codes[oracle, -1]
        order = oracle[np.lexsort((-self.log_n[oracle], arm))]
        rank = np.cumsum(np.r_[0, np.diff(self.codes[order, -1]) != 0])
        return order, 2.0 * rank

    @cached_property
    def below_oracle(self) -> np.ndarray:
        """(P,) the plans, under another aggregator, whose `oracle` twin (the same values
        and n) costs no more: a question counts as solved if any of the same samples solves
        it, so no aggregator that reads them scores above `oracle`."""
        oracle = self.oracle
        if not oracle.any():
            return oracle
        _, twin = np.unique(np.column_stack([self.served, self.log_n]), axis=0,
                            return_inverse=True)
        twin = twin.ravel()
        cost = np.full(twin.max() + 1, np.inf)  # per twin group, its oracle plan's cost
        cost[twin[oracle]] = self.cost[oracle]
        return ~oracle & (cost[twin] <= self.cost)

    def bounded(self, evaluated: np.ndarray) -> np.ndarray:
        """(P,) the plans that score no more than an `evaluated` `oracle` plan of their
        served arm at an n no smaller: it reads the same samples and more, and no aggregator
        of them scores above it (none where `oracle` is not offered)."""
        return self.log_n <= self.largest_n(self.served, evaluated & self.oracle)

    @cached_property
    def served(self) -> np.ndarray:
        """(P,) each plan's served arm, numbered: its values but the aggregator (the plans
        of one served arm read one set of samples: `planner.draws`)."""
        rest = np.delete(self.codes[:, :-1], self.column("aggregator"), axis=1)
        return np.unique(rest, axis=0, return_inverse=True)[1].ravel()

    @cached_property
    def curvature(self) -> np.ndarray:
        """(P, 3) the compute features' squares and their product: a curved trend's terms."""
        return np.column_stack([self.compute ** 2, self.compute[:, 0] * self.compute[:, 1]])

    @cached_property
    def slope_x(self) -> np.ndarray:
        """(P,) log2 n less its middle over the subtask's n grid: the covariate of the
        slopes, which pivot there."""
        return self.log_n - np.unique(self.log_n).mean()

    @cached_property
    def low(self) -> np.ndarray:
        """(P,) the least a plan may cost in an allocation: its training is free where it
        trains an artifact another subtask may pay for."""
        return self.cost - np.where(self.artifact >= 0, self.train, 0.0)

    @cached_property
    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Level and slope kernel weights of each codes column (dimensions, then the arm)."""
        level = [_LEVEL.get(d.name, _LEVEL_DEFAULT) for d in self.dims] + [_ARM]
        slope = [_SLOPE_BY.get(d.name, 0.0) for d in self.dims] + [_SLOPE_ARM]
        return np.array(level), np.array(slope)


def _prior_rise(t: PlanTable) -> np.ndarray:
    """(P,) the prior mean's rise with n, per plan: `_SLOPE_MEAN` per doubling of n; an
    `oracle` plan's `_ORACLE_SLOPE_MEAN` up to n = 2 ** `_ORACLE_BEND`, `_SLOPE_MEAN` beyond."""
    bent = (_ORACLE_SLOPE_MEAN * np.minimum(t.log_n, _ORACLE_BEND)
            + _SLOPE_MEAN * np.maximum(t.log_n - _ORACLE_BEND, 0.0))
    return np.where(t.oracle, bent, _SLOPE_MEAN * t.log_n)


def allocation_value(tables: Sequence[PlanTable], values: Sequence[np.ndarray],
                     allocation: Allocation) -> float:
    """An allocation's total value: each stage's plan's entry in `values` (one array per
    table, as `Analysis.plan_values` gives them), summed."""
    return sum(float(v[t.index[allocation[t.subtask]]])
               for t, v in zip(tables, values, strict=True))


def _unit(weights: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so their dot products are cosines."""
    return weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)


def _kernel_pieces(t: PlanTable, a: np.ndarray,
                   b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parts of the kernel between plan indices `a` and `b` that do not depend on its
    hyperparameters: squared compute distance, level effects and the slope term. Each entry
    depends on its pair of plans alone, so entries may be computed once and kept."""
    level_w, slope_w = t.weights
    same = (t.codes[a][:, None, :] == t.codes[b][None, :, :]).astype(float)  # (A, B, D + 1)
    for j, unit in t.mixes.items():
        same[..., j] = unit[a] @ unit[b].T
    d2 = ((t.compute[a][:, None, :] - t.compute[b][None, :, :]) ** 2).sum(-1)
    slope = _SLOPE + same @ slope_w
    return d2, same @ level_w, np.outer(t.slope_x[a], t.slope_x[b]) * slope


def _kernel_at(pieces: tuple[np.ndarray, np.ndarray, np.ndarray], ell: float) -> np.ndarray:
    """The kernel at amplitude 1 and trend lengthscale `ell`, from its pieces."""
    d2, level_effect, slope_term = pieces
    trend = np.exp(-d2 / (2 * ell * ell))
    return _CONSTANT + _TREND * trend + level_effect + slope_term


def _trend_fits(a: np.ndarray, z: np.ndarray,
                priors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `priors` (V, F: the coefficients' independent prior variances), the log
    marginal likelihood (less what every basis shares) and the coefficients' posterior mean
    of a trend whose basis functions, whitened by the kernel's factor, are `a` (O, F), for
    whitened residuals `z`: z ~ N(0, I + A diag(prior) A'), by Woodbury and the determinant
    lemma. (V,) and (V, F); the rows are solved as one batch."""
    m = (a.T @ a)[None] + np.eye(a.shape[1])[None] / priors[:, None, :]  # (V, F, F)
    b = a.T @ z
    beta = np.linalg.solve(m, np.broadcast_to(b[:, None], (len(priors), *b.shape, 1)))[..., 0]
    logdet = np.linalg.slogdet(m)[1] + np.log(priors).sum(axis=1)
    return 0.5 * (beta @ b - logdet), beta


def _mean(scores: list[float]) -> float:
    """`np.mean`, which a single score skips (x / 1 is x: the same number, without the
    microseconds `np.mean` spends on a one-element list, many times per fit)."""
    return scores[0] if len(scores) == 1 else float(np.mean(scores))


@dataclass(frozen=True)
class _Fitted:
    """A posterior's parts that the mean's trend (`SubtaskModel._predict`) is fitted on."""

    idx: np.ndarray  # (O,) the observed plans
    inverse: np.ndarray  # (O, O) L^-1, L the Cholesky factor of their covariance
    z: np.ndarray  # (O,) their whitened residuals, L^-1 (y - mean y)
    v: np.ndarray  # (O, P) L^-1 K(observed, every plan)
    level: float  # the mean observed logit, less the prior rise
    std: np.ndarray  # (P,) the posterior standard deviation


@dataclass(frozen=True)
class Prediction:
    """Posterior logit-score mean and standard deviation for every plan of a subtask."""

    mean: np.ndarray
    std: np.ndarray
    oracle_runs: tuple[np.ndarray, np.ndarray] | None = None  # `PlanTable.oracle_runs`

    def score(self, kappa: float = 0.0) -> np.ndarray:
        """Score at `kappa` standard deviations above the mean (0: the mean); an `oracle`
        plan's at most its arm's at any larger n."""
        score = expit(self.mean + kappa * self.std)
        if self.oracle_runs is not None:
            # a running minimum from each arm's largest n down; scores lie in [0, 1], so
            # lowering each arm by twice its rank starts every arm's minimum afresh
            order, offset = self.oracle_runs
            score[order] = np.minimum.accumulate(score[order] - offset) + offset
        return score


class SubtaskModel:
    """Fits observed (plan, score) pairs of one subtask and predicts all its plans.

    The kernel between every plan and an observed plan, at amplitude 1 and each grid
    lengthscale, depends on the table alone, so it is computed once per observed plan and
    kept (a row of P values per lengthscale); and a fit to the same observed plans and mean
    scores as the last one returns the last prediction.
    """

    def __init__(self, table: PlanTable) -> None:
        self.table = table
        self._row = np.full(len(table.plans), -1)  # plan index -> its row in `_known`
        # (lengthscales, rows, P): per lengthscale, the kernel between each plan seen (the
        # first `_seen` rows; the rest is room to grow into) and every plan
        self._known = np.zeros((len(_LENGTHSCALES), 8, len(table.plans)))
        self._seen = 0
        self._last: tuple[tuple[bytes, bytes, bytes], Prediction] | None = None
        self._fitted: _Fitted | None = None  # the last posterior's parts (`transferred`)
        # (P,) what the last fit's kernel adds to its mean's trends: each plan's own
        # effects, as far as the observations show them (0 before any)
        self.residual = np.zeros(len(table.plans))
        self._trend = _prior_rise(table)
        level_w, slope_w = table.weights
        self._prior_var = (_CONSTANT + _TREND + level_w.sum()  # per plan, at amplitude 1
                           + (_SLOPE + slope_w.sum()) * table.slope_x ** 2)

    def fit(self, observations: Iterable[tuple[int, float, float]]) -> Prediction:
        """The posterior given (plan index, score, fidelity) observations: a plan's full
        evaluations, or else its screens (whose fidelities add up, to at most 1). An index
        of -1 (a plan not in the table) is left out."""
        t = self.table
        full: dict[int, list[float]] = {}
        screens: dict[int, list[float]] = {}
        shares: dict[int, float] = {}
        for i, score, fidelity in observations:
            if i < 0:
                continue
            if fidelity >= 1.0:
                full.setdefault(i, []).append(score)
            else:
                screens.setdefault(i, []).append(score)
                shares[i] = min(1.0, shares.get(i, 0.0) + fidelity)
        if not full and not screens:
            self._last, self._fitted, self.residual = None, None, np.zeros(len(t.plans))
            return Prediction(self._trend, np.sqrt(self._prior_var), t.oracle_runs)
        idx = np.array(sorted(full.keys() | screens.keys()))
        y = logit(np.array([_mean(full[i] if i in full else screens[i]) for i in idx]))
        noise = np.array([_NOISE / len(full[i]) if i in full else _NOISE / shares[i]
                          for i in idx])
        key = (idx.tobytes(), y.tobytes(), noise.tobytes())
        if self._last is None or self._last[0] != key:
            self._fitted = self._posterior(idx, y, noise)
            prediction, self.residual = self._predict(self.table.compute)
            self._last = (key, prediction)
        return self._last[1]

    def transferred(self, prediction: Prediction, evidence: np.ndarray) -> Prediction:
        """The last fit's `prediction` with `evidence` (P,: what the other stages' score
        models found of each plan's twin beyond their trends, `analysis._evidence`) as one
        more basis function of the mean beside the compute trend, its weight fitted on
        this stage's trials as the trend's is: where a stage's models rank as in the
        others (Pythia's checkpoints on GSM8K and on MATH), one stage's trials inform the
        others' predictions, as far as this stage's own trials bear the evidence out. The
        uncertainty is the kernel's, as before. Before any observation, `prediction`."""
        if self._fitted is None:
            return prediction
        return self._predict(np.column_stack([self.table.compute, evidence]))[0]

    def _posterior(self, idx: np.ndarray, y: np.ndarray, noise: np.ndarray) -> _Fitted:
        """The parts of the posterior at every plan given logit scores `y` at plan indices
        `idx` observed with `noise` (at amplitude 1), with the kernel weights of the highest
        marginal likelihood on the grid.

        The amplitude scales the whole covariance (kernel and noise alike), so one Cholesky
        factor per lengthscale serves every amplitude: at amplitude a the factor is
        sqrt(a) L, the weights alpha / a, the log determinant grows by (O/2) log a, and the
        posterior mean does not change."""
        y = y - self._trend[idx]
        r = y - y.mean()
        rows = self._rows(idx)
        # per lengthscale, the kernel between the observed plans (O, O), plus their noise
        k = self._known[:, rows[:, None], idx].transpose(0, 2, 1) + np.diag(noise)
        chols = np.linalg.cholesky(k)
        inverse = np.linalg.inv(chols)  # L^-1: then every solve below is a product
        z = inverse @ r  # (L, O)
        quad = (z * z).sum(axis=1)  # r' K^-1 r at amplitude 1
        logdet = np.log(np.diagonal(chols, axis1=1, axis2=2)).sum(axis=1)
        grid = [(amp, j) for amp in _AMPLITUDES for j in range(len(_LENGTHSCALES))]
        nll = [0.5 * quad[j] / amp + logdet[j] + 0.5 * len(r) * np.log(amp)
               for amp, j in grid]
        amp, j = grid[min(range(len(grid)), key=nll.__getitem__)]  # first of equal ones
        v = inverse[j] @ self._known[j, rows]  # (O, P)
        var = np.maximum(amp * (self._prior_var - (v * v).sum(axis=0)), 1e-9)
        return _Fitted(idx, inverse[j], z[j], v, float(y.mean()), np.sqrt(var))

    def _predict(self, features: np.ndarray) -> tuple[Prediction, np.ndarray]:
        """The last posterior's prediction, and what its kernel adds to the trend: a
        linear trend of the logit in `features` (per plan: the compute features, log size
        and log training tokens, and any `transferred` evidence) as explicit basis
        functions of the mean (Rasmussen & Williams 2006, 2.7), its coefficients' posterior
        mean under a N(0, `_LINEAR`) prior, and the whitened residuals the kernel then
        explains. Beyond the sizes seen, the mean follows the trend instead of falling back
        to the observed mean; the uncertainty is the kernel's alone (the coefficients' own
        would make the extremes the most uncertain plans, and trials went to them). The
        curvature terms join the basis at the prior variance in `_CURVATURE` of the highest
        marginal likelihood, where that beats the linear trend's."""
        f = self._fitted
        assert f is not None  # only a fit to observations predicts so
        a = f.inverse @ features[f.idx]  # (O, F): L^-1 X
        straight, betas = _trend_fits(a, f.z, np.full((1, a.shape[1]), _LINEAR))
        beta = betas[0]
        bends = self.table.curvature
        curved = np.column_stack([a, f.inverse @ bends[f.idx]])
        priors = np.column_stack([np.full((len(_CURVATURE), a.shape[1]), _LINEAR),
                                  np.repeat(np.array(_CURVATURE)[:, None], bends.shape[1],
                                            axis=1)])
        evidence, betas = _trend_fits(curved, f.z, priors)
        if evidence.size and evidence.max() > straight[0]:
            beta = betas[int(np.argmax(evidence))]
        trend = features @ beta[:a.shape[1]]
        if beta.size > a.shape[1]:
            trend += bends @ beta[a.shape[1]:]
            a = curved
        kernel = f.v.T @ (f.z - a @ beta)
        mean = f.level + self._trend + trend + kernel
        return Prediction(mean, f.std, self.table.oracle_runs), kernel

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        """The rows of `_known` that hold the plans `idx`: the kernel at amplitude 1
        between each of them and every plan, per grid lengthscale, computed the first time
        the plan is observed (the rows' room doubles when it runs out)."""
        new = idx[self._row[idx] < 0]
        if new.size:
            pieces = _kernel_pieces(self.table, np.arange(len(self.table.plans)), new)
            end = self._seen + new.size
            if end > self._known.shape[1]:
                grown = np.zeros((len(_LENGTHSCALES), max(2 * self._known.shape[1], end),
                                  len(self.table.plans)))
                grown[:, :self._seen] = self._known[:, :self._seen]
                self._known = grown
            for known, ell in zip(self._known, _LENGTHSCALES, strict=True):
                known[self._seen:end] = _kernel_at(pieces, ell).T
            self._row[new] = np.arange(self._seen, end)
            self._seen = end
        return self._row[idx]
