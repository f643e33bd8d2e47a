"""Replay tasks with a data-mixture dimension and a multi-task artifact two subtasks share.

Two chained subtasks `a` -> `b`, each offering the base model as it is (`none`) or a LoRA
fine-tune on one of three mixtures:

- `own`: the subtask's own data;
- `both`: both subtasks' data, equally (`{x: 1, b/x: 1}` in a, `{x: 1, a/x: 1}` in b), so
  the two name the same weights over the same qualified sources: one LoRA serves both,
  trained and paid once;
- `tilted`: both subtasks' data, weighted differently in each, so never shared.

Per-item counts are generated with a `mixture` column; method `none` has rows for the first
mixture only, the one its canonical plans take. Training is priced from the LoRA's options
(steps x batch_size x tokens of the mixture's examples) and weighs about as much as serving.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.agent_tasks import write_replay_task

SUBTASKS = ("a", "b")
MIXTURES = {"a": {"own": {"x": 1}, "both": {"x": 1, "b/x": 1}, "tilted": {"x": 3, "b/x": 1}},
            "b": {"own": {"x": 1}, "both": {"x": 1, "a/x": 1}, "tilted": {"x": 1, "a/x": 1,
                                                                          "y": 1}}}
SHARED = "both"  # the mixture whose LoRA both subtasks share
FINE_TUNE = "lora"


def write_mixture_task(folder: Path, seed: int = 0, budget: str = "2gpu-h",
                       n_items: int = 30) -> Path:
    """Write `a.csv`, `b.csv` and `task.yaml` under `folder`; return the task path."""
    rng = np.random.default_rng(seed)
    models = [{"name": "small", "params": 1e8}, {"name": "large", "params": 1e9}]
    methods = [{"name": "none", "kind": "none"},
               {"name": FINE_TUNE, "kind": "lora",
                "options": {"steps": 20_000, "batch_size": 64, "lora_r": 16}}]
    subtasks = []
    for s in SUBTASKS:
        rows = ["model,method,mixture,item,n_samples,n_correct"]
        difficulty = rng.normal(1.0, 2.0, n_items)
        for i, model in enumerate(m["name"] for m in models):
            base = -2.5 + 1.0 * i + rng.normal(0, 0.3)
            choices = [("none", "own", 0.0)] + [
                (FINE_TUNE, mix, gain) for mix, gain in
                zip(MIXTURES[s], rng.uniform(0.3, 1.5, len(MIXTURES[s])), strict=True)]
            for method, mixture, gain in choices:
                p = 1 / (1 + np.exp(-(base + gain - difficulty)))
                for item, c in enumerate(rng.binomial(32, p)):
                    rows.append(f"{model},{method},{mixture},{item},32,{c}")
        (folder / f"{s}.csv").write_text("\n".join(rows) + "\n")
        subtasks.append({
            "name": s, "depends_on": [] if s == SUBTASKS[0] else [SUBTASKS[0]],
            "prompt_tokens": 150, "output_tokens": 50 if s == "a" else 150,
            "models": [m["name"] for m in models], "methods": [m["name"] for m in methods],
            "mixtures": MIXTURES[s], "samples": [1, 4, 16], "aggregators": ["first", "oracle"],
            "replay": {"table": f"{s}.csv", "item": "item",
                       "choices": {"model": "model", "method": "method", "mixture": "mixture"}}})
    return write_replay_task(folder, f"mixture-{seed}", budget, models, methods, subtasks)
