"""The extended bad-input run: many generated inputs through the real `planner` command.

Draws cases from the generators of `tests/test_bad_input.py` (task files, replay tables,
budgets, flags, database URLs, read-only commands), runs each through `planner.cli.main`
in this process in a fresh folder (an alarm is the hang guard), and counts the outcomes:
clean refusals (exit 2, one `Error:` line), valid studies, tracebacks, hangs, multi-line
errors, other exits, and writes to the database folder by failed or read-only commands.

    OMP_NUM_THREADS=1 python experiments/fuzz_inputs.py --n 1000 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' generators
from tests.test_bad_input import INPUTS, Case, Outcome, run_case  # noqa: E402


def collect(n: int, seed: int) -> list[tuple[Case, Outcome]]:
    """Run `n` generated cases (fewer if the generators run dry)."""
    results: list[tuple[Case, Outcome]] = []

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(INPUTS)
    def run(case: Case) -> None:
        results.append((case, run_case(case)))
        if len(results) % 100 == 0:
            print(f"  {len(results)} inputs", file=sys.stderr, flush=True)

    run()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="inputs to generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    results = collect(args.n, args.seed)
    verdicts = Counter(o.verdict() for _, o in results)
    optimized = [o for c, o in results if o.verdict() == "valid" and c.args[:1] == ("optimize",)]
    writes = sum(bool(o.wrote) for c, o in results if o.verdict() != "valid"
                 or c.args[:1] != ("optimize",))
    kinds = Counter(c.kind.split(":")[0] for c, _ in results)
    print(f"inputs: {len(results)} in {time.perf_counter() - start:.0f} s "
          f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    for label, key in (("clean refusals", "refused"),
                       ("valid runs (a study, or a read-only answer)", "valid"),
                       ("tracebacks", "traceback"), ("hangs", "hang"),
                       ("multi-line errors", "multi-line")):
        print(f"{label}: {verdicts.pop(key, 0)}")
    print(f"other exits: {sum(verdicts.values())} {dict(verdicts)}")
    print(f"writes by failed or read-only commands: {writes}")
    print(f"exit 0 from optimize without a study: {sum(bool(o.wrote) for o in optimized)}")
    _examples(results)


def _examples(results: list[tuple[Case, Outcome]]) -> None:
    """Up to three cases of every outcome that breaks the promise."""
    bad: dict[str, list[tuple[Case, Outcome]]] = defaultdict(list)
    for c, o in results:
        if o.verdict() not in ("refused", "valid") or o.wrote:
            bad[o.verdict() + (" + wrote" if o.wrote else "")].append((c, o))
    for verdict, cases in bad.items():
        for c, o in cases[:3]:
            tail = (o.traceback or o.stderr).strip().splitlines()[-1:] or [""]
            print(f"  {verdict}: {c!r}\n    {tail[0][:300]} {o.wrote or ''}")


if __name__ == "__main__":
    main()
