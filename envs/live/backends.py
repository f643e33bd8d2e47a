"""The live environment's loaded samplers: one per (backend, artifact) in a process, reused
by every stage and trial that samples that artifact (weights load once), within bounds on
what a device holds.

- `transformers`: a `TransformersSampler` per artifact folder; on a GPU one at a time (the
  previous is freed first), on a CPU up to `CPU_MODELS`, least recently used dropped.
- `vllm`: a `VLLMSampler` (the offline engine) per artifact folder, at most one at a time:
  two engines rarely fit in one GPU's memory, so the previous is shut down and its memory
  returned (`close`: engine shutdown, `gc.collect()`, `torch.cuda.empty_cache()`) before
  another loads; a transformers model on the GPU is freed too.
- `openai`: an `OpenAISampler` per (base URL, served name); nothing is loaded here.

`loads` and `calls` count, per key, the samplers built and the `sample` calls made.
"""

from __future__ import annotations

import gc
import importlib.util
import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from planner.errors import SpecError
from planner.sampling import Backend
from planner.secrets import register

if TYPE_CHECKING:  # torch and the samplers load with the first sampler: a cached trial needs none
    from tools.infer import BaseSampler, Samples

CPU_MODELS = 8
"""Transformers models kept loaded on a CPU (host memory), least recently used dropped."""

Key = tuple[str, ...]


@dataclass(frozen=True)
class ServedModel:
    """A model an OpenAI-compatible server serves, by its name there."""

    name: str


Target = Path | ServedModel
"""What a stage samples: a local model folder, or a served model."""


class Samplers:
    """Loaded samplers of one environment, keyed by backend and artifact path (or, for a
    server, base URL and served name)."""

    def __init__(self, *, task: str, progress: bool = False) -> None:
        self.task = task  # names the task in errors
        self.progress = progress
        self._loaded: OrderedDict[Key, BaseSampler] = OrderedDict()
        self.loads: Counter[Key] = Counter()
        self.calls: Counter[Key] = Counter()

    @staticmethod
    def key(backend: Backend, target: Target) -> Key:
        """(backend, artifact folder), or ("openai", base URL, served name)."""
        if isinstance(target, ServedModel):
            return ("openai", str(backend.base_url), target.name)
        return (backend.kind, str(target))

    def get(self, backend: Backend, target: Target) -> BaseSampler:
        """The sampler of `target` under `backend`, loaded on first use."""
        key = self.key(backend, target)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        if backend.kind == "vllm" and importlib.util.find_spec("vllm") is None:
            raise SpecError(f"{self.task}: sampling.backend: backend vllm needs vLLM, which is "
                            "not installed here; pip install 'planner[gpu]' (a CUDA machine), "
                            "or sample with --backend transformers")
        self._make_room(backend.kind)
        sampler = self._load(backend, target)
        self._loaded[key] = sampler
        self.loads[key] += 1
        return sampler

    def sample(self, backend: Backend, target: Target, prompts: list[str], n: int,
               **decoding: object) -> Samples:
        """One batched `sample` call on the target's sampler."""
        sampler = self.get(backend, target)
        sampler.progress = self.progress  # type: ignore[attr-defined] (every sampler has it)
        self.calls[self.key(backend, target)] += 1
        return sampler.sample(prompts, n, **decoding)  # type: ignore[arg-type]

    def _load(self, backend: Backend, target: Target) -> BaseSampler:
        if isinstance(target, ServedModel) != (backend.kind == "openai"):
            raise ValueError(f"backend {backend.kind} cannot sample {target!r}")
        from tools.infer import OpenAISampler, TransformersSampler, VLLMSampler

        if isinstance(target, Path):
            sampler = TransformersSampler if backend.kind == "transformers" else VLLMSampler
            return sampler(target, progress=self.progress)
        key = os.environ.get(backend.api_key_env) or "EMPTY"  # local servers ignore it
        register(key)  # masked wherever text leaves this process
        assert backend.base_url is not None  # planner.sampling.check_backends saw to it
        return OpenAISampler(target.name, base_url=backend.base_url, api_key=key,
                             max_retries=backend.max_retries, timeout=backend.timeout,
                             progress=self.progress)

    def _make_room(self, kind: str) -> None:
        """Free what must go before a `kind` sampler loads (module docstring)."""
        if kind == "openai":  # a server's sampler holds no model here
            return
        import torch

        gpu = torch.cuda.is_available()
        doomed: list[Key] = []
        if kind == "vllm" or (kind == "transformers" and gpu):  # one model on the GPU
            doomed = [k for k in self._loaded if k[0] == "vllm"
                      or (k[0] == "transformers" and gpu)]
        elif kind == "transformers":  # on the CPU: the least recently used beyond the bound
            local = [k for k in self._loaded if k[0] == "transformers"]
            doomed = local[: max(0, len(local) - CPU_MODELS + 1)]
        for k in doomed:
            self._close(k)

    def _close(self, key: Key) -> None:
        import torch

        sampler = self._loaded.pop(key)
        sampler.close()
        del sampler
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Free every loaded sampler."""
        for key in list(self._loaded):
            self._close(key)

    def loaded(self) -> list[Key]:
        """Keys of the samplers loaded now, least recently used first."""
        return list(self._loaded)
