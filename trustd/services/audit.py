"""Audit trail: one row per security-relevant action, written in the action's transaction."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from sqlmodel import Session

from pki.clock import Clock
from trustd.domain.audit import AuditOutcome
from trustd.store.audit import audit_event_insertion, create_audit_event
from trustd.store.types import Insertion

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)


class AuditLog:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def record(
        self,
        session: Session,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Add an audit row to `session`; it commits or rolls back with the action itself.

        `action` is a `subject:object:action` tag such as `svid:x509:issued`.
        """
        create_audit_event(
            session, self.row(actor, action, target=target, outcome=outcome, details=details)
        )

    def row(
        self,
        actor: str,
        action: str,
        *,
        target: str | None = None,
        outcome: AuditOutcome = AuditOutcome.SUCCESS,
        details: dict[str, Any] | None = None,
    ) -> Insertion:
        """The audit row as an insert to run in the action's transaction (see `record`).
        The request id is read now, while the request's context is current.
        """
        return audit_event_insertion(
            at=self._clock.now(),
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            request_id=request_id_var.get(),
            details=details or {},
        )
