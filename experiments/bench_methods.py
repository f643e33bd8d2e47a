"""Every method kind on the smolmath task (SmolLM2-135M-Instruct), beside plain LoRA and full
fine-tuning: end-to-end and per-stage scores, estimated GPU-hours, measured seconds.

One run, one fresh live cache (the converted SmolLM2 folder is reused from the default
cache's zoo, converted there first if need be). The task is envs/live/tasks/smolmath with
every stage offered every method, so a row can apply one method to all three stages; the
other settings (data, templates, extractors, steps, n, verifier) are the task's own. Each
row is one allocation evaluated once by the live environment: its training and sampling are
what a trial of that allocation does (a row reusing an earlier row's fine-tunes says so in
`cached`, and its measured seconds are those recorded when they were built).

    OMP_NUM_THREADS=1 python experiments/bench_methods.py > bench_methods.log 2>&1 &

Prints each row as it finishes and writes experiments/README_methods.md at the end.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from envs.live.cache import default_root
from envs.live.env import LiveEnvironment
from planner.cost import CostModel
from planner.space import Allocation, Plan
from planner.spec import load_spec

HERE = Path(__file__).parent
TASK = HERE.parent / "envs/live/tasks/smolmath"
STAGES = ("extract", "compute", "answer")

# label -> (method on every stage, {stage: plan fields over it and the defaults}, what it shows)
ROWS: list[tuple[str, str, dict[str, dict], str]] = [
    ("none", "none", {}, "the base model as it is"),
    ("lora", "lora", {}, "plain LoRA (r=8), the reference"),
    ("full", "full", {}, "full fine-tuning"),
    ("prompt", "prompt", {}, "prompt tuning (8 virtual tokens)"),
    ("promot", "promot", {}, "ProMoT: soft prompt, then the weights behind it"),
    ("hft", "hft", {}, "half fine-tuning"),
    ("merged", "merged", {}, "TIES merge of the three LoRA fine-tunes, one model"),
    ("lora, compute n=4 majority", "lora",
     {"compute": {"samples": 4, "aggregator": "majority"}}, "test-time samples"),
    ("lora, compute n=4 verifier", "lora",
     {"compute": {"samples": 4, "aggregator": "verifier_best"}}, "a LoRA verifier re-ranks"),
    ("lora, mixtures plain / addsub", "lora",
     {"extract": {"mixture": "plain"}, "compute": {"mixture": "addsub"}},
     "narrow mixtures: no distractors, no products"),
    ("lora, mixtures wordy / multi", "lora",
     {"extract": {"mixture": "wordy"}, "compute": {"mixture": "multi"}},
     "distractors only; compute also trains on extract/plain"),
    ("lora / none n=4 / lora", "lora",
     {"compute": {"method": "none", "samples": 4, "aggregator": "majority"}},
     "a method per stage: the base computes"),
    ("hft / none n=4 / lora", "lora",
     {"extract": {"method": "hft"},
      "compute": {"method": "none", "samples": 4, "aggregator": "majority"}},
     "the best stage choices of the rows above"),
]


def bench_task(folder: Path) -> Path:
    """The task, copied with every stage offered every method."""
    shutil.copytree(TASK, folder, ignore=shutil.ignore_patterns("__pycache__"))
    task = yaml.safe_load((folder / "task.yaml").read_text())
    every = [m["name"] for m in task["methods"]]
    for s in task["subtasks"]:
        s["methods"] = every
    task["name"] = "smolmath-every-method"
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder / "task.yaml"


def allocation(method: str, over: dict[str, dict]) -> Allocation:
    plans = {}
    for stage in STAGES:
        fields = {"model": "smollm2", "method": method, "samples": 1,
                  "aggregator": "first" if stage == "answer" else "majority",
                  "mixture": "default" if stage == "answer" else "own",
                  **({"verifier": "lora-v"} if stage == "compute" else {}),
                  **over.get(stage, {})}
        plans[stage] = Plan(**fields)
    return Allocation.of(plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(HERE / "README_methods.md"))
    parser.add_argument("--rows", nargs="*", help="labels of the rows to run (default: all)")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.rows or r[0] in args.rows]
    start, load_start = time.perf_counter(), os.getloadavg()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        zoo = default_root() / "zoo"
        zoo.mkdir(parents=True, exist_ok=True)
        (Path(tmp) / "cache").mkdir()
        (Path(tmp) / "cache" / "zoo").symlink_to(zoo)  # reuse the converted model only
        spec = load_spec(bench_task(Path(tmp) / "task"))
        env = LiveEnvironment(spec, cache_dir=Path(tmp) / "cache", progress=False)
        cost = CostModel(spec)
        print(f"smolmath, every method; {len(env.items)} validation items; load average "
              f"{load_start[0]:.1f} on {os.cpu_count()} CPUs; OMP_NUM_THREADS="
              f"{os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
        for label, method, over, note in rows:
            alloc = allocation(method, over)
            hits = env.cache.stats.train_hits
            t0 = time.perf_counter()
            obs = env.evaluate(alloc)
            wall = time.perf_counter() - t0
            est = cost.estimate(alloc)
            m = obs.measured
            cached = env.cache.stats.train_hits - hits
            stages = " / ".join(f"{obs.subtask_scores[s]:.2f}" for s in STAGES)
            line = (f"| {label} | {obs.score:.2f} | {stages} | {est.train_gpu_hours:.2e} | "
                    f"{est.inference_gpu_hours:.2e} | {m.get('train_seconds', 0):.0f} | "
                    f"{m.get('sample_seconds', 0):.0f} | {wall:.0f} | {cached} | {note} |")
            lines.append(line)
            print(line, flush=True)
    total, load_end = time.perf_counter() - start, os.getloadavg()
    command = "".join(" " + shlex.quote(a) for a in sys.argv[1:])
    header = ("| allocation (every stage) | end-to-end | extract / compute / answer | "
              "est. train GPU-h | est. serving GPU-h | measured train s | measured sample s "
              "| row wall s | cached trainings | what |\n|---|---|---|---|---|---|---|---|---|"
              "---|")
    text = (f"# Methods on a real model: smolmath (SmolLM2-135M-Instruct)\n\n"
            f"`OMP_NUM_THREADS=1 python experiments/bench_methods.py{command}`: "
            f"{total:.0f} s wall on {os.cpu_count()} CPU cores, load average "
            f"{load_start[0]:.1f} at the start and {load_end[0]:.1f} / {load_end[1]:.1f} "
            f"(1 / 5 min) at the end, a fresh live cache.\n\n{header}\n" + "\n".join(lines)
            + "\n")
    print(text, flush=True)
    Path(args.readme).write_text(text)


if __name__ == "__main__":
    main()
