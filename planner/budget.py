"""Budget strings: `8gpu-h`, `90gpu-min`, `30gpu-s`, `3.5e18flop`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from planner.errors import BudgetError

_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(gpu-h|gpu-min|gpu-s|flops?)\s*$",
                      re.IGNORECASE)
_GPU_HOURS_PER_UNIT = {"gpu-h": 1.0, "gpu-min": 1 / 60, "gpu-s": 1 / 3600}


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
    m = _PATTERN.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise BudgetError(
            f"bad budget {text!r}: use a positive number with a unit, "
            "e.g. 8gpu-h, 90gpu-min, 30gpu-s or 3.5e18flop"
        )
    amount, unit = float(m.group(1)), m.group(2).lower()
    if unit.startswith("flop"):
        return Budget(amount, "flops")
    return Budget(amount * _GPU_HOURS_PER_UNIT[unit], "gpu_hours")
