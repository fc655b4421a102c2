"""Policy ids (`policy.bundle.ModuleId`): what is accepted survives a bundle round trip at
the same name inside the root; everything else is refused before it is stored or written."""

from __future__ import annotations

import io
import posixpath
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.bundle import MAX_MODULE_ID, Bundle, ModuleId
from policy.errors import InvalidModuleId

_FIRST = st.sampled_from("abcxyzABCXYZ0189_")
_REST = st.text(alphabet="abcXYZ019._-", max_size=20)
segments = st.builds(lambda a, b: a + b, _FIRST, _REST).filter(
    lambda s: s not in ("data.json", "data.yaml", "data.yml")
)
module_ids = (
    st.lists(segments, min_size=1, max_size=5)
    .map("/".join)
    .filter(lambda s: len(s) <= MAX_MODULE_ID)
)


@given(module_ids)
def test_valid_ids_round_trip_through_a_bundle_inside_its_root(module_id: str) -> None:
    assert str(ModuleId.parse(module_id)) == module_id
    blob = Bundle({module_id: "package x\n"}).to_targz()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
        names = tar.getnames()
    assert "/" + module_id in names
    assert all(posixpath.normpath(n) == n and not n.startswith("/..") for n in names)


@given(st.text(max_size=300))
def test_anything_parsed_is_a_safe_relative_path(text: str) -> None:
    try:
        parsed = ModuleId.parse(text)
    except InvalidModuleId:
        return
    value = str(parsed)
    assert posixpath.normpath(value) == value
    assert not value.startswith(("/", ".")) and ".." not in value.split("/")
    assert value.isascii() and value.isprintable() and " " not in value


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../etc/pwn",
        "/etc/pwn",
        "a/../b",
        "./a",
        "a/./b",
        "a//b",
        "a/",
        ".manifest",
        ".signatures.json",
        "x/data.json",
        "a\x00b",
        "a\nb",
        "a b",
        "a\\..\\b",
        "\u202egnp.rego",
        "x" * (MAX_MODULE_ID + 1),
    ],
)
def test_unsafe_ids_are_refused_in_every_bundle(bad: str) -> None:
    with pytest.raises(InvalidModuleId):
        ModuleId.parse(bad)
    with pytest.raises(InvalidModuleId):
        Bundle({bad: "package x\n"})
