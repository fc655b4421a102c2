"""Policy: stored bundle revisions and logged decisions. Values only; no I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from policy.engine import Result


@dataclass(frozen=True)
class Decision:
    """One answer of the active revision: what a decision request returns."""

    decision_id: str
    path: str
    result: Result
    revision: int
    latency_us: int
    cached: bool


@dataclass(frozen=True)
class PolicyRevisionRecord:
    """One immutable stored policy bundle (modules + data); `revision` only grows."""

    revision: int
    # The bundle manifest's own `revision` string, kept for OPA tooling.
    label: str
    digest: str
    modules: dict[str, str]
    data: dict[str, Any]
    manifest_metadata: dict[str, Any]
    signed: bool
    note: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class LoggedDecision:
    """One decision-log entry; the input is the one stored after the policy's masks."""

    decision_id: str
    at: datetime
    path: str
    input: Any
    result: Any
    defined: bool
    result_hash: str
    revision: int | None
    latency_us: int
    caller: str
    source: str | None
    destination: str | None
    # Allowed or denied, where the result says (see `services.policy.decision_verdict`).
    verdict: bool | None = None


@dataclass(frozen=True)
class DecisionFilter:
    """Which logged decisions to list, newest first (every field narrows the list)."""

    since: datetime | None = None
    until: datetime | None = None
    path: str | None = None
    caller: str | None = None
    # SHA-256 of the canonical JSON result (see `services.policy.result_hash`).
    result_hash: str | None = None
    verdict: bool | None = None
    limit: int = 100
    source: str | None = None
    destination: str | None = None
    # The (time, decision id) of the previous page's last decision: keyset paging.
    before: tuple[datetime, str] | None = None
