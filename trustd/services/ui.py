"""The admin web UI's services: local accounts, sessions, CSRF, sign-in backoff, and the
read models its pages show (RBAC is `trustd.services.authz`, shared with the JSON API).

Passwords are argon2id hashes (RFC 9106); TOTP secrets (RFC 6238) are sealed with the
key-encryption key; the session cookie holds 256 random bits of which only the SHA-256 is
stored; every POST carries the session's synchronizer token, compared in constant time.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine
from sqlmodel import Session

from pki.acme.eab import seal, unseal
from pki.clock import Clock
from pki.errors import KeyDecryptionError, TrustdError
from policy.engine import EmbeddedEngine
from trustd.domain.audit import AuditOutcome
from trustd.domain.certificates import CertificateKind
from trustd.domain.policy import DecisionFilter, LoggedDecision
from trustd.domain.ui import (
    EXPIRY_WARNING_FRACTION,
    AuditRecord,
    CreatedUser,
    Dashboard,
    DecisionQuery,
    DecisionRates,
    Edge,
    ExpiryWarning,
    Graph,
    LaggingNode,
    MeshRule,
    UiUser,
    expiring_soon,
)
from trustd.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from trustd.roles import Role
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.policy import PolicyService
from trustd.services.sync import current_revision
from trustd.settings import Settings
from trustd.store import ui as store
from trustd.store.db import transaction
from trustd.store.policy import count_policy_decisions_since, list_policy_decisions

MESH_DECISION = "trustd/mesh/decision"
# Rows the dashboard lists of lagging agents and of certificates close to expiry.
LAGGING_SHOWN = 20
EXPIRING_SHOWN = 20
# The long-lived certificates whose holders renew them well ahead (agents their node SVIDs,
# the server its serving certificate, ACME clients theirs); X509-SVIDs live an hour and
# their expiry is routine.
RENEWED_KINDS = (CertificateKind.NODE_SVID, CertificateKind.SERVING, CertificateKind.ACME)
USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MIN_PASSWORD_LENGTH = 12
_TOTP_ISSUER = "trustd"
_BACKOFF_BASE = timedelta(seconds=30)


class SignInPaused(TrustdError):
    title = "Too many failed sign-ins"


class CsrfRefused(TrustdError):
    title = "Form expired or forged"


@dataclass(frozen=True)
class UiPrincipal:
    """A signed-in UI user; `principal` is what the services record as the actor."""

    user_id: str
    username: str
    role: Role
    csrf_token: str
    token_hash: str

    @property
    def principal(self) -> Principal:
        return Principal(f"ui:{self.username}", self.role)


@dataclass(frozen=True)
class SignedIn:
    token: str
    who: UiPrincipal


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _totp_label(user_id: str) -> str:
    # AES-GCM associated data: binds a sealed secret to its account and purpose.
    return f"ui-totp:{user_id}"


def _user(row: store.UiUser) -> UiUser:
    return UiUser(
        id=row.id,
        username=row.username,
        role=Role(row.role),
        totp=row.totp_secret is not None,
        disabled=row.disabled,
        created_at=row.created_at,
        last_login_at=row.last_login_at,
    )


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the username is unknown, so that a miss costs what a wrong
    password costs and timing does not reveal which accounts exist. Made once per process,
    on first use: an argon2id hash takes about half a second, which every start would pay."""
    return PasswordHasher().hash(secrets.token_urlsafe(16))


class UiAccounts:
    """Local admin accounts and their browser sessions."""

    def __init__(
        self, settings: Settings, engine: Engine, clock: Clock, audit: AuditLog, kek: bytes
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._audit = audit
        self._kek = kek
        self._hasher = PasswordHasher()

    # -- accounts ------------------------------------------------------------------------

    def create_user(
        self, actor: Principal, username: str, password: str, role: Role, *, totp: bool
    ) -> CreatedUser:
        """Create an account (argon2id password hash; with `totp`, a sealed TOTP secret)
        and audit it.

        Raises:
            InvalidRequest: the password is shorter than MIN_PASSWORD_LENGTH.
            Conflict: the username is taken.
        """
        if len(password) < MIN_PASSWORD_LENGTH:
            raise InvalidRequest(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        user = store.UiUser(
            id=secrets.token_hex(8),
            username=username,
            role=role,
            password_hash=self._hasher.hash(password),
            created_by=actor.name,
            created_at=self._clock.now(),
        )
        uri = None
        if totp:
            secret = pyotp.random_base32()
            user.totp_secret = seal(secret.encode(), self._kek, _totp_label(user.id))
            uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=_TOTP_ISSUER)
        with transaction(self._engine) as session:
            if store.fetch_user_by_name(session, username) is not None:
                raise Conflict(f"user {username!r} exists already")
            store.create_user(session, user)
            self._audit.record(
                session,
                actor.name,
                "ui:user:created",
                target=username,
                details={"role": role, "totp": totp},
            )
            created = _user(user)
        return CreatedUser(created, uri)

    def list_users(self) -> list[UiUser]:
        """Every account, by username."""
        with transaction(self._engine) as session:
            return [_user(row) for row in store.list_users(session)]

    def disable_user(self, actor: Principal, username: str) -> UiUser:
        """Disable an account and end its sessions at once.

        Raises:
            NotFound: no such user.
        """
        with transaction(self._engine) as session:
            user = store.fetch_user_by_name(session, username)
            if user is None:
                raise NotFound(f"no user {username!r}")
            user.disabled = True
            store.update_user(session, user)
            store.delete_sessions_of(session, user.id)
            self._audit.record(session, actor.name, "ui:user:disabled", target=username)
            return _user(user)

    # -- signing in ----------------------------------------------------------------------

    def sign_in(self, username: str, password: str, totp_code: str = "") -> SignedIn:
        """Check a password (and TOTP code) and open a session.

        Raises:
            SignInPaused: the account failed too often; it says until when.
            Unauthenticated: wrong username, password or code (the reason is audited,
                the browser only learns that the sign-in failed).
        """
        now = self._clock.now()
        with transaction(self._engine) as session:
            user = store.fetch_user_by_name(session, username)
            if user is not None and user.locked_until is not None and user.locked_until > now:
                self._deny(session, username, "paused")
                paused = user.locked_until.strftime("%H:%M:%S UTC")
                raise_later: TrustdError = SignInPaused(
                    f"too many failed sign-ins; try again after {paused}"
                )
            else:
                reason = self._check(user, password, totp_code)
                if reason is None and user is not None:
                    if self._hasher.check_needs_rehash(user.password_hash):
                        # The argon2 parameters were raised since this hash was made.
                        user.password_hash = self._hasher.hash(password)
                    return self._open(session, user, now)
                if user is not None:
                    self._count_failure(user, now)
                    store.update_user(session, user)
                self._deny(session, username, reason or "refused")
                raise_later = Unauthenticated("wrong username, password or code")
        raise raise_later

    def _check(self, user: store.UiUser | None, password: str, totp_code: str) -> str | None:
        # Fetched for every attempt, known user or not, so that the one-off cost of making
        # it falls on whichever attempt comes first and reveals nothing either.
        dummy = _dummy_hash()
        try:
            self._hasher.verify(user.password_hash if user else dummy, password)
        except (VerificationError, InvalidHashError):
            return "wrong password" if user else "unknown user"
        if user is None:
            return "unknown user"
        if user.disabled:
            return "disabled"
        if user.totp_secret is not None:
            return self._check_totp(user, totp_code)
        return None

    def _check_totp(self, user: store.UiUser, code: str) -> str | None:
        assert user.totp_secret is not None
        try:
            secret = unseal(user.totp_secret, self._kek, _totp_label(user.id)).decode()
        except KeyDecryptionError:
            return "totp secret unreadable"
        totp = pyotp.TOTP(secret)
        now = self._clock.now()
        # RFC 6238 §5.2: accept one step of clock drift either way, and each code once.
        for drift in (0, -1, 1):
            at = now + timedelta(seconds=drift * totp.interval)
            step = int(at.timestamp()) // totp.interval
            if step > user.totp_last_step and hmac.compare_digest(totp.at(at), code.strip()):
                user.totp_last_step = step
                return None
        return "wrong totp code"

    def _count_failure(self, user: store.UiUser, now: datetime) -> None:
        user.failed_logins += 1
        over = user.failed_logins - self._settings.ui_lockout_threshold
        if over >= 0:
            wait = min(_BACKOFF_BASE * (2 ** min(over, 16)), self._settings.ui_lockout_max)
            user.locked_until = now + wait

    def _deny(self, session: Session, username: str, reason: str) -> None:
        self._audit.record(
            session,
            f"ui:{username[:64]}",
            "ui:session:denied",
            outcome=AuditOutcome.DENIED,
            details={"reason": reason},
        )

    def _open(self, session: Session, user: store.UiUser, now: datetime) -> SignedIn:
        token = secrets.token_urlsafe(32)
        row = store.UiSession(
            token_hash=_sha256(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self._settings.ui_session_ttl,
        )
        user.failed_logins = 0
        user.locked_until = None
        user.last_login_at = now
        store.update_user(session, user)
        store.create_session(session, row)
        store.prune_sessions(session, now)
        self._audit.record(session, f"ui:{user.username}", "ui:session:created")
        return SignedIn(token, self._who(user, row))

    @staticmethod
    def _who(user: store.UiUser, row: store.UiSession) -> UiPrincipal:
        return UiPrincipal(user.id, user.username, Role(user.role), row.csrf_token, row.token_hash)

    def authenticate(self, token: str) -> UiPrincipal:
        """The user behind a session cookie.

        Raises:
            Unauthenticated: unknown or expired session, or a disabled account.
        """
        with transaction(self._engine) as session:
            row = store.fetch_session(session, _sha256(token))
            user = store.fetch_user(session, row.user_id) if row else None
            if row is None or user is None or user.disabled:
                raise Unauthenticated("your session ended; sign in again")
            if row.expires_at <= self._clock.now():
                raise Unauthenticated("your session expired; sign in again")
            return self._who(user, row)

    def sign_out(self, who: UiPrincipal) -> None:
        """End the session in the database, so its cookie no longer signs anyone in."""
        with transaction(self._engine) as session:
            store.delete_session(session, who.token_hash)
            self._audit.record(session, who.principal.name, "ui:session:ended")

    @staticmethod
    def csrf_matches(expected: str, presented: str | None) -> bool:
        """Constant-time comparison of the session's synchronizer token."""
        return bool(presented) and hmac.compare_digest(expected.encode(), str(presented).encode())

    def record(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        outcome: AuditOutcome = AuditOutcome.DENIED,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Audit a refused or failed UI action in its own transaction (the action's own
        transaction, if any, rolled back)."""
        with transaction(self._engine) as session:
            self._audit.record(
                session, actor, action, target=target, outcome=outcome, details=details
            )


# -- read models -----------------------------------------------------------------------


def mesh_rules(mesh_data: Any, kind: str) -> dict[str, MeshRule]:
    """The named rules of `data.mesh.<kind>` ("allow" or "deny"), as the graph shows them;
    entries that are not rule objects are skipped (the policy ignores them too)."""
    rules: dict[str, MeshRule] = {}
    listed = mesh_data.get(kind, []) if isinstance(mesh_data, dict) else []
    for rule in listed if isinstance(listed, list) else []:
        if not isinstance(rule, dict) or not isinstance(rule.get("name"), str):
            continue

        def values(key: str, rule: dict[str, Any] = rule) -> tuple[Any, ...]:
            found = rule.get(key) or []
            return tuple(found) if isinstance(found, list) else ()

        rules[rule["name"]] = MeshRule(
            kind=kind,
            name=rule["name"],
            ports=tuple(p for p in values("ports") if isinstance(p, int)),
            protocols=tuple(str(p).lower() for p in values("protocols")),
            methods=tuple(str(m).upper() for m in values("methods")),
            paths=tuple(str(p) for p in values("paths")),
            text=json.dumps(rule, indent=2, sort_keys=True),
        )
    return rules


def _probes(mesh_data: Any) -> list[dict[str, Any]]:
    """One concrete request per allow rule (its first port, protocol, method and a path
    its first pattern matches), so an edge exists when some rule lets A reach B at all."""
    probes: dict[str, dict[str, Any]] = {}
    rules = mesh_data.get("allow", []) if isinstance(mesh_data, dict) else []
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        probe: dict[str, Any] = {}
        for key, name in (("ports", "port"), ("protocols", "protocol"), ("methods", "method")):
            values = rule.get(key) or []
            if isinstance(values, list) and values:
                probe[name] = values[0]
        paths = rule.get("paths") or []
        if isinstance(paths, list) and paths and isinstance(paths[0], str):
            probe["path"] = paths[0].replace("**", "x").replace("*", "x")
        probes[json.dumps(probe, sort_keys=True)] = probe
    return list(probes.values()) or [{}]


_ALLOWED_BY = "allowed by rule "
_DENIED_BY = "denied by rule "


def mesh_edges(engine: EmbeddedEngine, mesh_data: Any, identities: Sequence[str]) -> list[Edge]:
    """Who may talk to whom under the mesh policy: every ordered pair of `identities`,
    each with one probe per allow rule. Allowed edges carry every allow rule that let one
    of the probes through (what the edge's label says is allowed); denied ones are drawn
    where a deny rule matched explicitly (the rest is the default deny, not drawn). Not the
    nodes' compiled verdicts: those are L4 only and carry no reasons, while an edge here
    shows L7 rules and the rule that decided; `ui_graph_max_identities` bounds the pairs.

    Raises:
        PolicyEvaluationError: the mesh policy failed to evaluate.
    """
    edges: list[Edge] = []
    probes = _probes(mesh_data)
    allow_rules = mesh_rules(mesh_data, "allow")
    deny_rules = mesh_rules(mesh_data, "deny")
    for source in identities:
        for destination in identities:
            if source == destination:
                continue
            denied: set[str] = set()
            allowed: set[str] = set()
            for probe in probes:
                request = {**probe, "source": source, "destination": destination}
                value = engine.query(MESH_DECISION, json.dumps(request, sort_keys=True)).value
                reasons = tuple(value.get("reasons", ())) if isinstance(value, dict) else ()
                if isinstance(value, dict) and value.get("allowed") is True:
                    allowed.update(r for r in reasons if isinstance(r, str))
                else:
                    denied.update(r for r in reasons if str(r).startswith("denied by"))
            if allowed:
                names = [r.removeprefix(_ALLOWED_BY) for r in sorted(allowed)]
                rules = tuple(allow_rules[n] for n in names if n in allow_rules)
                edges.append(Edge(source, destination, True, tuple(sorted(allowed)), rules))
            elif denied:
                names = [r.removeprefix(_DENIED_BY) for r in sorted(denied)]
                rules = tuple(deny_rules[n] for n in names if n in deny_rules)
                edges.append(Edge(source, destination, False, tuple(sorted(denied)), rules))
    return edges


@dataclass
class _GraphCache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    key: tuple[int, int] | None = None
    graph: Graph | None = None


class UiViews:
    """The queries behind the UI's pages: indexed, paged, bounded."""

    def __init__(
        self, settings: Settings, engine: Engine, clock: Clock, policy: PolicyService
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._clock = clock
        self._policy = policy
        self._graph = _GraphCache()

    def dashboard(self) -> Dashboard:
        """Counts, the last hour's X509-SVIDs, the decision and deny rates, certificates
        whose renewal is overdue, and the active nodes behind or not seen lately."""
        now = self._clock.now()
        hour_ago = now - timedelta(hours=1)
        # An agent long-polls for `sync_wait` and comes straight back: three missed polls
        # is an agent that is gone or cut off.
        seen_cutoff = now - 3 * self._settings.sync_wait
        with transaction(self._engine) as session:
            revision = current_revision(session)
            nodes = store.list_lagging_nodes(session, revision, seen_cutoff, LAGGING_SHOWN)
            counts = store.count_dashboard(session, hour_ago)
            minute = count_policy_decisions_since(session, now - timedelta(minutes=1))
            hour = count_policy_decisions_since(session, hour_ago)
            # Certificates in the last sixth of the longest lifetime any kind is issued with.
            horizon = now + self._longest_certificate_lifetime() / EXPIRY_WARNING_FRACTION
            candidates = store.list_certificates_expiring(
                session, now, horizon, RENEWED_KINDS, EXPIRING_SHOWN * 4
            )
        lagging = tuple(
            LaggingNode(
                n.spiffe_id,
                n.applied_revision,
                n.last_seen,
                revision - n.applied_revision,
                unseen=n.last_seen is None or n.last_seen < seen_cutoff,
            )
            for n in nodes
        )
        expiring = tuple(
            ExpiryWarning(c.kind, c.serial, c.spiffe_id, c.not_after, c.not_after - now)
            for c in candidates
            if expiring_soon(c.not_before, c.not_after, now)
        )[:EXPIRING_SHOWN]
        return Dashboard(
            nodes=counts.nodes,
            active_nodes=counts.active_nodes,
            entries=counts.entries,
            svids_last_hour=counts.svids_since,
            sync_revision=revision,
            lagging=lagging,
            decisions=DecisionRates(minute[0], minute[1], hour[0], hour[1]),
            expiring=expiring,
            seen_cutoff=seen_cutoff,
        )

    def _longest_certificate_lifetime(self) -> timedelta:
        settings = self._settings
        return max(settings.node_svid_ttl, settings.serving_cert_ttl, settings.acme_cert_ttl)

    def decisions(self, query: DecisionQuery) -> list[LoggedDecision]:
        """Newest first, `query.limit` at a time; `before` is the last row of the previous
        page (keyset paging)."""
        where = DecisionFilter(
            since=query.since,
            until=query.until,
            path=query.path,
            source=query.source,
            destination=query.destination,
            verdict=query.allowed,
            before=query.before,
            limit=query.limit,
        )
        with transaction(self._engine) as session:
            return list_policy_decisions(session, where)

    def audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[AuditRecord]:
        """Newest first, keyset-paged by id; `actor` and `action` are indexed equalities."""
        with transaction(self._engine) as session:
            rows = store.list_audit_events(
                session, actor=actor, action=action, before=before, limit=limit
            )
            return [
                AuditRecord(
                    r.id or 0, r.at, r.actor, r.action, r.target, r.outcome, dict(r.details)
                )
                for r in rows
            ]

    def identities(self, limit: int) -> tuple[list[str], bool]:
        """Distinct SPIFFE IDs of registration entries, at most `limit` (and whether more
        exist)."""
        with transaction(self._engine) as session:
            rows = store.list_entry_identities(session, limit + 1)
        return rows[:limit], len(rows) > limit

    def graph(self) -> Graph:
        """The who-may-talk-to-whom graph, computed once per (policy revision, entries
        revision).

        Raises:
            NotReady: no policy revision is active.
            PolicyEvaluationError: the mesh policy failed to evaluate.
        """
        active = self._policy.active
        with transaction(self._engine) as session:
            key = (active.revision, current_revision(session))
        with self._graph.lock:
            if self._graph.key == key and self._graph.graph is not None:
                return self._graph.graph
            identities, truncated = self.identities(self._settings.ui_graph_max_identities)
            mesh = active.bundle.data.get("mesh", {})
            edges = mesh_edges(active.local, mesh, identities)
            self._graph.key = key
            self._graph.graph = Graph(tuple(identities), tuple(edges), truncated, active.revision)
            return self._graph.graph
