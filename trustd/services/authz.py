"""Admin authorization: one decision for the JSON API, the UI and (through the routes it
calls) the CLI. Every admin route and view declares one `admin:<resource>:<action>`
permission; the active revision's `admin` Rego policy decides it for the caller's role, and
every refusal is an audit row with outcome `denied`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Engine

from policy.admin import PACKAGE, Verdict, evaluate
from policy.engine import EmbeddedEngine
from policy.errors import PolicyEvaluationError
from trustd.domain.audit import AuditOutcome
from trustd.errors import NotReady
from trustd.roles import Role
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.policy import SHIPPED_REGO, PolicyService
from trustd.store.db import transaction

__all__ = ["Authorizer", "Verdict"]

_SHIPPED_MODULE = "admin.rego"


class Authorizer:
    """Decides admin permissions with the `admin` policy of the active revision.

    A decision depends only on (revision, role, permission), so each is evaluated once per
    revision and then answered from a table: a UI page asking for every permission its
    navigation shows costs dict lookups, not Rego evaluations. Decisions are not
    written to the decision log: page views and API calls would drown it.

    A revision without a `trustd.admin` package (or no revision yet) is decided by the
    shipped `rego/admin.rego`: otherwise a bundle that leaves the module out would lock out
    the administrators who can put it back.
    """

    def __init__(self, policy: PolicyService, engine: Engine, audit: AuditLog) -> None:
        self._policy = policy
        self._engine = engine
        self._audit = audit
        # (revision, table): replaced as a whole when the revision changes, so a table never
        # mixes revisions, whichever thread installs it.
        self._table: tuple[int | None, dict[tuple[Role, str], Verdict]] = (None, {})
        self._shipped: EmbeddedEngine | None = None

    def decide(self, role: Role, permission: str) -> Verdict:
        """Whether `role` holds `permission` under the active policy. Default deny: an
        undefined answer or a failed evaluation refuses (and is not remembered)."""
        try:
            active = self._policy.active
        except NotReady:
            revision, engine = None, self._fallback()
        else:
            revision = active.revision
            engine = active.local if PACKAGE in active.local.packages else self._fallback()
        cached_revision, table = self._table
        if cached_revision != revision:
            table = {}
            self._table = (revision, table)
        key = (role, permission)
        verdict = table.get(key)
        if verdict is None:
            try:
                verdict = evaluate(engine, str(role), permission)
            except PolicyEvaluationError as exc:
                return Verdict(False, f"the admin policy failed: {exc.detail}")
            table[key] = verdict
        return verdict

    def granted(self, role: Role, permissions: Iterable[str]) -> set[str]:
        """The subset of `permissions` that `role` holds (drives which links a page shows)."""
        return {p for p in permissions if self.decide(role, p).allowed}

    def refuse(
        self,
        principal: Principal,
        permission: str,
        verdict: Verdict,
        *,
        action: str,
        target: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Audit a refusal: outcome `denied`, in its own transaction (the refused request
        writes nothing else). The caller then raises `PermissionDenied`.

        `action` is the audit tag (`admin:permission:denied` for the API, `ui:view:denied`
        for the UI); `target` is what was asked for.

        Raises:
            StoreUnavailable: the database is down (the request is refused all the same).
        """
        with transaction(self._engine) as session:
            self._audit.record(
                session,
                principal.name,
                action,
                target=target,
                outcome=AuditOutcome.DENIED,
                details={"permission": permission, "reason": verdict.reason, **(details or {})},
            )

    def _fallback(self) -> EmbeddedEngine:
        if self._shipped is None:
            source = (SHIPPED_REGO / _SHIPPED_MODULE).read_text()
            self._shipped = EmbeddedEngine({_SHIPPED_MODULE: source})
        return self._shipped
