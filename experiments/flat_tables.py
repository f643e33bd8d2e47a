"""Replay tasks written over the recordings as a newcomer might write them: every Pythia
checkpoint a model of its own, its size as `params`, nothing trained or priced but
inference. The score model then sees a size and a name per checkpoint, not how long it
was trained (the suite lists checkpoints as methods with their tokens), and most of a
size's eight or nine checkpoints score 0 on MATH.

    python experiments/flat_tables.py --out /tmp/flat
    python experiments/benchmark.py --tasks /tmp/flat/*/task.yaml \
        --strategies optuna sweep agent --seeds 20 --trials 40 --out /tmp/flat/run

Three tasks, from the tables in envs/replay/data (experiments/README.md, "A score of zero
bounds a plan's score"):
- pythia-checkpoints-gsm8k: GSM8K, 81 checkpoints x n 1..128 (pass@n), 20 GPU-h for 1e6
  queries;
- pythia-checkpoints-math: MATH, 72 checkpoints (the 512M one is not recorded), 250 GPU-h;
- llama-llama-pythia: MMLU, then GSM8K, each by a Llama 3 model alone, then MATH as
  above; 300 GPU-h.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

REPLAY = Path(__file__).resolve().parents[1] / "envs" / "replay"
HARDWARE = {"name": "H100-SXM", "peak_flops": 9.89e14, "utilization": 0.4}
SAMPLES = [1, 2, 4, 8, 16, 32, 64, 128]


def _params(task: str) -> dict[str, float]:
    """Model name -> parameters, as a suite task lists them."""
    spec = yaml.safe_load((REPLAY / "tasks" / task).read_text())
    return {m["name"]: float(m["params"]) for m in spec["models"]}


def _checkpoints(source: str, folder: Path, name: str, prompt: int,
                 output: int) -> tuple[list[dict], dict]:
    """A Pythia counts table with each (size, checkpoint) as one model, written to
    `folder`; its models and the subtask `name` over it (n up to 128, pass@n)."""
    table = pd.read_csv(REPLAY / "data" / source)
    table["model"] = table["model"] + "-" + table["method"].str.removeprefix("pretrain-")
    sizes = _params("monkeys_math.yaml")
    params = {m: sizes[m.rsplit("-", 1)[0]] for m in table["model"]}
    table[["model", "problem", "n_samples", "n_correct"]].to_csv(folder / source, index=False)
    models = [{"name": m, "params": params[m]} for m in sorted(params)]
    replay = {"table": source, "item": "problem", "choices": {"model": "model"},
              "n_samples": "n_samples", "n_correct": "n_correct"}
    return models, _stage(name, models, replay, prompt, output, SAMPLES, "oracle")


def _llama(source: str, folder: Path, name: str, prompt: int,
           output: int) -> tuple[list[dict], dict]:
    """A Llama 3 cascades table's answers of each model alone, written to `folder`; its
    models and the subtask `name` over it (one answer)."""
    table = pd.read_csv(REPLAY / "data" / source)
    table = table[table["route"] == "alone"][["query", "model", "correct", "flops"]]
    table.to_csv(folder / source, index=False)
    params = _params("cascades_mmlu_gsm8k.yaml")
    models = [{"name": m, "params": params[m]} for m in params]
    replay = {"table": source, "item": "query", "choices": {"model": "model"},
              "correct": "correct", "flops_per_sample": "flops"}
    return models, _stage(name, models, replay, prompt, output, [1], "first")


def _stage(name: str, models: list[dict], replay: dict, prompt: int, output: int,
           samples: list[int], aggregator: str) -> dict:
    return {"name": name, "prompt_tokens": prompt, "output_tokens": output,
            "models": [m["name"] for m in models], "methods": ["none"], "samples": samples,
            "aggregators": [aggregator], "replay": replay}


def _write(folder: Path, budget: float, models: list[dict], stages: list[dict]) -> Path:
    """The task named after `folder`, its stages in a chain, as `folder`/task.yaml."""
    for before, stage in zip(stages[:-1], stages[1:], strict=True):
        stage["depends_on"] = [before["name"]]
    task = {"name": folder.name, "environment": "replay", "budget": f"{budget:g}gpu-h",
            "hardware": HARDWARE, "workload": {"queries": 1_000_000},
            "models": models, "methods": [{"name": "none", "kind": "none"}],
            "subtasks": stages}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def write_tasks(out: Path) -> list[Path]:
    """The three tasks' folders under `out` (task.yaml and its tables); their task files."""
    folders = [out / name for name in ("pythia-checkpoints-gsm8k", "pythia-checkpoints-math",
                                       "llama-llama-pythia")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    gsm8k, math, pipeline = folders
    models, solve = _checkpoints("pythia_gsm8k.csv.gz", gsm8k, "solve", 700, 256)
    written = [_write(gsm8k, 20, models, [solve])]
    models, solve = _checkpoints("pythia_math.csv.gz", math, "solve", 1000, 512)
    written.append(_write(math, 250, models, [solve]))
    llama, mmlu = _llama("mmlu_llama_cascades.csv.gz", pipeline, "mmlu", 190, 1)
    _, arithmetic = _llama("gsm8k_llama_cascades.csv.gz", pipeline, "gsm8k", 157, 210)
    models, solve = _checkpoints("pythia_math.csv.gz", pipeline, "math", 1000, 512)
    written.append(_write(pipeline, 300, llama + models, [mmlu, arithmetic, solve]))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the tasks in")
    for path in write_tasks(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
