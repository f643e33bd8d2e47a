"""Low-fidelity screens: which proposals the agent first evaluates on a share of the items.

A successive-halving step folded into the agent's loop. An exploratory allocation (one
the score model does not expect to beat the best full trial) that opens an arm no trial
has sampled, when sampling makes up most of what evaluating it would cost, is first
evaluated on a `screen` share of each stage's validation items (`Environment.evaluate`'s
`fidelity`). The screen's stage scores feed the score model like any observation. Then,
as successive halving promotes the best of a rung, the next propose step evaluates in full
the best screen whose score is within `PROMOTE_WITHIN` of the best full evaluation (any
screen before there is one); otherwise the screened allocation is evaluated in full only
if the reasoner proposes it again (a screen is never "seen" by the proposals, and never the
best trial). A screen that disappoints has saved the rest of its arm's sampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from planner.search._base import seen_keys
from planner.search._runner import best_trial
from planner.search.search_cost import SearchCost
from planner.space import Allocation
from planner.store import TrialRecord, TrialStatus

SAVES_AT_LEAST = 0.5  # screen only when a screen costs at most this share of a full trial
PROMOTE_WITHIN = 0.95  # promote a screen scoring at least this share of the best full trial


def fidelities(allocations: Sequence[Allocation], history: Sequence[TrialRecord],
               meter: SearchCost, screen: float | None,
               expected: Callable[[Allocation], float] | None = None) -> list[float]:
    """The fidelity to evaluate each allocation at, in order (each counted as paid for
    the next): `screen` for one not tried at any fidelity that opens an unsampled arm,
    whose screen costs at most `SAVES_AT_LEAST` of its full evaluation and whose
    `expected` score (the score model's mean) does not beat the best full trial (an
    exploratory proposal: a likely winner is evaluated in full at once); else 1."""
    tried = {t.allocation.key() for t in history}
    best = best_trial(history)
    out = []
    for alloc in allocations:
        fidelity = 1.0
        if (screen is not None and alloc.key() not in tried
                and (best is None or expected is None or expected(alloc) < best.score)):
            trains, arms = meter.parts(alloc)
            opens = any(a not in meter.sampled for a in arms)
            train = meter.unpaid_training(trains)
            full = train + meter.unpaid_sampling(arms)
            cheap = train + meter.unpaid_sampling(arms, screen)
            if opens and cheap <= SAVES_AT_LEAST * full:
                fidelity = screen
        meter.add(alloc, fidelity)
        tried.add(alloc.key())
        out.append(fidelity)
    return out


def promotions(history: Sequence[TrialRecord], k: int) -> list[TrialRecord]:
    """Up to `k` screens to evaluate in full next, best first: not evaluated in full yet
    (nor running), scoring at least `PROMOTE_WITHIN` of the best full trial's score."""
    best = best_trial(history)
    full = seen_keys(history)  # tried in full, or running
    ready = [t for t in history
             if t.screen and t.status is TrialStatus.OK and t.score is not None
             and t.allocation.key() not in full
             and (best is None or t.score >= PROMOTE_WITHIN * best.score)]
    ready.sort(key=lambda t: (-t.score, t.number))
    chosen: dict[str, TrialRecord] = {}  # one per allocation (it may be screened at two shares)
    for t in ready:
        chosen.setdefault(t.allocation.key(), t)
    return list(chosen.values())[:k]
