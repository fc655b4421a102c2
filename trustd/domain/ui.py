"""The admin web UI's records: accounts, signed-in users, and what its pages show.

Frozen values the UI services return; the table rows they are read from stay in
`trustd.store.ui`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
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
    """An active node behind on sync revisions, or not seen lately."""

    spiffe_id: str
    applied_revision: int
    last_seen: datetime | None
    lag: int
    # Not seen since the dashboard's cutoff (or never).
    unseen: bool = False


# Whatever renews (agents their SVIDs at half-life, the rotation its CA keys before they
# lapse) should have done so long before the last sixth of a lifetime: a credential that
# far along is one whose renewal is failing.
EXPIRY_WARNING_FRACTION = 6


def expiring_soon(not_before: datetime, not_after: datetime, now: datetime) -> bool:
    """Whether a live credential is in the last `1/EXPIRY_WARNING_FRACTION` of its life."""
    return now < not_after and (not_after - now) * EXPIRY_WARNING_FRACTION < (
        not_after - not_before
    )


@dataclass(frozen=True)
class ExpiryWarning:
    """A CA key or a certificate close to expiry."""

    kind: str  # a CA key kind or a certificate kind
    # The key's kid or the certificate's serial.
    ident: str
    subject: str | None
    not_after: datetime
    remaining: timedelta
    ca_key: bool = False


@dataclass(frozen=True)
class DecisionRates:
    """Decisions logged over the last minute and hour, and how many of them denied."""

    last_minute: int
    denied_last_minute: int
    last_hour: int
    denied_last_hour: int

    @property
    def per_minute(self) -> float:
        """The last hour's mean rate, decisions a minute."""
        return self.last_hour / 60

    @property
    def deny_rate(self) -> float | None:
        """The share of the last hour's decisions that denied (None without decisions)."""
        return self.denied_last_hour / self.last_hour if self.last_hour else None

    @property
    def deny_rate_last_minute(self) -> float | None:
        return self.denied_last_minute / self.last_minute if self.last_minute else None


@dataclass(frozen=True)
class Dashboard:
    nodes: int
    active_nodes: int
    entries: int
    svids_last_hour: int
    sync_revision: int
    lagging: tuple[LaggingNode, ...]
    decisions: DecisionRates
    expiring: tuple[ExpiryWarning, ...]
    # Agents not seen since this time count as lagging.
    seen_cutoff: datetime


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
class MeshRule:
    """One rule of the mesh policy's data (`data.mesh.allow` / `data.mesh.deny`): what it
    lets (or forbids) a source do at a destination. An empty field matches anything."""

    kind: str  # "allow" or "deny"
    name: str
    ports: tuple[int, ...] = ()
    protocols: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    # The rule as written in the data document (JSON).
    text: str = ""

    @property
    def grants(self) -> str:
        """What the rule covers, as an edge label: `http GET,POST :8443 /v1/**`."""
        parts = [
            "/".join(self.protocols) or "any protocol",
            *([",".join(self.methods)] if self.methods else []),
            ":" + ",".join(str(p) for p in self.ports) if self.ports else "any port",
            *([" ".join(self.paths)] if self.paths else []),
        ]
        return " ".join(parts)


@dataclass(frozen=True)
class Edge:
    source: str
    destination: str
    allowed: bool
    reasons: tuple[str, ...]
    # The rules that decided: the allow rules that let the source reach the destination
    # (for an allowed edge) or the deny rules that forbid it (for a denied one).
    rules: tuple[MeshRule, ...] = ()


@dataclass(frozen=True)
class Graph:
    identities: tuple[str, ...]
    edges: tuple[Edge, ...]
    truncated: bool
    revision: int
