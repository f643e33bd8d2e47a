"""Generate the built-in live tasks' data (deterministic; the files are committed).

wordsum: "eve got 12 coins, then 34." -> parse "12+34" -> add "46" -> answer
"eve has 46 coins". Every record holds each stage's gold output under the stage's name.
`short.jsonl` holds one-digit problems: a third training source for mixtures
(envs/live/examples/wordsum_multitask.yaml).

    python -m envs.live.tasks.make_data [--train 2000] [--val 64]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

NAMES = ["ann", "bob", "eve", "tom", "kim", "sam", "liz", "max"]
ITEMS = ["pens", "cards", "coins", "books", "cups", "keys"]
HERE = Path(__file__).parent


def wordsum_records(n: int, seed: int, digits: int = 2) -> list[dict[str, str]]:
    """`n` word problems with the gold output of every stage."""
    rng = random.Random(seed)
    top = 10**digits - 1
    records = []
    for i in range(n):
        a, b = rng.randint(0, top), rng.randint(0, top)
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        records.append({"id": f"{seed}-{i}", "problem": f"{name} got {a} {item}, then {b}.",
                        "parse": f"{a}+{b}", "add": str(a + b),
                        "answer": f"{name} has {a + b} {item}"})
    return records


def write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=64)
    args = parser.parse_args()
    out = HERE / "wordsum"
    out.mkdir(exist_ok=True)
    write_jsonl(out / "train.jsonl", wordsum_records(args.train, seed=1))
    write_jsonl(out / "val.jsonl", wordsum_records(args.val, seed=2))
    write_jsonl(out / "short.jsonl", wordsum_records(args.train // 4, seed=3, digits=1))


if __name__ == "__main__":
    main()
