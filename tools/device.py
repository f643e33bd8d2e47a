"""The device a run trains and samples on, the precision its training loop uses, and the
peak FLOP/s a measured utilisation is a fraction of.

The choices are functions of a `Device` passed in, so the GPU rules can be read (and
tested) on a machine without one; `current_device()` describes this machine.

- precision `auto`: bf16 mixed precision where the GPU supports it
  (`torch.cuda.is_bf16_supported()`: Ampere and newer), else fp16 mixed precision on CUDA,
  else fp32 (a CPU);
- TF32 matmuls (10-bit mantissa inputs, fp32 accumulation) wherever the GPU has them
  (compute capability 8.0 and newer), for the fp32 work left outside the autocast regions;
- a CPU's peak: no published figure applies, so `cpu_matmul_flops` measures what a large
  fp32 matmul achieves here at the current thread count; a GPU's is the task's
  `hardware.peak_flops` (the caller's business: tools know no task).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Literal

import torch

Precision = Literal["bf16", "fp16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
"""What a training loop may ask for; `auto` is resolved by `choose_precision`."""


@dataclass(frozen=True)
class Device:
    """Where a run computes."""

    kind: Literal["cuda", "cpu"]
    name: str = ""
    """The GPU's name (`torch.cuda.get_device_name`); '' on a CPU."""
    capability: tuple[int, int] | None = None
    """CUDA compute capability (8, 0) for an A100, (9, 0) for an H100; None on a CPU."""
    bf16: bool = False
    """bf16 arithmetic is supported (`torch.cuda.is_bf16_supported()`)."""

    def describe(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.name}"


def current_device() -> Device:
    """This machine's first CUDA device, else the CPU (what `Trainer` and the samplers use)."""
    if not torch.cuda.is_available():
        return Device("cpu")
    return Device("cuda", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
                  torch.cuda.is_bf16_supported())


def choose_precision(requested: str, device: Device) -> Precision:
    """The training loop's precision: `requested`, or for `auto` the best the device has.
    ValueError for one the device cannot run (fp16 mixed precision needs CUDA; bf16 on a GPU
    needs Ampere or newer; bf16 on a CPU runs, slowly, under CPU autocast)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        if device.kind == "cpu":
            return "fp32"
        return "bf16" if device.bf16 else "fp16"
    if requested == "fp16" and device.kind == "cpu":
        raise ValueError("precision fp16: fp16 mixed precision needs a CUDA GPU and this run "
                         "is on the CPU; use precision auto (fp32 here), bf16 or fp32")
    if requested == "bf16" and device.kind == "cuda" and not device.bf16:
        raise ValueError(f"precision bf16: {device.name} has no bf16 (it needs compute "
                         "capability 8.0, Ampere, or newer); use precision auto (fp16 here), "
                         "fp16 or fp32")
    return requested  # type: ignore[return-value]


def use_tf32(device: Device) -> bool:
    """TF32 matmuls are available (a CUDA GPU of compute capability 8.0 or newer)."""
    return device.kind == "cuda" and device.capability is not None and device.capability >= (8, 0)


def cpu_matmul_flops(size: int = 512, seconds: float = 0.2) -> float:
    """FLOP/s an fp32 `size` x `size` matmul achieves on this CPU at the current torch thread
    count: the peak a CPU run's utilisation is a fraction of (measured once per process and
    thread count)."""
    return _cpu_matmul_flops(size, seconds, torch.get_num_threads())


@cache
def _cpu_matmul_flops(size: int, seconds: float, threads: int) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: first call allocates
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / max(time.perf_counter() - start, 1e-9))
    return best
