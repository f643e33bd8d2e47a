"""Prompts for a language-model reasoner: compact, self-contained, JSON in and out."""

from __future__ import annotations

import json
from collections.abc import Sequence

from planner.cost import CostModel
from planner.search._runner import best_trial
from planner.search.agent.memory import Insight
from planner.space import Allocation, Dimension, Mixture, SearchSpace
from planner.store import TrialRecord, TrialStatus

SYSTEM = """You allocate compute across the stages of an LLM pipeline.
For every subtask choose a plan: one value for each of its dimensions (the model, the
method of fine-tuning or checkpoint, the training-data mixture, the samples n and the
aggregator). An allocation is one plan per subtask; its cost must stay within the budget.
Maximise the end-to-end score with as few trials as possible.
Regularities that usually hold: subtasks prefer different models, and a small model
sampled more can beat a large one; the score-versus-n curve rises then saturates, so
samples past saturation waste budget; budget spent on one stage is missing from another,
so move it to the stage whose score gains most per GPU-hour.
Reply with one JSON object and nothing else:
{"insights": ["short statement", ...],
 "proposals": [{"<subtask>": {"<dimension>": <value>, ...}, ...}, ...]}
Propose only allocations that are not in the trials table."""


REFLECT_SYSTEM = """You review the trials of a compute-allocation search over the stages of
an LLM pipeline and state what they show, for the next proposals: which model or method
wins a stage, where more samples stop helping, which stage the budget should move to.
A statistical model's insights are given; add what it misses, or correct it.
Reply with one JSON object and nothing else: {"insights": ["...", ...]} (at most 3, each
one short sentence naming the subtask)."""

MAX_INSIGHTS = 3  # statements a language model adds per reflect step
MAX_TRIALS = 24  # trials shown verbatim; beyond, the best and the latest
MAX_ARMS = 8  # served models per subtask in the summary of a long history


TOOLS = """Before you reply you may call the tools offered: frontier(k) lists the unseen
allocations within budget that a statistical model fitted to the trials rates highest,
predict(allocation) an allocation's predicted end and stage scores with their uncertainty,
price(allocation) its cost in GPU-h and whether it fits the budget, trial(number) one trial
in full. Call them to check a plan, then reply with the JSON object."""

def exchange_line(node: str, history: Sequence[TrialRecord]) -> str:
    """The user side of an exchange as the conversation keeps it: the node and what it
    saw (the full prompt is not repeated; the next one holds the trials)."""
    best = best_trial(history)
    return (f"[{node} after {len(history)} trials"
            + (f"; best {best.score:.4f} (trial {best.number})" if best else "") + "]")


def init_message(space: SearchSpace, cost_model: CostModel, budget_gpu_hours: float,
                 probes: Sequence[tuple[Allocation, str]], k: int, adds: bool = False) -> str:
    """Task, space with costs and budget, and the builtin's probe design: a suggestion, or
    with `adds` what runs, the model's own probe before it."""
    lines = _setting(space, cost_model, budget_gpu_hours)
    lines += ["", "No trial has run yet. A design of probes, each isolating one choice per "
              "subtask (the model, another dimension) with the rest held at a "
              "reference plan:"]
    lines += [f"- {json.dumps(a.to_dict())}: {why}" for a, why in probes] or ["- none"]
    lines += ["", "The design runs in full. Propose 1 allocation as JSON to run before it: a "
              "probe whose stage scores tell apart what the design does not (one of the "
              "design's adds nothing)." if adds else
              f"Propose up to {k} first allocation(s) as JSON: probes whose stage scores "
              "tell the models and the other choices apart (these, or your own)."]
    return "\n".join(lines)


def user_message(space: SearchSpace, cost_model: CostModel, budget_gpu_hours: float,
                 history: Sequence[TrialRecord], memory: Sequence[Insight],
                 hints: Sequence[tuple[Allocation, float]] | None, k: int) -> str:
    """Task, space with costs, budget, insight memory, trials table and the candidates a
    statistical model rates highest (`hints`; None: the frontier tool lists them)."""
    lines = _setting(space, cost_model, budget_gpu_hours)
    lines += ["", "Insight memory:"]
    lines += [f"- [{i.subtask}/{i.kind}] {i.text}" for i in memory] or ["- (none yet)"]
    lines += ["", *_trials(space, history), ""]
    if hints is None:
        lines += ["Candidates: call frontier(k) for those a statistical model rates highest, "
                  "predict(allocation) for any other."]
    else:
        lines += ["Candidates a statistical model rates highest (optimistic pick; predicted "
                  "end score):"]
        lines += [f"- {score:.4f}: {json.dumps(a.to_dict())}" for a, score in hints] \
            or ["- none"]
    lines += ["", f"Propose up to {k} new allocation(s) as JSON."]
    return "\n".join(lines)


def _setting(space: SearchSpace, cost_model: CostModel, budget_gpu_hours: float) -> list[str]:
    """Task, budget, and each subtask's dimensions with every served model's cost."""
    spec = space.spec
    lines = [f"Task: {spec.name}. {spec.description}".strip(),
             f"Budget: {budget_gpu_hours:.4g} GPU-h per allocation (training + serving "
             f"{spec.workload.queries:g} queries). A trained model used by several subtasks "
             "(a checkpoint, or a fine-tune on a mixture they name alike) is paid once.", "",
             "Search space and costs (GPU-h):"]
    for s in space.subtasks:
        dims = space.dimensions(s)
        lines.append(f"- subtask {s}: " + "; ".join(_values(d) for d in dims))
        lines.append("  served model: training + serving at its smallest n (serving grows "
                     "with n)")
        served = [d.name for d in dims if not d.test_time]
        smallest = {}
        for p in space.plans(s):
            arm = " / ".join(str(p[name]) for name in served)
            if arm not in smallest or p.samples < smallest[arm].samples:
                smallest[arm] = p
        for arm, plan in smallest.items():
            cost = cost_model.plan_cost(s, plan)
            lines.append(f"  {arm}: {cost.train_gpu_hours:.4g} + "
                         f"{cost.inference_gpu_hours:.4g} (n={plan.samples})")
    return lines


def reflect_message(space: SearchSpace, history: Sequence[TrialRecord],
                    memory: Sequence[Insight]) -> str:
    """The insight memory so far and the trials table (bounded like the proposals')."""
    lines = [f"Task: {space.spec.name}. Subtasks in order: {', '.join(space.subtasks)}.", "",
             "Insight memory:"]
    lines += [f"- [{i.subtask}/{i.kind}] {i.text}" for i in memory] or ["- (none yet)"]
    lines += ["", *_trials(space, history), "", "State up to 3 insights as JSON."]
    return "\n".join(lines)


# A few short statements: bounded, so a constrained decoder must close the list (a 135M
# model under vLLM otherwise repeated one string until max_tokens cut the JSON off)
_INSIGHTS = {"type": "array", "maxItems": MAX_INSIGHTS, "items": {"type": "string",
                                                                  "maxLength": 200}}


def reflect_schema() -> dict:
    """The JSON schema of a reflect reply: a few short statements."""
    return {"type": "object", "additionalProperties": False, "required": ["insights"],
            "properties": {"insights": _INSIGHTS}}



def allocation_schema(space: SearchSpace) -> dict:
    """The JSON schema of an allocation: a plan per subtask whose every value is one of its
    dimension's (enums), so a constrained decoder cannot name a plan that does not exist."""
    def plan(subtask: str) -> dict:
        dims = space.dimensions(subtask)
        return {"type": "object", "additionalProperties": False,
                "required": [d.name for d in dims],
                "properties": {d.name: {"enum": list(d.values)} for d in dims}}

    return {"type": "object", "additionalProperties": False, "required": list(space.subtasks),
            "properties": {s: plan(s) for s in space.subtasks}}


def schema(space: SearchSpace, k: int) -> dict:
    """The JSON schema of a reply: insights, and up to `k` allocations (`allocation_schema`)."""
    allocation = allocation_schema(space)
    return {"type": "object", "additionalProperties": False,
            "required": ["insights", "proposals"],
            "properties": {"insights": _INSIGHTS,
                           "proposals": {"type": "array", "minItems": 1, "maxItems": k,
                                         "items": allocation}}}


def _trials(space: SearchSpace, history: Sequence[TrialRecord]) -> list[str]:
    """The trials table, bounded: every trial while there are few; then the best and the
    latest verbatim, and per subtask the best stage score each arm reached."""
    ok = [t for t in history if t.status is TrialStatus.OK]
    shown = list(history)
    lines = ["Trials (number: end score | per subtask: plan -> score | cost GPU-h):"]
    if len(history) > MAX_TRIALS:
        best = sorted(ok, key=lambda t: -(t.score or 0.0))[:MAX_TRIALS // 2]
        latest = history[-(MAX_TRIALS - len(best)):]
        shown = sorted({t.number: t for t in [*best, *latest]}.values(), key=lambda t: t.number)
        lines[0] = (f"Trials: {len(history)} run; the {len(best)} best and the latest shown "
                    "(number: end score | per subtask: plan -> score | cost GPU-h):")
    for t in shown:
        if t.status is not TrialStatus.OK:
            lines.append(f"- {t.number}: {t.status.value} | " + " ; ".join(
                t.allocation.describe()))
            continue
        parts = [f"{s}: {p.describe()} -> {t.subtask_scores.get(s, float('nan')):.4f}"
                 for s, p in t.allocation.items()]
        screen = f" (screen on {t.fidelity:.0%} of the items)" if t.screen else ""
        lines.append(f"- {t.number}: {t.score:.4f}{screen} | " + " ; ".join(parts)
                     + f" | {t.cost.total_gpu_hours:.4g}")
    if len(history) > MAX_TRIALS:
        lines += ["", "Best stage score per served model (every trial; n tried):"]
        for s in space.subtasks:
            served = [d.name for d in space.dimensions(s) if not d.test_time]
            arms: dict[str, tuple[float, set[int]]] = {}
            for t in ok:
                plan, score = t.allocation[s], t.subtask_scores.get(s, t.score or 0.0)
                arm = " / ".join(str(plan[name]) for name in served)
                top, ns = arms.get(arm, (0.0, set()))
                arms[arm] = (max(top, score), ns | {plan.samples})
            ranked = sorted(arms.items(), key=lambda kv: -kv[1][0])
            lines += [f"- {s}: {arm} -> {top:.4f} (n {sorted(ns)})"
                      for arm, (top, ns) in ranked[:MAX_ARMS]]
            if len(ranked) > MAX_ARMS:
                lines.append(f"- {s}: {len(ranked) - MAX_ARMS} more served models tried, "
                             "all lower")
    return lines


def _values(d: Dimension) -> str:
    """A dimension and its values; a mixture's with their weights over data sources."""
    if isinstance(d, Mixture):
        return f"{d.name} " + ", ".join(
            f"{v} {json.dumps({k: round(w, 3) for k, w in d.mixture(v).items()})}"
            for v in d.values)
    return f"{d.name} {list(d.values)}"


def repair_message(errors: Sequence[str]) -> str:
    """Quote what was wrong and ask again."""
    return ("Your reply could not be used:\n" + "\n".join(f"- {e}" for e in errors)
            + "\nReply again with one JSON object {\"insights\": [...], \"proposals\": [...]} "
            "whose proposals are valid, within budget and not yet tried.")


def reflect_repair(error: str) -> str:
    """Quote why a reflect reply was unusable and ask again."""
    return (f"Your reply could not be used: {error}\nReply again with one JSON object "
            '{"insights": ["...", ...]}.')
