"""Check that an export's serving.yaml serves its allocation with vLLM (opt-in, CPU is enough).

For a `planner export --format planner` folder DIR of a live task, trained by `planner train
DIR` (so DIR/outputs/NAME hold the models serving.yaml names):

1. each server of serving.yaml runs from DIR, `vllm serve MODEL ARGS...` translated to
   `PYTHON -m vllm.entrypoints.openai.api_server --model MODEL ARGS...` plus only what this
   machine needs (host and port, and the --add flags and environment printed at start);
   /v1/models must list every request's `model`;
2. each subtask, in the task's DAG order, sends its request (serving.yaml's fields plus the
   prompt_template rendered on each validation record, whose inputs are gold, as in planner's
   per-subtask score) to its endpoint (/v1/completions, or /v1/chat/completions with the
   prompt as the user message where the task used the chat template), aggregates the n
   texts with envs.live.scoring and scores them with the subtask's metric; the table gives
   vLLM's score beside expected_score (planner's, sampled with transformers: close, not
   identical) and latency.

Servers are stopped on exit, errors and Ctrl-C included. Exit 1 if a server fails, a name is
not served, a request fails, or a score differs from the expected by more than --max-diff.

serving.yaml's requests carry no `seed` (vLLM seeds sample j of n with seed + j, so one seed on
every prompt would share the sampling noise across prompts): the server's generator, seeded by
its --seed, draws each pass. --seeds K repeats the pass to show the spread; --prompt-seeds
seeds each prompt as planner does (pass k shifted by k*n), so a pass is reproducible.
Completions are scored as planner scores them: the subtask's answer extractor, its metric.

Run (the vLLM venv: `experiments/vllm_cpu_check.sh --setup-only`):
    .venv/bin/python experiments/check_serving.py DIR [--vllm-python /tmp/vllm-venv/bin/python]
experiments/check_serving.sh runs the end-to-end demo on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

import yaml

from envs.live.data import load_subtask, render
from envs.live.env import prompt_seed
from envs.live.scoring import aggregate, label_answer
from planner.spec import load_spec
from tools.evaluate import load_extractor, load_metric

DEFAULT_PYTHON = Path(os.environ.get("PLANNER_VLLM_VENV", "/tmp/vllm-venv")) / "bin/python"
# vllm-cpu 0.32.0 crashes on a seeded request whose prefill is chunked ("CPU Generator does
# not use offset"); a large token budget per step keeps every prompt whole.
DEFAULT_ADD = "--max-num-batched-tokens 8192"
DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}  # GiB of KV cache; offline


@dataclass
class Server:
    name: str
    argv: list[str]
    url: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float = 0.0


def server_argv(command: str, python: str, port: int, add: list[str]) -> list[str]:
    """`vllm serve MODEL ARGS...` -> the api_server module's command line on this machine."""
    argv = shlex.split(command)
    if argv[:2] != ["vllm", "serve"] or len(argv) < 3:
        raise SystemExit(f"not a `vllm serve MODEL ...` command: {command}")
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", argv[2], *argv[3:],
            *add, "--host", "127.0.0.1", "--port", str(port)]


def get_json(url: str, body: dict[str, Any] | None = None, timeout: float = 600) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def start(server: Server, cwd: Path, env: dict[str, str]) -> None:
    print(f"$ (cd {cwd} && {shlex.join(server.argv)})  # log {server.log}", flush=True)
    with open(server.log, "w") as log:  # own process group: stopped as a whole
        server.proc = subprocess.Popen(server.argv, cwd=cwd, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(server: Server, started: float, timeout: float) -> list[str]:
    """Poll /v1/models until the server answers; the names it serves."""
    assert server.proc is not None
    while True:
        if server.proc.poll() is not None:
            tail = server.log.read_text()[-4000:]
            raise SystemExit(f"server {server.name} exited with {server.proc.returncode}:\n{tail}")
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"server {server.name} not ready after {timeout:.0f} s")
        try:
            names = [m["id"] for m in get_json(f"{server.url}/v1/models", timeout=5)["data"]]
            server.ready_s = time.perf_counter() - started
            return names
        except OSError:
            time.sleep(2)


def stop(servers: list[Server], grace: float = 30) -> None:
    """SIGTERM every running server's process group; SIGKILL those still up after `grace` s."""
    procs = {s.name: s.proc for s in servers if s.proc is not None and s.proc.poll() is None}
    for proc in procs.values():
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for name, proc in procs.items():
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"stopped {name} (exit {proc.returncode})", flush=True)


def check_subtask(export: Path, name: str, entry: dict[str, Any], server: Server,
                  concurrency: int, limit: int | None, seeds: int,
                  prompt_seeds: bool) -> dict[str, Any]:
    """Send the subtask's request on its validation records and score the answers its
    extractor finds, aggregated, once per pass k < seeds: serving.yaml's request as is (no
    seed: the server's generator draws each prompt's samples apart), or with prompt_seeds
    each prompt seeded as planner seeds it, shifted by k*n."""
    spec = load_spec(export / "task" / "task.yaml")
    subtask = spec.subtask(name)
    data = load_subtask(spec, subtask)
    metric = load_metric(subtask.metric, spec.root)
    extract = load_extractor(subtask.answer, spec.root)
    template, request = entry["prompt_template"], entry["request"]
    if template != data.template:
        print(f"WARNING {name}: prompt_template {template!r} != task's {data.template!r}")
    records = data.val[:limit]
    n, aggregator = request["n"], entry["aggregator"]
    labels = [label_answer(r[data.label], extract) for r in records]

    chat = entry.get("endpoint") == "/v1/chat/completions"

    def complete(body: dict[str, Any]) -> tuple[list[str], float, int]:
        begin = time.perf_counter()
        if chat:  # the prompt as the one user message, which vLLM renders
            body = {**{k: v for k, v in body.items() if k != "prompt"},
                    "messages": [{"role": "user", "content": body["prompt"]}]}
        out = get_json(f"{server.url}{entry.get('endpoint', '/v1/completions')}", body)
        choices = sorted(out["choices"], key=lambda c: c["index"])
        texts = [c["message"]["content"] if chat else c["text"] for c in choices]
        if len(texts) != n:
            raise SystemExit(f"{name}: asked n={n}, got {len(texts)} choices")
        return texts, time.perf_counter() - begin, out["usage"]["completion_tokens"]

    scores: list[float] = []
    first: dict[str, Any] = {}  # seed +0's timings and an example
    for shift in range(seeds):
        seed = subtask.decoding.seed + shift * n  # vLLM seeds sample j of n with seed + j
        prompts = [render(template, r) for r in records]
        bodies = [{**request, "prompt": prompt,
                   **({"seed": prompt_seed(seed, prompt)} if prompt_seeds else {})}
                  for prompt in prompts]
        begin = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(complete, bodies))
        answers = [aggregate([extract(t) for t in texts], aggregator, n, metric, label)
                   for (texts, _, _), label in zip(results, labels, strict=True)]
        scores.append(mean(metric(a, label) for a, label in zip(answers, labels, strict=True)))
        if shift == 0:
            first = {"wall_s": time.perf_counter() - begin,
                     "latency_s": mean(r[1] for r in results),
                     "example": f"{bodies[0]['prompt']!r} -> {results[0][0]} -> "
                                f"{answers[0]!r} (gold {labels[0]!r})"}
            first["tok_s"] = sum(r[2] for r in results) / first["wall_s"]
    return {"subtask": name, "model": request["model"], "server": server.name, "n": n,
            "aggregator": aggregator, "records": len(records), "vllm": scores[0],
            "noise": max(abs(x - scores[0]) for x in scores), "expected": entry["expected_score"],
            **first}


def report(rows: list[dict[str, Any]], servers: list[Server]) -> None:
    for s in servers:
        print(f"server {s.name}: ready after {s.ready_s:.0f} s")
    print("\n| subtask | served model | n | aggregator | records | vLLM | seed noise "
          "| planner (expected) | vLLM - planner | wall s | mean latency s | completion tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        expected = r["expected"]
        diff = "" if expected is None else f"{r['vllm'] - expected:+.4f}"
        expected = "" if expected is None else f"{expected:.4f}"
        print(f"| {r['subtask']} | {r['model']} ({r['server']}) | {r['n']} | {r['aggregator']} | "
              f"{r['records']} | {r['vllm']:.4f} | {r['noise']:.4f} | {expected} | {diff} | "
              f"{r['wall_s']:.1f} | {r['latency_s']:.2f} | {r['tok_s']:.1f} |")
    for r in rows:
        print(f"{r['subtask']} example: {r['example']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", type=Path, help="planner-format export folder, trained")
    p.add_argument("--vllm-python", default=str(DEFAULT_PYTHON), help="python of the vLLM venv")
    p.add_argument("--add", default=DEFAULT_ADD, help="flags added to every server command")
    p.add_argument("--port", type=int, default=8100, help="first server's port")
    p.add_argument("--serial", action="store_true",
                   help="one server at a time (for its subtasks), not all at once")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--limit", type=int,
                   help="first N validation records per subtask (expected_score is over all)")
    p.add_argument("--timeout", type=float, default=900, help="seconds for a server to start")
    p.add_argument("--seeds", type=int, default=1,
                   help="passes k < K; seed noise = max |score(+k) - score(+0)|, as in "
                        "`planner train`")
    p.add_argument("--prompt-seeds", action="store_true",
                   help="seed each prompt as planner does (envs.live.env.prompt_seed, pass k "
                        "at seed + k*n) instead of serving.yaml's unseeded request")
    p.add_argument("--max-diff", type=float, help="fail if |vLLM - expected| exceeds this")
    args = p.parse_args()
    if args.seeds < 1:
        p.error("--seeds: give at least 1")
    export = args.export.resolve()
    doc = yaml.safe_load((export / "serving.yaml").read_text())
    order = load_spec(export / "task" / "task.yaml").order()
    add = shlex.split(args.add)
    env = {**DEFAULT_ENV, **os.environ}
    print("added to each command: --host 127.0.0.1 --port P " + shlex.join(add) + "; env: "
          + " ".join(f"{k}={env[k]}" for k in DEFAULT_ENV), flush=True)
    log_dir = export / ".check-serving"
    log_dir.mkdir(exist_ok=True)
    servers = {
        s["name"]: Server(s["name"], server_argv(s["command"], args.vllm_python, args.port + i,
                                                 add),
                          f"http://127.0.0.1:{args.port + i}", log_dir / f"{s['name']}.log")
        for i, s in enumerate(doc["servers"])}
    batches = [[s] for s in servers.values()] if args.serial else [list(servers.values())]
    for name in (n for n in order if doc["subtasks"][n]["server"] is None):
        print(f"{name}: no vLLM server (see the export's README), not checked")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the `finally` below
    rows: list[dict[str, Any]] = []
    try:
        for batch in batches:
            began = time.perf_counter()
            for server in batch:
                start(server, export, env)
            for server in batch:
                names = wait_ready(server, began, args.timeout)
                print(f"{server.name} ready after {server.ready_s:.0f} s, serves {names}",
                      flush=True)
                wanted = {e["request"]["model"] for e in doc["subtasks"].values()
                          if e["server"] == server.name}
                if missing := wanted - set(names):
                    raise SystemExit(f"{server.name} does not serve {sorted(missing)}")
            for name in (n for n in order if doc["subtasks"][n]["server"] in
                         {s.name for s in batch}):
                entry = doc["subtasks"][name]
                rows.append(check_subtask(export, name, entry, servers[entry["server"]],
                                          args.concurrency, args.limit, args.seeds,
                                          args.prompt_seeds))
                print(f"{name}: vLLM {rows[-1]['vllm']:.4f}, expected {entry['expected_score']}",
                      flush=True)
            stop(batch)
    finally:
        stop(list(servers.values()))
    report(rows, list(servers.values()))
    if args.max_diff is not None and any(
            r["expected"] is not None and abs(r["vllm"] - r["expected"]) > args.max_diff
            for r in rows):
        raise SystemExit(f"a score differs from the expected by more than {args.max_diff}")


if __name__ == "__main__":
    main()
