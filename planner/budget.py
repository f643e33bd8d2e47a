"""Budget strings: `8gpu-h`, `90gpu-min`, `30gpu-s`, `3.5e18flop`, `50usd`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from planner.errors import BudgetError

_PATTERN = re.compile(
    r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(gpu-h|gpu-min|gpu-s|flops?|usd)\s*$",
    re.IGNORECASE)
_GPU_HOURS_PER_UNIT = {"gpu-h": 1.0, "gpu-min": 1 / 60, "gpu-s": 1 / 3600}
_RANGE = {"gpu_hours": (1e-9, 1e15), "flops": (1.0, 1e40), "usd": (1e-6, 1e15)}  # else a typo
_FORMS = "e.g. 8gpu-h, 90gpu-min, 30gpu-s, 3.5e18flop or 50usd"


@dataclass(frozen=True)
class Budget:
    """A compute cap, in GPU-hours, FLOPs or US dollars (the last two converted with the
    task's hardware: its delivered FLOP/s, its price of a GPU-hour)."""

    amount: float
    unit: Literal["gpu_hours", "flops", "usd"]

    def gpu_hours(self, peak_flops: float, utilization: float,
                  usd_per_gpu_hour: float | None = None) -> float:
        """This budget in GPU-hours of a GPU delivering `peak_flops * utilization` FLOP/s
        and rented at `usd_per_gpu_hour`."""
        if self.unit == "gpu_hours":
            return self.amount
        if self.unit == "usd":
            if usd_per_gpu_hour is None:
                raise BudgetError(f"{self}: a budget in USD needs the price of a "
                                  "GPU-hour; give hardware.usd_per_gpu_hour in the task, or a "
                                  "budget in GPU-hours (e.g. 8gpu-h)")
            return self.amount / usd_per_gpu_hour
        return self.amount / (peak_flops * utilization) / 3600.0

    def __str__(self) -> str:
        unit = {"gpu_hours": "gpu-h", "flops": "flop", "usd": "usd"}[self.unit]
        return f"{self.amount:g}{unit}"


def parse_budget(text: str) -> Budget:
    """Parse a budget string; raise `BudgetError` naming the accepted forms."""
    text = str(text)
    shown = repr(text if len(text) <= 40 else text[:40] + "...")
    m = _PATTERN.match(text)
    if not m or float(m.group(1)) <= 0:
        raise BudgetError(f"bad budget {shown}: use a positive number with a unit, {_FORMS}")
    amount, unit = float(m.group(1)), m.group(2).lower()
    budget = (Budget(amount, "flops") if unit.startswith("flop")
              else Budget(amount, "usd") if unit == "usd"
              else Budget(amount * _GPU_HOURS_PER_UNIT[unit], "gpu_hours"))
    low, high = _RANGE[budget.unit]
    if not (math.isfinite(budget.amount) and low <= budget.amount <= high):
        what = {"gpu_hours": "GPU-hours", "flops": "FLOPs", "usd": "USD"}[budget.unit]
        raise BudgetError(f"bad budget {shown}: use a finite amount from {low:g} to {high:g} "
                          f"{what}, {_FORMS}")
    return budget
