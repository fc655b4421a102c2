"""Authorizations (RFC 8555 §7.5): reading, and deactivation by the client (§7.5.2)."""

from __future__ import annotations

from dataclasses import replace

from pki.acme.errors import AcmeNotFound, Malformed
from pki.acme.messages import (
    AuthorizationStatus,
    AuthorizationUpdate,
    ChallengeStatus,
    OrderStatus,
    parse_payload,
)
from pki.acme.states import allowed, check_transition
from trustd.domain.acme import Authorization, AuthorizationView, Challenge
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.context import AcmeContext
from trustd.services.acme.housekeeping import expire_for_authorization, expiry_due
from trustd.store import acme as store
from trustd.store.db import transaction

# RFC 8555 §7.5.1: the Retry-After (seconds) suggested while a validation is in progress.
# Validation against a responder on the same network takes milliseconds, and a client that
# polls sooner is answered cheaply: the shortest interval the header can express.
POLL_INTERVAL = 1


def authorization_retry_after(
    authz: Authorization, challenges: tuple[Challenge, ...]
) -> int | None:
    """RFC 8555 §7.5.1: a polling interval while a validation of *authz* is in progress."""
    validating = any(c.status is ChallengeStatus.PROCESSING for c in challenges)
    return POLL_INTERVAL if validating and authz.status is AuthorizationStatus.PENDING else None


class Authorizations:
    def __init__(self, context: AcmeContext) -> None:
        self._context = context

    def get_authorization(self, auth: Authenticated, authz_id: str) -> AuthorizationView:
        """POST-as-GET, or deactivation (RFC 8555 §7.5.2).

        Raises:
            AcmeNotFound: no such authorization for this account.
            Malformed: bad payload, or an authorization that can no longer be deactivated.
        """
        objects = auth.require_objects()
        if not objects.authorizations or objects.authorizations[0].id != authz_id:
            raise AcmeNotFound("no such authorization")
        authz, order, challenges = objects.authorizations[0], objects.order, objects.challenges
        assert order is not None  # a foreign key
        update = (
            parse_payload(AuthorizationUpdate, auth.payload) if auth.payload is not None else None
        )
        now = self._context.clock.now()
        if update is None:
            # POST-as-GET: answered from what the request read, unless expiry is due.
            if expiry_due(order, now):
                with transaction(self._context.engine) as session:
                    authz, order = expire_for_authorization(session, authz, order, now)
            return AuthorizationView(
                authz, challenges, authorization_retry_after(authz, challenges)
            )
        with transaction(self._context.engine) as session:
            locked = store.fetch_authorization(session, authz_id, for_update=True)
            assert locked is not None  # authorizations go only with their order
            current = store.fetch_order(session, locked.order_id)
            assert current is not None  # a foreign key
            authz, order = expire_for_authorization(session, locked, current, now)
            if not allowed(authz.status, AuthorizationStatus.DEACTIVATED):
                raise Malformed(f"a {authz.status} authorization cannot be deactivated")
            authz = replace(
                authz,
                status=check_transition(authz.id, authz.status, AuthorizationStatus.DEACTIVATED),
            )
            store.update_authorization(session, authz)
            # §7.1.6: an order whose authorization is deactivated becomes invalid.
            if allowed(order.status, OrderStatus.INVALID):
                store.update_order(
                    session,
                    replace(
                        order,
                        status=check_transition(order.id, order.status, OrderStatus.INVALID),
                        updated_at=now,
                    ),
                )
            challenges = store.list_challenges(session, authz.id)
        return AuthorizationView(authz, challenges, authorization_retry_after(authz, challenges))
