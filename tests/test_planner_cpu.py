"""experiments/planner_cpu.py: a checkout's own copy of the script times the tasks it is
given, task files named relative to where the user stands included."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_checkout_times_a_task_file_named_relative_to_the_users_directory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    from planner_cpu import run_tree
    monkeypatch.chdir(ROOT)  # the child runs in experiments/, where this path does not resolve
    args = argparse.Namespace(tasks=["envs/replay/heldout/gsm8k_final.yaml", "monkeys-gsm8k"],
                              strategy="random", seeds=1, trials=3)
    ms = run_tree(ROOT, args)
    assert sorted(ms) == ["gsm8k-final", "monkeys-gsm8k"]
    assert all(len(values) == 1 and values[0] > 0 for values in ms.values())
