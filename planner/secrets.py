"""Secrets kept out of everything planner stores, traces or prints.

A server may echo the Authorization header in an error reply, and that reply would then be
stored as a trial's error or an agent step's exchange. `redact` replaces the value of every
secret-looking environment variable (and any value registered with `register`) wherever it
occurs in a text, also in the forms a value takes when quoted (JSON-escaped once or twice,
Python repr, URL-encoded), so callers pass all outgoing text through it at the few places
text leaves the process: the store, the console, and error lines. `redact_json` encodes
data as JSON with every string redacted first, so the text stays valid JSON.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any
from urllib.parse import quote

MASK = "[REDACTED]"
# a name part KEY, TOKEN or SECRET (OPENAI_API_KEY, HF_TOKEN; not KEYRING or TOKENIZERS), or
# PASSWORD / CREDENTIAL anywhere (PGPASSWORD)
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET)S?(?:_|$)|PASSW(?:OR)?D|CREDENTIAL",
                          re.IGNORECASE)
_MIN_LENGTH = 8  # shorter values ("EMPTY", "1") would mask ordinary words
_registered: set[str] = set()
_cached: tuple[tuple, list[str]] | None = None  # (what `_forms` read, the forms it gave)


def register(value: str | None) -> None:
    """Treat `value` (e.g. an API key passed in code, not in the environment) as secret."""
    if value and len(value) >= _MIN_LENGTH:
        _registered.add(value)


def secrets() -> list[str]:
    """The secret values known now, longest first (so a key containing another is masked
    whole)."""
    found = set(_registered)
    for name, value in os.environ.items():
        if _secret_name(name) and len(value) >= _MIN_LENGTH:
            found.add(value)
    return sorted(found, key=len, reverse=True)


@functools.cache
def _secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a secret (names recur on every
    call of `secrets`, which the store makes for each row it writes)."""
    return _SECRET_NAME.search(name) is not None


def redact(text: str) -> str:
    """`text` with every known secret value, in any of its quoted forms, replaced by `MASK`."""
    return _redact(text, _forms())


def redact_data(data: Any) -> Any:
    """JSON-like `data` (dicts, lists, tuples, scalars) with every string in it redacted."""
    forms = _forms()
    return _walk(data, forms) if forms else data


def redact_json(data: Any, **dumps: Any) -> str:
    """`json.dumps(data, **dumps)` with every string (and every object it writes with
    `str`) redacted before encoding."""
    forms = _forms()
    if not forms:  # no secret known: nothing to walk (a hot path of the store)
        return json.dumps(data, default=str, **dumps)
    return json.dumps(_walk(data, forms), default=lambda o: _redact(str(o), forms), **dumps)


def _forms() -> list[str]:
    """Each secret as it may appear in a text, longest first. Worked out again only when
    the environment or the registered values changed: the store asks on every row it
    writes, and decoding every environment variable costs ~50 times more than comparing
    their raw bytes (`os.environ._data`, which every change to `os.environ` writes through).
    `_registered` only grows, so its size tells whether it changed."""
    global _cached
    seen = (tuple(os.environ._data.items()), len(_registered))  # type: ignore[attr-defined]
    if _cached is not None and _cached[0] == seen:
        return _cached[1]
    found: set[str] = set()
    for value in secrets():
        escaped = json.dumps(value)[1:-1]
        found |= {value, escaped, json.dumps(escaped)[1:-1],
                  json.dumps(value, ensure_ascii=False)[1:-1], repr(value)[1:-1],
                  quote(value, safe="")}
    forms = sorted(found, key=len, reverse=True)
    _cached = seen, forms
    return forms


def _redact(text: str, forms: list[str]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


def _walk(data: Any, forms: list[str]) -> Any:
    if isinstance(data, str):
        return _redact(data, forms)
    if isinstance(data, dict):
        return {_walk(k, forms): _walk(v, forms) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_walk(v, forms) for v in data]
    return data
