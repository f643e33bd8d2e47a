"""The built-in reasoner: AgentTTS's regularities applied without an LLM.

- init: per subtask, probes that isolate the model choice (one model from each size
  stratum, drawn with the seed, on one reference arm, the most trained that at least half
  the models can afford, at the largest n that fits the subtask's share of the budget (a
  training other subtasks can use charged at its share among them, `_design_costs`, and a
  slot that then trains two such checkpoints aligned on one, `_aligned`),
  under `oracle` where it is offered, else an aggregator that reads several samples where
  one can) and each other dimension but the aggregator (the values farthest from the
  reference: one method, two mixtures; each on the probed model that puts it farthest
  from that model's own probe, the middle stratum's where none puts it farther, so the
  small model that alone affords the most trained checkpoint probes it). Four strata, or
  more where the design's slots (at least five, or a multi-stage task's longest design)
  are not taken by other dimensions: a subtask with nothing but the model to probe tries
  five sizes. The trend in n and the aggregator are left to the score model, which shares
  the trend across arms and tries aggregators on the arms that look best: a probe at the
  smallest n, or of an aggregator on the reference arm, cost a trial and was seldom worth
  it (experiments/README.md).
  Stage scores are reported per subtask, so trial i carries probe i of every subtask.
  A probe not yet run is left out once the trials before it outclass it (`outclassed`:
  rated below the best trial even optimistically, and opening no dimension its stage has
  seen fewer than two values of), as the larger strata often are when the budget lets
  them sample only once or twice.
- reflect: the insight memory the analysis implies (`memory.derive`: which model wins,
  where n saturates, which served arms are dominated, how the budget splits), keeping a
  language model's latest notes.
- propose: fit each subtask's score model (`surrogate`), score every plan optimistically
  (mean + kappa std in logit space), and combine the per-subtask frontiers under the
  budget (`combine`), skipping allocations already evaluated. An allocation of stage plans
  already evaluated apart whose known stage scores beat the best trial comes first: a
  near-sure gain (`combine.recombination`), unless the optimistic pick is expected, by its
  mean, to score more (it would teach the stage models too). Next comes the best trial
  with one stage at a larger n of the same arm (not under `oracle`), which reads samples
  already drawn, where the mean rates it above the best trial and no lower than the
  optimistic pick (`_n_step`).
  The memory it is given masks those values (`memory.closed`): the arms a `dominance`
  insight dropped and the n above a `saturation` insight's point on its arm rank after
  every open plan, so they are proposed only when nothing open is left; each proposal's
  rationale says what the memory ruled out. On a one-stage task, an `oracle` plan whose
  arm fits the budget at a larger n (which cannot score less) ranks after every open plan
  too, but before the memory's closed ones; so does, on any task, a plan below its arm's
  largest n in budget while no trial has tried the arm (its samples are drawn at that n
  whatever the plan's: `planner.draws`) and the best score still rises, and a plan whose
  `oracle` twin (same values and n) costs no more (`PlanTable.below_oracle`: no
  aggregator of the same samples scores above oracle). Notes are read by a language
  model, not here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import itemgetter
from typing import Literal

import numpy as np

from planner.search._base import SearchContext
from planner.search.agent.analysis import FLOOR, Analysis, Analyst
from planner.search.agent.combine import TIE, frontier, none_above, recombination
from planner.search.agent.memory import Insight, closed, derive
from planner.search.agent.reasoners.base import Proposal, Reflection
from planner.search.agent.screening import settled
from planner.search.agent.surrogate import PlanTable, allocation_value
from planner.space import Allocation, Plan
from planner.store import TrialRecord, TrialStatus

# what kind of pick `_next` made
Pick = Literal["recombination", "exploit", "n-step", "optimistic"]
_MAX_MODEL_PROBES = 4
_MIN_PROBES = 5  # a stage with fewer other dimensions to probe spends the rest on models
# values probed per other dimension (default 2); the aggregator, like n, is left to the score
# model, which tries it on the arms that look best (a probe on the reference arm was often a
# trial spent on an arm no better than the others)
_PROBES_PER_DIMENSION = {"method": 1, "aggregator": 0}
# The design's reference arm is the most trained one that this share of the models can afford
# (`_probes`). The one most models could afford was often too little trained to score: on
# MATH at 2B tokens every Pythia size solves nothing, and five probes read zero
# (experiments/README.md, "A reference trained enough to score").
_REFERENCE_SHARE = 0.5
KAPPA = 1.0  # optimism, in standard deviations of the logit score
# The optimism grows by KAPPA_GROWTH per full trial beyond STALE_FREE since the best score
# last rose (`optimism`), as GP-UCB's grows with the trials: at a fixed one a plan the score
# model is unsure of but rates low is never tried (tutor at 0.4 times its budget: math on
# pythia-1b / 60B tokens, the optimum's, rated 0.024 +- 1.4 in logit after the larger models
# were tried only on few tokens; two of ten seeds stayed at 0.928 for 60 trials).
KAPPA_GROWTH = 0.1
STALE_FREE = 5  # past it the rule that opens an untried arm at its drawn n lifts (`lowered`)
CLOSED = 1e3  # lowers the value (log score) of a plan the memory rules out
# lowers a plan its own arm at a larger n outscores (`_outgrown`): it ranks after every open
# plan, but before the memory's closed ones (it still shows how its arm's score grows in n)
OUTGROWN = CLOSED / 2
MAX_NOTES = 6  # language-model notes kept in the memory
# After a trial that did not raise the best score, the allocation the score model's mean
# rates highest is a bet that it will (`_exploit`; its trial's source is EXPLOIT): the
# builtin starts with EXPLOIT_CREDIT such bets, wins one more each time one raises the best
# and loses one each time one does not; with none left it goes on with optimism alone.
# Unbounded, such picks kept tutor at 0.4 times its budget off the MATH plan it rated low
# (99% of the optimum in 1 seed of 10); as bets they took the held-out math-easy-hard's
# best@10 from 0.63 to 0.90 and easy-gsm8k-hard's from 0.92 to 1 (experiments/README.md).
EXPLOIT = "agent-exploit"
EXPLOIT_CREDIT = 1


class BuiltinReasoner:
    """Deterministic: the same history gives the same proposals."""

    name = "builtin"
    nodes = ("init", "reflect", "propose")

    def __init__(self, ctx: SearchContext, kappa: float = KAPPA) -> None:
        self.ctx = ctx
        self.kappa = kappa
        self.analyst = Analyst(ctx)

    def analyse(self, history: Sequence[TrialRecord]) -> Analysis:
        return self.analyst.analyse(history)

    def initial(self, history: Sequence[TrialRecord]) -> Proposal:
        """Probe allocations (unseen, within budget), one line of rationale each."""
        tables = self.analyst.tables
        share = self.ctx.budget_gpu_hours / len(tables)
        # the design's slots: at least five, or the longest stage's; each stage fills the
        # slots its other dimensions leave with size strata
        afford = [_affordable(t, c, share) for t, c in zip(tables, _design_costs(tables),
                                                            strict=True)]
        others = [_others(t, a) for t, a in zip(tables, afford, strict=True)]
        slots = max(_MIN_PROBES, _MAX_MODEL_PROBES + max(others))
        probes = [_probes(t, a, self.ctx, max(_MAX_MODEL_PROBES, slots - o))
                  for t, a, o in zip(tables, afford, others, strict=True)]
        seen = settled(history, self.ctx.cost_model)
        out: list[Allocation] = []
        why: list[str] = []
        varied: dict[str, dict[str, None]] = {t.subtask: {} for t in tables}  # in order
        for i in range(max(len(p) for p in probes)):
            chosen = {t.subtask: p[min(i, len(p) - 1)] for t, p in zip(tables, probes,
                                                                         strict=True)}
            alloc = Allocation.of({t.subtask: t.plans[chosen[t.subtask][0]] for t in tables})
            if not self._fits(alloc):  # stages train different checkpoints, each at a share
                alloc = _aligned(tables, afford, alloc)
            if alloc.key() in seen or not self._fits(alloc):
                continue
            seen.add(alloc.key())
            out.append(alloc)
            why.append("; ".join(f"{s}: {what} probe {alloc[s].describe()}"
                                 for s, (_, what) in chosen.items()))
            for s, (_, what) in chosen.items():
                varied[s][what] = None
        return Proposal(out, self.name, rationale=why,
                        summary=_design_summary(out, varied))

    def outclassed(self, history: Sequence[TrialRecord], probe: Allocation) -> bool:
        """Whether an init probe not yet run can be left out: the score model rates its end
        score below the best full trial's even optimistically (`kappa` sd above the mean),
        and none of its stage plans takes a value of a dimension (model, method, ...) that its
        stage has seen fewer than two values of, which is how the score model learns that
        dimension's effect. A probe of a larger model stratum the smaller ones already
        outclass (a 12B model the budget lets sample once) costs a trial and the most search
        compute of the design and shows nothing the search will use."""
        if not any(t.final for t in history):  # no best to compare with: fit nothing
            return False
        analysis = self.analyse(history)
        for t in analysis.tables:
            tried = [r.allocation[t.subtask] for r in analysis.trials]
            for d in t.dims:
                seen = {p[d.name] for p in tried}
                if probe[t.subtask][d.name] not in seen and len(seen) < 2:
                    return False
        end, _ = analysis.predicted(probe, self.kappa)
        return bool(np.log(max(end, FLOOR)) < analysis.evaluated[1])

    def reflect(self, history: Sequence[TrialRecord],
                memory: Sequence[Insight] = ()) -> Reflection:
        """The insights the current analysis implies (`memory.derive`), then the latest
        notes a language model left in `memory`."""
        notes = [i for i in memory if i.kind == "note"][-MAX_NOTES:]
        derived = derive(self.analyse(history), self.ctx.cost_model,
                         self.ctx.budget_gpu_hours, memory)
        return Reflection(derived + notes, self.name)

    def propose(self, history: Sequence[TrialRecord], memory: Sequence[Insight] = (),
                k: int = 1) -> Proposal:
        """The `k` unseen feasible allocations with the best optimistic end score
        (`optimism`; a recombination predicted to beat the best trial first, and after a
        trial that did not raise the best, the mean's best pick: `_next`), chosen one at a
        time: after each, the surrogate is refit as if it had scored its predicted mean (the
        "kriging believer" of batch Bayesian optimisation), so a batch for several workers
        spreads over what is uncertain instead of crowding one arm.

        The plans `memory` rules out (`memory.closed`: arms a dominance insight dropped, n
        above a saturation point) are ranked after every open plan: their values are
        lowered by `CLOSED`, so they are proposed only once nothing open is left. On a
        one-stage task, `oracle` plans their own arm outscores at a larger open n in budget
        are lowered by `OUTGROWN`: after the open plans, before the closed ones; so, on any
        task, is a plan below its arm's largest n in budget while no trial has tried the arm
        and the best score still rises (`_untried_below_top`).
        """
        tables = self.analyst.tables
        penalty, why = self.ranking(memory)
        note = f"; memory: {', '.join(why)}" if why else ""
        believed = list(history)
        allocs: list[Allocation] = []
        rationale: list[str] = []
        sources: list[str] = []
        while len(allocs) < k:
            analysis = self.analyse(believed)
            lowered = self.lowered(analysis, penalty)
            values = _ranked(analysis, self.optimism(analysis), lowered)
            chosen, kind = self._next(analysis, values, lowered, penalty, believed)
            if chosen is None:
                break
            allocs.append(chosen)
            sources.append(EXPLOIT if kind == "exploit" else f"agent-{self.name}")
            if kind == "optimistic":
                why = self._why(chosen, tables, values, lowered, self._raised(analysis))
            else:
                predicted = analysis.predicted(chosen)[0]
                why = {"recombination": "stage plans already evaluated, predicted to beat "
                                        f"the best trial ({predicted:.3f})",
                       "exploit": "the best score did not rise: the allocation the score "
                                  f"model's mean rates highest ({predicted:.3f})",
                       "n-step": "the best trial at a larger n on samples its arm has "
                                 f"drawn, predicted to score {predicted:.3f}"}[kind]
            rationale.append(why + note)
            if len(allocs) < k:  # another pick follows: it sees this one as believed
                believed.append(self._believed(chosen, analysis, -len(allocs)))
        return Proposal(allocs, reasoner=self.name, rationale=rationale, sources=sources)

    def near_sure(self, history: Sequence[TrialRecord],
                  memory: Sequence[Insight] = ()) -> Allocation | None:
        """The near-sure gain `propose` would run next, if any (`_next`)."""
        analysis, penalty = self.analyse(history), self.ranking(memory)[0]
        lowered = self.lowered(analysis, penalty)
        chosen, kind = self._next(analysis, _ranked(analysis, self.optimism(analysis), lowered),
                                  lowered, penalty, history)
        return chosen if kind == "recombination" else None

    def settled(self, history: Sequence[TrialRecord]) -> bool:
        """Whether, on a one-stage task, every plan within budget was evaluated by a full
        trial or scores no more than one (`PlanTable.bounded`): no allocation left can beat
        the best trial, which is then the optimum. Pipelines are left out: a stage's
        score there is not the end score."""
        if len(self.analyst.tables) > 1:
            return False
        t, evaluated = self.analyst.tables[0], self.analyse(history).evaluated[0][0]
        fits = t.cost <= self.ctx.budget_gpu_hours
        return bool(evaluated.any()) and not (fits & ~evaluated & ~t.bounded(evaluated)).any()

    def optimism(self, analysis: Analysis) -> float:
        """How many standard deviations above its mean a plan is valued at: `kappa`, plus
        `KAPPA_GROWTH` per full trial beyond `STALE_FREE` since the best score last rose."""
        return self.kappa + KAPPA_GROWTH * max(0, analysis.since_best - STALE_FREE)

    def _raised(self, analysis: Analysis) -> float | None:
        """The optimism where a stall raised it above `kappa`, else None."""
        optimism = self.optimism(analysis)
        return optimism if optimism > self.kappa else None

    def ranked_values(self, analysis: Analysis,
                      penalty: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per subtask, each plan's value as the builtin ranks it: its optimistic log score
        (`optimism`), lowered as `lowered` says."""
        return _ranked(analysis, self.optimism(analysis), self.lowered(analysis, penalty))

    def lowered(self, analysis: Analysis,
                penalty: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per subtask, what each plan's value is lowered by: the `penalty` of `ranking`,
        and at least `OUTGROWN` for a plan below its arm's largest n in budget while no
        full trial has evaluated the arm (`_untried_below_top`), until the best score has
        not risen for more than `STALE_FREE` full trials (when optimism starts to grow): in
        a pipeline an arm's largest n may fit only beside the other stages' cheapest
        plans, and an optimum that opens the arm at a smaller n was out of reach for good
        (experiments/README.md)."""
        if analysis.since_best > STALE_FREE:
            return list(penalty)
        budget, evaluated = self.ctx.budget_gpu_hours, analysis.evaluated[0]
        floor = [float(t.low.min()) for t in analysis.tables]
        return [np.maximum(p, np.where(_untried_below_top(
                    t, budget - sum(floor) + f, e), OUTGROWN, 0.0))
                for t, p, e, f in zip(analysis.tables, penalty, evaluated, floor, strict=True)]

    def _next(self, analysis: Analysis, values: Sequence[np.ndarray],
              lowered: Sequence[np.ndarray], penalty: Sequence[np.ndarray],
              history: Sequence[TrialRecord]) -> tuple[Allocation | None, Pick]:
        """The allocation to run next, and what kind of pick it is (`values` as
        `ranked_values` gives them, with the `lowered` of `penalty` they hold). The unseen
        recombination of evaluated stage plans (none the memory rules out) whose known
        stage scores beat the best trial (`combine.recombination`), a near-sure gain, goes
        first, unless the unseen allocation of the best optimistic value is expected, by
        the score model's mean, to score more (it then teaches the stage models as well;
        the recombination stays for later). Taken whenever it beat the best,
        recombinations of 5-15% gains filled tutor's first ten trials and taught the stage
        models nothing. Then, after a trial that did not raise the best score, the
        allocation the mean rates highest where it expects it to beat the best, while such
        bets pay (`_exploit`). Else the best trial at a larger n (`_n_step`) goes first
        where the mean rates it at least as high as the optimistic pick."""
        budget, cost_model = self.ctx.budget_gpu_hours, self.ctx.cost_model
        seen = settled(history, cost_model)
        closed = [p >= CLOSED for p in penalty]
        found = frontier(analysis, values, budget, cost_model, seen, 1)
        hoped = analysis.predicted(found[0])[0] if found else -np.inf  # its mean end score
        sure = recombination(analysis, closed, budget, cost_model, seen)
        if sure is not None and not (found and found[0].key() != sure.key()
                                     and hoped > np.exp(analysis.known_value(sure))):
            return sure, "recombination"
        greedy = self._exploit(analysis, lowered, seen, history)
        if greedy is not None and not (found and found[0].key() == greedy.key()):
            return greedy, "exploit"
        step = self._n_step(analysis, closed, seen)
        if step is not None and hoped <= analysis.predicted(step)[0]:
            return step, "n-step"
        return (found[0] if found else None), "optimistic"

    def _exploit(self, analysis: Analysis, lowered: Sequence[np.ndarray], seen: set[str],
                 history: Sequence[TrialRecord]) -> Allocation | None:
        """After a full trial that did not raise the best score, while such bets pay
        (`exploit_credit`): the unseen allocation the score model's mean rates highest
        (plans lowered by `lowered`), if the mean expects it to beat the best trial;
        else None. Optimism alone kept sending trials to uncertain corners (pythia-14m on a
        200B-token checkpoint for MATH) while the mean pointed at a better pairing of the
        plans seen. Where no unseen allocation's mean can beat the best (`none_above`, as
        on most trials of the three-stage suite and held-out tasks), that proof is all it
        runs: it costs half the search."""
        if analysis.since_best == 0 or exploit_credit(history) <= 0:
            return None
        budget, cost_model = self.ctx.budget_gpu_hours, self.ctx.cost_model
        if none_above(analysis.tables, analysis.plan_values(0.0), budget, cost_model, seen,
                      analysis.evaluated[1] - TIE):
            return None
        found = frontier(analysis, _ranked(analysis, 0.0, lowered), budget, cost_model, seen,
                         1)
        if found and analysis.predicted(found[0])[0] > np.exp(analysis.evaluated[1]):
            return found[0]
        return None

    def _n_step(self, analysis: Analysis, closed: Sequence[np.ndarray],
                seen: set[str]) -> Allocation | None:
        """The best full trial with one stage's plan at a larger n of the same arm and
        aggregator (none the memory rules out, within budget, unseen) that the score
        model's mean rates highest, if it rates it above the best trial's score. A study
        draws an arm's samples at the largest n a plan of it within budget reads
        (`planner.draws`), so the step costs a trial but no search compute. `oracle` plans
        are left to the frontier: their score only grows with n, which the score model's
        prior already says (with them, this step spent trials on Pythia pipelines and
        random tables that the frontier's picks did better with; experiments/README.md).
        A majority vote may gain or lose with n, and a stage model fitted on few trials
        can rate untried arms above the tried one's larger n (smolmath: 16 trials to its
        optimum without this step, 5 with it)."""
        full = [t for t, f in zip(analysis.trials, analysis.full, strict=True) if f]
        if not full:
            return None
        best = max(full, key=lambda t: t.score)
        plans = dict(best.allocation.items())
        budget, cost_model = self.ctx.budget_gpu_hours, self.ctx.cost_model
        steps = []
        for t, shut in zip(analysis.tables, closed, strict=True):
            i = t.index.get(plans[t.subtask])
            if i is None:
                continue
            larger = (t.codes[:, -1] == t.codes[i, -1]) & (t.log_n > t.log_n[i])
            for j in np.flatnonzero(larger & ~t.oracle & ~shut):
                alloc = Allocation.of({**plans, t.subtask: t.plans[j]})
                if (alloc.key() not in seen
                        and cost_model.estimate(alloc).total_gpu_hours <= budget):
                    steps.append(alloc)
        if not steps:
            return None
        mean, step = max(((analysis.predicted(a)[0], a) for a in steps), key=lambda p: p[0])
        return step if mean > best.score else None

    def ranking(self, memory: Sequence[Insight]) -> tuple[list[np.ndarray], list[str]]:
        """Per subtask, what each plan's value is lowered by before plans are ranked:
        `CLOSED` where the memory rules it out (`memory.closed`), `OUTGROWN` for a plan its
        `oracle` twin outscores at no more cost (`PlanTable.below_oracle`) and for an
        `oracle` plan of a one-stage task whose arm fits the budget at a larger open n
        (`_outgrown`); and one phrase per memory rule that ruled plans out, for the
        rationale."""
        tables = self.analyst.tables
        shut, why = closed(tables, memory)
        one_stage = len(tables) == 1
        outscored = [t.below_oracle | (one_stage and _outgrown(t, self.ctx.budget_gpu_hours, c))
                     for t, c in zip(tables, shut, strict=True)]
        penalty = [np.where(c, CLOSED, 0.0) + np.where(o, OUTGROWN, 0.0)
                   for c, o in zip(shut, outscored, strict=True)]
        return penalty, why

    @staticmethod
    def _why(alloc: Allocation, tables: Sequence[PlanTable], values: Sequence[np.ndarray],
             penalty: Sequence[np.ndarray], raised: float | None) -> str:
        """One line: the allocation's optimistic end score (and the optimism where a stall
        `raised` it), or why it was chosen though a plan of it was ranked down."""
        at = [t.index[alloc[t.subtask]] for t in tables]
        lowered = max(float(p[i]) for p, i in zip(penalty, at, strict=True))
        if lowered >= CLOSED:
            return "nothing the memory leaves open is unseen and fits the budget"
        if lowered > 0:
            return ("nothing open is left unseen: a plan ranked down (a smaller n than its "
                    "arm's largest in budget, or an aggregator `oracle` outscores)")
        total = allocation_value(tables, values, alloc)
        stall = "" if raised is None else f", at {raised:.1f} sd: the best stopped rising"
        return f"best unseen optimistic end score ({np.exp(total):.3f}{stall})"

    def _believed(self, alloc: Allocation, analysis: Analysis, number: int) -> TrialRecord:
        """A pretend trial of `alloc` that scored what the surrogate predicts for it."""
        stages = {s: float(p.score(0.0)[t.index[alloc[s]]]) for s, t, p in zip(
            self.ctx.space.subtasks, analysis.tables, analysis.predictions, strict=True)}
        end = float(np.exp(sum(w * np.log(max(stages[s], 1e-4)) for s, w in zip(
            self.ctx.space.subtasks, analysis.weights, strict=True))))
        return TrialRecord(number, alloc, TrialStatus.OK, end, stages,
                           self.ctx.cost_model.estimate(alloc))

    def _fits(self, alloc: Allocation) -> bool:
        return self.ctx.cost_model.estimate(alloc).total_gpu_hours <= self.ctx.budget_gpu_hours


def _ranked(analysis: Analysis, optimism: float,
            lowered: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per subtask, each plan's log score at `optimism` standard deviations above its mean,
    less what `lowered` says."""
    return [v - p for v, p in zip(analysis.plan_values(optimism), lowered, strict=True)]


def exploit_credit(history: Sequence[TrialRecord]) -> int:
    """The bets on the score model's mean left (`EXPLOIT_CREDIT`), from the trials in
    order: one more for each of source `EXPLOIT` that raised the best full score, one less
    for each that did not (a failure, a screen or a trial still running included)."""
    credit, best = EXPLOIT_CREDIT, -np.inf
    for t in history:
        raised = t.final and t.score > best
        if t.source == EXPLOIT:
            credit += 1 if raised else -1
        if raised:
            best = t.score
    return credit


def _design_costs(tables: Sequence[PlanTable]) -> list[np.ndarray]:
    """(P,) per table, what the design charges a plan against its stage's share of the
    budget: its cost, with a training that other stages can use split evenly among the
    stages that can (where their choices allow, the design gives them the same probe, so
    the training is paid once). Charged in full, a checkpoint that two stages share
    counted twice, and the design probed only models half the budget could train alone
    (experiments/README.md, "Shared training at its share")."""
    users = np.zeros(max(int(t.artifact.max()) for t in tables) + 2)
    for t in tables:
        users[np.unique(t.artifact[t.artifact >= 0])] += 1
    users[-1] = 1  # id -1: a training no other stage uses
    return [t.cost - t.train + t.train / users[t.artifact] for t in tables]


def _aligned(tables: Sequence[PlanTable], afford: Sequence[np.ndarray],
             alloc: Allocation) -> Allocation:
    """`alloc` with every stage that can afford it on the first stage's shared training
    (at its widest such plan). The design charges each stage only its share of a shared
    training, which holds where the stages train it once; stages whose size strata differ
    can put two such trainings in one slot, over the budget."""
    trained = (int(t.artifact[t.index[alloc[t.subtask]]]) for t in tables)
    first = next((a for a in trained if a >= 0), None)
    if first is None:
        return alloc
    plans: dict[str, Plan] = {}
    for t, a in zip(tables, afford, strict=True):
        i = _widest(t, a & (t.artifact == first))
        plans[t.subtask] = alloc[t.subtask] if i is None else t.plans[i]
    return Allocation.of(plans)


def _widest(t: PlanTable, mask: np.ndarray) -> int | None:
    """The plan in `mask` with the largest n (then the lowest cost); None where none is."""
    cand = np.flatnonzero(mask)
    return int(cand[np.lexsort((t.cost[cand], t.log_n[cand]))[-1]]) if cand.size else None


def _affordable(t: PlanTable, cost: np.ndarray, share: float) -> np.ndarray:
    """(P,) the plans the design may probe: within `share` of the budget at their design
    `cost`, and not below their `oracle` twin (`PlanTable.below_oracle`)."""
    return (cost <= share) & ~t.below_oracle


def _others(t: PlanTable, afford: np.ndarray) -> int:
    """How many probes a stage's dimensions other than the model take: per dimension,
    `_PROBES_PER_DIMENSION`'s share, or fewer where the affordable plans have fewer other
    values."""
    return sum(min(_PROBES_PER_DIMENSION.get(d.name, 2),
                   len(np.unique(t.codes[afford, j])) - 1)
               for j, d in enumerate(t.dims) if d.name != "model")


_CHEAPEST = "its cheapest plan (nothing fits its share of the budget)"


def _design_summary(probes: Sequence[Allocation], varied: dict[str, dict[str, None]]) -> str:
    """One line on what the probes vary, per subtask: how many models, then which other
    dimensions (a subtask with one model probes no model choice)."""
    parts = []
    for s, whats in varied.items():
        models = len({a[s]["model"] for a in probes})
        others = [_CHEAPEST if w == "cheapest" else w for w in whats
                  if w not in ("model", "reference")]
        if models > 1:
            others.insert(0, f"{models} models")
        parts.append(f"{s}: {', '.join(others) or 'one plan'}")
    return f"{len(probes)} probes, varying {'; '.join(parts)}"


def _probes(t: PlanTable, afford: np.ndarray, ctx: SearchContext, strata: int
            ) -> list[tuple[int, str]]:
    """Plan indices among those the design can `afford` that isolate the model, one per
    size stratum (`strata` of them, at most one per model), then each other dimension
    (its values farthest from the reference, each on the probed model that puts it
    farthest from its own probe); each with the dimension it probes."""
    if not afford.any():
        return [(int(np.argmin(t.cost)), "cheapest")]
    model = t.codes[:, t.column("model")]
    rest = [j for j, d in enumerate(t.dims) if d.name != "model"]
    # reference arm: the most trained values of the other dimensions among those at least
    # half the models (and two) can afford (`_REFERENCE_SHARE`; where no arm is, among all),
    # ties to the one most models afford (a plan at n = 1 is coded under an aggregator that
    # reads several samples: `PlanTable`)
    keys: dict[tuple[int, ...], set[int]] = {}
    tokens: dict[tuple[int, ...], float] = {}
    for i in np.flatnonzero(afford):
        k = tuple(int(c) for c in t.codes[i, rest])
        keys.setdefault(k, set()).add(int(model[i]))
        tokens.setdefault(k, float(t.compute[i, 1]))
    enough = max(2, math.ceil(_REFERENCE_SHARE * len(np.unique(model[afford]))))
    ref = max(keys, key=lambda k: (len(keys[k]) >= enough, tokens[k], len(keys[k]),
                                   *(-c for c in k[1:])))
    on_ref = afford & (t.codes[:, rest] == ref).all(axis=1)
    models = sorted(keys[ref], key=lambda m: t.compute[model == m, 0].min())  # by size
    # one model from each size stratum (which one: the seed's choice)
    rng = np.random.default_rng([ctx.seed, len(t.plans)])
    picks = [models[int(rng.choice(stratum))] for stratum in
             np.array_split(np.arange(len(models)), min(strata, len(models)))]
    out: list[tuple[int, str]] = []

    def best(mask: np.ndarray) -> int | None:
        """The affordable plan in `mask` with the largest n (then the lowest cost)."""
        return _widest(t, mask & afford)

    def add(i: int | None, what: str) -> None:
        if i is not None:
            out.append((i, what))

    for m in picks:  # with one model to pick, its probe is the others' reference
        add(best(on_ref & (model == m)), "model" if len(picks) > 1 else "reference")
    # the middle model first: it takes the probe of a value where no other puts it farther
    mid = len(out) // 2
    probed = [out[mid][0], *(i for i, _ in out[:mid] + out[mid + 1:])]
    kept = (t.codes[:, rest] == ref).sum(axis=1)  # how many reference values each plan keeps
    for j, reference in zip(rest, ref, strict=True):
        probes = []
        for value in np.unique(t.codes[afford & (t.codes[:, j] != reference), j]):
            # per probed model, the plan with this value that keeps most of the reference's
            # other values; the one farthest from its model's probe
            found = []
            for k in probed:
                mask = afford & (model == model[k]) & (t.codes[:, j] == value)
                if mask.any():
                    i = best(mask & (kept == kept[mask].max()))
                    found.append((-_distance(t, i, k), k != probed[0], i))
            if found:
                probes.append(min(found, key=_FARTHEST))
        probes.sort(key=_FARTHEST)  # stable: then in value order
        for *_, i in probes[:_PROBES_PER_DIMENSION.get(t.dims[j].name, 2)]:
            add(i, t.dims[j].name)
    return out


# orders candidate probes (minus distance, off the middle model, plan): the farthest from
# its model's probe first, the middle model's on a tie
_FARTHEST = itemgetter(0, 1)


def _outgrown(t: PlanTable, budget: float, shut: np.ndarray) -> np.ndarray:
    """(P,) the `oracle` plans of a one-stage task whose arm fits the budget at a larger n
    the memory leaves open (not `shut`): a question counts as solved if any sample solves
    it, and a larger n reads the same samples and more, so such a plan cannot score above
    that one."""
    return t.oracle & _below_top(t, (t.cost <= budget) & ~shut)


def _untried_below_top(t: PlanTable, room: float, evaluated: np.ndarray) -> np.ndarray:
    """(P,) the plans at an n below the largest their arm fits in `room` (the budget less
    the other subtasks' cheapest plans), of an arm no full trial `evaluated`: a study
    draws an arm's samples once, at the largest n that a plan of it within budget reads
    (`planner.draws`), so an arm's first trial pays for them whatever its n, and at a
    smaller n reads fewer and shows less (experiments/README.md)."""
    arm = t.codes[:, -1]
    tried = np.zeros(arm.max() + 1, dtype=bool)
    tried[arm[evaluated]] = True
    return ~tried[arm] & _below_top(t, t.low <= room)


def _below_top(t: PlanTable, fits: np.ndarray) -> np.ndarray:
    """(P,) the plans at an n below the largest of their arm's plans that `fits`."""
    return t.log_n < t.largest_n(t.codes[:, -1], fits)


def _distance(t: PlanTable, i: int, j: int) -> float:
    """How far apart two plans' training is: log training tokens, and mixture weights."""
    d = abs(float(t.compute[i, 1] - t.compute[j, 1]))
    return d + sum(1.0 - float(unit[i] @ unit[j]) for unit in t.mixes.values())
