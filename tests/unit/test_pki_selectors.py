"""Selector parsing (Hypothesis round-trips and rejections) and subset matching."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pki.errors import InvalidSelector
from pki.selectors import Selector, matches, parse_selectors

types = st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True)
values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)


@given(types, values)
def test_round_trip(selector_type: str, value: str) -> None:
    selector = Selector(selector_type, value)
    assert Selector.parse(str(selector)) == selector


def test_value_keeps_its_colons() -> None:
    assert Selector.parse("unix:uid:1000") == Selector("unix", "uid:1000")


@pytest.mark.parametrize(
    "text", ["nocolon", ":value", "Unix:uid:1", "unix:", "9x:y", "a b:c", "unix:uid\n1"]
)
def test_rejects_bad_selectors(text: str) -> None:
    with pytest.raises(InvalidSelector):
        Selector.parse(text)


def test_subset_matching() -> None:
    present = parse_selectors(["unix:uid:1000", "unix:gid:1000", "unix:path:/bin/web"])
    assert matches(parse_selectors(["unix:uid:1000"]), present)
    assert matches(parse_selectors(["unix:uid:1000", "unix:path:/bin/web"]), present)
    assert not matches(parse_selectors(["unix:uid:1000", "unix:uid:0"]), present)
    assert not matches(frozenset(), present)
