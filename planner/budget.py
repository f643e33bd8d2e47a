"""Budget strings: `8gpu-h`, `90gpu-min`, `30gpu-s`, `3.5e18flop`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from planner.errors import BudgetError

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(gpu-h|gpu-min|gpu-s|flops?)\s*$",
                      re.IGNORECASE)
_GPU_HOURS_PER_UNIT = {"gpu-h": 1.0, "gpu-min": 1 / 60, "gpu-s": 1 / 3600}
_RANGE = {"gpu_hours": (1e-9, 1e15), "flops": (1.0, 1e40)}  # beyond: a typo, not a budget
_FORMS = "e.g. 8gpu-h, 90gpu-min, 30gpu-s or 3.5e18flop"


@dataclass(frozen=True)
class Budget:
    """A compute cap, in GPU-hours or in FLOPs (converted with the task's hardware)."""

    amount: float
    unit: Literal["gpu_hours", "flops"]

    def gpu_hours(self, peak_flops: float, utilization: float) -> float:
        """This budget in GPU-hours of a GPU delivering `peak_flops * utilization` FLOP/s."""
        if self.unit == "gpu_hours":
            return self.amount
        return self.amount / (peak_flops * utilization) / 3600.0

    def __str__(self) -> str:
        return f"{self.amount:g}gpu-h" if self.unit == "gpu_hours" else f"{self.amount:g}flop"


def parse_budget(text: str) -> Budget:
    """Parse a budget string; raise `BudgetError` naming the accepted forms."""
    text = str(text)
    shown = repr(text if len(text) <= 40 else text[:40] + "...")
    m = _PATTERN.match(text)
    if not m or float(m.group(1)) <= 0:
        raise BudgetError(f"bad budget {shown}: use a positive number with a unit, {_FORMS}")
    amount, unit = float(m.group(1)), m.group(2).lower()
    budget = (Budget(amount, "flops") if unit.startswith("flop")
              else Budget(amount * _GPU_HOURS_PER_UNIT[unit], "gpu_hours"))
    low, high = _RANGE[budget.unit]
    if not (math.isfinite(budget.amount) and low <= budget.amount <= high):
        what = "GPU-hours" if budget.unit == "gpu_hours" else "FLOPs"
        raise BudgetError(f"bad budget {shown}: use a finite amount from {low:g} to {high:g} "
                          f"{what}, {_FORMS}")
    return budget
