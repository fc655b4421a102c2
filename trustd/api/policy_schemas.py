"""Wire models of the policy admin API. Unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from trustd.api.wire import Flag, WireModel


class BundleCreate(WireModel):
    modules: dict[str, str] = Field(description="Rego source by file name", max_length=1000)
    data: dict[str, Any] = Field(default_factory=dict)
    label: str = Field(default="", max_length=256, description="The manifest's revision")
    note: str = Field(default="", max_length=512)
    activate: Flag = True


class PolicyRevisionPublic(WireModel):
    revision: int
    label: str
    digest: str
    modules: list[str]
    signed: bool
    note: str
    created_by: str
    created_at: datetime
    active: bool


class PolicyStatus(WireModel):
    revision: int | None
    engine: str
    cached_decisions: int
    decision_log_dropped: int


class DecisionPublic(WireModel):
    decision_id: str
    timestamp: datetime
    path: str
    input: Any = None
    result: Any = None
    # Allowed or denied, where the result says so (a boolean, or its `allowed`/`allow`
    # member); absent when the result is neither.
    verdict: Literal["allow", "deny"] | None = None
    revision: int | None
    metrics: dict[str, int]
    caller: str
