"""Data documents: the base documents under `data` that OPA's Data API writes (OPA REST API,
Data API: "Create or Overwrite a Document", "Patch a Document", "Delete a Document").

The rules are OPA's in-memory store's: a write names a path of segments (object keys, or
array indices); `add` sets an object key or inserts into an array (`-` appends), `replace`
and `remove` need the target to exist; the root is always an object and cannot be removed.
A PUT first creates the missing objects above its path (OPA `storage.MakeDir`), and a
non-object in the way is a write conflict. After any write, a rule whose path holds data
is a conflict (OPA `ast.CheckPathConflicts`): base and virtual documents share one tree.

Every function works on a copy: a write that fails leaves the document it was given as it
was. A library: no web framework, no database.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from policy.errors import DataConflict, DataNotFound, InvalidDataWrite

# Bounds on what one write may carry: deeper documents cost recursion in every consumer
# (the engine, JSON encoders), and the patch list is applied in one transaction.
MAX_DEPTH = 64
MAX_OPERATIONS = 1000
MAX_SEGMENTS = 64
MAX_SEGMENT_CHARS = 256
# The whole data document after a write (the bundle limit: it must still export).
MAX_DATA_BYTES = 32 * 1024 * 1024
_INDEX = re.compile(r"[+-]?\d+")

DataPath = tuple[str, ...]


class PatchOp(StrEnum):
    """The JSON Patch operations OPA's Data API applies (RFC 6902 §4.1-§4.3)."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


@dataclass(frozen=True)
class DataPatch:
    """One operation of a PATCH, its path already joined to the request's path."""

    op: PatchOp
    path: DataPath
    value: Any = None


def pointer(path: Sequence[str]) -> str:
    """`("a", "b")` -> `/a/b` (how OPA's store errors name a path)."""
    return "/" + "/".join(path)


def _checked(segments: list[str], shown: str) -> DataPath:
    if len(segments) > MAX_SEGMENTS or any(len(s) > MAX_SEGMENT_CHARS for s in segments):
        raise InvalidDataWrite(
            f"bad path: {shown[:256]} (at most {MAX_SEGMENTS} segments of "
            f"{MAX_SEGMENT_CHARS} characters)"
        )
    if any(not s for s in segments):
        raise InvalidDataWrite(f"bad path: {shown[:256]}")
    return tuple(segments)


def parse_data_path(path: str) -> DataPath:
    """The segments of a Data API path (`a/b` or `/a/b`; empty for the root), each
    percent-decoded (OPA `storage.ParsePathEscaped`).

    Raises:
        InvalidDataWrite: an empty segment (`a//b`), or too many or too long segments.
    """
    text = path.strip("/")
    if not text:
        return ()
    return _checked([unquote(s) for s in text.split("/")], path)


def parse_pointer(base: DataPath, text: Any) -> DataPath:
    """A patch operation's `path` (a JSON Pointer, RFC 6901 §3-§4: `~1` is `/`, `~0` is
    `~`) joined to the request's path, as OPA joins them (an empty pointer is the request's
    path itself).

    Raises:
        InvalidDataWrite: not a string, or an unusable path.
    """
    if not isinstance(text, str):
        raise InvalidDataWrite(f"bad patch path: {json.dumps(text)[:256]}")
    inner = text.strip("/")
    if not inner:
        return base
    segments = [unquote(s).replace("~1", "/").replace("~0", "~") for s in inner.split("/")]
    return _checked([*base, *segments], text)


def parse_patch(base: DataPath, document: Any) -> list[DataPatch]:
    """A PATCH body (`[{"op", "path", "value"}, ...]`) as operations under `base`.

    Raises:
        InvalidDataWrite: not a list of operation objects, an operation other than add,
            remove and replace (OPA refuses `move`, `copy` and `test`), or a bad path.
    """
    if not isinstance(document, list):
        raise InvalidDataWrite('the patch must be a list of {"op", "path", "value"} objects')
    if len(document) > MAX_OPERATIONS:
        raise InvalidDataWrite(f"at most {MAX_OPERATIONS} operations per patch")
    patches = []
    for item in document:
        if not isinstance(item, dict):
            raise InvalidDataWrite('each patch operation is an {"op", "path", "value"} object')
        try:
            op = PatchOp(str(item.get("op")))
        except ValueError:
            raise InvalidDataWrite(
                f"bad patch operation: {json.dumps(item.get('op'))[:64]}"
            ) from None
        patches.append(DataPatch(op, parse_pointer(base, item.get("path")), item.get("value")))
    return patches


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Refuse a document nested deeper than `limit` (counted without recursion).

    Raises:
        InvalidDataWrite: the document is nested too deeply.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise InvalidDataWrite(f"the document is nested deeper than {limit} levels")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _index(node: list[Any], segment: str, path: DataPath) -> int:
    # OPA `ptr.ValidateArrayIndex`: an integer within the array, else not found.
    if not _INDEX.fullmatch(segment):
        raise DataNotFound(
            f"storage_not_found_error: {pointer(path)}: array index must be integer",
            path=pointer(path),
        )
    index = int(segment)
    if not 0 <= index < len(node):
        raise DataNotFound(
            f"storage_not_found_error: {pointer(path)}: array index out of range",
            path=pointer(path),
        )
    return index


def _missing(path: DataPath) -> DataNotFound:
    return DataNotFound(
        f"storage_not_found_error: {pointer(path)}: document missing", path=pointer(path)
    )


def read(data: Mapping[str, Any], path: DataPath) -> Any:
    """The document at `path`.

    Raises:
        DataNotFound: nothing lives there.
    """
    node: Any = data
    for segment in path:
        if isinstance(node, dict):
            if segment not in node:
                raise _missing(path)
            node = node[segment]
        elif isinstance(node, list):
            node = node[_index(node, segment, path)]
        else:
            raise _missing(path)
    return node


def exists(data: Mapping[str, Any], path: DataPath) -> bool:
    try:
        read(data, path)
    except DataNotFound:
        return False
    return True


def _write(data: dict[str, Any], op: PatchOp, path: DataPath, value: Any) -> dict[str, Any]:
    """Apply one operation to `data` in place; the new root (a root write replaces it)."""
    if not path:
        if op is PatchOp.REMOVE:
            raise InvalidDataWrite("storage_invalid_patch_error: root cannot be removed")
        if not isinstance(value, dict):
            raise InvalidDataWrite("storage_invalid_patch_error: root must be object")
        return value
    parent = read(data, path[:-1])
    last = path[-1]
    if isinstance(parent, dict):
        if op is not PatchOp.ADD and last not in parent:
            raise _missing(path)
        if op is PatchOp.REMOVE:
            del parent[last]
        else:
            parent[last] = value
    elif isinstance(parent, list):
        # RFC 6902 §4.1: `-` (or the array's length) appends; only `add` may.
        if last == "-" or last == str(len(parent)):
            if op is not PatchOp.ADD:
                raise InvalidDataWrite(
                    f"storage_invalid_patch_error: {pointer(path)}: invalid patch path"
                )
            parent.append(value)
            return data
        index = _index(parent, last, path)
        if op is PatchOp.ADD:
            parent.insert(index, value)
        elif op is PatchOp.REMOVE:
            del parent[index]
        else:
            parent[index] = value
    else:
        raise _missing(path)
    return data


def _make_dir(data: dict[str, Any], path: DataPath) -> dict[str, Any]:
    # OPA `storage.MakeDir`: every missing object on the way is created; anything else
    # already there is a write conflict.
    if not path:
        return data
    try:
        node = read(data, path)
    except DataNotFound:
        data = _make_dir(data, path[:-1])
        return _write(data, PatchOp.ADD, path, {})
    if not isinstance(node, dict):
        raise DataConflict(f"storage_write_conflict_error: {pointer(path)}", path=pointer(path))
    return data


def _bounded(data: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(data, separators=(",", ":")))
    if size > MAX_DATA_BYTES:
        raise InvalidDataWrite(f"the data document would exceed {MAX_DATA_BYTES} bytes")
    return data


def put(data: Mapping[str, Any], path: DataPath, value: Any) -> dict[str, Any]:
    """`data` with the document at `path` created or overwritten (OPA PUT /v1/data).

    Raises:
        InvalidDataWrite: the root would not be an object, or the document is too large.
        DataConflict: a non-object lies on the way to `path`.
        DataNotFound: an array index on the way does not exist.
    """
    check_depth(value)
    out = copy.deepcopy(dict(data))
    if not exists(out, path):
        out = _make_dir(out, path[:-1])
    return _bounded(_write(out, PatchOp.ADD, path, copy.deepcopy(value)))


def patch(data: Mapping[str, Any], patches: Iterable[DataPatch]) -> dict[str, Any]:
    """`data` with every operation applied in order, or none (OPA PATCH /v1/data).

    Raises:
        DataNotFound: an operation's target (or, for `add`, its parent) does not exist.
        InvalidDataWrite: the root would be removed or not an object, `-` with an
            operation other than add, or the result is too deep or too large.
    """
    out = copy.deepcopy(dict(data))
    for item in patches:
        check_depth(item.value)
        out = _write(out, item.op, item.path, copy.deepcopy(item.value))
    return _bounded(out)


def remove(data: Mapping[str, Any], path: DataPath) -> dict[str, Any]:
    """`data` without the document at `path` (OPA DELETE /v1/data).

    Raises:
        DataNotFound: nothing lives there.
        InvalidDataWrite: `path` is the root.
    """
    out = copy.deepcopy(dict(data))
    read(out, path)
    return _write(out, PatchOp.REMOVE, path, None)


def conflicts(
    rules: Mapping[DataPath, tuple[str, int]], data: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The rules whose path holds data, as OPA's `rego_compile_error`s (`code`, `message`,
    `location`), given every rule's path with its (file, line).

    OPA `ast.CheckPathConflicts` with `storage.NonEmpty`: a path is taken when a document
    lives at it, or when a non-object lies on the way to it.
    """
    found = []
    for path, (file, row) in sorted(rules.items()):
        if not _taken(data, path):
            continue
        found.append(
            {
                "code": "rego_compile_error",
                "message": f"conflicting rule for data path {'/'.join(path)} found",
                "location": {"file": file, "row": row, "col": 1},
            }
        )
    return found


def _taken(data: Mapping[str, Any], path: DataPath) -> bool:
    if exists(data, path):
        return True
    for length in range(len(path) - 1, 0, -1):
        try:
            node = read(data, path[:length])
        except DataNotFound:
            continue
        return not isinstance(node, dict)
    return False
