"""Orders (RFC 8555 §7.4): creation under the identifier policy, rate limits and ARI
`replaces` (RFC 9773 §5); reading; an account's order list (§7.1.2.1)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from pki.acme import errors as acme_errors
from pki.acme.challenges import challenge_types_for
from pki.acme.errors import (
    AcmeNotFound,
    AlreadyReplaced,
    InvalidProfile,
    Malformed,
    RateLimited,
    RejectedIdentifier,
)
from pki.acme.identifiers import Identifier, parse_identifiers
from pki.acme.messages import (
    AuthorizationStatus,
    ChallengeStatus,
    NewOrder,
    OrderStatus,
    parse_payload,
)
from pki.acme.profile import Profile, parse_cert_id
from policy.engine import PolicyEngine
from trustd import tracing
from trustd.domain.acme import Account, Authorization, Challenge, Order, OrderPage, OrderView
from trustd.services.acme.authentication import Authenticated
from trustd.services.acme.context import AcmeContext, new_id
from trustd.services.acme.directory import DEFAULT_PROFILE, days
from trustd.services.acme.housekeeping import Housekeeping, expire_if_due, expiry_due
from trustd.services.acme.ratelimit import RateLimiter
from trustd.store import acme as store
from trustd.store.db import transaction

POLICY_RULE = "data.trustd.acme.denials"
ORDERS_PAGE = 100
# RFC 9773 §5: an order that may still produce a certificate holds its `replaces`.
_LIVE_ORDERS = frozenset(set(OrderStatus) - {OrderStatus.INVALID})


def own_order(auth: Authenticated, order_id: str) -> OrderView:
    """The order *order_id* and its authorization ids, as read with the signing account
    (the request's `target`).

    Raises:
        AcmeNotFound: no such order, or another account's (not-found leaks nothing).
    """
    objects = auth.require_objects()
    order = objects.order
    if order is None or order.id != order_id:
        raise AcmeNotFound("no such order")
    return OrderView(order, tuple(a.id for a in objects.authorizations))


class Orders:
    def __init__(
        self,
        context: AcmeContext,
        profiles: Mapping[str, Profile],
        policy: PolicyEngine,
        limiter: RateLimiter,
        housekeeping: Housekeeping,
    ) -> None:
        self._context = context
        self._profiles = profiles
        self._policy = policy
        self._limiter = limiter
        self._housekeeping = housekeeping

    @tracing.traced("trustd.acme.new_order")
    def new_order(self, auth: Authenticated) -> OrderView:
        """Create an order with one pending authorization per identifier (RFC 8555 §7.4).

        Raises:
            Malformed, RejectedIdentifier, UnsupportedIdentifier: bad identifiers or dates.
            InvalidProfile: an unknown profile. AlreadyReplaced: `replaces` names a
            certificate already replaced (RFC 9773 §5). RateLimited: too many orders.
        """
        account = auth.require_account()
        request = parse_payload(NewOrder, auth.payload)
        identifiers = parse_identifiers(request.identifiers)
        profile = request.profile or DEFAULT_PROFILE
        if profile not in self._profiles:
            raise InvalidProfile(
                f"profile {profile!r} is not offered; choose one of {', '.join(self._profiles)}"
            )
        now = self._context.clock.now()
        self._check_validity_request(request.not_before, request.not_after, profile, now)
        self._housekeeping.maybe_prune()
        with transaction(self._context.engine) as session:
            self._check_policy(session, account, identifiers, profile)
            if request.replaces is not None:
                self._check_replaces(session, account, request.replaces)
            self._rate_limit(account, identifiers)
            expires = now + self._context.settings.acme_order_lifetime
            # §7.1.6: orders, authorizations and challenges are all created pending.
            order = Order(
                id=new_id(),
                account_id=account.id,
                status=OrderStatus.PENDING,
                identifiers=identifiers,
                profile=profile,
                not_before=request.not_before,
                not_after=request.not_after,
                expires=expires,
                replaces=request.replaces,
                certificate_serial=None,
                error=None,
                created_at=now,
                updated_at=now,
            )
            authzs: list[Authorization] = []
            challenges: list[Challenge] = []
            for ident in identifiers:
                authz = Authorization(
                    id=new_id(),
                    order_id=order.id,
                    account_id=account.id,
                    identifier_type=ident.type,
                    identifier_value=ident.base,
                    wildcard=ident.wildcard,
                    status=AuthorizationStatus.PENDING,
                    expires=expires,
                )
                authzs.append(authz)
                challenges += [
                    Challenge(
                        id=new_id(),
                        authorization_id=authz.id,
                        type=kind,
                        # §8.1: at least 128 bits of entropy, base64url.
                        token=secrets.token_urlsafe(32),
                        status=ChallengeStatus.PENDING,
                        validated=None,
                        error=None,
                    )
                    for kind in challenge_types_for(ident)
                ]
            store.create_order(session, order, authzs, challenges)
        return OrderView(order, tuple(a.id for a in authzs))

    def get_order(self, auth: Authenticated, order_id: str) -> OrderView:
        """The order (POST-as-GET), expired first if it is due (§7.1.6).

        Raises:
            AcmeNotFound: no such order for this account.
        """
        view = own_order(auth, order_id)
        now = self._context.clock.now()
        if not expiry_due(view.order, now):
            return view
        with transaction(self._context.engine) as session:
            return replace(view, order=expire_if_due(session, view.order, now))

    def account_orders(self, auth: Authenticated, account_id: str, cursor: int) -> OrderPage:
        """One page of the account's order ids, newest first (RFC 8555 §7.1.2.1), and whether
        another page follows.

        Raises:
            Unauthorized: another account's orders.
        """
        account = auth.own_account(account_id)
        with transaction(self._context.engine) as session:
            ids = store.list_order_ids(
                session, account.id, offset=cursor * ORDERS_PAGE, limit=ORDERS_PAGE + 1
            )
        return OrderPage(tuple(ids[:ORDERS_PAGE]), more=len(ids) > ORDERS_PAGE)

    def _check_policy(
        self,
        session: Session,
        account: Account,
        identifiers: Sequence[Identifier],
        profile: str,
    ) -> None:
        eab: dict[str, Any] | None = None
        if account.eab_key_id is not None:
            key = store.fetch_eab_key(session, account.eab_key_id)
            if key is not None:
                eab = {
                    "kid": key.id,
                    "dns_suffixes": list(key.dns_suffixes),
                    "ip_networks": list(key.ip_networks),
                }
        denied = self._policy.evaluate(
            POLICY_RULE,
            {
                "account": {"id": account.id, "contact": list(account.contact)},
                "eab": eab,
                "profile": profile,
                "identifiers": [i.to_json() for i in identifiers],
            },
        )
        if denied:
            subproblems = [
                {
                    "type": acme_errors.ACME_ERROR_PREFIX + "rejectedIdentifier",
                    "detail": str(d.get("reason")),
                    "identifier": d.get("identifier"),
                }
                for d in denied
            ]
            names = ", ".join(sorted({str(s["identifier"]["value"]) for s in subproblems}))
            raise RejectedIdentifier(
                f"the identifier policy does not allow {names} for this account",
                subproblems=subproblems,
            )

    def _rate_limit(self, account: Account, identifiers: Sequence[Identifier]) -> None:
        s = self._context.settings
        checks = [(f"account:{account.id}", s.acme_orders_per_hour, "orders for this account")]
        checks += [
            (f"identifier:{i.value}", s.acme_identifier_orders_per_hour, f"orders for {i.value}")
            for i in identifiers
        ]
        for key, limit, what in checks:
            wait = self._limiter.check(key, limit, 3600.0)
            if wait > 0:
                retry = max(1, int(wait + 0.999))
                raise RateLimited(
                    f"too many {what}: at most {limit} an hour; retry after {retry} s",
                    retry_after=retry,
                )

    def _check_validity_request(
        self, not_before: datetime | None, not_after: datetime | None, profile: str, now: datetime
    ) -> None:
        for value, name in ((not_before, "notBefore"), (not_after, "notAfter")):
            if value is not None and value.tzinfo is None:
                raise Malformed(f"{name} must be an RFC 3339 time with an offset")
        lifetime = self._profiles[profile].lifetime
        if not_before is not None and not now - timedelta(hours=1) <= not_before <= now + lifetime:
            raise Malformed("notBefore must be within an hour before now and the profile lifetime")
        if not_after is not None:
            start = not_before or now
            if not_after <= start:
                raise Malformed("notAfter must be after notBefore and in the future")
            if not_after - start > lifetime:
                raise Malformed(
                    f"notAfter - notBefore exceeds the {profile} profile's lifetime of "
                    f"{days(lifetime)}"
                )

    def _check_replaces(self, session: Session, account: Account, cert_id: str) -> None:
        parsed = parse_cert_id(cert_id)
        replaced = store.fetch_order_by_certificate(
            session, parsed.serial_hex, account_id=account.id
        )
        if replaced is None:
            raise Malformed("'replaces' does not name a certificate this account holds")
        # RFC 9773 §5: only one live order may replace a given certificate.
        if store.fetch_order_id_replacing(session, cert_id, statuses=_LIVE_ORDERS) is not None:
            raise AlreadyReplaced("the certificate named in 'replaces' was already replaced")
