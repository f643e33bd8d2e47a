"""Numeric field types of task files: no booleans (`true` is not 1), no inf or NaN, and no
magnitude so absurd that every cost overflows or nothing could ever fit.

The bounds are far outside any real pipeline (a 10^15-parameter model, 10^16 training
tokens) yet keep every product the cost model forms finite.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AllowInfNan, Field, Strict

Int = Annotated[int, Strict()]
"""An integer; `true`, `3.0` and `"3"` are refused."""
Float = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number (an integer is fine); `true`, `.inf`, `.nan` and `"3"` are refused."""

MAX_PARAMS = 1e15
MAX_TOKENS = 1e16  # tokens trained on
MAX_COUNT = 10**9  # steps, batch sizes, queries, lengths
MAX_SAMPLES = 10**6  # samples per item (n)

Count = Annotated[Int, Field(gt=0, le=MAX_COUNT)]
"""A positive integer up to `MAX_COUNT`."""
Tokens = Annotated[Float, Field(gt=0, le=MAX_TOKENS)]
"""A positive number of tokens up to `MAX_TOKENS`."""
