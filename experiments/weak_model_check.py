"""How much can a weak language model cost the search, and how much of a good one's gain
does the guard keep? The `llm` reasoner against models that pick by a fixed policy, on
every replay suite task and many seeds (CPU, seconds per task).

A real OpenAI-compatible server on 127.0.0.1 plays the model: each propose request lists
the builtin's candidates (ranked best first, `prompts.user_message`), and the server answers
one of them by its policy, without reading the trials:

- `last`: always the lowest-ranked candidate shown (the worst a model that copies a listed
  plan can do);
- `random`: a uniformly random candidate shown (a model that understands nothing);
- `first`: always the top candidate (a control: it should match the builtin trial by trial);
- `best`: the candidate whose recorded score is highest (a model that knows the tables: the
  most a model choosing among the candidates can add, and what the guard leaves of it).

With `--init design` the model answers the init node too, with one probe of the design it
is shown, chosen by the same policy (a model that answers with a single probe); with
`--init mix`, with a probe of its own: the last listed probe's first stage and the first
one's other stages (a recombination, within budget as each probe is within its stages'
shares; on a one-stage task it is the last probe, one of the design's).

Everything else is the product's path: the reasoner's request, parsing, validation, the
veto, near-sure steps, and the guard (`LLMConfig.guard`; `--no-guard` turns it off). It runs the
agent with the builtin reasoner and with the `llm` reasoner on the same seeds and reports,
per task and policy, in how many seeds the llm run ends below / above the builtin after 10
and after --trials trials, and the trials each needs to reach 99% of the exact optimum.
SmolLM2-135M on llama.cpp is measured by llm_reasoner_check.py; this measures the bound
the guards give, over many more seeds than a real model's minutes per step allow.

    .venv/bin/python experiments/weak_model_check.py --seeds 10 --trials 30 --out /tmp/weak
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

from benchmark import TARGET, load_task, resolve_tasks  # noqa: E402
from llm_reasoner_check import candidates, run_study  # noqa: E402

from planner.search.agent import LLMConfig  # noqa: E402
from planner.space import Allocation  # noqa: E402

POLICIES = ("last", "random", "first", "best")
INIT = "No trial has run yet"  # how an init request's prompt tells itself apart


@contextmanager
def model_server(policy: str, seed: int, score: Callable[[dict], float],
                 mix: bool = False) -> Iterator[str]:
    """A chat-completions server on 127.0.0.1 answering each request with one listed
    candidate chosen by `policy` (`score`: a candidate's recorded score, for `best`; an
    empty list when none is listed), or with `mix` an init request with the recombination
    of `--init mix`; yields its base URL."""
    rng = random.Random(seed)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"] or ""
            listed = candidates(prompt)
            first = next(iter(listed[-1])) if listed else ""
            pick = ([] if not listed else
                    [{**listed[0], first: listed[-1][first]}] if mix and INIT in prompt else
                    [listed[-1]] if policy == "last" else
                    [listed[0]] if policy == "first" else [max(listed, key=score)]
                    if policy == "best" else [rng.choice(listed)])
            text = json.dumps({"insights": [], "proposals": pick})
            data = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": policy,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_pair(job: tuple[Path, float, int, int, str, bool, str | None]) -> list[dict]:
    """One seed of one task at one budget: best-so-far per trial for the builtin and for
    the llm reasoner on the policy's model, and how many propose steps the model answered."""
    path, scale, seed, trials, policy, guard, init = job
    task = load_task(path, scale)
    name = task.spec.name  # "@x0.5" where the budget is scaled (`benchmark.scaled`)
    rows = []
    with model_server(policy, seed, lambda d: task.env.evaluate(Allocation.from_dict(d)).score,
                      init == "mix") as url:
        config = LLMConfig(url, policy, timeout_s=30, tool_rounds=0,
                           nodes=("init", "propose") if init else ("propose",), guard=guard)
        for reasoner, llm in (("builtin", None), ("llm", config)):
            fracs, steps = run_study(path, seed, trials, llm, scale)
            rows.append({"task": name, "policy": policy, "seed": seed, "reasoner": reasoner,
                         "best": fracs,
                         "llm_steps": sum(s.node == "propose" and s.payload["reasoner"] == "llm"
                                          for s in steps)})
    return rows


def reach(fracs: list[float]) -> int:
    """Trials to `TARGET` of the optimum (len + 1 when never)."""
    return next((i + 1 for i, f in enumerate(fracs) if f >= TARGET), len(fracs) + 1)


def summarize(rows: list[dict], trials: int) -> pd.DataFrame:
    out = []
    frame = pd.DataFrame(rows)
    for (task, policy), g in frame.groupby(["task", "policy"], sort=False):
        b = g[g.reasoner == "builtin"].set_index("seed")
        m = g[g.reasoner == "llm"].set_index("seed")
        row = {"task": task, "policy": policy, "seeds": len(b),
               "llm_steps": int(m.llm_steps.sum())}
        for k in (10, trials):
            lb = np.array([x[k - 1] for x in m.best]) - np.array([x[k - 1] for x in b.best])
            row[f"below@{k}"] = int((lb < -1e-9).sum())
            row[f"above@{k}"] = int((lb > 1e-9).sum())
            row[f"worst@{k}"] = float(lb.min())
        rb, rm = [reach(x) for x in b.best], [reach(x) for x in m.best]
        row |= {"reach_builtin": float(np.median(rb)), "reach_llm": float(np.median(rm)),
                "reach_mean_builtin": float(np.mean(rb)), "reach_mean_llm": float(np.mean(rm)),
                "later": int(sum(x > y for x, y in zip(rm, rb, strict=True)))}
        out.append(row)
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=[], help="suite task names or task "
                        "files (default: the whole replay suite)")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    parser.add_argument("--budget-scale", nargs="+", type=float, default=[1.0],
                        help="run each task under its budget times each of these")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-guard", action="store_true", help="ask the model at every "
                        "propose step, its picks unlimited (`LLMConfig.guard` off)")
    parser.add_argument("--init", choices=("design", "mix"), help="the model answers init "
                        "too: one probe of the design it is shown, chosen by its policy, or "
                        "a recombination of two of them")
    parser.add_argument("--out", type=Path, default=Path("/tmp/weak_model_check"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(p, x, s, args.trials, pol, not args.no_guard, args.init) for pol in args.policies
            for x in args.budget_scale for p in resolve_tasks(args.tasks)
            for s in range(args.seeds)]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [r for part in pool.map(run_pair, jobs) for r in part]
    pd.DataFrame(rows).to_json(args.out / "runs.json", orient="records")
    summary = summarize(rows, args.trials)
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.4g")
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(summary.to_string(index=False, float_format="%.3f"))
    print(f"{len(jobs)} pairs in {time.perf_counter() - start:.0f} s; below the builtin after "
          f"{args.trials} trials in {int(summary[f'below@{args.trials}'].sum())}, above in "
          f"{int(summary[f'above@{args.trials}'].sum())}; wrote {args.out}")


if __name__ == "__main__":
    main()
