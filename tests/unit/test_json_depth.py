"""The JSON nesting scan (`trustd.api.middleware.json_depth_exceeds`) agrees with the real
depth of every JSON document, and whatever it passes cannot exhaust `json.loads`."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from trustd.api.middleware import json_depth_exceeds

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(documents, st.integers(min_value=0, max_value=8))
def test_the_scan_measures_the_true_depth(document: Any, limit: int) -> None:
    text = json.dumps(document, ensure_ascii=False).encode()
    assert json_depth_exceeds(text, limit) == (_depth(document) > limit)


@given(st.text(alphabet='[]{}"\\ a,:1', max_size=3000).map(str.encode))
def test_whatever_passes_parses_without_recursion_error(text: bytes) -> None:
    if json_depth_exceeds(text, 50):
        return
    # Not JSON is an ordinary 400 (ValueError), never a RecursionError.
    with contextlib.suppress(ValueError):
        json.loads(text)


def test_a_deep_body_is_refused_quickly() -> None:
    assert json_depth_exceeds(b"[" * 1_000_000, 100)
    assert json_depth_exceeds(b'{"a": "' + b"[" * 500 + b'", "b": ' + b"[" * 101, 100)
    assert not json_depth_exceeds(b'"' + b"[" * 1_000_000 + b'"', 100)
    assert not json_depth_exceeds(b'"\\"' + b"[" * 1_000 + b'"', 100)
