"""Answer extractors of the smolmath task (task.yaml `answer: smolmath_answers:NAME`).

SmolLM2 talks ("To find 7*12, we multiply ...", "Kim has 10 books."), so stages compare the
answer a completion holds, not its text."""

from __future__ import annotations

import re

_EXPRESSION = re.compile(r"(\d+)\s*([-+*x×])\s*(\d+)")
_QUANTITY = re.compile(r"(-?\d+)\s+([A-Za-z]+)")


def expression(text: str) -> str | None:
    """The first 'A op B' in the text, as 'A+B', 'A-B' or 'A*B' ('x' and '×' are '*')."""
    found = _EXPRESSION.search(text)
    if found is None:
        return None
    a, op, b = found.groups()
    return f"{int(a)}{'*' if op in 'x×' else op}{int(b)}"


def quantity(text: str) -> str | None:
    """The first 'number unit' in the text, lower-cased: 'Kim has 10 Books.' -> '10 books'."""
    found = _QUANTITY.search(text)
    return None if found is None else f"{int(found.group(1))} {found.group(2).lower()}"
