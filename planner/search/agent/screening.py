"""Low-fidelity screens: which proposals the agent first evaluates on a share of the items.

A successive-halving step folded into the agent's loop. An exploratory allocation (one the
score model does not expect to beat the best full trial) that opens an arm no trial has
sampled, when sampling makes up most of what evaluating it would cost, is first evaluated
on a `screen` share of each stage's validation items (`Environment.evaluate`'s
`fidelity`). The screen's stage scores feed the score model, with the noise of a share of
the items, or more where full trials scored on the screen's items missed their full scores
there by more (`surrogate.screen_share`). Then, as successive halving promotes the best of
a rung, the next propose step evaluates in full the best screen whose score is within
`PROMOTE_WITHIN` of the best full evaluation on the screen's own items (`reference`: every
full trial is scored on them too, from the same samples; any screen before there is a full
trial); otherwise the screened allocation is evaluated in full only if the reasoner
proposes it again (a screen is never "seen" by the proposals, and never the best trial). A
screen that disappoints has saved the rest of its arm's sampling.

Where the environment screens training (live tasks: `planner.env.screens_training`), a
screen also trains each resumable fine-tune for the screen's share of its steps, a prefix
the full evaluation resumes. Such a screen scores a less trained model: the score model
does not learn from its stage (`analysis.Analyst`), it is promoted when it leads its rung
(the screens at its fidelity that trained prefixes, as successive halving promotes the top
of a rung) and otherwise dropped (`settled`), having saved the rest of its training and
sampling. Probes are never screened so: they are there to teach the score model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from planner.cost import CostModel
from planner.search._base import seen_keys
from planner.search._runner import best_trial
from planner.search.search_cost import SearchCost, screens_another_model
from planner.space import Allocation
from planner.store import TrialRecord, TrialStatus

SAVES_AT_LEAST = 0.5  # screen only when a screen costs at most this share of a full trial
PROMOTE_WITHIN = 0.95  # promote a screen scoring at least this share of the best full trial
# on the screen's items


def fidelities(allocations: Sequence[Allocation], history: Sequence[TrialRecord],
               meter: SearchCost, screen: float | None,
               expected: Callable[[Allocation], float] | None = None,
               unscreened: Callable[[Allocation], bool] | None = None) -> list[float]:
    """The fidelity to evaluate each allocation at, in order (each counted as paid for
    the next): `screen` for one not tried at any fidelity that opens an unsampled arm,
    whose screen costs at most `SAVES_AT_LEAST` of its full evaluation and whose
    `expected` score (the score model's mean) does not beat the best full trial (an
    exploratory proposal: a likely winner is evaluated in full at once), unless
    `unscreened` says it must not be; else 1."""
    tried = {t.allocation.key() for t in history}
    best = best_trial(history)
    out = []
    for alloc in allocations:
        fidelity = 1.0
        if (screen is not None and alloc.key() not in tried
                and (best is None or expected is None or expected(alloc) < best.score)
                and (unscreened is None or not unscreened(alloc))):
            full, cheap = meter.marginal(alloc), meter.marginal(alloc, screen)
            if meter.opens(alloc) and cheap <= SAVES_AT_LEAST * full:
                fidelity = screen
        meter.add(alloc, fidelity)
        tried.add(alloc.key())
        out.append(fidelity)
    return out


def trains_prefixes(cost_model: CostModel, allocation: Allocation) -> bool:
    """Whether a screen of the allocation trains a fine-tune for a prefix of its steps
    (`search_cost.screens_another_model`): it scores a less trained model, which the
    score model does not learn from (`analysis.Analyst`)."""
    return any(screens_another_model(cost_model, s, p) for s, p in allocation.items())


def settled(history: Sequence[TrialRecord], cost_model: CostModel) -> set[str]:
    """Keys of the allocations a proposal must not repeat: those in the history
    (`seen_keys`), and those screened with a prefix-trained fine-tune (`trains_prefixes`):
    their rung promotes them (`promotions`) or, as successive halving does with the rest
    of a rung, they are dropped."""
    return seen_keys(history) | {t.allocation.key() for t in history
                                 if t.screen and trains_prefixes(cost_model, t.allocation)}


def on_items(trial: TrialRecord, fidelity: float) -> float | None:
    """The score a full trial reached on the items a screen at `fidelity` evaluates; None
    when it was not scored there (a screen, or a trial a study ran before it screened)."""
    there = trial.on_screen_items
    return there.score if trial.final and there and there.fidelity == fidelity else None


def best_on_items(history: Sequence[TrialRecord], fidelity: float) -> float | None:
    """The best score a full trial reached on the items a screen at `fidelity` evaluates
    (`on_items`); None where no full trial was scored there."""
    return max((x for t in history if (x := on_items(t, fidelity)) is not None), default=None)


def reference(history: Sequence[TrialRecord], fidelity: float) -> float | None:
    """What a screen at `fidelity` is measured against: `best_on_items`, or where no full
    trial was scored there (a study resumed with screens), the best full score; None before
    any full trial. A quarter of a few dozen items may hold far more or fewer unsolvable
    ones than the whole (`experiments/README.md`, "Random shapes")."""
    there = best_on_items(history, fidelity)
    best = best_trial(history)
    return there if there is not None else None if best is None else best.score


def promotions(history: Sequence[TrialRecord], k: int,
               prefix: Callable[[TrialRecord], bool] = lambda _: False) -> list[TrialRecord]:
    """Up to `k` screens to evaluate in full next, best first: not evaluated in full yet
    (nor running), scoring above 0 and at least `PROMOTE_WITHIN` of the best full trial on
    the screen's items (`reference`; any screen before a full trial). A screen that trained
    a `prefix` of a fine-tune's steps scored a less trained model, which no full trial is
    measured against: its bar is the best such screen at its fidelity (the top of its
    rung)."""
    full = seen_keys(history)  # tried in full, or running
    screens = [t for t in history
               if t.screen and t.status is TrialStatus.OK and t.score is not None]
    rung: dict[float, float] = {}  # fidelity -> the best prefix screen's score
    for t in screens:
        if prefix(t):
            rung[t.fidelity] = max(t.score, rung.get(t.fidelity, 0.0))
    against = {f: reference(history, f) for f in {t.fidelity for t in screens}}

    def passes(t: TrialRecord) -> bool:
        bar = rung[t.fidelity] if prefix(t) else against[t.fidelity]
        return bar is None or t.score > 0 and t.score >= PROMOTE_WITHIN * bar

    ready = [t for t in screens if t.allocation.key() not in full and passes(t)]
    ready.sort(key=lambda t: (-t.score, t.number))
    chosen: dict[str, TrialRecord] = {}  # one per allocation (it may be screened at two shares)
    for t in ready:
        chosen.setdefault(t.allocation.key(), t)
    return list(chosen.values())[:k]
