"""Draw n completions per prompt from a model, through one interface and three backends.

- `TransformersSampler`: in-process `generate`, batched with `num_return_sequences` (CPU/GPU).
- `VLLMSampler`: vLLM's offline engine with prefix caching (GPU; the `gpu` extra).
- `OpenAISampler`: any OpenAI-compatible completions server (vLLM, llama.cpp, OpenAI, ...).

`seed` is one seed for the whole call, or one per prompt: then a prompt's samples depend on
its seed alone, not on what else is sampled with it (the live environment's cache relies on
it). A failed request to a server raises `ServerError`, or `ServerUnavailableError` (also a
`ConnectionError`) where another attempt may succeed: unreachable, timed out, rate limited
or a 5xx answer. Each backend imports its library when used (torch and the model loader for
transformers and vLLM, the openai client for a server): a process that only talks to a
server never loads torch.

Example:
    >>> sampler = make_sampler("transformers", "models/tiny")
    >>> samples = sampler.sample(["12+345="], n=8, max_new_tokens=5, temperature=0.8, seed=0)
    >>> samples.texts[0]                    # 8 completions of the first prompt
"""

from __future__ import annotations

import gc
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from planner.secrets import redact, register

if TYPE_CHECKING:  # each backend loads its own library: a server's client needs no torch
    import torch
    from openai import OpenAIError


@dataclass(frozen=True)
class Samples:
    """Completions of one `sample` call and what they cost."""

    texts: list[list[str]]
    """texts[i][j]: completion j of prompt i, without the prompt."""
    prompt_tokens: int
    """Prompt tokens processed (as reported by the backend; a prompt counts once per request)."""
    completion_tokens: int
    """Generated tokens, eos included."""
    seconds: float
    each: list[tuple[int, int]] = field(default_factory=list)
    """(prompt tokens, completion tokens) of each prompt, in order: they sum to the totals."""


Seed = int | Sequence[int]
"""One seed for a whole `sample` call, or one per prompt."""


class BaseSampler(ABC):
    """Samples completions; the same prompts, n and seed give the same texts where the backend
    is deterministic (transformers and vLLM on one machine; servers only if they honour seed)."""

    @abstractmethod
    def sample(
        self,
        prompts: list[str],
        n: int,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Seed = 0,
    ) -> Samples:
        """Return `n` completions per prompt; temperature 0 means greedy (n identical copies).
        `seed`: one for the call, or one per prompt (module docstring)."""

    def close(self) -> None:  # noqa: B027 (a sampler with nothing to free needs no override)
        """Free what the sampler holds (weights, an engine's GPU memory, connections)."""


class TransformersSampler(BaseSampler):
    """Batched `generate` on a `tools.train` artifact (full folder, adapter folder or .gguf).

    Args:
        model: the artifact to load.
        batch_size: prompts per `generate` call (each expands to n sequences).
        progress: show a progress bar over batches.
    """

    def __init__(self, model: str | Path, *, batch_size: int = 16, progress: bool = False):
        import torch

        from tools.train import load_model

        self.model, self.tokenizer = load_model(model)
        self.tokenizer.padding_side = "left"  # generated tokens must follow every prompt directly
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.batch_size = batch_size
        self.progress = progress

    def sample(
        self,
        prompts: list[str],
        n: int,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Seed = 0,
    ) -> Samples:
        import torch

        with torch.inference_mode():
            return self._sample(prompts, n, max_new_tokens, temperature, top_p, seed)

    def _sample(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float,
                top_p: float, seed: Seed) -> Samples:
        start = time.perf_counter()
        if isinstance(seed, int):
            texts, each = self._generate(prompts, n, max_new_tokens, temperature, top_p, seed,
                                         progress=self.progress)
        else:  # one generate per prompt, each under its own seed
            texts, each = [], []
            pairs = list(zip(prompts, _seeds(seed, prompts), strict=True))
            for prompt, s in tqdm(pairs, desc="sampling", disable=not self.progress):
                t, e = self._generate([prompt], n, max_new_tokens, temperature, top_p, s,
                                      progress=False)
                texts += t
                each += e
        return Samples(texts, sum(p for p, _ in each), sum(c for _, c in each),
                       time.perf_counter() - start, each)

    def _generate(
        self,
        prompts: list[str],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        *,
        progress: bool,
    ) -> tuple[list[list[str]], list[tuple[int, int]]]:
        """`n` completions per prompt in batches under one seed, and each prompt's tokens."""
        import torch

        greedy = temperature == 0
        decoding = (
            {"do_sample": False}
            if greedy  # greedy cannot return n sequences; its copies are made below
            else {
                "do_sample": True,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": 0,  # off, as in vLLM and OpenAI servers (transformers defaults to 50)
                "num_return_sequences": n,
            }
        )
        torch.manual_seed(seed)
        texts: list[list[str]] = []
        each: list[tuple[int, int]] = []
        starts = range(0, len(prompts), self.batch_size)
        for i in tqdm(starts, desc="sampling", disable=not progress):
            batch = prompts[i : i + self.batch_size]
            inputs = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            output = self.model.generate(
                **inputs,
                **decoding,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = output[:, inputs["input_ids"].shape[1] :]  # (batch * n_returned, new_tokens)
            decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            rows = 1 if greedy else n  # generated rows per prompt
            lengths = _lengths_until_eos(new, self.tokenizer.eos_token_id).view(-1, rows)
            if greedy:
                texts += [[text] * n for text in decoded]
            else:
                texts += [decoded[j : j + n] for j in range(0, len(decoded), n)]
            each += [(int(p), int(c) * (n if greedy else 1)) for p, c in
                     zip(inputs["attention_mask"].sum(dim=1), lengths.sum(dim=1), strict=True)]
        return texts, each

    def close(self) -> None:
        import torch

        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class VLLMSampler(BaseSampler):
    """vLLM's offline engine with prefix caching: the n samples of a prompt share its KV cache.

    `model` is a model folder (or hub name) or a `tools.train` LoRA adapter folder, which is
    served on top of its base. `llm_kwargs` go to `vllm.LLM` (e.g. gpu_memory_utilization).
    """

    def __init__(
        self, model: str | Path, *, seed: int = 0, progress: bool = False, **llm_kwargs: object
    ):
        try:
            from vllm import LLM, SamplingParams
            from vllm.lora.request import LoRARequest
        except ImportError as e:
            raise ImportError(
                "VLLMSampler needs vLLM, which needs a GPU: pip install 'planner[gpu]'."
            ) from e
        from tools.train import SOFT_PROMPT
        self._sampling_params = SamplingParams
        self.progress = progress
        self.lora_request = None
        if (Path(model) / SOFT_PROMPT).exists():
            raise ValueError(f"vLLM serves no soft prompts: {model} is a ProMoT model kept with "
                             "its prompt; sample it with TransformersSampler.")
        adapter_config = Path(model) / "adapter_config.json"
        if adapter_config.exists():
            config = json.loads(adapter_config.read_text())
            if config["peft_type"] != "LORA":
                raise ValueError(f"vLLM serves LoRA adapters only, not {config['peft_type']}.")
            llm_kwargs.update(enable_lora=True, max_lora_rank=config["r"])
            self.lora_request = LoRARequest("adapter", 1, str(model))
            model = config["base_model_name_or_path"]
        self.llm = LLM(model=str(model), enable_prefix_caching=True, seed=seed, **llm_kwargs)

    def sample(
        self,
        prompts: list[str],
        n: int,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Seed = 0,
    ) -> Samples:
        start = time.perf_counter()
        copies = n if temperature == 0 else 1  # greedy: one sample, copied n times
        params = [  # one SamplingParams per prompt: per-request seeds, one batched call
            self._sampling_params(n=n // copies, temperature=temperature, top_p=top_p,
                                  max_tokens=max_new_tokens, seed=s)
            for s in _seeds(seed, prompts)
        ]
        outputs = self.llm.generate(
            prompts, params, use_tqdm=self.progress, lora_request=self.lora_request
        )
        texts = [[c.text for c in out.outputs] * copies for out in outputs]
        each = [(len(out.prompt_token_ids), copies * sum(len(c.token_ids) for c in out.outputs))
                for out in outputs]
        return Samples(texts, sum(p for p, _ in each), sum(c for _, c in each),
                       time.perf_counter() - start, each)

    def close(self) -> None:
        """Shut the engine down and return its GPU memory, so another engine fits."""
        import torch

        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            shutdown = getattr(llm, "shutdown", None)  # newer vLLM: an explicit teardown
            if shutdown is None:  # V1 engine: its core process holds the memory
                core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
                shutdown = getattr(core, "shutdown", None)
            if shutdown is not None:
                with suppress(Exception):  # best effort: what is left goes with the process
                    shutdown()
            del llm
        with suppress(ImportError, AssertionError, RuntimeError):
            from vllm.distributed import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class OpenAISampler(BaseSampler):
    """Completions API of an OpenAI-compatible server, one request per prompt, in parallel.

    A server that returns fewer than n choices (llama.cpp returns one) is asked again for the
    rest, with seed + 1, seed + 2, ... so the extra samples differ. Timeouts, 408/409/429 and
    5xx answers are retried with exponential backoff by the openai client (`max_retries`).

    Args:
        model: the model name the server serves.
        base_url: e.g. "http://127.0.0.1:8000/v1".
        api_key: defaults to $OPENAI_API_KEY, else "EMPTY" (local servers ignore it); never
            part of an error, even when a server echoes it.
        concurrency: requests in flight at once.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key: str | None = None,
        max_retries: int = 5,
        timeout: float = 120.0,
        concurrency: int = 8,
        progress: bool = False,
    ):
        from openai import OpenAI

        self.model = model
        self.base_url = base_url
        api_key = api_key or os.environ.get("OPENAI_API_KEY", "EMPTY")
        register(api_key)
        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key,
            max_retries=max_retries,
            timeout=timeout,
        )
        self.concurrency = concurrency
        self.progress = progress

    def sample(
        self,
        prompts: list[str],
        n: int,
        *,
        max_new_tokens: int = 32,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: Seed = 0,
    ) -> Samples:
        start = time.perf_counter()
        copies = n if temperature == 0 else 1  # greedy: one sample, copied n times

        def one(prompt_seed: tuple[str, int]) -> tuple[list[str], int, int]:
            prompt, s = prompt_seed
            texts, p, c = self._sample_prompt(prompt, n // copies, max_new_tokens, temperature,
                                              top_p, s)
            return texts * copies, p, c * copies

        with ThreadPoolExecutor(self.concurrency) as pool:
            results = list(
                tqdm(pool.map(one, zip(prompts, _seeds(seed, prompts), strict=True)),
                     total=len(prompts), disable=not self.progress)
            )
        return Samples(
            texts=[texts for texts, _, _ in results],
            prompt_tokens=sum(p for _, p, _ in results),
            completion_tokens=sum(c for _, _, c in results),
            seconds=time.perf_counter() - start,
            each=[(p, c) for _, p, c in results],
        )

    def close(self) -> None:
        self.client.close()

    def _sample_prompt(
        self, prompt: str, n: int, max_tokens: int, temperature: float, top_p: float, seed: int
    ) -> tuple[list[str], int, int]:
        from openai import OpenAIError

        texts: list[str] = []
        prompt_tokens = completion_tokens = 0
        while len(texts) < n:
            try:
                response = self.client.completions.create(
                    model=self.model,
                    prompt=prompt,
                    n=n - len(texts),
                    max_tokens=max_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    seed=seed + len(texts),
                )
            except OpenAIError as e:
                raise _request_failed(e, self.base_url, self.model) from None
            if not response.choices:
                raise RuntimeError(f"Server returned no choices for prompt {prompt!r}.")
            choices = sorted(response.choices, key=lambda c: c.index)
            texts += [c.text for c in choices][: n - len(texts)]
            if response.usage is not None:
                prompt_tokens += response.usage.prompt_tokens
                completion_tokens += response.usage.completion_tokens
        return texts, prompt_tokens, completion_tokens


BACKENDS: dict[str, type[BaseSampler]] = {
    "transformers": TransformersSampler,
    "vllm": VLLMSampler,
    "openai": OpenAISampler,
}


def make_sampler(backend: str, model: str | Path, **kwargs: object) -> BaseSampler:
    """Build the sampler for `backend` ("transformers", "vllm" or "openai"); `kwargs` go to it
    (e.g. `base_url=` for openai)."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    return BACKENDS[backend](model, **kwargs)


class ServerError(RuntimeError):
    """A request to a model server failed; the message names the openai error, the server and
    the model, redacted, and holds neither the request nor the response."""


class ServerUnavailableError(ServerError, ConnectionError):
    """The server was unreachable, timed out, was rate limited or failed (5xx): another
    attempt may succeed (`planner.executors.is_transient` matches ConnectionError)."""


def _request_failed(e: OpenAIError, base_url: str, model: str) -> ServerError:
    """`e` with its message redacted, and without its request and response (which hold the
    Authorization header and the server's echo of it)."""
    from openai import APIConnectionError, InternalServerError, RateLimitError

    status = getattr(e, "status_code", None)
    where = f" (HTTP {status})" if status else ""
    text = f"{type(e).__name__}{where} from {base_url} (model {model!r}): {redact(str(e))}"
    if isinstance(e, APIConnectionError | RateLimitError | InternalServerError) or (
        status is not None and status >= 500
    ):
        hint = "; is the server running at that URL?" if isinstance(e, APIConnectionError) else ""
        return ServerUnavailableError(redact(text + hint))
    return ServerError(redact(text))


def _seeds(seed: Seed, prompts: list[str]) -> list[int]:
    """One seed per prompt: `seed` for each, or the given list (as long as `prompts`)."""
    if isinstance(seed, int):
        return [seed] * len(prompts)
    seeds = list(seed)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts; give one per prompt")
    return seeds


def _lengths_until_eos(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Generated tokens of each row up to and including the first eos."""
    import torch

    is_eos = tokens == eos_token_id
    first_eos = is_eos.int().argmax(dim=1)
    return torch.where(is_eos.any(dim=1), first_eos + 1, tokens.shape[1])
