"""The LangGraph loop: init -> evaluate -> reflect -> propose -> evaluate ... -> finalize.

Every node visit is stored as an agent step (what it saw, did and produced); reflect also
stores the insight memory it wrote. Nodes read run objects from `runtime.context` and
return only the state keys they change. A language model answers the nodes in its `nodes`
(the builtin the rest, and any it fails); each answer appends its exchange to the state's
`messages` channel, which the next request carries, so the conversation is checkpointed.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from planner.cost import CostModel
from planner.search._runner import best_trial
from planner.search.agent.memory import Insight
from planner.search.agent.reasoners.base import Attempt
from planner.search.agent.screening import (
    best_on_items,
    fidelities,
    promotions,
    reference,
    trains_prefixes,
)
from planner.search.agent.state import AgentContext, PlannerState, llm_rest
from planner.search.agent.steps import (
    EvaluateStep,
    FinalizeStep,
    InitStep,
    ProposeStep,
    ReflectStep,
    Step,
    insight_line,
)
from planner.space import Allocation
from planner.store import TrialRecord


def init(state: PlannerState, runtime: Runtime[AgentContext]) -> dict:
    """Probe each subtask: a spread of models, then the other fields (the
    builtin's design, or the language model's pick where it answers init)."""
    ctx = runtime.context
    history = ctx.runner.history()
    use_llm = _use_llm(state, ctx, "init")
    probes = (ctx.llm.initial(history, state.messages) if ctx.llm and use_llm
              else ctx.builtin.initial(history))
    llm = _llm_outcome(state, ctx, "init", use_llm, probes.fallback)
    fallback = llm.pop("fallback")
    allocs = probes.allocations
    step = _record(ctx, InitStep(
        summary=(probes.summary or f"{probes.reasoner}: {len(allocs)} probes")
                + (f" (fallback: {fallback})" if fallback else ""),
        inputs={"budget_gpu_hours": ctx.runner.budget_gpu_hours, "n_trials": ctx.n_trials,
                "subtasks": ctx.runner.space.subtasks, "reasoner": _reasoner(ctx)},
        reasoner=probes.reasoner, fallback=fallback, attempts=list(probes.attempts),
        proposals=[a.to_dict() for a in allocs], rationale=probes.rationale,
        notes=probes.notes))
    update = {"initialized": True, **llm, **_notes(ctx, state, step, probes.notes),
              "pending": _pending(ctx, history, allocs, ["agent-init"] * len(allocs))}
    return update | ({"messages": probes.exchange} if probes.exchange else {})


def evaluate(state: PlannerState, runtime: Runtime[AgentContext]) -> dict:
    """Run pending allocations through the runner, each at its fidelity, as many at once
    as its executor has slots; skip any already in the study at that fidelity, and leave
    out an init probe the trials so far outclass (`BuiltinReasoner.outclassed`). Screens
    neither set the best score nor count towards convergence."""
    ctx = runtime.context
    runner = ctx.runner
    history = runner.history()
    best, stale, credit = state.best_score, state.stale, state.llm_credit
    launched, skipped, left_out = [], [], []
    queue = list(state.pending)
    bets = {Allocation.from_dict(i["allocation"]).key(): i["bet"] for i in queue if "bet" in i}
    while queue or runner.in_flight():
        while queue and runner.free() > 0:
            item = queue.pop(0)
            alloc = Allocation.from_dict(item["allocation"])
            fidelity = item.get("fidelity", 1.0)
            old = next((t for t in history if t.allocation.key() == alloc.key()
                        and t.fidelity == fidelity), None)
            if old is not None:  # evaluated before an interruption: never run twice
                skipped.append(old.number)
                if _improves(old, best):
                    best = old.score
                credit += _settle(old, bets)
                continue
            if runner.exhausted(history, ctx.n_trials, ctx.search_budget_gpu_hours):
                queue = []
                break
            if item["source"] == "agent-init" and ctx.builtin.outclassed(history, alloc):
                left_out.append(alloc.to_dict())
                continue
            # None: another driver claimed it meanwhile, or the study is full
            runner.submit(alloc, source=item["source"], max_trials=ctx.n_trials,
                          fidelity=fidelity)
            if queue and runner.free() > 0:  # the next item, checked now, sees this trial
                history = runner.history()  # and other drivers' (else `wait` reads them)
        finished = runner.wait()
        history = runner.known()  # as `wait` has just read it, with the finished trials
        for trial in finished:
            launched.append(_trial_summary(trial))
            improved = _improves(trial, best)
            if improved:
                best = trial.score
            credit += _settle(trial, bets)
            if trial.source != "agent-init" and not trial.screen:
                stale = 0 if improved else stale + 1
        if finished and ctx.callback:
            for trial in finished:
                ctx.callback(trial, best_trial(history))
    _record(ctx, EvaluateStep(
        summary=f"{len(launched)} trials run"
                + (f", {len(skipped)} already in the study" if skipped else "")
                + (f", {len(left_out)} init probe{'s' if len(left_out) > 1 else ''} left "
                   "out (rated below the best trial even optimistically)" if left_out else "")
                + ("" if best is None else f"; best {best:.4f}"),
        inputs={"pending": state.pending}, trials=launched, skipped=skipped,
        left_out=left_out))
    return {"pending": [], "best_score": best, "stale": stale, "llm_credit": credit}


SETTLED = ("every allocation in budget was tried or scores no more than a tried one (an "
           "oracle over the same samples at no smaller n): the best is the optimum")


def reflect(state: PlannerState, runtime: Runtime[AgentContext]) -> dict:
    """Update the insight memory from all trials; decide whether to stop."""
    ctx = runtime.context
    history = ctx.runner.known()  # as evaluate (or the resume before it) last read it
    before = [Insight.from_dict(d) for d in state.memory]
    stop = ctx.runner.exhausted(history, ctx.n_trials, ctx.search_budget_gpu_hours) or ""
    if not stop and ctx.builtin.settled(history):
        stop = ctx.runner.nothing_left(history) if ctx.runner.tried_all(history) else SETTLED
    if not stop and ctx.patience is not None and state.stale >= ctx.patience:
        stop = f"converged: no better score in {state.stale} proposals"
    if stop:  # nothing will read new insights: the builtin's suffice, the model is not asked
        reflection, llm = ctx.builtin.reflect(history, before), {"fallback": None}
    else:
        use_llm = _use_llm(state, ctx, "reflect")
        reflection = (ctx.llm.reflect(history, before, state.messages) if ctx.llm and use_llm
                      else ctx.builtin.reflect(history, before))
        llm = _llm_outcome(state, ctx, "reflect", use_llm, reflection.fallback)
    after = reflection.insights
    memory = [i.to_dict() for i in after]
    _record(ctx, ReflectStep(
        summary=_insights_line(after) + (f" | stop: {stop}" if stop else ""),
        inputs={"trials": len(history), "stale": state.stale},
        insights_after=memory, stop=stop,
        reasoner=reflection.reasoner, fallback=llm.pop("fallback"),
        attempts=list(reflection.attempts)),
        insights=[d for i, d in zip(after, memory, strict=True) if i not in before])
    update = {"memory": memory, "stop": stop, **llm}
    return update | ({"messages": reflection.exchange} if reflection.exchange else {})


SPENT = ("the language model's picks outside the builtin's top candidates scored below "
         "what the builtin's own were predicted to; the builtin proposes from here on")


def propose(state: PlannerState, runtime: Runtime[AgentContext]) -> dict:
    """Promote screens that scored near the best (`screening.promotions`), or else ask the
    reasoner for allocations. A language model with `guard` on is asked once the search
    stalls (the last proposal did not raise the best score) and while its own picks pay
    (`state.LLM_CREDIT`); the builtin answers otherwise, and when the model fails."""
    ctx = runtime.context
    history = ctx.runner.known()  # as reflect saw it, an instant ago
    cm = ctx.runner.cost_model
    if ctx.screen is not None and (promoted := promotions(
            history, ctx.proposals_per_step, lambda t: trains_prefixes(cm, t.allocation))):
        return _promote(ctx, history, promoted, cm)
    memory = [Insight.from_dict(d) for d in state.memory]
    may_ask = _use_llm(state, ctx, "propose")
    guard = ctx.llm is not None and ctx.llm.config.guard
    spent = guard and state.llm_credit <= 0  # its own picks did not pay (`LLM_CREDIT`)
    waits = guard and state.stale == 0  # the builtin's last pick raised the best
    asked = may_ask and not spent and not waits
    k = ctx.proposals_per_step
    proposal = (ctx.llm.propose(history, memory, k, state.messages) if ctx.llm and asked
                else ctx.builtin.propose(history, memory, k))
    llm = _llm_outcome(state, ctx, "propose", asked, proposal.fallback)
    fallback = llm.pop("fallback")
    if may_ask and not asked:  # held back by design, not by a failure
        fallback = SPENT if spent else None
    sources = proposal.sources or [f"agent-{proposal.reasoner}"] * len(proposal.allocations)
    what = "; ".join(" | ".join(a.describe()) for a in proposal.allocations)
    step = _record(ctx, ProposeStep(
        summary=f"{proposal.reasoner}: {what or 'nothing left to propose'}"
                + (f" (fallback: {fallback})" if fallback else ""),
        inputs={"trials": len(history), "insights": len(memory),
                "k": k, "best_score": state.best_score, "stale": state.stale}
               | ({"llm_credit": state.llm_credit} if _acts(ctx, "propose") else {}),
        reasoner=proposal.reasoner, fallback=fallback, attempts=list(proposal.attempts),
        proposals=[a.to_dict() for a in proposal.allocations], rationale=proposal.rationale,
        notes=proposal.notes, tokens=_sum_tokens(proposal.attempts),
        latency_s=sum(a.latency_s for a in proposal.attempts)))
    update: dict = {"pending": _pending(ctx, history, proposal.allocations, sources,
                                        proposal.bets), **llm,
                    **_notes(ctx, state, step, proposal.notes)}
    if proposal.exchange:
        update["messages"] = proposal.exchange
    if not proposal.allocations:
        update["stop"] = ctx.runner.nothing_left(history)
    return update


def _promote(ctx: AgentContext, history: list[TrialRecord], promoted: list[TrialRecord],
             cost_model: CostModel) -> dict:
    """A propose step that evaluates screens in full, the reasoner not asked."""

    def against(t: TrialRecord) -> str:
        if trains_prefixes(cost_model, t.allocation):
            return "the top of its rung of screens that trained a prefix"
        ref = reference(history, t.fidelity)
        if ref is None:
            return "no full evaluation yet"
        there = best_on_items(history, t.fidelity) is not None
        return f"the best full trial scored {ref:.4f} {'on those items' if there else 'in full'}"

    allocs = [t.allocation for t in promoted]
    _record(ctx, ProposeStep(
        summary="promote screens: " + "; ".join(" | ".join(a.describe()) for a in allocs),
        inputs={"trials": len(history), "k": ctx.proposals_per_step},
        reasoner="screening", proposals=[a.to_dict() for a in allocs],
        rationale=[f"screen trial {t.number} scored {t.score:.4f} on {t.fidelity:.0%} of the "
                   f"items ({against(t)})" for t in promoted]))
    return {"pending": [{"allocation": a.to_dict(), "source": "agent-promote", "fidelity": 1.0}
                        for a in allocs]}


def finalize(state: PlannerState, runtime: Runtime[AgentContext]) -> dict:
    """Record why the search stopped and its best trial."""
    ctx = runtime.context
    best = best_trial(ctx.runner.history())
    stop = state.stop or "stopped"
    _record(ctx, FinalizeStep(
        summary=f"{stop}; best " + ("-" if best is None else
                                    f"trial {best.number} score {best.score:.4f}"),
        stop=stop, best=None if best is None else _trial_summary(best)))
    return {"stop": stop}


def route_start(state: PlannerState) -> Literal["init", "reflect"]:
    """A fresh search probes first; a finished one given more trials reflects and goes on."""
    return "reflect" if state.initialized else "init"


def route_reflect(state: PlannerState) -> Literal["propose", "finalize"]:
    return "finalize" if state.stop else "propose"


def route_propose(state: PlannerState) -> Literal["evaluate", "finalize"]:
    return "evaluate" if state.pending else "finalize"


def build_graph() -> StateGraph:
    """The agent's graph, uncompiled (compile it with a checkpointer)."""
    g = StateGraph(PlannerState, context_schema=AgentContext)
    for name, node in (("init", init), ("evaluate", evaluate), ("reflect", reflect),
                       ("propose", propose), ("finalize", finalize)):
        g.add_node(name, node)
    g.add_conditional_edges(START, route_start)
    g.add_edge("init", "evaluate")
    g.add_edge("evaluate", "reflect")
    g.add_conditional_edges("reflect", route_reflect)
    g.add_conditional_edges("propose", route_propose)
    g.add_edge("finalize", END)
    return g


def _acts(ctx: AgentContext, node: str) -> bool:
    """Whether a language model answers this node (the builtin answers the others)."""
    return ctx.llm is not None and node in ctx.llm.nodes


def _reasoner(ctx: AgentContext) -> str:
    return ctx.builtin.name if ctx.llm is None else ctx.llm.name


def _notes(ctx: AgentContext, state: PlannerState, step: int, notes: list[str]) -> dict:
    """A language model's notes stored as insights of `step`, and the memory update (none
    when it left no notes)."""
    if not notes:
        return {}
    added = [Insight("*", "note", n).to_dict() for n in notes]
    ctx.runner.store.add_insights(ctx.runner.study, step, added)
    return {"memory": state.memory + added}


def _use_llm(state: PlannerState, ctx: AgentContext, node: str) -> bool:
    """Whether this node asks the language model now: it acts here and is not resting (a
    run asks it at once, whatever rest the checkpointed state holds)."""
    return _acts(ctx, node) and (state.llm_rest == 0 or not ctx.llm_asked)


def _llm_outcome(state: PlannerState, ctx: AgentContext, node: str, asked: bool,
                 fallback: str | None) -> dict:
    """The state update after a node the language model may answer (failures in a row,
    its steps left to rest) and the fallback to record."""
    if not _acts(ctx, node):
        return {"fallback": fallback}
    failures, rest = state.llm_failures, max(0, state.llm_rest - 1)
    if asked:
        ctx.llm_asked = True
        failures = failures + 1 if fallback else 0
        rest = llm_rest(failures)
    else:
        fallback = (f"language model failed {failures} steps in a row; resting it, it is "
                    f"asked again in {rest + 1} step{'s' if rest else ''}")
    return {"llm_failures": failures, "llm_rest": rest, "fallback": fallback}


def _record(ctx: AgentContext, step: Step, insights: list[dict] | None = None) -> int:
    """Store a step, and the insights it made in the same transaction; its number."""
    return ctx.runner.store.add_step(ctx.runner.study, step.node, step.payload(),
                                     insights or ())


def _pending(ctx: AgentContext, history: list[TrialRecord], allocs: list[Allocation],
             sources: list[str], bets: list[float | None] | None = None) -> list[dict]:
    """Allocations for the evaluate node, each with its trial's source, its fidelity
    (`screening`), and its bet where a language model picked it outside the builtin's top
    candidates (`Proposal.bets`)."""
    if ctx.screen is None:
        found = [1.0] * len(allocs)
    else:
        analysis = ctx.builtin.analyse(history)
        # a probe is there to teach the score model, which a prefix-trained stage does not
        cm = ctx.runner.cost_model
        found = fidelities(allocs, history, ctx.runner.search_meter(history), ctx.screen,
                           lambda a: analysis.predicted(a)[0],
                           (lambda a: trains_prefixes(cm, a))
                           if set(sources) == {"agent-init"} else None)
    return [{"allocation": a.to_dict(), "source": source, "fidelity": f}
            | ({"bet": bet} if bet is not None else {})
            for a, source, f, bet in zip(allocs, sources, found,
                                         bets or [None] * len(allocs), strict=True)]


def _settle(trial: TrialRecord, bets: dict[str, float]) -> int:
    """What a trial does to the language model's credit (`state.LLM_CREDIT`): for a pick of
    its own, +1 if it scored the bet's score (a screen: on its share of the items), -1 if it
    did not or failed; 0 for any other trial."""
    bar = bets.get(trial.allocation.key())
    if bar is None:
        return 0
    return 1 if trial.score is not None and trial.score >= bar else -1


def _improves(trial: TrialRecord, best: float | None) -> bool:
    """A full evaluation that beat `best` (a screen's score is only an estimate)."""
    return trial.final and (best is None or trial.score > best)


def _insights_line(insights: list[Insight], limit: int = 300) -> str:
    """The insights (notes aside) on one line, each named by its subject, cut after the
    last one that fits in `limit` characters (`planner trace --step` shows them all)."""
    texts = [insight_line(i.subtask, i.kind, i.text) for i in insights if i.kind != "note"]
    line = ""
    for k, text in enumerate(texts):
        more = f"; {text}" if line else text
        if len(line) + len(more) > limit:
            if not line:  # the first alone is too long: its start
                line, k = text[:limit] + "...", 1
            return line + (f"; ... {len(texts) - k} more" if k < len(texts) else "")
        line += more
    return line


def _trial_summary(t: TrialRecord) -> dict:
    return {"number": t.number, "status": t.status.value, "score": t.score,
            "fidelity": t.fidelity,
            "subtask_scores": dict(t.subtask_scores), "cost_gpu_hours": t.cost.total_gpu_hours,
            "allocation": t.allocation.to_dict(), "source": t.source}


def _sum_tokens(attempts: list[Attempt]) -> dict[str, int]:
    total: dict[str, int] = {}
    for a in attempts:
        for k, v in a.tokens.items():
            total[k] = total.get(k, 0) + v
    return total
