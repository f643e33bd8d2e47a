"""The live environment's cache: trained artifacts (folders) and sample sets (SQLite).

Both are keyed by a content hash of everything that determines them. An artifact is built
under a per-key file lock into a temporary folder and renamed into place, so a second
process waits for the first and then reuses its result, and a crash leaves nothing behind.
Samples are stored one row per (sample-set key, prompt), so only prompts never seen are
sampled. `stats` counts hits and misses.

Layout under the root (`$PLANNER_CACHE`, default `~/.cache/planner`)::

    zoo/                  tools.zoo builds
    live/artifacts/KEY/   trained weights or adapters + meta.json
    live/artifacts/.KEY-XXXXXXXX/   a build in progress (or left by a killed one)
    live/locks/KEY.lock
    live/samples.sqlite   samples, each sample set's last use (sample_sets) and what
                          drawing it measured (sample_costs: the live calibration's)

Bounds (`planner cache ls`, `planner cache prune`): `entries` lists artifacts, sample sets
and half-written builds with their size and last use (an artifact's folder time, touched
on every hit; a sample set's `sample_sets.used`); `prune` removes the least recently used
until the cache is under a size, or those unused for longer than an age, and always the
builds a killed process left (older than `PARTIAL_AGE` and not locked by a live build).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from planner.errors import PlannerError


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
        try:
            for sub in ("artifacts", "locks"):
                (self._live / sub).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self._live / "samples.sqlite", timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as e:
            reason = getattr(e, "strerror", None) or e
            raise PlannerError(f"cache {self.root}: cannot keep models and samples there "
                               f"({reason}); point $PLANNER_CACHE (or --cache-dir, where a "
                               "command takes it) at a folder you can write") from None
        self._db.execute("CREATE TABLE IF NOT EXISTS samples (set_key TEXT, prompt TEXT, "
                         "texts TEXT, prompt_tokens INT, completion_tokens INT, seconds REAL, "
                         "PRIMARY KEY (set_key, prompt))")
        _usage_table(self._db)
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
            _touch(final)
            return final, json.loads((final / "meta.json").read_text())
        with self._lock(key):
            if (final / "meta.json").exists():  # built by another process meanwhile
                self.stats.train_hits += 1
                _touch(final)
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

    @staticmethod
    def prefix_key(key: str, steps: int) -> str:
        """The key of the first `steps` steps of the training `key` names (a screen's)."""
        return f"{key}-{steps}steps"

    def prefix_path(self, key: str, steps: int) -> Path:
        """The folder of a prefix `prefixes` listed."""
        return self._live / "artifacts" / self.prefix_key(key, steps)

    def prefixes(self, key: str) -> list[dict]:
        """The metadata of the prefixes of the training `key` names that are built."""
        found = (self._live / "artifacts").glob(f"{key}-*steps/meta.json")
        return [json.loads(path.read_text()) for path in found]

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
        with self._db:
            self._db.execute("INSERT INTO sample_sets VALUES (?, ?) ON CONFLICT (set_key) DO "
                             "UPDATE SET used = excluded.used", (set_key, time.time()))
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

    def metas(self) -> list[dict]:
        """The metadata (meta.json) of every finished artifact, in key order."""
        found = []
        for meta in sorted((self._live / "artifacts").glob("*/meta.json")):
            with suppress(OSError, ValueError):  # pruned meanwhile, or not JSON
                found.append(json.loads(meta.read_text()))
        return found

    def record_sampling(self, set_key: str, measured: Mapping[str, object]) -> None:
        """Keep what one draw of `set_key`'s missing prompts measured (tokens, seconds, the
        device ...): a sample row keeps its own seconds, but not what ran it."""
        with self._db:
            _costs_table(self._db)
            self._db.execute("INSERT INTO sample_costs VALUES (?, ?)",
                             (set_key, json.dumps(dict(measured))))

    def samplings(self, set_key: str | None = None) -> list[dict]:
        """What `record_sampling` kept (of one sample set, if given), oldest first."""
        _costs_table(self._db)
        rows = self._db.execute("SELECT measured FROM sample_costs WHERE ? IS NULL OR "
                                "set_key = ? ORDER BY rowid", (set_key, set_key))
        return [json.loads(m) for (m,) in rows]


# --- bounds: list and prune ------------------------------------------------------------------

PARTIAL_AGE = 3600.0
"""Seconds a half-written build folder must be left alone before `prune` may remove it
(and then only if no process holds its key's lock, as a live build does)."""

Kind = Literal["artifact", "samples", "partial"]


@dataclass(frozen=True)
class Entry:
    """One thing the cache holds."""

    kind: Kind
    """`artifact` (a trained model), `samples` (a sample set), `partial` (a build folder
    in progress, or left by a killed process)."""
    key: str
    bytes: int
    """Bytes on disk (a sample set: its rows' text)."""
    used: float
    """Last use, seconds since the epoch (a partial build: its folder's last change)."""
    detail: str
    path: Path | None = None
    """The folder (artifacts and partial builds)."""


@dataclass(frozen=True)
class PruneResult:
    removed: list[Entry]
    kept: list[Entry]
    skipped: list[Entry]
    """Partial builds left alone: locked by a live build, or too recent."""


def entries(root: Path) -> list[Entry]:
    """Everything under `root`'s live cache, least recently used first (zoo builds,
    which are bases and not results, are not listed)."""
    live = Path(root) / "live"
    found: list[Entry] = []
    folder = live / "artifacts"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_dir():
            continue
        size, st = _size(path), path.stat()
        if path.name.startswith(".") or not (path / "meta.json").is_file():
            key = path.name.lstrip(".").split("-", 1)[0]
            found.append(Entry("partial", key, size, st.st_mtime, "half-written build", path))
        else:
            found.append(Entry("artifact", path.name, size, st.st_mtime, _describe(path), path))
    db_path = live / "samples.sqlite"
    if db_path.is_file():
        with _connect(db_path) as db:
            for key, n, size, used in db.execute(
                    "SELECT s.set_key, COUNT(*), SUM(LENGTH(CAST(s.prompt AS BLOB)) + "
                    "LENGTH(CAST(s.texts AS BLOB))), u.used FROM samples s LEFT JOIN "
                    "sample_sets u ON u.set_key = s.set_key GROUP BY s.set_key"):
                found.append(Entry("samples", key, int(size or 0), float(used or 0.0),
                                   f"{n} prompts"))
    return sorted(found, key=lambda e: (e.used, e.kind, e.key))


def prune(root: Path, *, max_bytes: int | None = None, older_than: float | None = None,
          now: float | None = None, dry_run: bool = False,
          partial_age: float = PARTIAL_AGE) -> PruneResult:
    """Remove, least recently used first, what was last used more than `older_than`
    seconds ago, then more until what is left is at most `max_bytes`; and every partial
    build older than `partial_age` that no live build holds. `dry_run` removes nothing."""
    now = time.time() if now is None else now
    listed = entries(root)
    removed: list[Entry] = []
    skipped: list[Entry] = []
    for e in (e for e in listed if e.kind == "partial"):
        stale = now - e.used >= partial_age
        if stale and _unlocked(Path(root) / "live" / "locks" / f"{e.key}.lock"):
            removed.append(e)
        else:
            skipped.append(e)
    candidates = [e for e in listed if e.kind != "partial"]  # least recently used first
    if older_than is not None:
        removed += [e for e in candidates if now - e.used > older_than]
    total = sum(e.bytes for e in listed if e not in removed)
    for e in candidates:
        if max_bytes is None or total <= max_bytes:
            break
        if e not in removed:
            removed.append(e)
            total -= e.bytes
    if not dry_run:
        _remove(Path(root), removed)
    kept = [e for e in listed if e not in removed]
    return PruneResult(removed, kept, skipped)


def _remove(root: Path, removed: list[Entry]) -> None:
    """Folders are renamed out of the way first (a reader sees all or nothing), then
    deleted; sample sets are deleted and the database compacted."""
    for e in removed:
        if e.path is not None and e.path.exists():
            doomed = e.path.with_name(f".{e.key}-pruned{os.getpid()}")
            e.path.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
    keys = [(e.key,) for e in removed if e.kind == "samples"]
    if keys:
        with _connect(root / "live" / "samples.sqlite") as db:
            with db:
                db.executemany("DELETE FROM samples WHERE set_key = ?", keys)
                db.executemany("DELETE FROM sample_sets WHERE set_key = ?", keys)
                _costs_table(db)
                db.executemany("DELETE FROM sample_costs WHERE set_key = ?", keys)
            db.execute("PRAGMA busy_timeout = 5000")
            # give the space back to the file system; if another process holds the
            # database, its pages are reused later instead
            with suppress(sqlite3.OperationalError):
                db.execute("VACUUM")


def _usage_table(db: sqlite3.Connection) -> None:
    """`sample_sets`: each sample set's last use. A cache from before it existed gets its
    sets stamped now, so nothing counts as older than it is known to be."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                        "'sample_sets'").fetchone()
    if not exists:
        db.execute("CREATE TABLE IF NOT EXISTS sample_sets (set_key TEXT PRIMARY KEY, "
                   "used REAL)")
        db.execute("INSERT OR IGNORE INTO sample_sets SELECT DISTINCT set_key, ? FROM samples",
                   (time.time(),))


def _costs_table(db: sqlite3.Connection) -> None:
    """`sample_costs`: what each draw of a sample set measured, as JSON (`record_sampling`)."""
    db.execute("CREATE TABLE IF NOT EXISTS sample_costs (set_key TEXT, measured TEXT)")
    db.execute("CREATE INDEX IF NOT EXISTS sample_costs_set ON sample_costs (set_key)")


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, timeout=60)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS samples (set_key TEXT, prompt TEXT, texts TEXT, "
                   "prompt_tokens INT, completion_tokens INT, seconds REAL, "
                   "PRIMARY KEY (set_key, prompt))")
        _usage_table(db)
        db.commit()
        yield db
    finally:
        db.close()


def _touch(path: Path) -> None:
    """Mark an artifact used now (its folder's time: `prune` keeps the recently used)."""
    with suppress(OSError):  # a read-only cache is still a cache
        os.utime(path)


def _unlocked(lock: Path) -> bool:
    """No process holds the key's build lock (a killed builder's lock died with it)."""
    if not lock.exists():
        return True
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def _size(path: Path) -> int:
    return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _describe(path: Path) -> str:
    """An artifact in words: its method kind, what is stored, and its sources."""
    stored = "adapter" if (path / "adapter_config.json").is_file() else "weights"
    try:
        meta = json.loads((path / "meta.json").read_text())
        kind = json.loads(meta["settings"])["kind"]
        sources = ", ".join(meta.get("sources", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return stored
    return f"{kind} {stored} on {sources}"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_AGE_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """`10GB`, `500MB`, `1.5G` (powers of 1000), `8GiB` (of 1024), `1000` (bytes)."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 10GB, 500MB or 8GiB")
    number, unit = float(match.group(1)), (match.group(2) or "b").lower()
    power = "bkmgt".index(unit[0])
    return int(number * (1024 if "i" in unit else 1000) ** power)


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s`, `2w` in seconds."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age; write e.g. 7d, 12h, 30m or 2w")
    return float(match.group(1)) * _AGE_SECONDS[match.group(2).lower()]


def format_size(n: int) -> str:
    """Bytes for people: 512 B, 1.5 kB, 12.3 MB, 1.2 GB (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_age(seconds: float) -> str:
    """A duration for people: 45 s, 12 min, 3.5 h, 2.0 d."""
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
