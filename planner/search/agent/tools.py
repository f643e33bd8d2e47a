"""Functions a language-model reasoner may call while it answers (OpenAI tool calling).

- `predict(allocation)`: the end score the builtin's score model (`Analysis`) predicts,
  and each stage's mean with one standard deviation either side (in logit space);
- `price(allocation)`: the cost model's GPU-hours, and whether it fits the budget;
- `frontier(k)`: the `k` unseen allocations within budget that the builtin would pick
  (`combine.frontier` on optimistic scores, with the plans its memory rules out ranked
  last), with predicted end score and cost;
- `trial(number)`: one trial's allocation, status, end and stage scores, and cost.

`Tools.specs` gives their OpenAI function schemas, whose enums are the search space's
values; `Tools.call` runs one call from the model's JSON arguments and answers a short
JSON-friendly dict, or {"error": ...} saying what was wrong; it never raises.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence

import numpy as np

from planner.errors import SpaceError
from planner.search._base import SearchContext
from planner.search.agent import prompts
from planner.search.agent.analysis import Analysis
from planner.search.agent.combine import frontier
from planner.search.agent.screening import settled
from planner.store import TrialRecord

MAX_FRONTIER = 8  # allocations one frontier call lists


class Tools:
    """The tools over one trial history (a node's view of the study)."""

    def __init__(self, ctx: SearchContext, analysis: Analysis, values: Sequence[np.ndarray],
                 history: Sequence[TrialRecord]) -> None:
        self.ctx = ctx
        self.analysis = analysis
        self.values = values  # per subtask, each plan's value as the builtin ranks it
        self.history = list(history)
        self._functions: dict[str, Callable[..., dict]] = {
            "predict": self.predict, "price": self.price, "frontier": self.frontier,
            "trial": self.trial}

    def specs(self) -> list[dict]:
        """The OpenAI `tools` list: each function's name, description and JSON schema."""
        allocation = {"allocation": prompts.allocation_schema(self.ctx.space)}
        return [
            _spec("predict", "Predicted end score of an allocation and each subtask's "
                  "score (mean, and one standard deviation below and above), from a "
                  "statistical model fitted to the trials.", allocation),
            _spec("price", "Estimated cost of an allocation in GPU-hours (training + "
                  "serving) and whether it fits the budget.", allocation),
            _spec("frontier", "The k unseen allocations within budget that a statistical "
                  "model rates highest (optimistic pick), with predicted end score and cost.",
                  {"k": {"type": "integer", "minimum": 1, "maximum": MAX_FRONTIER}}),
            _spec("trial", "One evaluated trial: its allocation, status, end and per-subtask "
                  "scores, and cost.", {"number": {"type": "integer", "minimum": 0}}),
        ]

    def call(self, name: str, arguments: str) -> dict:
        """Run one call; bad arguments or an unknown name answer {"error": ...}."""
        function = self._functions.get(name)
        if function is None:
            return {"error": f"unknown tool {name!r}; call one of {sorted(self._functions)}"}
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            return {"error": f"arguments are not JSON ({e.msg}); give a JSON object"}
        if not isinstance(args, dict):
            return {"error": "arguments must be a JSON object"}
        signature = inspect.signature(function)
        try:
            signature.bind(**args)
        except TypeError:
            return {"error": f"{name} takes {sorted(signature.parameters)}; got {sorted(args)}"}
        try:
            return function(**args)
        except (SpaceError, ValueError) as e:
            return {"error": str(e)}

    def predict(self, allocation: dict) -> dict:
        """Predicted end score, and each stage's mean with one std below and above."""
        alloc = self.ctx.space.coerce(allocation)
        end, mean = self.analysis.predicted(alloc)
        _, low = self.analysis.predicted(alloc, -1.0)
        _, high = self.analysis.predicted(alloc, 1.0)
        out: dict = {"end_score": _r(end), "stages": {
            s: {"mean": _r(mean[s]), "low": _r(low[s]), "high": _r(high[s])} for s in mean}}
        done = next((t for t in self.history if t.allocation.key() == alloc.key()), None)
        if done is not None:
            out["evaluated_as_trial"] = done.number
        return out

    def price(self, allocation: dict) -> dict:
        """Estimated GPU-hours (training, serving, total) and whether it fits the budget."""
        cost = self.ctx.cost_model.estimate(self.ctx.space.coerce(allocation))
        budget = self.ctx.budget_gpu_hours
        return {"gpu_hours": _g(cost.total_gpu_hours), "train": _g(cost.train_gpu_hours),
                "serve": _g(cost.inference_gpu_hours), "budget": _g(budget),
                "fits": cost.total_gpu_hours <= budget}

    def frontier(self, k: int = 5) -> dict:
        """The `k` best unseen allocations within budget, with predicted score and cost."""
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_FRONTIER:
            raise ValueError(f"k must be an integer from 1 to {MAX_FRONTIER}")
        found = frontier(self.analysis, self.values,
                         self.ctx.budget_gpu_hours, self.ctx.cost_model,
                         settled(self.history, self.ctx.cost_model), k)
        return {"candidates": [
            {"allocation": a.to_dict(), "end_score": _r(self.analysis.predicted(a)[0]),
             "gpu_hours": _g(self.ctx.cost_model.estimate(a).total_gpu_hours)}
            for a in found]}

    def trial(self, number: int) -> dict:
        """One trial as the trials table shows it, with its source and any error."""
        t = next((t for t in self.history if t.number == number), None)
        if t is None:
            known = [t.number for t in self.history]
            raise ValueError(f"no trial {number!r}; trials are "
                             + (f"{min(known)}..{max(known)}" if known else "none yet"))
        out = {"number": t.number, "status": t.status.value, "allocation": t.allocation.to_dict(),
               "end_score": None if t.score is None else _r(t.score),
               "stage_scores": {s: _r(v) for s, v in t.subtask_scores.items()},
               "gpu_hours": _g(t.cost.total_gpu_hours), "source": t.source}
        if t.screen:  # scored on a share of the validation items: an estimate
            out["fidelity"] = t.fidelity
        if t.error:
            out["error_message"] = t.error[:200]
        return out


def _spec(name: str, description: str, properties: dict) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "additionalProperties": False,
                       "required": list(properties), "properties": properties}}}


def _r(x: float) -> float:
    return round(float(x), 4)


def _g(x: float) -> float:
    return float(f"{x:.4g}")
