"""`planner cache ls` and `planner cache prune` on a real live cache: trained models (a full
fine-tune, a LoRA adapter) and sample sets of a tiny GPT-2, and a half-written build left by
a training killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from envs.live.env import LiveEnvironment
from envs.live.tasks.make_data import wordsum_records, write_jsonl
from planner.cli import app
from planner.errors import PlannerError
from planner.space import Allocation, Plan
from planner.spec import load_spec
from tools.zoo import build_tiny_model, synthetic_corpus

ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0

pytestmark = pytest.mark.usefixtures("one_thread")


def cache_cli(*args: str) -> dict:
    """A `planner cache` command in this process; its --json output."""
    result = CliRunner().invoke(app, ["cache", *args, "--json"])
    assert result.exit_code == 0, (result.stdout, result.exception)
    return json.loads(result.stdout)


def write_task(folder: Path, base: Path) -> Path:
    write_jsonl(folder / "train.jsonl", wordsum_records(8, seed=1))
    write_jsonl(folder / "val.jsonl", wordsum_records(3, seed=2))
    loop = {"steps": 1, "batch_size": 2}
    task = {
        "name": "cache-tiny", "environment": "live", "budget": "1gpu-h",
        "workload": {"queries": 1000},
        "models": [{"name": "m", "params": 1e5, "source": str(base)}],
        "methods": [{"name": "none", "kind": "none"},
                    {"name": "full", "kind": "full", "options": loop},
                    {"name": "lora", "kind": "lora", "options": {**loop, "lora_r": 2}}],
        "subtasks": [{"name": "add", "prompt_tokens": 10, "output_tokens": 5, "models": ["m"],
                      "methods": ["none", "full", "lora"], "samples": [1],
                      "decoding": {"max_new_tokens": 2},
                      "data": {"sources": {"train": "train.jsonl"}, "val": "val.jsonl",
                               "prompt": "{problem} sum:"}}],
    }
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def allocation(method: str) -> Allocation:
    return Allocation.of({"add": Plan(model="m", method=method, mixture="default", samples=1,
                                      aggregator="first")})


def test_ls_lists_and_prune_removes_the_least_recently_used(tmp_path: Path) -> None:
    base = build_tiny_model("tiny", synthetic_corpus(40, seed=0), tmp_path / "base", steps=1,
                            batch_size=4, seed=0)
    cache = tmp_path / "cache"
    env = LiveEnvironment(load_spec(write_task(tmp_path, base)), cache_dir=cache,
                          progress=False)
    for method in ("full", "lora", "none"):
        env.evaluate(allocation(method))
    listed = cache_cli("ls", "--cache-dir", str(cache))
    kinds = sorted(e["kind"] for e in listed["entries"])
    assert kinds == ["artifact", "artifact", "samples", "samples", "samples"]
    assert listed["bytes"] == sum(e["bytes"] for e in listed["entries"]) > 0
    full, lora = (next(e for e in listed["entries"] if e["detail"].startswith(kind))
                  for kind in ("full", "lora"))
    assert (full["detail"], lora["detail"]) == ("full weights on add/train",
                                                "lora adapter on add/train")
    # adapters are stored as adapters: peft's adapter file, no copy of the base's weights
    files = {p.name for p in Path(lora["path"]).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files and "model.safetensors" in {
        p.name for p in Path(full["path"]).iterdir()}
    assert lora["bytes"] * 5 < full["bytes"]

    # ages: the full fine-tune 10 days, the LoRA an hour; sample sets 20 days, 2 days, now
    now = time.time()
    os.utime(full["path"], (now - 10 * DAY, now - 10 * DAY))
    os.utime(lora["path"], (now - 3600, now - 3600))
    sets = [e["key"] for e in listed["entries"] if e["kind"] == "samples"]
    with sqlite3.connect(cache / "live" / "samples.sqlite") as db:
        for key, age in zip(sets, (20 * DAY, 2 * DAY, 0), strict=True):
            db.execute("UPDATE sample_sets SET used = ? WHERE set_key = ?", (now - age, key))
    listed = cache_cli("ls", "--cache-dir", str(cache))
    order = [e["key"] for e in listed["entries"]]
    assert order == [sets[0], full["key"], sets[1], lora["key"], sets[2]]  # LRU first
    assert listed["entries"][0]["age_seconds"] == pytest.approx(20 * DAY, abs=60)

    dry = cache_cli("prune", "--older-than", "7d", "--dry-run", "--cache-dir", str(cache))
    assert [e["key"] for e in dry["removed"]] == [sets[0], full["key"]]
    assert Path(full["path"]).is_dir() and len(cache_cli(
        "ls", "--cache-dir", str(cache))["entries"]) == 5  # a dry run removes nothing

    pruned = cache_cli("prune", "--older-than", "7d", "--cache-dir", str(cache))
    assert [e["key"] for e in pruned["removed"]] == [sets[0], full["key"]]
    assert not Path(full["path"]).exists()
    with sqlite3.connect(cache / "live" / "samples.sqlite") as db:
        left = {k for (k,) in db.execute("SELECT DISTINCT set_key FROM samples")}
    assert left == set(sets[1:])

    newest = [e for e in listed["entries"] if e["key"] in (lora["key"], sets[2])]
    limit = sum(e["bytes"] for e in newest)  # room for the two most recent only
    pruned = cache_cli("prune", "--max-size", str(limit), "--cache-dir", str(cache))
    assert [e["key"] for e in pruned["removed"]] == [sets[1]]
    assert pruned["kept_bytes"] == limit
    assert [e["key"] for e in cache_cli("ls", "--cache-dir", str(cache))["entries"]] == [
        lora["key"], sets[2]]

    # the cache still works: the pruned model is trained again, the kept one is a hit and
    # counts as used now
    env = LiveEnvironment(load_spec(tmp_path / "task.yaml"), cache_dir=cache, progress=False)
    env.evaluate(allocation("full"))
    env.evaluate(allocation("lora"))
    assert (env.cache.stats.train_misses, env.cache.stats.train_hits) == (1, 1)
    ages = {e["key"]: e["age_seconds"] for e in cache_cli("ls", "--cache-dir",
                                                            str(cache))["entries"]}
    assert ages[lora["key"]] < 600 and full["key"] in ages


BUILDER = """
import sys, time
from envs.live.cache import Cache

def build(out):
    (out / "weights.bin").write_bytes(b"x" * 4096)
    print("building", flush=True)
    time.sleep(120)

Cache(sys.argv[1]).artifact("k" * 24, build)
"""


def test_a_killed_trainings_half_written_build_is_pruned_once_unlocked(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(cache)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "building"
        [partial] = (cache / "live" / "artifacts").iterdir()
        assert partial.name.startswith(".kkkk")
        fresh = partial.with_name(".aaaa-x1")  # another half-written build, just started
        fresh.mkdir()
        old = time.time() - 2 * 3600
        os.utime(partial, (old, old))
        listed = cache_cli("ls", "--cache-dir", str(cache))["entries"]
        assert [(e["kind"], e["key"], e["bytes"]) for e in listed] == [
            ("partial", "k" * 24, 4096), ("partial", "aaaa", 0)]
        running = cache_cli("prune", "--cache-dir", str(cache))  # its builder holds the lock
        assert running["removed"] == [] and len(running["skipped"]) == 2
        assert partial.is_dir()
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait()
    killed = cache_cli("prune", "--cache-dir", str(cache))
    assert [e["key"] for e in killed["removed"]] == ["k" * 24]
    assert not partial.exists() and fresh.is_dir()  # too recent to call it abandoned


def test_bad_cache_options_are_one_line_and_exit_2(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "planner.cli", "cache", "prune", "--older-than",
                        "7 days"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PLANNER_CACHE": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr == ("Error: --older-than: '7 days' is not an age; write e.g. 7d, 12h, "
                        "30m or 2w\n")
    for args, expected in (
            (["prune", "--max-size", "ten gigs"],
             "--max-size: 'ten gigs' is not a size; write e.g. 10GB, 500MB or 8GiB"),
            (["ls", "--cache-dir", str(tmp_path / "absent")],
             f"--cache-dir {tmp_path / 'absent'}: no such folder; pass the cache's folder")):
        result = CliRunner().invoke(app, ["cache", *args])  # main() makes these exit 2
        assert isinstance(result.exception, PlannerError)
        assert str(result.exception).startswith(expected)
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("cache", ["a-file", "a-file/below"])
def test_a_cache_that_cannot_be_a_folder_is_one_line_and_exit_2(tmp_path: Path,
                                                                 cache: str) -> None:
    """It was a traceback (NotADirectoryError, FileNotFoundError) from the cache's mkdir."""
    (tmp_path / "a-file").write_text("not a folder")
    task = ROOT / "envs/live/tasks/wordsum/task.yaml"
    r = subprocess.run([sys.executable, "-m", "planner.cli", "check", str(task)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PLANNER_CACHE": str(tmp_path / cache)})
    assert r.returncode == 2
    assert r.stderr == (f"Error: cache {tmp_path / cache}: cannot keep models and samples there "
                        "(Not a directory); point $PLANNER_CACHE (or --cache-dir, where a "
                        "command takes it) at a folder you can write\n")
