"""Every method kind on the smolmath task (SmolLM2-135M-Instruct), beside plain LoRA and full
fine-tuning: end-to-end and per-stage scores, estimated GPU-hours, measured seconds.

One run, one fresh live cache (the converted SmolLM2 folder is reused from the default
cache's zoo, converted there first if need be). The task is envs/live/tasks/smolmath with
every stage offered every method, so a row can apply one method to all three stages; the
other settings (data, templates, extractors, steps, n, verifiers, cascade) are the task's own
(a sequential verifier cannot continue a soft prompt, so rows with prompt tuning or ProMoT run
on a copy whose stages drop their sequential verifiers instead: `bench_task`). Each
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
from planner.methods import FineTune
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
    ("lora, compute n=4 sequential verifier", "lora",
     {"compute": {"samples": 4, "aggregator": "verifier_best", "verifier": "seq-v"}},
     "compute's LoRA trained further to verify: one model"),
    ("lora, compute n=4 cascade to-base@0.75", "lora",
     {"compute": {"samples": 4, "aggregator": "majority", "cascade": "to-base@0.75"}},
     "items where < 3 of LoRA's 4 agree: the base, majority of 4"),
    ("lora, compute n=4 cascade to-base@1", "lora",
     {"compute": {"samples": 4, "aggregator": "majority", "cascade": "to-base@1"}},
     "items where < 4 of LoRA's 4 agree: the base, majority of 4"),
    ("hft / none n=4 sequential verifier / lora", "lora",
     {"extract": {"method": "hft"},
      "compute": {"method": "none", "samples": 4, "aggregator": "verifier_best",
                  "verifier": "seq-v"}},
     "the base trained further to verify, then served"),
    ("lora, mixtures own / multi", "lora", {"compute": {"mixture": "multi"}},
     "compute on 3 sources, every completion token alike"),
    ("lora-data, mixtures own / multi", "lora-data", {"compute": {"mixture": "multi"}},
     "the same, MFTCoder data balance: the mean of each source's loss"),
]


def bench_task(folder: Path, soft: set[str], soft_prompts: bool) -> Path:
    """The task, copied with every stage offered every method, but a stage with a sequential
    verifier offers the soft-prompt methods `soft` (which it cannot continue) only where
    `soft_prompts`, and then without its sequential verifiers."""
    shutil.copytree(TASK, folder, ignore=shutil.ignore_patterns("__pycache__"))
    task = yaml.safe_load((folder / "task.yaml").read_text())
    every = [m["name"] for m in task["methods"]]
    for s in task["subtasks"]:
        verifiers = s.get("verifiers", {})
        sequential = {n for n, v in verifiers.items() if v.get("sequential")}
        s["methods"] = [m for m in every if soft_prompts or not sequential or m not in soft]
        if soft_prompts and sequential:
            s["verifiers"] = {n: v for n, v in verifiers.items() if n not in sequential}
    task["name"] = "smolmath-every-method" + ("" if soft_prompts else "-sequential")
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder / "task.yaml"


def allocation(method: str, over: dict[str, dict]) -> Allocation:
    plans = {}
    for stage in STAGES:
        fields = {"model": "smollm2", "method": method, "samples": 1,
                  "aggregator": "first" if stage == "answer" else "majority",
                  "mixture": "default" if stage == "answer" else "own",
                  **({"verifier": "lora-v", "cascade": "none"} if stage == "compute" else {}),
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
        soft = {m.name for m in load_spec(TASK / "task.yaml").methods
                if isinstance(m, FineTune) and m.serves_soft_prompt}
        envs: dict[bool, tuple[LiveEnvironment, CostModel]] = {}  # by soft_prompts
        print(f"smolmath, every method; load average {load_start[0]:.1f} on {os.cpu_count()} "
              f"CPUs; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
        for label, method, over, note in rows:
            alloc = allocation(method, over)
            soft_prompts = any(plan.method in soft for _, plan in alloc.items())
            if soft_prompts not in envs:  # one cache: the two copies share what they train
                spec = load_spec(bench_task(Path(tmp) / f"task-{soft_prompts}", soft,
                                            soft_prompts))
                envs[soft_prompts] = (LiveEnvironment(spec, cache_dir=Path(tmp) / "cache",
                                                      progress=False), CostModel(spec))
            env, cost = envs[soft_prompts]
            hits = env.cache.stats.train_hits
            t0 = time.perf_counter()
            obs = env.evaluate(alloc)
            wall = time.perf_counter() - t0
            est = cost.estimate(alloc)
            m = obs.measured
            cached = env.cache.stats.train_hits - hits
            stages = " / ".join(f"{obs.subtask_scores[s]:.2f}" for s in STAGES)
            note += "".join(f"; {k.partition(':')[2]} escalated {v:.2f} of its items"
                            for k, v in m.items() if k.startswith("escalated:"))
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
