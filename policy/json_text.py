"""JSON text on the decision path: orjson where it reads and writes the same values as the
standard library, the standard library where it does not.

orjson parses and serialises several times faster, which matters at thousands of decisions
per second, but it differs at the edges: it reads an integer beyond 64 bits as a float, writes
NaN and the infinities as `null`, and refuses lone surrogates. RFC 8259 §6 and §8.2 leave
those to the implementation; trustd's answers for them stay the standard library's, so the
Data API answers and refuses exactly what it did.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# Twenty digits in a row: possibly an integer beyond 64 bits (or digits inside a string,
# which the standard library then reads just as well).
_LONG_DIGITS = re.compile(rb"\d{20}")
_LONG_DIGITS_TEXT = re.compile(r"\d{20}")


def loads(text: bytes | str) -> Any:
    """The value of JSON `text`, as `json.loads` reads it.

    Raises:
        ValueError: `text` is not JSON (the standard library's error and message).
    """
    long = _LONG_DIGITS_TEXT if isinstance(text, str) else _LONG_DIGITS
    if long.search(text) is None:  # type: ignore[arg-type]
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # NaN, a lone surrogate, 1e400: the standard library decides, and words it
    return json.loads(text)


def canonical(value: Any) -> str:
    """Sorted keys, no whitespace: one text per value (the decision cache key and the
    engine's input).

    Raises:
        ValueError: NaN or an infinity (RFC 8259 §6: not JSON numbers).
        TypeError: a value JSON cannot encode.
    """
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # An integer beyond 64 bits, a lone surrogate, a non-string key.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    if b"null" in text:
        # orjson writes NaN as null: let the standard library refuse it (a real null is
        # rare in a decision input, and costs only this second pass).
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text.decode()


def dumps(value: Any) -> bytes:
    """A response body: compact, UTF-8, as Starlette's `JSONResponse` renders it.

    Raises:
        ValueError: NaN or an infinity.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(
            value, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        ).encode()
