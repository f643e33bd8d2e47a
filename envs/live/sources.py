"""Where a live model's weights come from: `zoo:SIZE`, a local folder or .gguf file, or a
Hugging Face id already in the local hub cache (nothing is downloaded)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from planner.errors import SpecError
from planner.spec import ModelSpec, TaskSpec
from tools.zoo import SIZES, tiny_model


def resolve_source(spec: TaskSpec, model: ModelSpec, zoo_dir: Path) -> Path:
    """A loadable path for the model: a zoo build (built on first use), a path relative to
    the task file, or the local snapshot of an HF id."""
    source = model.source
    where = f"{spec.name}: models.{model.name}.source"
    if source.startswith("zoo:"):
        size = source.removeprefix("zoo:")
        if size not in SIZES:
            raise SpecError(f"{where}: unknown zoo model {size!r}; use one of "
                            + ", ".join(f"zoo:{s}" for s in SIZES))
        return tiny_model(size, cache_dir=zoo_dir)  # type: ignore[arg-type]
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
