"""The admin web UI's records: accounts, signed-in users, and what its pages show.

Frozen values the UI services return; the table rows they are read from stay in
`trustd.store.ui`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trustd.roles import Role


@dataclass(frozen=True)
class UiUser:
    """A local admin account as the UI and its JSON API show it (never its secrets)."""

    id: str
    username: str
    role: Role
    # Whether a TOTP code (RFC 6238) is required at sign-in.
    totp: bool
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None


@dataclass(frozen=True)
class CreatedUser:
    user: UiUser
    # otpauth:// URI (Key Uri Format) to enrol an authenticator; shown once.
    totp_uri: str | None


@dataclass(frozen=True)
class LaggingNode:
    """An active node and how many sync revisions it is behind."""

    spiffe_id: str
    applied_revision: int
    last_seen: datetime | None
    lag: int


@dataclass(frozen=True)
class Dashboard:
    nodes: int
    active_nodes: int
    entries: int
    svids_last_hour: int
    sync_revision: int
    lagging: tuple[LaggingNode, ...]


@dataclass(frozen=True)
class DecisionQuery:
    since: datetime | None = None
    until: datetime | None = None
    path: str | None = None
    source: str | None = None
    destination: str | None = None
    # True: decisions that returned `true`; False: `false`; None: any.
    allowed: bool | None = None
    # The last (at, decision_id) of the previous page (keyset paging).
    before: tuple[datetime, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class AuditRecord:
    """One audit event as the audit page shows it."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    allowed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Graph:
    identities: tuple[str, ...]
    edges: tuple[Edge, ...]
    truncated: bool
    revision: int
