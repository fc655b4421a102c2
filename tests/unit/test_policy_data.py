"""Data documents as OPA's in-memory store writes them: PUT, RFC 6902 patches, DELETE, the
path-conflict check, and that a failed write leaves its input alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy import data
from policy.compile import rule_paths
from policy.data import DataPatch, PatchOp, parse_patch, parse_pointer
from policy.errors import DataConflict, DataNotFound, InvalidDataWrite

BASE: dict[str, Any] = {"a": {"list": [1, 2, 3], "n": 5}}


def test_put_creates_objects_on_the_way_and_overwrites() -> None:
    out = data.put(BASE, ("x", "y", "z"), {"k": True})
    assert out["x"] == {"y": {"z": {"k": True}}}
    assert data.put(out, ("x", "y"), 1)["x"] == {"y": 1}
    assert data.put(BASE, (), {"only": 1}) == {"only": 1}


def test_put_meets_opas_conflicts() -> None:
    with pytest.raises(DataConflict):
        data.put(BASE, ("a", "n", "deeper"), 1)
    # An array on the way is no object: OPA's MakeDir refuses it too.
    with pytest.raises(DataConflict):
        data.put(BASE, ("a", "list", "9"), 1)
    with pytest.raises(InvalidDataWrite, match="root must be object"):
        data.put(BASE, (), [1])


def test_patch_follows_rfc_6902_for_arrays_and_objects() -> None:
    patches = parse_patch(
        ("a",),
        [
            {"op": "add", "path": "/list/0", "value": 0},
            {"op": "add", "path": "/list/-", "value": 4},
            {"op": "replace", "path": "/list/1", "value": "one"},
            {"op": "remove", "path": "/n"},
            {"op": "add", "path": "/m~1x", "value": {}},
        ],
    )
    assert data.patch(BASE, patches) == {"a": {"list": [0, "one", 2, 3, 4], "m/x": {}}}


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ({"op": "remove", "path": "/missing"}, DataNotFound),
        ({"op": "replace", "path": "/list/7", "value": 1}, DataNotFound),
        ({"op": "add", "path": "/no/parent", "value": 1}, DataNotFound),
        ({"op": "replace", "path": "/list/-", "value": 1}, InvalidDataWrite),
        ({"op": "remove", "path": "/list/x"}, DataNotFound),
    ],
)
def test_a_failed_patch_changes_nothing(operation: dict[str, Any], error: type[Exception]) -> None:
    before = copy.deepcopy(BASE)
    first = {"op": "add", "path": "/fresh", "value": 1}
    with pytest.raises(error):
        data.patch(BASE, parse_patch(("a",), [first, operation]))
    assert before == BASE


def test_patch_refuses_what_opa_refuses() -> None:
    with pytest.raises(InvalidDataWrite, match="bad patch operation"):
        parse_patch((), [{"op": "copy", "from": "/a", "path": "/b"}])
    with pytest.raises(InvalidDataWrite):
        parse_patch((), {"op": "add"})
    with pytest.raises(InvalidDataWrite, match="root cannot be removed"):
        data.patch(BASE, [DataPatch(PatchOp.REMOVE, ())])


def test_remove() -> None:
    assert data.remove(BASE, ("a", "list", "1")) == {"a": {"list": [1, 3], "n": 5}}
    with pytest.raises(DataNotFound):
        data.remove(BASE, ("b",))
    with pytest.raises(InvalidDataWrite):
        data.remove(BASE, ())


def test_depth_is_bounded() -> None:
    deep: Any = 1
    for _ in range(data.MAX_DEPTH + 1):
        deep = {"d": deep}
    with pytest.raises(InvalidDataWrite, match="nested"):
        data.put({}, ("x",), deep)


def test_rules_and_data_conflict_as_in_opa() -> None:
    rules = rule_paths(
        {
            "p.rego": "package p\nimport rego.v1\n\nallow if true\n"
            'obj[k] := 1 if some k in ["a"]\nf(x) := x\n',
        }
    )
    assert set(rules) == {("p", "allow"), ("p", "f")}
    assert data.conflicts(rules, {"p": {"other": 1}}) == []
    taken = data.conflicts(rules, {"p": {"allow": False}})
    assert [c["message"] for c in taken] == ["conflicting rule for data path p/allow found"]
    assert taken[0]["location"] == {"file": "p.rego", "row": 4, "col": 1}
    # A non-object above a rule takes its path too (OPA `storage.NonEmpty`).
    assert len(data.conflicts(rules, {"p": 3})) == 2
    # A computed key cannot conflict: `obj` holds data beside its rule.
    assert data.conflicts(rules, {"p": {"obj": {"b": 2}}}) == []


segment = st.text(st.characters(blacklist_characters="%"), min_size=1, max_size=12)


@given(st.lists(segment, min_size=1, max_size=6))
def test_json_pointers_round_trip(segments: list[str]) -> None:
    # RFC 6901 §3: `~` is written `~0` and `/` is written `~1`.
    text = "/" + "/".join(s.replace("~", "~0").replace("/", "~1") for s in segments)
    assert parse_pointer(("base",), text) == ("base", *segments)
