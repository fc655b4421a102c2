"""Expiry (RFC 8555 §7.1.6: objects past `expires` end) and pruning of finished objects."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime

import structlog
from sqlmodel import Session

from pki.acme.errors import Malformed
from pki.acme.messages import AuthorizationStatus, OrderStatus
from pki.acme.states import allowed, check_transition, sources
from trustd.domain.acme import Authorization, Order
from trustd.services.acme.context import AcmeContext
from trustd.services.auth import Principal
from trustd.store import acme as store
from trustd.store.db import transaction

log = structlog.get_logger("trustd.acme")

_PRUNE_EVERY = 60.0


def expiry_due(order: Order, now: datetime) -> bool:
    """Whether *order* is past its `expires` and may still become invalid (§7.1.6): then
    `expire_if_due` has something to write."""
    return order.expires <= now and allowed(order.status, OrderStatus.INVALID)


def expire_if_due(session: Session, order: Order, now: datetime) -> Order:
    """Apply expiry to *order* and return it as it now stands: past its `expires`, an order
    that may still become invalid does, and its pending authorizations expire (§7.1.6).
    Orders that reached `valid` or `invalid` are final and unchanged."""
    if not expiry_due(order, now):
        return order
    expired = replace(
        order,
        status=check_transition(order.id, order.status, OrderStatus.INVALID),
        error=Malformed("the order expired before it was finalized").document(),
        updated_at=now,
    )
    store.update_order(session, expired)
    store.update_authorization_statuses(
        session,
        order_id=order.id,
        current=AuthorizationStatus.PENDING,
        target=check_transition(
            f"of order {order.id}", AuthorizationStatus.PENDING, AuthorizationStatus.EXPIRED
        ),
    )
    return expired


def expire_for_authorization(
    session: Session, authz: Authorization, order: Order, now: datetime
) -> tuple[Authorization, Order]:
    """Apply expiry to *order*, the order of *authz*; return both as they now stand (expiry
    of the order ends its pending authorizations, §7.1.6)."""
    current = expire_if_due(session, order, now)
    if current is not order:
        fresh = store.fetch_authorization(session, authz.id)
        assert fresh is not None
        authz = fresh
    return authz, current


class Housekeeping:
    def __init__(self, context: AcmeContext) -> None:
        self._context = context
        self._last_prune = 0.0

    def maybe_prune(self) -> None:
        """Prune if the last prune in this process is a minute old."""
        now = time.monotonic()
        if now - self._last_prune >= _PRUNE_EVERY:
            self._last_prune = now
            self.prune()

    def prune(self, principal: Principal | None = None) -> tuple[int, int]:
        """Expire pending objects past their expiry (§7.1.6) and delete finished objects
        older than the retention period; orders that produced a certificate are kept.
        Returns (expired, deleted).

        Raises:
            StoreUnavailable: the database is down.
        """
        now = self._context.clock.now()
        with transaction(self._context.engine) as session:
            stale = store.list_orders_expiring(
                session, statuses=sources(OrderStatus.INVALID), now=now
            )
            for order in stale:
                expire_if_due(session, order, now)
            expired = len(stale)
            # Invalid orders are final and produced nothing; valid ones name a certificate.
            deleted = store.prune_orders(
                session,
                status=OrderStatus.INVALID,
                expired_before=now - self._context.settings.acme_retention,
            )
            if principal is not None:
                self._context.audit.record(
                    session,
                    principal.name,
                    "acme:objects:pruned",
                    details={"expired": expired, "deleted": deleted},
                )
        if expired or deleted:
            log.info("acme_pruned", expired=expired, deleted=deleted)
        return expired, deleted
