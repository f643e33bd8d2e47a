"""Random replay tasks for testing search strategies on shapes nobody tuned for.

Each stage has models of growing size whose skill is *not* monotone in size, checkpoints
of growing training tokens, and items of varied difficulty, some unsolvable, so pass@n
curves saturate at different levels. End-to-end = product of stage scores (replay).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from planner.cost import CostModel
from planner.env import Environment
from planner.space import Allocation, Plan
from planner.store import TrialRecord, TrialStatus

# cascades-mmlu-gsm8k: the agent's first nine trials on seed 0 before the mean's picks after
# a stall (`BuiltinReasoner._exploit`) took another route; per trial, MMLU's then GSM8K's
# (model, method), n = 1. The optimum joins trial 8's MMLU plan and trial 5's GSM8K plan.
CASCADES_PATH = [("llama3.2-1b", "alone", "llama3.2-1b", "alone"),
                 ("llama3.2-3b", "alone", "llama3.2-3b", "alone"),
                 ("llama3.1-8b", "alone", "llama3.1-8b", "alone"),
                 ("llama3.1-70b", "alone", "llama3.2-3b", "to-8b-10pct"),
                 ("llama3.1-8b", "to-70b-10pct", "llama3.2-3b", "to-8b-10pct"),
                 ("llama3.2-3b", "to-405b-30pct", "llama3.2-3b", "to-70b-50pct"),
                 ("llama3.1-70b", "alone", "llama3.2-3b", "to-70b-50pct"),
                 ("llama3.1-70b", "to-405b-20pct", "llama3.2-3b", "to-70b-30pct"),
                 ("llama3.1-70b", "to-405b-10pct", "llama3.2-3b", "to-405b-10pct")]


def cascades_trials(env: Environment, cost_model: CostModel) -> list[TrialRecord]:
    """`CASCADES_PATH` evaluated, as the trials of a study (five init probes first)."""
    trials = []
    for number, (m1, c1, m2, c2) in enumerate(CASCADES_PATH):
        alloc = Allocation.of({s: Plan(model=m, method=c, mixture="default", samples=1,
                                       aggregator="first")
                               for s, m, c in [("mmlu", m1, c1), ("gsm8k", m2, c2)]})
        seen = env.evaluate(alloc)
        trials.append(TrialRecord(number, alloc, TrialStatus.OK, seen.score,
                                  seen.subtask_scores, cost_model.estimate(alloc),
                                  source="agent-init" if number < 5 else "agent-builtin"))
    return trials


def write_random_task(folder: Path, seed: int, n_stages: int = 2, n_models: int = 4,
                      n_methods: int = 3, budget: str = "60gpu-h") -> Path:
    """Write `table.csv` and `task.yaml` under `folder`; return the task path."""
    rng = np.random.default_rng(seed)
    models = [{"name": f"m{i}", "params": float(10 ** (8 + i * 0.5))} for i in range(n_models)]
    methods = [{"name": f"ckpt{j}", "kind": "pretrain", "train_tokens": float(10 ** (8 + j))}
               for j in range(n_methods)]
    rows = ["stage,model,method,item,n_samples,n_correct"]
    for s in range(n_stages):
        skill = np.sort(rng.normal(0, 1.0, n_models)) + rng.normal(0, 0.8, n_models)
        gain = np.cumsum(rng.uniform(0.2, 1.0, n_methods))
        unsolvable = rng.uniform(0.0, 0.5)
        for i in range(n_models):
            for j in range(n_methods):
                ability = skill[i] + gain[j] - 3.0
                for item in range(40):
                    if item < 40 * unsolvable:
                        p = 0.0
                    else:
                        p = 1 / (1 + np.exp(-(ability - rng.normal(0, 1.5))))
                    rows.append(f"s{s},m{i},ckpt{j},{item},64,{rng.binomial(64, p)}")
    (folder / "table.csv").write_text("\n".join(rows) + "\n")
    names = [m["name"] for m in models]
    subtasks = []
    for s in range(n_stages):
        subtasks.append({
            "name": f"s{s}", "depends_on": [f"s{s - 1}"] if s else [],
            "prompt_tokens": 200, "output_tokens": int(rng.integers(50, 400)),
            "models": names, "methods": [m["name"] for m in methods],
            "samples": [1, 2, 4, 8, 16, 32, 64], "aggregators": ["oracle"],
            "replay": {"table": f"s{s}.csv", "item": "item",
                       "choices": {"model": "model", "method": "method"}}})
        lines = [r for r in rows[1:] if r.startswith(f"s{s},")]
        (folder / f"s{s}.csv").write_text(
            "model,method,item,n_samples,n_correct\n"
            + "\n".join(r.split(",", 1)[1] for r in lines) + "\n")
    return write_replay_task(folder, f"random-{seed}", budget, models, methods, subtasks)


def write_replay_task(folder: Path, name: str, budget: str, models: list[dict],
                      methods: list[dict], subtasks: list[dict]) -> Path:
    """`folder/task.yaml` of a replay task on the generated tasks' hardware and workload."""
    task = {"name": name, "environment": "replay", "budget": budget,
            "hardware": {"peak_flops": 1e15, "utilization": 0.5},
            "workload": {"queries": 1_000_000}, "models": models, "methods": methods,
            "subtasks": subtasks}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path
