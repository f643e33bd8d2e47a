"""Shared fixtures: a small replay task written to a temporary folder; the `planner`
command run in this process."""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import yaml

from planner import cli
from planner.spec import TaskSpec, load_spec


def run_planner(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`planner ARGS` run (in `cwd`) by `cli.main`, the console script's entry point, in
    this process (a subprocess costs seconds of imports): exit code, stdout and stderr."""
    stdout, stderr = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd or before)
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr), \
                mock.patch.object(sys, "argv", ["planner", *args]):
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def write_tiny_task(folder: Path, **overrides: object) -> Path:
    """Two chained subtasks over a generated counts table; returns the task.yaml path.

    Bigger models and later checkpoints are better, more samples help (pass@n).
    """
    rng = random.Random(0)
    rows = ["model,method,item,n_samples,n_correct"]
    for model, skill in (("small", 0.15), ("large", 0.35)):
        for method, bonus in (("ckpt-a", 0.0), ("ckpt-b", 0.1)):
            for item in range(20):
                p = min(1.0, max(0.0, skill + bonus + rng.uniform(-0.15, 0.15)))
                rows.append(f"{model},{method},{item},32,{round(32 * p)}")
    (folder / "table.csv").write_text("\n".join(rows) + "\n")
    task = {
        "name": "tiny",
        "environment": "replay",
        "budget": "100gpu-h",
        "hardware": {"peak_flops": 1e15, "utilization": 0.5},
        "workload": {"queries": 1_000_000},
        "models": [{"name": "small", "params": 1e8}, {"name": "large", "params": 1e9}],
        "methods": [{"name": "ckpt-a", "kind": "pretrain", "train_tokens": 1e9},
                    {"name": "ckpt-b", "kind": "pretrain", "train_tokens": 1e10}],
        "subtasks": [
            {"name": name, "depends_on": deps, "prompt_tokens": 100, "output_tokens": 100,
             "models": ["small", "large"], "methods": ["ckpt-a", "ckpt-b"],
             "samples": [1, 2, 4, 8, 16], "aggregators": ["oracle"],
             "replay": {"table": "table.csv", "item": "item",
                        "choices": {"model": "model", "method": "method"}}}
            for name, deps in (("extract", []), ("solve", ["extract"]))
        ],
    }
    task.update(overrides)
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; on a busy 2-core CPU two threads thrash. Use
    it in every module that builds models: `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_task_path(tmp_path: Path) -> Path:
    return write_tiny_task(tmp_path)


@pytest.fixture
def tiny_spec(tiny_task_path: Path) -> TaskSpec:
    return load_spec(tiny_task_path)


def with_methods(folder: Path, methods: list[dict]) -> Path:
    """`write_tiny_task` with `methods` added to its methods."""
    path = write_tiny_task(folder)
    data = yaml.safe_load(path.read_text())
    data["methods"] += methods
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
