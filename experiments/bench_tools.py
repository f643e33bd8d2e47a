"""Benchmark the two tricks that make evaluation cheap in `tools/`, on a tiny model, on CPU.

(a) One sampling, every n: draw N samples per item once and estimate majority@n for every
    n <= N with `score_curve`, versus drawing n fresh samples for each n separately.
    Items are word problems to parse ("kim got 12 pens, then 345. sum:" -> "12+345"), which
    the default "small" model gets partly right; on 3-digit additions it is still near 0%.
(b) Batched sampling: completions/s of `TransformersSampler` for n=1, for n=8 in one
    `generate` call (num_return_sequences), and for 8 sequential n=1 calls.

    python experiments/bench_tools.py [--size small] [--items 32] [--samples 16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from tools.evaluate import exact_match, majority_vote, score_curve
from tools.infer import TransformersSampler
from tools.zoo import extraction_examples, tiny_model

TEMPERATURE = 0.8
MAX_NEW_TOKENS = 8  # "999+999" then eos


def best_seconds(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Fastest time of each run over `rounds` interleaved rounds, so that load from other work
    on the machine hits every run alike and the minimum is the least disturbed."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def one_draw_vs_per_n(
    sampler: TransformersSampler, prompts: list[str], labels: list[str], n_max: int
) -> None:
    start = time.perf_counter()
    draw = sampler.sample(
        prompts, n_max, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, seed=0
    )
    curve = score_curve(draw.texts, labels, exact_match, "majority")
    one_draw_seconds = time.perf_counter() - start

    separate, separate_seconds = {}, 0.0
    for n in range(1, n_max + 1):
        start = time.perf_counter()
        fresh = sampler.sample(
            prompts, n, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, seed=n
        )
        votes = [majority_vote([t.strip() for t in texts]) for texts in fresh.texts]
        separate[n] = sum(map(exact_match, votes, labels)) / len(labels)
        separate_seconds += time.perf_counter() - start

    print(f"(a) majority@n for n = 1..{n_max} on {len(prompts)} items, T={TEMPERATURE}")
    print("  n   one draw (expected)   separate draw (one realisation)")
    for n in range(1, n_max + 1):
        print(f"{n:3d}   {curve[n]:19.3f}   {separate[n]:31.3f}")
    one_draw_samples = len(prompts) * n_max
    separate_samples = len(prompts) * n_max * (n_max + 1) // 2
    print(
        f"  one draw:       {one_draw_samples:5d} samples, {one_draw_seconds:6.2f} s "
        "(sampling + scoring every n)"
    )
    print(f"  separate draws: {separate_samples:5d} samples, {separate_seconds:6.2f} s")
    print(f"  speed-up: {separate_seconds / one_draw_seconds:.1f}x\n")


def batched_throughput(sampler: TransformersSampler, prompts: list[str], repeats: int) -> None:
    def sample(n: int, seed: int = 0) -> None:
        sampler.sample(
            prompts, n, max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, seed=seed
        )

    runs = {
        "n=1, one call": lambda: sample(1),
        "n=8, one call (num_return_sequences)": lambda: sample(8),
        "n=1, 8 sequential calls": lambda: [sample(1, s) for s in range(8)],
    }
    completions = [len(prompts), 8 * len(prompts), 8 * len(prompts)]
    seconds = best_seconds(runs, repeats)
    rates = {name: c / seconds[name] for name, c in zip(runs, completions, strict=True)}
    print(f"(b) completions/s, {len(prompts)} prompts per call, best of {repeats} rounds")
    for name, rate in rates.items():
        print(f"  {name:38s} {rate:8.0f}")
    names = list(rates)
    print(f"  n=8 batched / n=1:             {rates[names[1]] / rates[names[0]]:.1f}x")
    print(f"  n=8 batched / 8 sequential n=1: {rates[names[1]] / rates[names[2]]:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--items", type=int, default=32)
    parser.add_argument("--samples", type=int, default=16, help="N, samples per item")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    start = time.perf_counter()
    model = tiny_model(args.size)
    print(f"model: tiny_model({args.size!r}) at {model} ({time.perf_counter() - start:.1f} s)\n")
    examples = extraction_examples(args.items, seed=1234)
    prompts = [ex["prompt"] for ex in examples]
    labels = [ex["completion"] for ex in examples]
    sampler = TransformersSampler(model, batch_size=args.items)
    sampler.sample(prompts, 2, max_new_tokens=MAX_NEW_TOKENS)  # warm-up

    one_draw_vs_per_n(sampler, prompts, labels, args.samples)
    batched_throughput(sampler, prompts, args.repeats)


if __name__ == "__main__":
    main()
