"""Audit trail: one row per security-relevant action, written in the action's transaction and
chained to the one before (`trustd.domain.audit`); read back in chain order, verified and
exported."""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session

from pki.clock import Clock
from trustd.domain.audit import AuditOutcome, ChainedAuditEvent, ChainHead, ChainVerifier
from trustd.store.audit import (
    audit_event_insertion,
    create_audit_event,
    fetch_audit_chain_head,
    list_chained_audit_events,
)
from trustd.store.db import transaction
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


# Events read per transaction while verifying or exporting: bounded memory, short reads.
PAGE = 1000


@dataclass(frozen=True)
class ChainReport:
    """A verified chain: how many events, and its head."""

    events: int
    head: ChainHead


class AuditTrail:
    """Reads the audit chain back: in order, for export, and verified."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def head(self) -> ChainHead:
        """The chain's head as the database records it."""
        with transaction(self._engine) as session:
            return fetch_audit_chain_head(session)

    def events(self, *, after: int = 0, until: int | None = None) -> Iterator[ChainedAuditEvent]:
        """The events with `after < seq <= until` in chain order, read a page at a time."""
        while True:
            with transaction(self._engine) as session:
                page = list_chained_audit_events(session, after=after, until=until, limit=PAGE)
            yield from page
            if len(page) < PAGE:
                return
            after = page[-1].seq

    def verify(self) -> ChainReport:
        """Check the whole chain, from the genesis to the head read first (events appended
        while it runs are left for the next check).

        Raises:
            AuditChainBroken: the first event at which the chain does not hold.
        """
        head = self.head()
        verifier = ChainVerifier()
        for event in self.events(until=head.seq):
            verifier.feed(event)
        verifier.finish(head)
        return ChainReport(verifier.count, head)
