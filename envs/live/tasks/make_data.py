"""Generate the built-in live tasks' data (deterministic; the files are committed).

wordsum: "eve got 12 coins, then 34." -> parse "12+34" -> add "46" -> answer
"eve has 46 coins". Every record holds each stage's gold output under the stage's name.
`short.jsonl` holds one-digit problems: a third training source for mixtures
(envs/live/examples/wordsum_multitask.yaml).

smolmath (SmolLM2-135M-Instruct): "Ann has 4 boxes with 9 pens in each box. How many pens
does Ann have?" -> extract "4*9" -> compute "36" -> answer "36 pens". Sources differ in
phrasing (plain, or with a distracting number), operation (+/- or *) and what they train, so
mixtures matter: see smolmath_records.

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


SMOL_NAMES = ["Ann", "Bob", "Eve", "Tom", "Kim", "Sam", "Liz", "Max"]
SMOL_ITEMS = ["pens", "cards", "coins", "books", "apples", "stamps"]
SMOL_DISTRACTORS = ["{name} is {k} years old.", "The shop opens at {k}.",
                    "{name} lives at number {k}.", "It took {k} minutes."]


def smolmath_problem(rng: random.Random, op: str, wordy: bool) -> dict[str, str]:
    """One word problem with operation `op` ('+', '-' or '*') and each stage's gold output;
    `wordy` adds a sentence with a number that is not part of the calculation."""
    name, item = rng.choice(SMOL_NAMES), rng.choice(SMOL_ITEMS)
    if op == "*":
        a, b = rng.randint(2, 5), rng.randint(2, 9)
        text = f"{name} has {a} boxes with {b} {item} in each box."
        question, value = f"How many {item} does {name} have?", a * b
    elif op == "+":
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        text = f"{name} has {a} {item} and gets {b} more."
        question, value = f"How many {item} does {name} have now?", a + b
    else:
        a = rng.randint(5, 20)
        b = rng.randint(1, a - 1)
        text = f"{name} has {a} {item} and gives {b} away."
        question, value = f"How many {item} are left?", a - b
    if wordy:
        text += " " + rng.choice(SMOL_DISTRACTORS).format(name=name, k=rng.randint(2, 90))
    return {"problem": f"{text} {question}", "extract": f"{a}{op}{b}", "compute": str(value),
            "answer": f"{value} {item}"}


def smolmath_records(n: int, seed: int, ops: str = "+-*", wordy: float = 0.5,
                     balanced: bool = False) -> list[dict[str, str]]:
    """`n` problems, operations drawn from `ops` (`balanced`: in turn), a fraction `wordy`
    with a distractor; every record holds each stage's gold output (extract, compute,
    answer)."""
    rng = random.Random(seed)
    return [{"id": f"{seed}-{i}",
             **smolmath_problem(rng, ops[i % len(ops)] if balanced else rng.choice(ops),
                                rng.random() < wordy)} for i in range(n)]


SMOLMATH_SOURCES = {  # file -> (records, seed, operations, fraction wordy)
    "plain.jsonl": (200, 11, "+-*", 0.0),   # extract: direct phrasing only
    "wordy.jsonl": (200, 12, "+-*", 1.0),   # extract: every problem has a distractor
    "addsub.jsonl": (200, 13, "+-", 0.5),   # compute: sums and differences only
    "mul.jsonl": (200, 14, "*", 0.5),       # compute: products only
    "train.jsonl": (200, 15, "+-*", 0.5),   # answer: the final format
}


def write_smolmath(out: Path, val: int = 9) -> None:
    """The smolmath task's files: training sources and `val` validation problems (the three
    operations in turn, about half of them wordy)."""
    out.mkdir(exist_ok=True)
    for name, (n, seed, ops, wordy) in SMOLMATH_SOURCES.items():
        write_jsonl(out / name, smolmath_records(n, seed, ops, wordy))
    write_jsonl(out / "val.jsonl", smolmath_records(val, seed=16, balanced=True))


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
    write_smolmath(HERE / "smolmath")


if __name__ == "__main__":
    main()
