"""The types a request's numbers and flags arrive as, in one place.

Every integer the API accepts, in a body, a path or a query string, is one of these, so each
has an upper bound: Python's integers are unbounded, while what they reach is not (a
`timedelta` overflows past ~8.6e13 s, PostgreSQL's BIGINT and SQLite's INTEGER stop at
2^63 - 1). A value past the bound is the caller's mistake (422), never a 500 further down.

Body fields are strict (JSON numbers and booleans only): `"ttl": true` is not one second and
`"ttl": "3600"` is not a number. Path and query parameters are text on the wire and are
parsed as decimal integers with the same bounds. `tests/unit/test_wire_types.py` walks the
routes and fails on an integer that is not one of these.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Le
from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Strict

# PostgreSQL BIGINT / SQLite INTEGER: the widest integer any column holds.
INT64_MAX = 2**63 - 1
# Ten years: longer than any credential trustd issues may live (the CA's own lifetime caps
# each kind further, `trustd.services.issuance.lifetime`), far below `timedelta`'s limit.
MAX_TTL_SECONDS = 10 * 365 * 86400
# How deep a JSON body or query parameter may nest (`trustd.api.middleware.JsonDepthLimit`):
# past any policy input or registration document, below Python's recursion limit and below
# the embedded engine's, whose JSON reader stops at about 126 levels ("recursion limit
# exceeded", a 500 evaluation error) -- so whatever is accepted can also be evaluated.
MAX_JSON_DEPTH = 100


class WireModel(BaseModel):
    """A public wire model: unknown fields are refused (a typo is an error, not a default)."""

    model_config = ConfigDict(extra="forbid")


# -- in JSON bodies: strict ----------------------------------------------------------------

Seconds = Annotated[int, Strict(), Gt(0), Le(MAX_TTL_SECONDS)]
"""A lifetime in seconds."""

Count = Annotated[int, Strict(), Ge(0), Le(INT64_MAX)]
"""A revision, sequence number or count."""

Flag = Annotated[bool, Strict()]
"""`true` or `false`, nothing that merely looks like one."""

# -- in paths and query strings: decimal text, the same bounds -----------------------------

RevisionPath = Annotated[int, Path(ge=0, le=INT64_MAX, description="A revision number")]
CountQuery = Annotated[int, Ge(0), Le(INT64_MAX)]
"""Combine with `Query(...)` for an alias or description: `Annotated[CountQuery, Query()]`."""
OffsetQuery = Annotated[int, Query(ge=0, le=INT64_MAX, description="Rows to skip")]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="Rows to return at most")]
SinceQuery = Annotated[int, Query(ge=0, le=INT64_MAX, description="A revision")]
