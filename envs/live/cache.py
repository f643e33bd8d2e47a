"""The live environment's cache: trained artifacts (folders) and sample sets (SQLite).

Both are keyed by a content hash of everything that determines them. An artifact is built
under a per-key file lock into a temporary folder and renamed into place, so a second
process waits for the first and then reuses its result, and a crash leaves nothing behind.
Samples are stored one row per (sample-set key, prompt), so only prompts never seen are
sampled. `stats` counts hits and misses.

Layout under the root (`$PLANNER_CACHE`, default `~/.cache/planner`)::

    zoo/                  tools.zoo builds
    live/artifacts/KEY/   trained weights or adapters + meta.json
    live/locks/KEY.lock
    live/samples.sqlite
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def default_root() -> Path:
    """`$PLANNER_CACHE`, else `~/.cache/planner`."""
    return Path(os.environ.get("PLANNER_CACHE", "~/.cache/planner")).expanduser()


def content_key(parts: Mapping[str, object]) -> str:
    """A short SHA-256 of canonical JSON: equal parts give equal keys."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class CacheStats:
    """Hits and misses since the cache was opened (per process)."""

    train_hits: int = 0
    train_misses: int = 0
    sample_hits: int = 0
    """Distinct prompts (per request) whose samples were found."""
    sample_misses: int = 0
    """Distinct prompts (per request) that had to be sampled."""


@dataclass(frozen=True)
class DrawnSamples:
    """N samples of one prompt and what drawing them cost."""

    texts: list[str]
    prompt_tokens: int
    completion_tokens: int
    seconds: float


@dataclass
class Cache:
    """Artifacts and samples under `root`."""

    root: Path = field(default_factory=default_root)
    stats: CacheStats = field(default_factory=CacheStats)
    zoo_dir: Path | None = None
    """Where zoo builds live (default `root/zoo`): a fresh cache can share built bases."""

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._live = self.root / "live"
        for sub in ("artifacts", "locks"):
            (self._live / sub).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self._live / "samples.sqlite", timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS samples (set_key TEXT, prompt TEXT, "
                         "texts TEXT, prompt_tokens INT, completion_tokens INT, seconds REAL, "
                         "PRIMARY KEY (set_key, prompt))")
        self._db.commit()

    @property
    def zoo(self) -> Path:
        return self.zoo_dir or self.root / "zoo"

    def artifact(self, key: str, build: Callable[[Path], dict]) -> tuple[Path, dict]:
        """The artifact folder of `key` and its metadata, built by `build(folder) -> meta`
        unless present. Another process building the same key is waited for."""
        final = self._live / "artifacts" / key
        if (final / "meta.json").exists():
            self.stats.train_hits += 1
            return final, json.loads((final / "meta.json").read_text())
        with self._lock(key):
            if (final / "meta.json").exists():  # built by another process meanwhile
                self.stats.train_hits += 1
                return final, json.loads((final / "meta.json").read_text())
            self.stats.train_misses += 1
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
            try:
                meta = build(tmp)
                (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
                tmp.rename(final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final, meta

    @contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        with open(self._live / "locks" / f"{key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def samples(self, set_key: str, prompts: Sequence[str],
                draw: Callable[[list[str]], list[DrawnSamples]]) -> list[DrawnSamples]:
        """Samples of each prompt under `set_key`; `draw(missing)` samples the prompts never
        seen (each once, in first-seen order) and they are stored."""
        unique = list(dict.fromkeys(prompts))
        found = self._lookup(set_key, set(unique))
        missing = [p for p in unique if p not in found]
        self.stats.sample_hits += len(unique) - len(missing)
        self.stats.sample_misses += len(missing)
        if missing:
            drawn = draw(missing)
            with self._db:
                self._db.executemany(
                    "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                    [(set_key, p, json.dumps(d.texts), d.prompt_tokens, d.completion_tokens,
                      d.seconds) for p, d in zip(missing, drawn, strict=True)])
            found.update(zip(missing, drawn, strict=True))
        return [found[p] for p in prompts]

    def _lookup(self, set_key: str, prompts: set[str]) -> dict[str, DrawnSamples]:
        rows = self._db.execute("SELECT prompt, texts, prompt_tokens, completion_tokens, seconds "
                                "FROM samples WHERE set_key = ?", (set_key,))
        return {p: DrawnSamples(json.loads(t), pt, ct, s)
                for p, t, pt, ct, s in rows if p in prompts}
