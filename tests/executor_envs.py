"""Replay environments that misbehave on purpose, for the executor tests: run in worker
processes (spawned, or Ray's), so they live in an importable module and keep their state
in files under `marks` (one file per attempt), never in memory."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

from envs.replay.env import ReplayEnvironment
from planner.draws import Draws
from planner.env import Observation
from planner.space import Allocation
from planner.spec import TaskSpec


class MarkedEnv(ReplayEnvironment):
    """Replays the allocation after `delay` seconds, leaving `<key>.<attempt>.start` (the
    worker's pid and start time) and `.end` files under `marks` (an attempt that kills its
    worker writes `.end` first); `misbehave` may fail an attempt first. With `together`,
    an attempt also waits (up to `TOGETHER_S`) until another attempt has run beside it, so
    a test of parallel workers does not depend on how fast a loaded machine spawns them;
    a serial executor still runs one at a time."""

    TOGETHER_S = 30.0

    def __init__(self, spec: TaskSpec, marks: str, delay: float = 0.0,
                 misbehave: str = "", together: bool = False) -> None:
        super().__init__(spec)
        self.marks, self.delay, self.misbehave = Path(marks), delay, misbehave
        self.together = together

    def evaluate(self, allocation: Allocation, fidelity: float = 1.0,
                 draws: Draws | None = None, screen: float | None = None) -> Observation:
        key = hashlib.sha1(allocation.key().encode()).hexdigest()[:12]
        attempt = len(list(self.marks.glob(f"{key}.*.start"))) + 1
        mine = self.marks / f"{key}.{attempt}.start"
        _write(mine, f"{os.getpid()} {time.time()}")
        time.sleep(self.delay)
        deadline = time.monotonic() + self.TOGETHER_S
        while self.together and not self._beside(mine) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.misbehave == "kill-first" and attempt == 1:
            _write(self.marks / f"{key}.{attempt}.end", str(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
        if self.misbehave == "unreachable-first" and attempt == 1:
            raise ConnectionError("model server unreachable")
        if self.misbehave == "always-wrong":
            raise ValueError("bad allocation for this toy")
        observation = super().evaluate(allocation, fidelity, draws, screen)
        _write(self.marks / f"{key}.{attempt}.end", str(time.time()))
        return observation

    def _beside(self, mine: Path) -> bool:
        """Whether another attempt has run at some moment since `mine` started."""
        started = float(mine.read_text().split()[1])
        for other in self.marks.glob("*.start"):
            end = other.with_suffix(".end")
            if other != mine and (not end.exists() or float(end.read_text()) >= started):
                return True
        return False


def _write(path: Path, text: str) -> None:
    """Write whole or not at all, since other workers read these files as they appear."""
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)


def attempts(marks: Path) -> dict[str, int]:
    """Allocation hash -> attempts started."""
    counts: dict[str, int] = {}
    for f in marks.glob("*.start"):
        key = f.name.split(".")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def most_at_once(marks: Path) -> int:
    """The most attempts that were running at one moment (from their start and end)."""
    events = []
    for f in marks.glob("*.start"):
        start = float(f.read_text().split()[1])
        end = f.with_suffix(".end")
        if end.exists():
            events += [(start, 1), (float(end.read_text()), -1)]
    running = peak = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak
