"""Opt-in GPU check: training MFU and sampling throughput of planner's own code paths.

    python experiments/gpu_check.py                  # on a GPU machine; vLLM optional
    OMP_NUM_THREADS=1 python experiments/gpu_check.py --smoke    # a tiny run on a CPU

Nothing is downloaded: a tokenizer (byte-level BPE) is trained on generated text and a
model of realistic architecture (Qwen2-0.5B's shape: 24 layers, width 896, 14 heads, 2 KV
heads, MLP 4864) is built with random weights on the machine itself. Then:

- training with `tools.train.train` (the loop live trials use), full fine-tuning and LoRA
  (r 16, every linear layer), at the device's best precision (`tools.device`), eager and
  with `torch_compile` (the method option): tokens/s over the steps after the first two
  (compilation happens in the first), and MFU = FLOPs per token (6N full, 4N LoRA: the
  cost model's formulas) x tokens/s / the device's peak;
- sampling the same prompts with `tools.infer.TransformersSampler` and, when vLLM is
  installed, `VLLMSampler` for n = 1, 8, 32: generated tokens/s of each and their ratio;
- stopping a training part-way and resuming it (a live screen's prefix, then its full
  trial), full and LoRA, eager: the largest weight difference from the uninterrupted run
  (beside the largest change the run's second half made), the last losses of both, and
  the seconds the stop and resume add (saving and loading the Trainer checkpoint). On the
  CPU the two are equal bit for bit (tests/tools/test_train.py); on a GPU the question is
  how far its kernels let them drift.

Goals (issue 10): full fine-tuning above 30% MFU; vLLM n-sampling at least 5x transformers.
Prints each row as it is measured (a run cut short keeps what it printed) and writes them
as JSON to --out, with the card's name.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from tools.device import current_device
from tools.infer import TransformersSampler
from tools.train import TrainConfig, checkpoint_of, load_model, train

PARTS = ["train", "sample", "resume"]
# dense bf16 FLOP/s of one GPU, by a substring of its name (vendor data sheets)
PEAKS = {"H200": 9.89e14, "H100": 9.89e14, "A100": 3.12e14, "L40S": 3.62e14, "A10": 1.25e14,
         "L4": 1.21e14, "4090": 1.65e14}
WORDS = ["apple", "river", "stone", "count", "seven", "blue", "table", "carry", "sum", "north",
         "paper", "light", "window", "garden", "market", "number", "answer", "train", "model",
         "plan", "budget", "step"]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(100)) for _ in range(words))


def examples(seed: int, count: int, length: int) -> dict[str, list[dict[str, str]]]:
    """`count` generated prompt/completion pairs of about `length` tokens each, as one
    source."""
    rng = random.Random(seed)
    words = length // 4  # ~2 tokens per word+number each side
    return {"text": [{"prompt": text(rng, words), "completion": text(rng, words)}
                     for _ in range(count)]}


def build(folder: Path, smoke: bool) -> Path:
    """A byte-level BPE tokenizer and a randomly initialised Qwen2 model, saved in bf16."""
    from tokenizers import ByteLevelBPETokenizer

    rng = random.Random(0)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator((text(rng, 64) for _ in range(2000)), vocab_size=8000,
                            special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer,
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    shape = (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2) if smoke else
             dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2))
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.to(torch.float32 if smoke else torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class StepClock(TrainerCallback):
    """Seconds from the end of step `skip` to the end of training (warm-up excluded)."""

    def __init__(self, skip: int = 2) -> None:
        self.skip, self.begun, self.seconds, self.steps = skip, 0.0, 0.0, 0

    def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.skip:
            self.begun = time.perf_counter()
        elif state.global_step > self.skip:
            self.seconds = time.perf_counter() - self.begun
            self.steps = state.global_step - self.skip


def show(row: dict) -> dict:
    """Print one measured row at once (a run stopped by a timeout keeps what it printed)."""
    print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in row.items()), flush=True)
    return row


def train_rates(model: Path, out: Path, steps: int, batch: int, length: int,
                peak: float) -> list[dict]:
    data = examples(1, steps * batch, length)
    params = sum(p.numel() for p in Qwen2ForCausalLM.from_pretrained(model).parameters())
    rows = []
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, target_modules="all-linear")
    for name, adapter, flops, compiled in (("full", None, 6, False), ("lora", lora, 4, False),
                                           ("full compiled", None, 6, True),
                                           ("lora compiled", lora, 4, True)):
        clock = StepClock()
        config = TrainConfig(steps=steps, batch_size=batch, lr=1e-5, max_length=length,
                             torch_compile=compiled)
        result = train(model, data, {"text": 1.0}, out / name, config, adapter,
                       callbacks=[clock])
        tokens = result.tokens_seen * clock.steps / steps
        rate = tokens / clock.seconds
        rows.append(show({"what": f"train {name}", "params": params,
                          "precision": result.precision, "tokens_per_s": rate,
                          "mfu": flops * params * rate / peak,
                          "peak_memory_gb": result.peak_memory_bytes / 2**30}))
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def resume_rows(model: Path, out: Path, steps: int, batch: int, length: int) -> list[dict]:
    """Uninterrupted against stopped at half the steps and resumed, full and LoRA."""
    data = examples(3, steps * batch, length)
    config = TrainConfig(steps=steps, batch_size=batch, lr=1e-5, max_length=length)
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, target_modules="all-linear")
    rows, half = [], steps // 2
    for name, adapter in (("full", None), ("lora", lora)):
        runs = out / f"resume {name}"
        whole = train(model, data, {"text": 1.0}, runs / "whole", config, adapter)
        part = train(model, data, {"text": 1.0}, runs / "part", config, adapter, stop_after=half)
        rest = train(model, data, {"text": 1.0}, runs / "rest", config, adapter,
                     resume=checkpoint_of(runs / "part", half))
        weights = {run: load_model(runs / run)[0].state_dict() for run in ("whole", "part", "rest")}
        diff = max((weights["rest"][k].float() - w.float()).abs().max().item()
                   for k, w in weights["whole"].items())
        moved = max((weights["part"][k].float() - w.float()).abs().max().item()
                    for k, w in weights["whole"].items())  # the second half's largest change
        rows.append(show({
            "what": f"resume {name}", "precision": whole.precision, "steps": steps,
            "stopped_at": half, "max_weight_diff": diff, "bit_equal": diff == 0.0,
            "second_half_max_change": moved,
            "last_loss_whole": whole.losses[-1], "last_loss_resumed": rest.losses[-1],
            "losses_equal": rest.losses == whole.losses,
            "extra_seconds": part.wall_seconds + rest.wall_seconds - whole.wall_seconds}))
        shutil.rmtree(runs)
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def sample_rates(model: Path, prompts: list[str], new_tokens: int, ns: list[int]) -> list[dict]:
    rows = []
    backends = [("transformers", lambda: TransformersSampler(model, batch_size=len(prompts)))]
    try:
        import vllm  # noqa: F401

        from tools.infer import VLLMSampler

        backends.append(("vllm", lambda: VLLMSampler(model, gpu_memory_utilization=0.6)))
    except ImportError:
        print("vLLM is not installed: transformers only (pip install 'planner[gpu]')")
    for backend, make in backends:
        sampler = make()
        sampler.sample(prompts[:2], 1, max_new_tokens=8, temperature=1.0)  # warm-up
        for n in ns:
            got = sampler.sample(prompts, n, max_new_tokens=new_tokens, temperature=1.0)
            rows.append(show({"what": f"sample {backend} n={n}", "tokens": got.completion_tokens,
                              "tokens_per_s": got.completion_tokens / got.seconds}))
        del sampler
        gc.collect()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    by = {r["what"]: r["tokens_per_s"] for r in rows}
    for n in ns:
        if f"sample vllm n={n}" in by:
            rows.append(show({"what": f"vllm / transformers n={n}",
                              "ratio": by[f"sample vllm n={n}"]
                              / by[f"sample transformers n={n}"]}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, a few steps (CPU)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024, help="tokens per example")
    parser.add_argument("--peak-flops", type=float, help="the device's dense bf16 FLOP/s")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS,
                        help="which measurements to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = parser.parse_args()
    device = current_device()
    peak = args.peak_flops or next((v for k, v in PEAKS.items() if k in device.name), None)
    if peak is None:
        if device.kind == "cuda":
            raise SystemExit(f"Error: no peak FLOP/s known for {device.name}; pass --peak-flops")
        from tools.device import cpu_matmul_flops

        peak = cpu_matmul_flops()
    steps, batch, length = (4, 2, 64) if args.smoke else (args.steps, args.batch, args.length)
    print(f"device {device.describe()}, peak {peak:.3g} FLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp) / "model", args.smoke)
        rows = []
        if "train" in args.parts:
            rows += train_rates(model, Path(tmp), steps, batch, length, peak)
        if "sample" in args.parts:
            rng = random.Random(2)
            prompts = [text(rng, 16 if args.smoke else 64)
                       for _ in range(4 if args.smoke else 64)]
            rows += sample_rates(model, prompts, 16 if args.smoke else 128,
                                 [1, 2] if args.smoke else [1, 8, 32])
        if "resume" in args.parts:
            rows += resume_rows(model, Path(tmp), steps, batch, length)
    args.out.write_text(json.dumps({"device": device.describe(), "peak_flops": peak,
                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
