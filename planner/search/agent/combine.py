"""Combine per-subtask frontiers under the shared budget.

Each subtask contributes a value per plan (e.g. its weighted log optimistic score; the
end-to-end objective is their sum) and an exact cost. Plans are pruned to the first
Pareto layers of (cost, value), merged subtask by subtask (a pre-trained checkpoint shared
by two subtasks is paid once, as in `CostModel.estimate`), pruned again, and the best
allocations that fit the budget and were not evaluated are returned. `frontier` also
leaves out allocations that only recombine stage plans evaluated before, unless their
known stage scores beat the best end score: each stage's score model learns only from its
own plan, so such a trial teaches it nothing. `recombination` finds the one that beats it
most, a near-sure gain the builtin reasoner takes first. A partial allocation that paid
for a checkpoint later stages may reuse is pruned only for one cheaper than it would then
cost, for a cheaper one that paid for the same checkpoints, or for one that paid for one
of them too and costs no more than it would once the others are shared; the
recombination search also prunes each stage's plans so, which makes it exact.
`best_allocation` finds the single best allocation with nothing left out, exactly and
cheaply, by bounding what the stages not yet merged can add; `none_above` proves so that
no unseen allocation beats a bar; and past three stages the same bound, at a quick pick's
value, lets `best_allocations` drop what cannot beat that pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from planner.cost import CostModel
from planner.search.agent.analysis import FLOOR, Analysis
from planner.search.agent.surrogate import PlanTable, allocation_value
from planner.space import Allocation

# How far a known log end score must exceed the best trial's to beat it: a sum of stage logs
# and the log of their product differ in the last bits, and a recombination that ties the
# best (a stage plan scoring as the one it replaces) must not count as a gain
TIE = 1e-9
# The most partial allocations `none_above` looks at before it gives up its proof: with no
# pruning by dominance, a bound too weak to prune could make millions (5-stage tables)
PROOF_ROWS = 20_000
# From this many stages on, `best_allocations` first makes a quick pick (one Pareto layer)
# and then keeps only the plans and partial allocations that could beat it (`_Bound`)
BARRED_STAGES = 4


@dataclass(frozen=True)
class Paid:
    """The trainings a later stage may reuse that each partial allocation (a row) paid for.
    Rows of one `group` paid for the same set, so they save the same on any completion; a
    (row, training) pair says a row paid for that training, at `gpu_hours`."""

    group: np.ndarray  # (rows,) an id per set: equal ids, equal sets
    row: np.ndarray  # (pairs,)
    training: np.ndarray  # (pairs,) the training's artifact id
    gpu_hours: np.ndarray  # (pairs,)

    def credit(self, rows: int) -> np.ndarray:
        """(rows,) the GPU-h each row paid for trainings a later stage may reuse."""
        return np.bincount(self.row, self.gpu_hours, minlength=rows)


def pareto_layers(cost: np.ndarray, value: np.ndarray, keep: int,
                  low: np.ndarray | None = None, paid: Paid | None = None) -> np.ndarray:
    """Indices of the first (cheapest, highest-value) Pareto layers, peeled until `keep`.

    A point is dominated by one before it (cheaper, or as cheap and of more value) of at
    least its value that costs no more than its `low` (default its cost): the least it may
    come to cost once the trainings it paid are shared with stages merged later, so a pricey
    plan whose pre-training later stages reuse is not dropped for a cheaper one that shares
    nothing. With `paid` (rows are partial allocations; `low` their cost less their
    `Paid.credit`), a point is also dominated by one that paid for the same set
    (`Paid.group`: then cost alone decides), or for a training it paid too and costs no
    more than its low plus that training (any completion saves the other at least as much
    on it)."""
    low = cost if low is None else low
    remaining = np.lexsort((-value, cost))
    rank = None if paid is None else np.unique(value, return_inverse=True)[1].ravel()
    chosen: list[np.ndarray] = []
    total = 0
    while remaining.size and total < keep:
        v = value[remaining]
        top = np.concatenate([[-np.inf], np.maximum.accumulate(v)])  # top[k]: max of v[:k]
        front = np.ones(v.size, dtype=bool)
        if paid is not None and rank is not None:
            front = ~_beaten_in_group(paid.group[remaining], rank[remaining])
        # the points that may dominate each: those before it, at most as costly as its low
        at = np.flatnonzero(front)
        reach = np.minimum(at, np.searchsorted(cost[remaining], low[remaining[at]],
                                               side="right"))
        front[at] = v[at] > top[reach]
        if paid is not None and rank is not None:
            # a point dominated by one dominated in turn is dominated by what dominates
            # that one, under these rules: the points left by the others are witness enough
            front[front] = ~_beaten_by_training(paid, remaining[front], cost, low, rank)
        layer = remaining[front]
        chosen.append(layer)
        total += layer.size
        remaining = remaining[~front]
    return np.concatenate(chosen) if chosen else remaining


def _beaten_in_group(group: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For points in order, whether one before it of the same `group` has a value `rank`
    at least its own (`_beaten_in_segments` over the points sorted stably by group)."""
    order = np.argsort(group, kind="stable")
    beaten = np.empty(len(group), dtype=bool)
    beaten[order] = _beaten_in_segments(group[order], rank[order], int(rank.max()) + 1)
    return beaten


def _beaten_by_training(paid: Paid, rows: np.ndarray, cost: np.ndarray, low: np.ndarray,
                        rank: np.ndarray) -> np.ndarray:
    """For points `rows` (in order), whether one before it of them that paid for a training
    it paid too, of a value `rank` at least its own, costs no more than its low plus that
    training (`_beaten_in_segments` over the points that paid for each training, read
    where their cost passes that bound)."""
    place = np.full(len(cost), -1)  # a row's place in `rows`, -1: not in them
    place[rows] = np.arange(rows.size)
    mine = place[paid.row] >= 0
    at, training, extra = place[paid.row[mine]], paid.training[mine], paid.gpu_hours[mine]
    by = np.argsort(training * rows.size + at)  # by training, then in order
    at, training, extra = at[by], training[by], extra[by]
    reach = np.minimum(at, np.searchsorted(cost[rows], low[rows[at]] + extra, side="right"))
    beaten = np.zeros(rows.size, dtype=bool)
    beaten[at[_beaten_in_segments(training, rank[rows[at]], int(rank.max()) + 1,
                                  at, reach)]] = True
    return beaten


def _beaten_in_segments(segment: np.ndarray, rank: np.ndarray, span: int,
                        at: np.ndarray | None = None,
                        reach: np.ndarray | None = None) -> np.ndarray:
    """For points listed by `segment`, then in order, whether one before it of its segment
    has a value `rank` (below `span`) at least its own: a running maximum of one integer
    key, segment first. With `reach`, only the points of its segment at places (`at`)
    before its reach count."""
    key = segment * span + rank  # a lower segment's keys are less
    top = np.maximum.accumulate(key)
    if at is None or reach is None:
        first = np.arange(len(key))  # the points before it
    else:  # its segment's first point at or past its reach
        places = int(at.max(initial=0)) + 1  # more than any place
        first = np.searchsorted(segment * places + at, segment * places + reach)
    return (first > 0) & (top[first - 1] >= key)


def best_allocations(tables: Sequence[PlanTable], values: Sequence[np.ndarray], budget: float,
                     cost_model: CostModel, seen: set[str], k: int = 1,
                     keep: int = 48,
                     skip: Callable[[np.ndarray], np.ndarray] | None = None,
                     exact: bool = False) -> list[Allocation]:
    """Up to `k` unseen allocations within `budget`, best total value first; `skip` (given
    allocations as plan indices, rows x subtasks) leaves out the rows it is true for.

    Pruning keeps the first `keep` Pareto layers of (cost, value) per subtask and per
    partial allocation. A partial allocation is dropped only for one of at least its value
    that costs no more than it would once the trainings later stages may reuse are paid
    (`pareto_layers`' low), for one that costs no more and paid for the same such
    trainings (`_paid`: any completion saves both the same), or for one that paid for one
    of them too and costs no more than its low plus that training. By cost alone, one that
    paid for a checkpoint later stages reuse was dropped for a cheaper one that shares
    nothing; by the first rule alone, where every plan trains a checkpoint that every stage
    offers, almost nothing was (shape-2013 of the five-stage tables: 4.8 of 6.0 million
    kept); the third keeps a quarter to two fifths as many there.
    Each subtask's own plans are pruned by their cost; with `exact`, by their cost less a
    training another stage may share, so the best allocation within budget is kept
    whatever `keep`. That keeps many more plans where every stage offers the same
    checkpoints (easy-gsm8k-hard: 18 -> 96-137 ms per trial), so only the search over
    evaluated plans (`recombination`) asks for it.

    From `BARRED_STAGES` stages on, where one allocation is asked for and not `exact`, a
    quick search (one layer) picks one first, and the search proper drops every plan and
    partial allocation that cannot beat that pick (`_Bound`, at the pick's value) before
    it peels layers, so the layers it keeps reach further into what can still win; where
    it finds nothing better, the quick pick stands. On the random tables of four and five
    stages, trials to 99% and best@10 stayed as they were (one table reached 99% a trial
    sooner) and the five-stage tables' median time per trial fell from 26 to 14 ms (118 to
    52 on the slowest); on three stages the quick search costs more than it saves
    (experiments/README.md, "A bar before the layers")."""
    if len(tables) >= BARRED_STAGES and k == 1 and not exact:
        quick, _ = _search(tables, values, budget, cost_model, seen, k=1, keep=1, skip=skip,
                           exact=False)
        if quick:
            bar = allocation_value(tables, values, quick[0])
            found, _ = _search(tables, values, budget, cost_model, seen, k=1, keep=keep,
                               skip=skip, exact=False,
                               bound=_Bound.of(tables, values, budget, bar))
            return found or quick
    while True:
        found, exhausted = _search(tables, values, budget, cost_model, seen, k, keep, skip,
                                   exact)
        if found or exhausted:
            return found
        keep *= 4


def best_allocation(tables: Sequence[PlanTable], values: Sequence[np.ndarray], budget: float,
                    cost_model: CostModel) -> Allocation | None:
    """The allocation within `budget` of the highest total value, none left out: exact.

    A branch and bound over the search above with its exact pruning only: a plan or a
    partial allocation is dropped where the most the other stages could add, each plan at
    its `low` within the budget left (`_Bound`), cannot reach an allocation known to fit.
    On shape-2013 of the five-stage tables, 4-5 ms against 90-110 for `best_allocations`,
    which missed the best in 25 of 36 searches on four-stage shape-1013."""
    bound = _Bound.of(tables, values, budget) if len(tables) > 1 else None
    found, _ = _search(tables, values, budget, cost_model, set(), 1, 1, None, True, bound)
    return found[0] if found else None


def none_above(tables: Sequence[PlanTable], values: Sequence[np.ndarray], budget: float,
               cost_model: CostModel, seen: set[str], bar: float) -> bool:
    """Whether no unseen allocation within `budget` has a total value above `bar`, proved
    by a branch and bound: plans and partial allocations are dropped only where what the
    other stages could add (`_Bound`) leaves them at or below `bar`, never for dominance
    (what dominates one may be seen), and the allocations above `bar` are read best
    first. False where an unseen one is above it, or where more than `PROOF_ROWS` partial
    allocations could be (not proved)."""
    merged = _merge(tables, values, budget, None, False, _Bound.of(tables, values, budget, bar))
    if merged is None:
        return False
    for parents, picks in merged.joins():
        for parent, pick in zip(parents, picks, strict=True):
            if merged.value[parent] + merged.v[pick] <= bar:
                return True
            alloc = merged.allocation(tables, parent, pick)
            if (alloc.key() not in seen
                    and cost_model.estimate(alloc).total_gpu_hours <= budget):
                return False
    return True


def frontier(analysis: Analysis, values: Sequence[np.ndarray], budget: float,
             cost_model: CostModel, seen: set[str], k: int = 1) -> list[Allocation]:
    """`best_allocations`, leaving out stale recombinations (`stale`) while anything else
    is left."""
    if len(analysis.tables) == 1:  # one stage: an evaluated plan is a seen allocation
        return best_allocations(analysis.tables, values, budget, cost_model, seen, k)
    return (best_allocations(analysis.tables, values, budget, cost_model, seen, k,
                             skip=stale(analysis))
            or best_allocations(analysis.tables, values, budget, cost_model, seen, k))


def stale(analysis: Analysis) -> Callable[[np.ndarray], np.ndarray]:
    """Given allocations as plan indices (rows x subtasks), true for those that only
    recombine stage plans evaluated before and whose known stage scores
    (`Analysis.known`) do not beat the best end score: each stage's model has already seen
    its plan, so the trial would teach it nothing and is not worth one on the hope of a
    better score."""
    evaluated, best = analysis.evaluated
    known = analysis.known

    def is_stale(rows: np.ndarray) -> np.ndarray:
        old = np.ones(len(rows), dtype=bool)
        total = np.zeros(len(rows))
        for j, (e, k) in enumerate(zip(evaluated, known, strict=True)):
            old &= e[rows[:, j]]
            total += k[rows[:, j]]
        return old & (total <= best + TIE)
    return is_stale


def recombination(analysis: Analysis, closed: Sequence[np.ndarray], budget: float,
                  cost_model: CostModel, seen: set[str]) -> Allocation | None:
    """The unseen allocation of stage plans evaluated before, none of them `closed` (per
    subtask, a mask of plans ruled out), with the best end score their known stage scores
    give (`Analysis.known`), if that beats the best trial: a near-sure gain (else None).
    While no trial scored above the analysis' floor there is no best to beat: any pair
    would "beat" 0."""
    if len(analysis.tables) == 1:  # one stage: an evaluated plan is a seen allocation
        return None
    _, best = analysis.evaluated
    if best <= np.log(FLOOR):
        return None
    known = [np.where(c, -np.inf, k) for c, k in zip(closed, analysis.known, strict=True)]
    if none_above(analysis.tables, known, budget, cost_model, seen, best + TIE / 2):
        return None  # cheaper than the search, which then finds none to beat the best
    found = best_allocations(analysis.tables, known, budget, cost_model, seen, 1, exact=True)
    if not found:
        return None
    return found[0] if analysis.known_value(found[0]) > best + TIE else None


def _search(tables: Sequence[PlanTable], values: Sequence[np.ndarray], budget: float,
            cost_model: CostModel, seen: set[str], k: int, keep: int,
            skip: Callable[[np.ndarray], np.ndarray] | None, exact: bool,
            bound: _Bound | None = None) -> tuple[list[Allocation], bool]:
    merged = _merge(tables, values, budget, keep, exact, bound)
    assert merged is not None  # only a merge without pruning by dominance gives up
    found: list[Allocation] = []
    for parents, picks in merged.joins():
        if skip is not None:  # asked of each block as it comes: most searches read one
            kept = ~skip(np.column_stack([merged.idx[parents], picks]))
            parents, picks = parents[kept], picks[kept]
        for parent, pick in zip(parents, picks, strict=True):
            alloc = merged.allocation(tables, parent, pick)
            if alloc.key() in seen or cost_model.estimate(alloc).total_gpu_hours > budget:
                continue
            found.append(alloc)
            if len(found) == k:
                return found, merged.exhausted
    return found, merged.exhausted


@dataclass(frozen=True)
class _Merged:
    """Every stage but the last merged: partial allocations (rows of plan indices `idx`,
    of the shared artifacts they train `arts`, their `cost` and `value`); and the last
    stage's plans to join them to (`cand` of `table`, values `v`, within `room`).
    `exhausted`: nothing was pruned by dominance past `keep`."""

    idx: np.ndarray
    arts: np.ndarray
    cost: np.ndarray
    value: np.ndarray
    table: PlanTable
    v: np.ndarray
    cand: np.ndarray
    room: float
    exhausted: bool

    def joins(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The whole allocations as blocks of (rows, plans), best first (`_completions`)."""
        return _completions(self.arts, self.cost, self.value, self.table, self.v, self.cand,
                            self.room)

    def allocation(self, tables: Sequence[PlanTable], row: int, pick: int) -> Allocation:
        """Row `row` joined to the last stage's plan `pick`."""
        plans = [*self.idx[row], pick]
        return Allocation.of({t.subtask: t.plans[i] for t, i in zip(tables, plans,
                                                                    strict=True)})


def _merge(tables: Sequence[PlanTable], values: Sequence[np.ndarray], budget: float,
           keep: int | None, exact: bool, bound: _Bound | None) -> _Merged | None:
    """Merge the stages but the last, pruning to the first `keep` Pareto layers (none
    pruned by dominance where `keep` is None; then None past `PROOF_ROWS` rows) and by
    `bound`."""
    floor = [float(np.min(t.low)) for t in tables]  # the cheapest each subtask can cost
    trainings, later = _shared_trainings(tables, values)
    idx = np.zeros((1, 0), dtype=int)
    arts = np.zeros((1, 0), dtype=int)
    cost = np.zeros(1)
    value = np.zeros(1)
    exhausted = True
    for j, (t, v) in enumerate(zip(tables, values, strict=True)):
        room = budget - sum(floor[j + 1:])
        cand = np.flatnonzero((t.low <= room) & (v > -np.inf))  # -inf: never wanted
        if bound is not None:
            cand = cand[bound.reaches(v[cand], bound.others[j], budget - t.low[cand])]
        if len(tables) > 1 and keep is not None:
            sub = pareto_layers(t.cost[cand], v[cand], keep, t.low[cand] if exact else None)
            exhausted &= len(sub) == len(cand)
            cand = cand[sub]
        if j == len(tables) - 1:
            break  # the last stage is joined best first as it is read (`_Merged.joins`)
        parents, pos, cost, value = _join(arts, cost, value, t, v, cand, room)
        idx = np.column_stack([idx[parents], cand[pos]])
        arts = np.column_stack([arts[parents], t.artifact[cand[pos]]])
        if bound is not None:
            ok = bound.reaches(value, bound.later[j], budget - cost)
            idx, arts, cost, value = idx[ok], arts[ok], cost[ok], value[ok]
        if keep is None:
            if len(cost) > PROOF_ROWS:
                return None
        elif len(cost) > keep:
            reused = later[j + 1] & (trainings > 0)  # paid trainings a later stage may reuse
            low, paid = None, None  # none reused: cost alone decides
            if reused.any():
                paid = _paid(arts, trainings, reused)
                low = cost - paid.credit(len(cost))
            sub = pareto_layers(cost, value, keep * 4, low, paid)
            exhausted &= len(sub) == len(cost)
            idx, arts, cost, value = idx[sub], arts[sub], cost[sub], value[sub]
    return _Merged(idx, arts, cost, value, t, v, cand, room, exhausted)


def _join(arts: np.ndarray, cost: np.ndarray, value: np.ndarray, t: PlanTable,
          v: np.ndarray, cand: np.ndarray, room: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each partial allocation (rows of `arts`, `cost`, `value`) joined to each of `t`'s
    plans `cand` (values `v`) within `room`: per pair that fits, in row-then-plan order, its
    row, the plan's position in `cand`, its cost and value. A training a row paid already is
    not paid again."""
    new_cost = cost[:, None] + t.cost[cand][None, :]
    if arts.shape[1] and (t.artifact[cand] >= 0).any():  # a training paid already
        shared = ((arts[:, :, None] == t.artifact[cand][None, None, :]).any(axis=1)
                  & (t.artifact[cand] >= 0)[None, :])
        new_cost = new_cost - shared * t.train[cand][None, :]
    new_value = value[:, None] + v[cand][None, :]
    ok = np.flatnonzero((new_cost <= room + 1e-9).ravel())
    return ok // len(cand), ok % len(cand), new_cost.ravel()[ok], new_value.ravel()[ok]


def _completions(arts: np.ndarray, cost: np.ndarray, value: np.ndarray, t: PlanTable,
                 v: np.ndarray, cand: np.ndarray, room: float, block: int = 64
                 ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The last stage's joins (`_join`) as blocks of (rows, plans), by decreasing value,
    ties in row-then-plan order: what one stable sort of every join would give, without
    making them all. Rows are joined a block at a time, the most valuable first (each
    block twice the last); no join of the rows left can be worth more than the next row's
    value plus the best plan's, so the joins above that are final. A reader that stops
    early (most read one block) never joins the rest: a five-stage search used to join
    230,000 partial allocations to 50 plans for one allocation."""
    order = np.argsort(-value, kind="stable")
    top = float(v[cand].max()) if cand.size else -np.inf
    keys, values = np.zeros(0, dtype=int), np.zeros(0)  # joined, not yet final
    start = 0
    while start < len(order):
        rows = order[start:start + block]
        start, block = start + len(rows), block * 2
        parents, pos, _, joined = _join(arts[rows], cost[rows], value[rows], t, v, cand, room)
        keys = np.concatenate([keys, rows[parents] * len(cand) + pos])
        values = np.concatenate([values, joined])
        final = (values > value[order[start]] + top if start < len(order)
                 else np.ones(len(values), dtype=bool))
        chosen = keys[final][np.lexsort((keys[final], -values[final]))]
        keys, values = keys[~final], values[~final]
        if chosen.size:
            yield chosen // len(cand), cand[chosen % len(cand)]


def _shared_trainings(tables: Sequence[PlanTable], values: Sequence[np.ndarray]
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per shared artifact (`PlanTable.artifact`), the GPU-h of its training; and, per
    stage j, whether a wanted plan (value above -inf) of a stage from j on trains it. The
    last entry stands for no artifact (id -1): no training, wanted by none."""
    n = max(int(t.artifact.max()) for t in tables) + 2
    trains = np.zeros(n)
    wanted = [np.zeros(n, dtype=bool) for _ in range(len(tables) + 1)]
    for j, (t, v) in enumerate(zip(tables, values, strict=True)):
        own = t.artifact >= 0
        np.maximum.at(trains, t.artifact[own], t.train[own])
        wanted[j][t.artifact[own & (v > -np.inf)]] = True
    for j in range(len(tables) - 1, -1, -1):
        wanted[j] |= wanted[j + 1]
    return trains, wanted


_Stairs = tuple[np.ndarray, np.ndarray]  # costs ascending, the most value at each


@dataclass(frozen=True)
class _Bound:
    """What stages can add at most, for the branch and bounds of `best_allocation` and
    `none_above`."""

    sure: float  # the value to reach (by default the best at full costs, known to fit)
    others: list[_Stairs]  # per stage, what all the others can add, each plan at its low
    later: list[_Stairs]  # per stage, what the stages after it can add, likewise

    @classmethod
    def of(cls, tables: Sequence[PlanTable], values: Sequence[np.ndarray], budget: float,
           sure: float | None = None) -> _Bound:
        """At its `low`, a plan costs the least it may in any allocation, so what the
        stages add at their lows is a bound; at full cost, each stage paying for a training
        it shares, an allocation that fits will fit however the trainings are shared (the
        value to reach, unless `sure` says it)."""
        wanted = [v > -np.inf for v in values]
        low = [_staircase(t.low[w], v[w]) for t, v, w in zip(tables, values, wanted,
                                                             strict=True)]
        nothing: _Stairs = (np.zeros(1), np.zeros(1))
        later, earlier = [nothing], [nothing]
        for stairs in low[:0:-1]:
            later.insert(0, _plus(stairs, later[0]))
        for stairs in low[:-1]:
            earlier.append(_plus(earlier[-1], stairs))
        if sure is None:
            full = [_staircase(t.cost[w], v[w]) for t, v, w in zip(tables, values, wanted,
                                                                  strict=True)]
            every = nothing
            for stairs in full:
                every = _plus(every, stairs)
            sure = float(_most(every, np.array([budget]))[0])
        return cls(sure, [_plus(a, b) for a, b in zip(earlier, later, strict=True)], later)

    def reaches(self, value: np.ndarray, stairs: _Stairs, room: np.ndarray) -> np.ndarray:
        """Whether each `value`, plus the most `stairs` add within its `room`, reaches
        `sure` (all, where it is -inf: nothing known to fit)."""
        return value + _most(stairs, room) >= self.sure - TIE


def _staircase(cost: np.ndarray, value: np.ndarray) -> _Stairs:
    """The points worth more than every point before them by cost: the most value within
    a cost is that of the last of them within it (a point of equal cost and less value may
    stay: one sort key, 2-6x faster than two)."""
    order = np.argsort(cost)
    cost, value = cost[order], value[order]
    rises = np.ones(len(value), dtype=bool)
    rises[1:] = value[1:] > np.maximum.accumulate(value)[:-1]
    return cost[rises], value[rises]


def _plus(a: _Stairs, b: _Stairs) -> _Stairs:
    """The staircase of a point of `a` and one of `b` together."""
    if len(a[0]) == 1:  # one point (as of no stage): the other, shifted
        return a[0][0] + b[0], a[1][0] + b[1]
    return _staircase((a[0][:, None] + b[0][None, :]).ravel(),
                      (a[1][:, None] + b[1][None, :]).ravel())


def _most(stairs: _Stairs, room: np.ndarray) -> np.ndarray:
    """The most value `stairs` offer within each `room` (-inf where nothing fits)."""
    cost, value = stairs
    k = np.searchsorted(cost, room + 1e-9, side="right") - 1
    return np.where(k >= 0, value[np.maximum(k, 0)], -np.inf)


def _paid(arts: np.ndarray, trains: np.ndarray, reused: np.ndarray) -> Paid:
    """The trainings that a later stage may reuse (`reused`, per artifact id; at least one)
    which each partial allocation (rows x stages of artifact ids, -1 for none) has paid,
    each distinct one once, at its GPU-h (`trains`). A set is a bit mask, a bit per
    training and 64 to a word: 15x faster to group by than sorted rows."""
    rows, trainings = [], []
    for c in range(arts.shape[1]):
        a = arts[:, c]
        new = np.flatnonzero(reused[a] & ~(arts[:, :c] == a[:, None]).any(axis=1))
        rows.append(new)
        trainings.append(a[new])
    row, training = np.concatenate(rows), np.concatenate(trainings)
    ids = np.flatnonzero(reused)
    words = []
    for first in range(0, len(ids), 64):
        chunk = ids[first:first + 64]
        bit = np.zeros(len(reused), dtype=np.uint64)  # 0 for the artifacts left out
        bit[chunk] = np.left_shift(np.uint64(1), np.arange(len(chunk), dtype=np.uint64))
        words.append(np.bitwise_or.reduce(bit[arts], axis=1))
    return Paid(_group_ids(words), row, training, trains[training])


def _group_ids(words: list[np.ndarray]) -> np.ndarray:
    """An id per distinct row of the columns `words` (their rank in sorted order): one
    lexsort, 4-5x faster than `np.unique(axis=0)` for two words (easy-gsm8k-hard's 81
    checkpoints)."""
    if len(words) == 1:
        return np.unique(words[0], return_inverse=True)[1].ravel()
    order = np.lexsort(words[::-1])  # the first word first
    rows = np.column_stack(words)[order]
    new = np.r_[True, (rows[1:] != rows[:-1]).any(axis=1)]
    group = np.empty(len(order), dtype=int)
    group[order] = np.cumsum(new) - 1
    return group
