"""The builtin reasoner acts on its insight memory: dominated arms and n past saturation."""

from __future__ import annotations

from pathlib import Path

import yaml

from planner.budget import parse_budget
from planner.cost import CostModel
from planner.search._base import SearchContext
from planner.search.agent.memory import Insight, closed
from planner.search.agent.reasoners.builtin import BuiltinReasoner
from planner.space import Allocation, Plan, SearchSpace
from planner.spec import TaskSpec, load_spec
from planner.store import TrialRecord, TrialStatus
from tests.conftest import write_tiny_task

WEAK = {"model": "small", "method": "ckpt-a"}


def _spec(folder: Path, stages: int) -> TaskSpec:
    """The tiny task with its first `stages` subtasks (extract, then solve)."""
    path = write_tiny_task(folder)
    data = yaml.safe_load(path.read_text())
    data["subtasks"] = data["subtasks"][:stages]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def _reasoner(spec: TaskSpec) -> BuiltinReasoner:
    budget = parse_budget(spec.budget).gpu_hours(spec.hardware.peak_flops,
                                                 spec.hardware.utilization)
    return BuiltinReasoner(SearchContext(SearchSpace(spec), CostModel(spec), budget, 0))


def _history(reasoner: BuiltinReasoner, runs: list[tuple[str, str, int, float]]
             ) -> list[TrialRecord]:
    """Trials of (model, method, n, score), the same plan (and score) in every subtask."""
    out = []
    for number, (model, method, n, score) in enumerate(runs):
        space = reasoner.ctx.space
        plan = Plan(model=model, method=method, samples=n, aggregator="oracle")
        alloc = Allocation.of({s: space.canonical(s, plan) for s in space.subtasks})
        stages = dict.fromkeys(reasoner.ctx.space.subtasks, score)
        end = score ** len(stages)
        out.append(TrialRecord(number, alloc, TrialStatus.OK, end, stages,
                               reasoner.ctx.cost_model.estimate(alloc)))
    return out


def _on(plan: Plan, arm: dict) -> bool:
    return all(plan[k] == v for k, v in arm.items())


# every large plan scores about 0.9; small/ckpt-a 0.3 at n = 1 and 2; small/ckpt-b, tried
# once, 0.02 (one plan tried is too little evidence to drop its arm)
DOMINATED = [("large", method, n, 0.85 + 0.01 * k) for method in ("ckpt-a", "ckpt-b")
             for k, n in enumerate((1, 2, 4, 8, 16))] + [
    ("small", "ckpt-a", 1, 0.3), ("small", "ckpt-a", 2, 0.35), ("small", "ckpt-b", 1, 0.02)]


def test_a_dominated_arm_is_dropped_and_revived_by_new_evidence(tmp_path: Path) -> None:
    reasoner = _reasoner(_spec(tmp_path, 1))
    history = _history(reasoner, DOMINATED)
    memory = reasoner.reflect(history).insights
    dominance = [i for i in memory if i.kind == "dominance"]
    assert len(dominance) == 1 and "small/ckpt-a" in dominance[0].text
    [entry] = dominance[0].data["dropped"]
    assert _on(Plan(**entry["arm"]), WEAK) and entry["tried"] == 2
    assert entry["optimistic"] < entry["evidence"] == 0.89
    # the four unseen small/ckpt-b plans come first, though the fit rates small/ckpt-a higher
    blind = reasoner.propose(history, [], 4).allocations
    assert any(_on(a["extract"], WEAK) for a in blind)
    proposal = reasoner.propose(history, memory, 4)
    assert not any(_on(a["extract"], WEAK) for a in proposal.allocations)
    assert len(proposal.rationale) == 4 and all(
        r.endswith("; memory: dropped 1 arm (dominance)") for r in proposal.rationale)
    last = reasoner.propose(history, memory, 5)
    assert _on(last.allocations[-1]["extract"], WEAK)  # only once nothing open is left
    assert last.rationale[-1].startswith("nothing the memory leaves open")
    # the arm blooms at n = 16 (another driver ran it): the next reflection revives it
    revived = reasoner.reflect(history + _history(reasoner, [("small", "ckpt-a", 16, 0.97)]),
                               memory).insights
    [insight] = [i for i in revived if i.kind == "dominance"]
    assert not any(_on(Plan(**d["arm"]), WEAK) for d in insight.data["dropped"])
    assert [_on(Plan(**arm), WEAK) for arm in insight.data["revived"]] == [True]
    assert "revived by new evidence: small/ckpt-a" in insight.text
    table = reasoner.analyst.tables[0]
    [mask], _ = closed([table], revived)
    assert not any(mask[i] for i, p in enumerate(table.plans) if _on(p, WEAK))


def test_a_cheaper_arm_is_kept_where_it_frees_budget_for_another_stage(
        tmp_path: Path) -> None:
    """With two stages sharing the budget, a weak arm is dropped only if a plan observed at
    no more cost beats it: small/ckpt-a is the cheapest, so nothing dominates it."""
    reasoner = _reasoner(_spec(tmp_path, 2))
    memory = reasoner.reflect(_history(reasoner, DOMINATED)).insights
    assert not [i for i in memory if i.kind == "dominance"]


def test_proposals_stay_below_a_saturation_cap(tmp_path: Path) -> None:
    reasoner = _reasoner(_spec(tmp_path, 1))
    # large/ckpt-b is flat in n (0.72 from n = 1 to 8: the score model expects more samples
    # to help until it has seen them not help); the other arms are far below, each seen (an
    # arm never tried would be rated by the prior rise of pass@n, ln 2 per doubling)
    history = _history(reasoner, [("large", "ckpt-b", 1, 0.72), ("large", "ckpt-b", 2, 0.72),
                                  ("large", "ckpt-b", 4, 0.72), ("large", "ckpt-b", 8, 0.72),
                                  ("small", "ckpt-a", 1, 0.3), ("large", "ckpt-a", 2, 0.4),
                                  ("small", "ckpt-b", 2, 0.2)])
    memory = reasoner.reflect(history).insights
    [saturation] = [i for i in memory if i.kind == "saturation"]
    cap = saturation.data["saturates_at"]
    arm = {"model": "large", "method": "ckpt-b"}
    assert _on(Plan(**saturation.data["arm"]), arm) and cap is not None and cap <= 8
    proposal = reasoner.propose(history, memory, 6)
    assert len(proposal.allocations) == 6
    assert not any(_on(a["extract"], arm) and a["extract"].samples > cap
                   for a in proposal.allocations)
    assert all(f"capped n at {cap} on extract large/ckpt-b" in r for r in proposal.rationale)
    uncapped = reasoner.propose(history, [], 6).allocations
    assert any(_on(a["extract"], arm) and a["extract"].samples > cap for a in uncapped)
    # a curve still rising caps nothing
    rising = Insight("extract", "saturation", "still rising",
                     {**saturation.data, "saturates_at": None})
    masks, why = closed(reasoner.analyst.tables, [rising])
    assert not masks[0].any() and why == []
