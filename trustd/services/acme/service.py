"""The ACME server (RFC 8555 with ARI, RFC 9773, and certificate profiles).

Routes hand this service the raw JWS body and the URL it was posted to; the service
authenticates it (§6.2-6.5), applies the state machines of §7.1.6, and records everything it
issues before it returns it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography import x509
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from pki.acme import errors as acme_errors
from pki.acme.challenges import Validator, challenge_types_for, key_authorization
from pki.acme.eab import new_eab_key, seal, unseal
from pki.acme.errors import (
    AccountDoesNotExist,
    AcmeError,
    AcmeNotFound,
    AlreadyReplaced,
    AlreadyRevoked,
    BadCsr,
    BadNonce,
    BadRevocationReason,
    ExternalAccountRequired,
    InvalidContact,
    InvalidProfile,
    KeyInUse,
    Malformed,
    OrderNotReady,
    RateLimited,
    RejectedIdentifier,
    Unauthorized,
    UnsupportedContact,
)
from pki.acme.identifiers import Identifier, csr_identifiers, parse_identifiers
from pki.acme.jws import Jwk, Jws, b64decode, parse_jwk, parse_jws, parse_key_change, verify_eab
from pki.acme.messages import (
    SUBSCRIBER_REVOCATION_REASONS,
    AccountStatus,
    AccountUpdate,
    AuthorizationStatus,
    AuthorizationUpdate,
    ChallengeStatus,
    ChallengeType,
    Finalize,
    NewAccount,
    NewOrder,
    OrderStatus,
    Revocation,
    parse_payload,
)
from pki.acme.profile import (
    Profile,
    RenewalWindow,
    TlsServerParams,
    ari_cert_id,
    issue_tls_server_certificate,
    parse_cert_id,
    suggested_window,
)
from pki.ca import certificate_pem, csr_public_key, load_pem_certificates, parse_csr, serial_hex
from pki.clock import Clock
from pki.errors import InvalidCsr, WeakKey
from pki.keys import same_public_key
from pki.revocation import RevocationReason
from pki.x509_path import issued_by
from policy.engine import PolicyEngine
from trustd import metrics
from trustd.bus import Bus
from trustd.domain.certificates import CertificateStatus
from trustd.errors import NotFound
from trustd.services.acme.nonces import NonceStore
from trustd.services.acme.ratelimit import RateLimiter
from trustd.services.acme.urls import AcmeUrls
from trustd.services.audit import AuditLog
from trustd.services.auth import Principal
from trustd.services.ca import CertificateAuthority
from trustd.services.revocation import REVOCATION_CHANNEL, Revocations
from trustd.settings import Settings
from trustd.store.acme import (
    ACME_CERTIFICATE_KIND,
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeEabKey,
    AcmeOrder,
)
from trustd.store.ca_keys import CaKey
from trustd.store.certificates import IssuedCertificate
from trustd.store.db import transaction

log = structlog.get_logger("trustd.acme")

POLICY_RULE = "data.trustd.acme.denials"
ORDERS_PAGE = 100
_PRUNE_EVERY = 60.0
# RFC 8555 §7.5.1: the Retry-After (seconds) suggested while a validation is in progress.
# Validation against a responder on the same network takes milliseconds, and a client that
# polls sooner is answered cheaply: the shortest interval the header can express.
POLL_INTERVAL = 1
# Validations run beside requests; each waits at most acme_validation_timeout.
_VALIDATION_THREADS = 16


def _id() -> str:
    return secrets.token_urlsafe(12)


def _problem(exc: AcmeError) -> dict[str, Any]:
    return {"type": exc.type_uri, "detail": exc.detail}


@dataclass(frozen=True)
class Authenticated:
    """A verified request: its JWS, the key that signed it, and the account if by `kid`."""

    jws: Jws
    key: Jwk
    account: AcmeAccount | None

    @property
    def payload(self) -> dict[str, Any] | None:
        return self.jws.json_payload()

    def require_account(self) -> AcmeAccount:
        if self.account is None:  # pragma: no cover - authenticate(allow_jwk=False) sets it
            raise Malformed("this request must be signed with the account's 'kid'")
        return self.account


@dataclass(frozen=True)
class OrderView:
    order: AcmeOrder
    authorization_ids: tuple[str, ...]


@dataclass(frozen=True)
class AuthorizationView:
    authorization: AcmeAuthorization
    challenges: tuple[AcmeChallenge, ...]

    @property
    def retry_after(self) -> int | None:
        """RFC 8555 §7.5.1: a polling interval while a validation is in progress."""
        validating = any(c.status == ChallengeStatus.PROCESSING for c in self.challenges)
        pending = self.authorization.status == AuthorizationStatus.PENDING
        return POLL_INTERVAL if pending and validating else None


@dataclass(frozen=True)
class ChallengeView:
    challenge: AcmeChallenge
    authorization_id: str

    @property
    def retry_after(self) -> int | None:
        """RFC 8555 §7.5.1: a polling interval while the validation is in progress."""
        return POLL_INTERVAL if self.challenge.status == ChallengeStatus.PROCESSING else None


@dataclass(frozen=True)
class CertificateChain:
    pem: str
    alternates: int  # how many alternate chains exist besides this one


@dataclass(frozen=True)
class RenewalInfo:
    window: RenewalWindow
    retry_after: int


@dataclass(frozen=True)
class CreatedEabKey:
    key: AcmeEabKey
    secret: bytes


class AcmeService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        ca: CertificateAuthority,
        clock: Clock,
        audit: AuditLog,
        bus: Bus,
        nonces: NonceStore,
        limiter: RateLimiter,
        policy: PolicyEngine,
        validator: Validator,
        kek: bytes,
        revocations: Revocations,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._ca = ca
        self._clock = clock
        self._audit = audit
        self._bus = bus
        self.nonces = nonces
        self._limiter = limiter
        self._policy = policy
        self._validator = validator
        self._kek = kek
        self._revocations = revocations
        self.urls = AcmeUrls(settings.base_url)
        self._last_prune = 0.0
        self._validations = ThreadPoolExecutor(
            _VALIDATION_THREADS, thread_name_prefix="acme-validation"
        )
        self.profiles: dict[str, Profile] = {
            "tlsserver": Profile(
                "tlsserver",
                f"TLS server certificate, {_days(settings.acme_cert_ttl)}",
                settings.acme_cert_ttl,
            ),
            "shortlived": Profile(
                "shortlived",
                f"Short-lived TLS server certificate, {_days(settings.acme_short_cert_ttl)}",
                settings.acme_short_cert_ttl,
            ),
            "mtls": Profile(
                "mtls",
                f"TLS server and client certificate, {_days(settings.acme_cert_ttl)}",
                settings.acme_cert_ttl,
                client_auth=True,
            ),
        }
        self.default_profile = "tlsserver"

    # ------------------------------------------------------------------ directory

    def directory(self) -> dict[str, Any]:
        """The directory object (RFC 8555 §7.1.1), with ARI and profiles."""
        u = self.urls
        return {
            "newNonce": u.new_nonce,
            "newAccount": u.new_account,
            "newOrder": u.new_order,
            "revokeCert": u.revoke_cert,
            "keyChange": u.key_change,
            # RFC 9773 §3: the renewalInfo resource.
            "renewalInfo": u.renewal_info,
            "meta": {
                "externalAccountRequired": self._settings.acme_eab_required,
                # draft-ietf-acme-profiles §3: profile name -> human description.
                "profiles": {p.name: p.description for p in self.profiles.values()},
            },
        }

    # ------------------------------------------------------------------ authentication

    def authenticate(self, body: bytes, url: str, *, allow_jwk: bool = False) -> Authenticated:
        """Verify an ACME request JWS posted to *url* (RFC 8555 §6.2-§6.5).

        Raises:
            Malformed: not a valid flattened JWS, or `jwk` where `kid` is required.
            BadSignatureAlgorithm: the algorithm is not on the allow-list.
            BadPublicKey: the embedded key is not allowed.
            Unauthorized: `url` is not the request URL, or the account is not valid.
            AccountDoesNotExist: `kid` names no account.
            BadNonce: the nonce was not issued, expired or was already used.
        """
        jws = parse_jws(body)
        # RFC 8555 §6.4: the signed url must be the URL the request was sent to.
        if jws.url != url:
            raise Unauthorized("the JWS 'url' header does not match the request URL")
        account: AcmeAccount | None = None
        if jws.jwk is not None:
            # §6.2: jwk only for newAccount and revokeCert (by certificate key).
            if not allow_jwk:
                raise Malformed("this request must be signed with the account's 'kid'")
            key = jws.jwk
        else:
            assert jws.kid is not None
            account_id = self.urls.account_id(jws.kid)
            with transaction(self._engine) as session:
                account = session.get(AcmeAccount, account_id) if account_id else None
            if account is None:
                raise AccountDoesNotExist("the 'kid' names no account on this server")
            if account.status != AccountStatus.VALID:
                raise Unauthorized(f"the account is {account.status}")
            key = parse_jwk(account.jwk)
        jws.verify(key)
        # Checked last so that a request failing any other check leaves its nonce usable.
        if jws.nonce is None or not self.nonces.redeem(jws.nonce):
            raise BadNonce("the nonce is unknown, expired or already used")
        return Authenticated(jws=jws, key=key, account=account)

    # ------------------------------------------------------------------ accounts

    def _contacts(self, contact: Sequence[str]) -> list[str]:
        for uri in contact:
            # RFC 8555 §7.3: mailto is the scheme servers are expected to support.
            if not uri.startswith("mailto:"):
                raise UnsupportedContact("only mailto: contact URLs are supported")
            address = uri[len("mailto:") :]
            local, at, domain = address.partition("@")
            if not at or not local or "." not in domain or any(c in address for c in ",?<> "):
                raise InvalidContact("a contact must be mailto:one-address@domain")
        return list(contact)

    def new_account(self, auth: Authenticated) -> tuple[AcmeAccount, bool]:
        """Find or create the account of the signing key (RFC 8555 §7.3). Returns the account
        and whether it was created.

        Raises:
            Malformed: bad payload. AccountDoesNotExist: onlyReturnExisting and no account.
            ExternalAccountRequired: EAB is required and absent. Unauthorized: the binding
            does not verify. InvalidContact, UnsupportedContact: bad contact URLs.
        """
        request = parse_payload(NewAccount, auth.payload)
        thumbprint = auth.key.thumbprint()
        with transaction(self._engine) as session:
            existing = session.exec(
                select(AcmeAccount).where(AcmeAccount.thumbprint == thumbprint)
            ).first()
            if existing is not None:
                # §7.3.1: the existing account, unchanged, with status 200.
                return existing, False
            if request.only_return_existing:
                raise AccountDoesNotExist("no account exists for this key")
            contact = self._contacts(request.contact)
            eab_key_id: str | None = None
            if request.external_account_binding is not None:
                eab_key_id = verify_eab(
                    request.external_account_binding,
                    auth.key,
                    self.urls.new_account,
                    lambda kid: self._eab_secret(session, kid),
                )
            elif self._settings.acme_eab_required:
                raise ExternalAccountRequired(
                    "this server requires an external account binding; ask the operator for "
                    "an EAB key id and MAC key"
                )
            now = self._clock.now()
            account = AcmeAccount(
                id=_id(),
                thumbprint=thumbprint,
                jwk=auth.key.members,
                status=AccountStatus.VALID,
                contact=contact,
                eab_key_id=eab_key_id,
                created_at=now,
                updated_at=now,
            )
            session.add(account)
            self._audit.record(
                session,
                f"acme:{account.id}",
                "acme:account:created",
                target=account.id,
                details={"eab_key_id": eab_key_id, "thumbprint": thumbprint},
            )
        return account, True

    def _eab_secret(self, session: Session, kid: str) -> bytes | None:
        row = session.get(AcmeEabKey, kid)
        now = self._clock.now()
        if row is None or row.revoked_at is not None:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        return unseal(row.encrypted_key, self._kek, row.id)

    def _own_account(self, auth: Authenticated, account_id: str) -> AcmeAccount:
        account = auth.require_account()
        # §7.3: an account may only read or change itself.
        if account.id != account_id:
            raise Unauthorized("the request is signed by a different account")
        return account

    def update_account(self, auth: Authenticated, account_id: str) -> AcmeAccount:
        """POST-as-GET, contact update or deactivation (RFC 8555 §7.3.2, §7.3.6).

        Raises:
            Unauthorized: another account's URL. Malformed: bad payload.
        """
        account = self._own_account(auth, account_id)
        if auth.payload is None:
            return account
        update = parse_payload(AccountUpdate, auth.payload)
        with transaction(self._engine) as session:
            row = session.get(AcmeAccount, account.id, with_for_update=True)
            assert row is not None
            changes: dict[str, Any] = {}
            if update.contact is not None:
                row.contact = self._contacts(update.contact)
                changes["contact"] = len(row.contact)
            if update.status == "deactivated":
                row.status = AccountStatus.DEACTIVATED
                changes["status"] = row.status
                # §7.3.6: pending authorizations of a deactivated account are deactivated.
                for authz in session.exec(
                    select(AcmeAuthorization).where(
                        AcmeAuthorization.account_id == row.id,
                        AcmeAuthorization.status == AuthorizationStatus.PENDING,
                    )
                ):
                    authz.status = AuthorizationStatus.DEACTIVATED
                    session.add(authz)
            if changes:
                row.updated_at = self._clock.now()
                session.add(row)
                action = "deactivated" if "status" in changes else "updated"
                self._audit.record(
                    session, f"acme:{row.id}", f"acme:account:{action}", target=row.id
                )
        return row

    def account_orders(
        self, auth: Authenticated, account_id: str, cursor: int
    ) -> tuple[list[str], bool]:
        """One page of the account's order ids, newest first (RFC 8555 §7.1.2.1), and whether
        another page follows.

        Raises:
            Unauthorized: another account's orders.
        """
        account = self._own_account(auth, account_id)
        with transaction(self._engine) as session:
            rows = session.exec(
                select(AcmeOrder.id)
                .where(AcmeOrder.account_id == account.id)
                .order_by(col(AcmeOrder.created_at).desc(), col(AcmeOrder.id))
                .offset(cursor * ORDERS_PAGE)
                .limit(ORDERS_PAGE + 1)
            ).all()
        return list(rows[:ORDERS_PAGE]), len(rows) > ORDERS_PAGE

    def key_change(self, auth: Authenticated) -> AcmeAccount:
        """Roll the account over to a new key (RFC 8555 §7.3.5).

        Raises:
            Malformed: bad inner JWS, or it names another account or the wrong old key.
            KeyInUse: the new key already belongs to an account (409).
        """
        account = auth.require_account()
        if auth.payload is None:
            raise Malformed("keyChange needs the inner JWS as payload")
        change = parse_key_change(auth.payload, self.urls.key_change)
        if change.account != self.urls.account(account.id):
            raise Unauthorized("the inner keyChange JWS names a different account")
        if not change.old_key.same_key(auth.key):
            raise Unauthorized("'oldKey' is not the account's current key")
        thumbprint = change.new_key.thumbprint()
        with transaction(self._engine) as session:
            holder = session.exec(
                select(AcmeAccount).where(AcmeAccount.thumbprint == thumbprint)
            ).first()
            if holder is not None:
                raise KeyInUse(
                    "the new key already belongs to an account",
                    location=self.urls.account(holder.id),
                )
            row = session.get(AcmeAccount, account.id, with_for_update=True)
            assert row is not None
            row.jwk = change.new_key.members
            row.thumbprint = thumbprint
            row.updated_at = self._clock.now()
            session.add(row)
            self._audit.record(
                session,
                f"acme:{row.id}",
                "acme:account:key-changed",
                target=row.id,
                details={"thumbprint": thumbprint},
            )
        return row

    # ------------------------------------------------------------------ orders

    def _check_policy(
        self,
        session: Session,
        account: AcmeAccount,
        identifiers: Sequence[Identifier],
        profile: str,
    ) -> None:
        eab: dict[str, Any] | None = None
        if account.eab_key_id is not None:
            key = session.get(AcmeEabKey, account.eab_key_id)
            if key is not None:
                eab = {
                    "kid": key.id,
                    "dns_suffixes": key.dns_suffixes,
                    "ip_networks": key.ip_networks,
                }
        denied = self._policy.evaluate(
            POLICY_RULE,
            {
                "account": {"id": account.id, "contact": account.contact},
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

    def _rate_limit(self, account: AcmeAccount, identifiers: Sequence[Identifier]) -> None:
        s = self._settings
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
        profile = request.profile or self.default_profile
        if profile not in self.profiles:
            raise InvalidProfile(
                f"profile {profile!r} is not offered; choose one of {', '.join(self.profiles)}"
            )
        now = self._clock.now()
        self._check_validity_request(request.not_before, request.not_after, profile, now)
        self._maybe_prune()
        with transaction(self._engine) as session:
            self._check_policy(session, account, identifiers, profile)
            if request.replaces is not None:
                self._check_replaces(session, account, request.replaces)
            self._rate_limit(account, identifiers)
            expires = now + self._settings.acme_order_lifetime
            order = AcmeOrder(
                id=_id(),
                account_id=account.id,
                status=OrderStatus.PENDING,
                identifiers=[i.to_json() for i in identifiers],
                profile=profile,
                not_before=request.not_before,
                not_after=request.not_after,
                expires=expires,
                replaces=request.replaces,
                created_at=now,
                updated_at=now,
            )
            authzs: list[AcmeAuthorization] = []
            challenges: list[AcmeChallenge] = []
            for ident in identifiers:
                authz = AcmeAuthorization(
                    id=_id(),
                    order_id=order.id,
                    account_id=account.id,
                    identifier_type=ident.type,
                    identifier_value=ident.base,
                    wildcard=ident.wildcard,
                    status=AuthorizationStatus.PENDING,
                    expires=expires,
                )
                authzs.append(authz)
                for kind in challenge_types_for(ident):
                    challenges.append(
                        AcmeChallenge(
                            id=_id(),
                            authorization_id=authz.id,
                            type=kind,
                            # §8.1: at least 128 bits of entropy, base64url.
                            token=secrets.token_urlsafe(32),
                            status=ChallengeStatus.PENDING,
                        )
                    )
            # No ORM relationships: flush parents first so foreign keys hold on insert.
            for rows in ([order], authzs, challenges):
                session.add_all(rows)
                session.flush()
        return OrderView(order, tuple(a.id for a in authzs))

    def _check_validity_request(
        self, not_before: datetime | None, not_after: datetime | None, profile: str, now: datetime
    ) -> None:
        for value, name in ((not_before, "notBefore"), (not_after, "notAfter")):
            if value is not None and value.tzinfo is None:
                raise Malformed(f"{name} must be an RFC 3339 time with an offset")
        lifetime = self.profiles[profile].lifetime
        if not_before is not None and not now - timedelta(hours=1) <= not_before <= now + lifetime:
            raise Malformed("notBefore must be within an hour before now and the profile lifetime")
        if not_after is not None:
            start = not_before or now
            if not_after <= start:
                raise Malformed("notAfter must be after notBefore and in the future")
            if not_after - start > lifetime:
                raise Malformed(
                    f"notAfter - notBefore exceeds the {profile} profile's lifetime of "
                    f"{_days(lifetime)}"
                )

    def _check_replaces(self, session: Session, account: AcmeAccount, cert_id: str) -> None:
        parsed = parse_cert_id(cert_id)
        replaced = session.exec(
            select(AcmeOrder).where(
                AcmeOrder.certificate_serial == parsed.serial_hex,
                AcmeOrder.account_id == account.id,
            )
        ).first()
        if replaced is None:
            raise Malformed("'replaces' does not name a certificate this account holds")
        # RFC 9773 §5: only one live order may replace a given certificate.
        other = session.exec(
            select(AcmeOrder.id).where(
                AcmeOrder.replaces == cert_id, AcmeOrder.status != OrderStatus.INVALID
            )
        ).first()
        if other is not None:
            raise AlreadyReplaced("the certificate named in 'replaces' was already replaced")

    def _load_order(self, session: Session, account: AcmeAccount, order_id: str) -> AcmeOrder:
        order = session.get(AcmeOrder, order_id)
        # Not-found leaks nothing: another account's order looks like no order.
        if order is None or order.account_id != account.id:
            raise AcmeNotFound("no such order")
        return order

    def _authz_ids(self, session: Session, order_id: str) -> tuple[str, ...]:
        return tuple(
            session.exec(
                select(AcmeAuthorization.id)
                .where(AcmeAuthorization.order_id == order_id)
                .order_by(col(AcmeAuthorization.identifier_value))
            ).all()
        )

    def _expire(self, session: Session, order: AcmeOrder) -> None:
        """§7.1.6: pending authorizations past their expiry become expired, and a pending or
        ready order past its expiry becomes invalid."""
        now = self._clock.now()
        if order.status in (OrderStatus.PENDING, OrderStatus.READY) and order.expires <= now:
            order.status = OrderStatus.INVALID
            order.error = _problem(Malformed("the order expired before it was finalized"))
            order.updated_at = now
            session.add(order)
            for authz in session.exec(
                select(AcmeAuthorization).where(
                    AcmeAuthorization.order_id == order.id,
                    AcmeAuthorization.status == AuthorizationStatus.PENDING,
                )
            ):
                authz.status = AuthorizationStatus.EXPIRED
                session.add(authz)

    def get_order(self, auth: Authenticated, order_id: str) -> OrderView:
        """Raises:
        AcmeNotFound: no such order for this account.
        """
        account = auth.require_account()
        with transaction(self._engine) as session:
            order = self._load_order(session, account, order_id)
            self._expire(session, order)
            return OrderView(order, self._authz_ids(session, order.id))

    def get_authorization(self, auth: Authenticated, authz_id: str) -> AuthorizationView:
        """POST-as-GET, or deactivation (RFC 8555 §7.5.2).

        Raises:
            AcmeNotFound: no such authorization for this account. Malformed: bad payload.
        """
        account = auth.require_account()
        update = (
            parse_payload(AuthorizationUpdate, auth.payload) if auth.payload is not None else None
        )
        with transaction(self._engine) as session:
            authz = session.get(AcmeAuthorization, authz_id, with_for_update=update is not None)
            if authz is None or authz.account_id != account.id:
                raise AcmeNotFound("no such authorization")
            order = session.get(AcmeOrder, authz.order_id)
            assert order is not None
            self._expire(session, order)
            if update is not None:
                if authz.status not in (AuthorizationStatus.PENDING, AuthorizationStatus.VALID):
                    raise Malformed(f"a {authz.status} authorization cannot be deactivated")
                authz.status = AuthorizationStatus.DEACTIVATED
                session.add(authz)
                # §7.1.6: an order whose authorization is deactivated becomes invalid.
                if order.status in (OrderStatus.PENDING, OrderStatus.READY):
                    order.status = OrderStatus.INVALID
                    order.updated_at = self._clock.now()
                    session.add(order)
            challenges = tuple(
                session.exec(
                    select(AcmeChallenge)
                    .where(AcmeChallenge.authorization_id == authz.id)
                    .order_by(col(AcmeChallenge.type))
                )
            )
            return AuthorizationView(authz, challenges)

    # ------------------------------------------------------------------ challenges

    def respond_challenge(self, auth: Authenticated, challenge_id: str) -> ChallengeView:
        """POST-as-GET reads a challenge; a POST of `{}` asks the server to validate it
        (RFC 8555 §7.5.1). The validation starts once the challenge is recorded as
        `processing`; the answer waits for it up to `acme_validation_wait` and then shows the
        challenge as it stands, final or still `processing` (the validation goes on).

        Raises:
            AcmeNotFound: no such challenge for this account.
            Malformed: the authorization is no longer pending.
        """
        account = auth.require_account()
        respond = auth.payload is not None
        with transaction(self._engine) as session:
            challenge = session.get(AcmeChallenge, challenge_id, with_for_update=respond)
            authz = (
                session.get(AcmeAuthorization, challenge.authorization_id) if challenge else None
            )
            if challenge is None or authz is None or authz.account_id != account.id:
                raise AcmeNotFound("no such challenge")
            order = session.get(AcmeOrder, authz.order_id)
            assert order is not None
            self._expire(session, order)
            start = False
            if respond and challenge.status == ChallengeStatus.PENDING:
                if authz.status != AuthorizationStatus.PENDING:
                    raise Malformed(f"the authorization is {authz.status}, not pending")
                challenge.status = ChallengeStatus.PROCESSING
                session.add(challenge)
                start = True
        # Started only after the commit above: the validation records its outcome only on a
        # challenge still `processing`.
        if start:
            validation = self._validations.submit(
                self._validate, challenge, authz, account.thumbprint
            )
            try:
                validated = validation.result(self._settings.acme_validation_wait.total_seconds())
            except FutureTimeout:
                validated = None
            if validated is not None:
                challenge = validated
        return ChallengeView(challenge, authz.id)

    def _validate(
        self, challenge: AcmeChallenge, authz: AcmeAuthorization, thumbprint: str
    ) -> AcmeChallenge | None:
        """Validate *challenge* of *authz*, just moved to `processing` by a request signed
        with the account key of *thumbprint* (§8.1: the key authorization is made with it),
        and apply the outcome to the challenge, its authorization and its order (§7.1.6).
        Returns the challenge as recorded, or None if it was no longer `processing`. Never
        raises: failures are recorded as the challenge's error."""
        challenge_id = challenge.id
        ident = Identifier.parse(authz.identifier_type, authz.identifier_value)
        if authz.wildcard:
            ident = Identifier.parse(authz.identifier_type, "*." + authz.identifier_value)
        key_authz = key_authorization(challenge.token, thumbprint)
        error: AcmeError | None = None
        started = time.perf_counter()
        try:
            self._validator.validate(
                ChallengeType(challenge.type), ident, challenge.token, key_authz
            )
        except AcmeError as exc:
            error = exc
        except Exception as exc:  # a validator bug must not leave the challenge processing
            log.exception("acme_validation_crashed", challenge=challenge_id)
            error = acme_errors.ConnectionProblem(f"validation failed: {type(exc).__name__}")
        log.info(
            "acme_validation",
            challenge=challenge_id,
            type=challenge.type,
            outcome="invalid" if error else "valid",
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return self._record_validation(challenge_id, error)

    def _record_validation(
        self, challenge_id: str, error: AcmeError | None
    ) -> AcmeChallenge | None:
        now = self._clock.now()
        with transaction(self._engine) as session:
            challenge = session.get(AcmeChallenge, challenge_id, with_for_update=True)
            if challenge is None or challenge.status != ChallengeStatus.PROCESSING:
                return None
            authz = session.get(AcmeAuthorization, challenge.authorization_id, with_for_update=True)
            assert authz is not None
            order = session.get(AcmeOrder, authz.order_id, with_for_update=True)
            assert order is not None
            if error is None:
                challenge.status = ChallengeStatus.VALID
                challenge.validated = now
            else:
                challenge.status = ChallengeStatus.INVALID
                challenge.error = _problem(error)
            session.add(challenge)
            if authz.status != AuthorizationStatus.PENDING:
                return challenge
            authz.status = (
                AuthorizationStatus.VALID if error is None else AuthorizationStatus.INVALID
            )
            session.add(authz)
            if order.status != OrderStatus.PENDING:
                return challenge
            if error is not None:
                order.status = OrderStatus.INVALID
                order.error = _problem(error)
            else:
                statuses = session.exec(
                    select(AcmeAuthorization.status).where(
                        AcmeAuthorization.order_id == order.id,
                        AcmeAuthorization.id != authz.id,
                    )
                ).all()
                if all(s == AuthorizationStatus.VALID for s in statuses):
                    order.status = OrderStatus.READY
            order.updated_at = now
            session.add(order)
        return challenge

    # ------------------------------------------------------------------ finalize

    def finalize(self, auth: Authenticated, order_id: str) -> OrderView:
        """Issue the certificate of a ready order from its CSR (RFC 8555 §7.4). The
        certificate is committed with the order before this returns.

        Raises:
            AcmeNotFound: no such order. OrderNotReady: the order is not ready.
            BadCsr: the CSR is invalid, names other identifiers than the order, or uses the
                account key or a key the profile does not issue for.
        """
        account = auth.require_account()
        request = parse_payload(Finalize, auth.payload)
        with transaction(self._engine) as session:
            order = self._load_order(session, account, order_id)
            self._expire(session, order)
            status = order.status
        if status != OrderStatus.READY:
            raise OrderNotReady(f"the order is {status}; finalize needs a ready order")
        csr_der = b64decode(request.csr, "csr")
        try:
            csr = parse_csr(csr_der)
        except (InvalidCsr, WeakKey) as exc:
            raise BadCsr(exc.detail) from None
        ordered = {Identifier.parse(i["type"], i["value"]) for i in order.identifiers}
        requested = csr_identifiers(csr)
        # §7.4: the CSR names exactly the identifiers of the order, no more, no fewer.
        if requested != ordered:
            extra = sorted(i.value for i in requested - ordered)
            missing = sorted(i.value for i in ordered - requested)
            raise BadCsr(
                "the CSR's names differ from the order's identifiers"
                + (f"; not in the order: {', '.join(extra)}" if extra else "")
                + (f"; missing: {', '.join(missing)}" if missing else "")
            )
        public_key = csr_public_key(csr)
        # §11.1: the certificate key must not be the account key.
        if same_public_key(public_key, auth.key.key):
            raise BadCsr("the CSR uses the account key; use a separate certificate key")
        state = self._ca.state
        params = TlsServerParams(
            public_key=public_key,
            identifiers=tuple(sorted(ordered)),
            profile=self.profiles[order.profile],
            crl_url=f"{self._settings.base_url}/v1/crl/{state.authority_kid}",
            ocsp_url=f"{self._settings.base_url}/v1/ocsp" if self._settings.acme_ocsp else None,
            not_before=order.not_before,
            not_after=order.not_after,
        )
        started = time.perf_counter()
        certificate = issue_tls_server_certificate(state.authority, params, self._clock)
        serial = serial_hex(certificate)
        now = self._clock.now()
        with transaction(self._engine) as session:
            row = session.get(AcmeOrder, order.id, with_for_update=True)
            assert row is not None
            if row.status != OrderStatus.READY:
                raise OrderNotReady(f"the order is {row.status}; finalize needs a ready order")
            session.add(
                IssuedCertificate(
                    serial=serial,
                    kind=ACME_CERTIFICATE_KIND,
                    spiffe_id=None,
                    issuer_kid=state.authority_kid,
                    not_before=certificate.not_valid_before_utc,
                    not_after=certificate.not_valid_after_utc,
                    certificate_pem=certificate_pem(certificate),
                    requested_by=f"acme:{account.id}",
                    created_at=now,
                )
            )
            session.flush()
            row.status = OrderStatus.VALID
            row.certificate_serial = serial
            row.updated_at = now
            session.add(row)
            self._audit.record(
                session,
                f"acme:{account.id}",
                "acme:certificate:issued",
                target=serial,
                details={
                    "order": row.id,
                    "identifiers": [i.value for i in sorted(ordered)],
                    "profile": row.profile,
                    "not_after": certificate.not_valid_after_utc.isoformat(),
                    "replaces": row.replaces,
                },
            )
            view = OrderView(row, self._authz_ids(session, row.id))
        metrics.SVIDS_ISSUED.labels(ACME_CERTIFICATE_KIND).inc()
        metrics.ISSUANCE_SECONDS.labels(ACME_CERTIFICATE_KIND).observe(
            time.perf_counter() - started
        )
        return view

    # ------------------------------------------------------------------ certificates

    def certificate_chain(
        self, auth: Authenticated, serial: str, alternate: int
    ) -> CertificateChain:
        """The PEM chain (RFC 8555 §7.4.2): leaf and intermediates; alternate 1 adds the root
        for clients that want the whole path.

        Raises:
            AcmeNotFound: no such certificate for this account, or no such alternate.
        """
        account = auth.require_account()
        if alternate not in (0, 1):
            raise AcmeNotFound("no such certificate chain")
        with transaction(self._engine) as session:
            order = session.exec(
                select(AcmeOrder).where(AcmeOrder.certificate_serial == serial)
            ).first()
            issued = session.get(IssuedCertificate, serial)
            if order is None or issued is None or order.account_id != account.id:
                raise AcmeNotFound("no such certificate")
            issuer = session.exec(select(CaKey).where(CaKey.kid == issued.issuer_kid)).one()
        intermediates = load_pem_certificates(
            ((issuer.certificate_pem or "") + issuer.chain_pem).encode()
        )
        chain = [issued.certificate_pem, *(certificate_pem(c) for c in intermediates)]
        if alternate == 1:
            top = intermediates[-1]
            roots = [r for r in self._ca.state.bundle.x509_authorities if issued_by(top, r)]
            chain += [certificate_pem(r) for r in roots[:1]]
        return CertificateChain("".join(chain), alternates=1)

    def revoke(self, auth: Authenticated) -> str:
        """Revoke a certificate (RFC 8555 §7.6), signed by the account that ordered it or by
        the certificate's own key. Returns the serial.

        Raises:
            Malformed: bad payload or certificate. BadRevocationReason: a reason a subscriber
            may not give. Unauthorized: neither the owning account nor the certificate key.
            AlreadyRevoked: already revoked.
        """
        request = parse_payload(Revocation, auth.payload)
        try:
            cert = x509.load_der_x509_certificate(b64decode(request.certificate, "certificate"))
        except ValueError:
            raise Malformed("'certificate' is not a DER certificate") from None
        reason = 0 if request.reason is None else request.reason
        if reason not in SUBSCRIBER_REVOCATION_REASONS:
            raise BadRevocationReason(
                f"reason {reason} is not allowed; use one of "
                + ", ".join(f"{k} ({v})" for k, v in SUBSCRIBER_REVOCATION_REASONS.items())
            )
        serial = serial_hex(cert)
        with transaction(self._engine) as session:
            issued = session.get(IssuedCertificate, serial, with_for_update=True)
            if (
                issued is None
                or issued.kind != ACME_CERTIFICATE_KIND
                or load_pem_certificates(issued.certificate_pem.encode())[0] != cert
            ):
                raise Unauthorized("this server did not issue that certificate through ACME")
            if auth.account is not None:
                order = session.exec(
                    select(AcmeOrder.account_id).where(AcmeOrder.certificate_serial == serial)
                ).first()
                if order != auth.account.id:
                    raise Unauthorized("the certificate was not ordered by this account")
                actor = f"acme:{auth.account.id}"
            else:
                if not same_public_key(cert.public_key(), auth.key.key):
                    raise Unauthorized("the JWS is not signed by the certificate's key")
                actor = f"acme:certificate-key:{serial}"
            if issued.status == CertificateStatus.REVOKED:
                raise AlreadyRevoked("the certificate is already revoked")
            # The same record every revocation makes: the CRL, OCSP and agents all see it.
            revision = self._revocations.record(
                session, [issued], RevocationReason(SUBSCRIBER_REVOCATION_REASONS[reason]), actor
            )
            self._audit.record(
                session,
                actor,
                "acme:certificate:revoked",
                target=serial,
                details={"reason": SUBSCRIBER_REVOCATION_REASONS[reason]},
            )
        self._bus.publish(REVOCATION_CHANNEL, str(revision))
        return serial

    def renewal_info(self, cert_id: str) -> RenewalInfo:
        """RFC 9773 §4.2: the suggested renewal window of a certificate we issued.

        Raises:
            Malformed: not a certID. AcmeNotFound: no such certificate from this CA.
        """
        parsed = parse_cert_id(cert_id)
        with transaction(self._engine) as session:
            issued = session.get(IssuedCertificate, parsed.serial_hex)
        if issued is None or issued.kind != ACME_CERTIFICATE_KIND:
            raise AcmeNotFound("no such certificate")
        cert = load_pem_certificates(issued.certificate_pem.encode())[0]
        if ari_cert_id(cert) != cert_id:
            raise AcmeNotFound("no such certificate")
        now = self._clock.now()
        window = suggested_window(
            issued.not_before, issued.not_after, now, issued.status == CertificateStatus.REVOKED
        )
        life = (issued.not_after - issued.not_before).total_seconds()
        # §4.3: clients poll again after Retry-After; a tenth of the lifetime, at most 6 h.
        return RenewalInfo(window, retry_after=int(max(60, min(6 * 3600, life / 10))))

    # ------------------------------------------------------------------ housekeeping

    def _maybe_prune(self) -> None:
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
        now = self._clock.now()
        expired = deleted = 0
        with transaction(self._engine) as session:
            stale = session.exec(
                select(AcmeOrder).where(
                    col(AcmeOrder.status).in_([OrderStatus.PENDING, OrderStatus.READY]),
                    AcmeOrder.expires <= now,
                )
            ).all()
            for order in stale:
                self._expire(session, order)
                expired += 1
            old = session.exec(
                select(AcmeOrder).where(
                    AcmeOrder.status == OrderStatus.INVALID,
                    AcmeOrder.expires <= now - self._settings.acme_retention,
                )
            ).all()
            for order in old:
                authzs = session.exec(
                    select(AcmeAuthorization).where(AcmeAuthorization.order_id == order.id)
                ).all()
                for authz in authzs:
                    for challenge in session.exec(
                        select(AcmeChallenge).where(AcmeChallenge.authorization_id == authz.id)
                    ):
                        session.delete(challenge)
                session.flush()
                for authz in authzs:
                    session.delete(authz)
                session.flush()
                session.delete(order)
                deleted += 1
            if principal is not None:
                self._audit.record(
                    session,
                    principal.name,
                    "acme:objects:pruned",
                    details={"expired": expired, "deleted": deleted},
                )
        if expired or deleted:
            log.info("acme_pruned", expired=expired, deleted=deleted)
        return expired, deleted

    # ------------------------------------------------------------------ administration

    def list_accounts(self) -> list[AcmeAccount]:
        with transaction(self._engine) as session:
            return list(session.exec(select(AcmeAccount).order_by(col(AcmeAccount.created_at))))

    def admin_deactivate_account(self, principal: Principal, account_id: str) -> AcmeAccount:
        """Raises:
        NotFound: no such account.
        """
        with transaction(self._engine) as session:
            row = session.get(AcmeAccount, account_id, with_for_update=True)
            if row is None:
                raise NotFound("no such ACME account")
            row.status = AccountStatus.DEACTIVATED
            row.updated_at = self._clock.now()
            session.add(row)
            self._audit.record(session, principal.name, "acme:account:deactivated", target=row.id)
        return row

    def list_orders(self, account_id: str | None, status: str | None) -> list[AcmeOrder]:
        with transaction(self._engine) as session:
            query = select(AcmeOrder).order_by(col(AcmeOrder.created_at).desc()).limit(1000)
            if account_id:
                query = query.where(AcmeOrder.account_id == account_id)
            if status:
                query = query.where(AcmeOrder.status == status)
            return list(session.exec(query))

    def list_certificates(self) -> list[tuple[IssuedCertificate, AcmeOrder]]:
        with transaction(self._engine) as session:
            rows = session.exec(
                select(IssuedCertificate, AcmeOrder)
                .join(AcmeOrder, col(AcmeOrder.certificate_serial) == IssuedCertificate.serial)
                .order_by(col(IssuedCertificate.created_at).desc())
                .limit(1000)
            ).all()
            return [(cert, order) for cert, order in rows]

    def create_eab_key(
        self,
        principal: Principal,
        label: str,
        dns_suffixes: Sequence[str],
        ip_networks: Sequence[str],
        ttl: timedelta | None,
    ) -> CreatedEabKey:
        """Create an EAB key; its MAC key is returned here only.

        Raises:
            StoreUnavailable: the database is down.
        """
        secret = new_eab_key()
        now = self._clock.now()
        key_id = "eab_" + secrets.token_urlsafe(12)
        row = AcmeEabKey(
            id=key_id,
            encrypted_key=seal(secret, self._kek, key_id),
            label=label,
            dns_suffixes=[s.lower().strip(".") for s in dns_suffixes],
            ip_networks=list(ip_networks),
            created_by=principal.name,
            created_at=now,
            expires_at=now + ttl if ttl else None,
        )
        with transaction(self._engine) as session:
            session.add(row)
            self._audit.record(
                session,
                principal.name,
                "acme:eab-key:created",
                target=key_id,
                details={"label": label, "dns_suffixes": row.dns_suffixes},
            )
        return CreatedEabKey(row, secret)

    def list_eab_keys(self) -> list[AcmeEabKey]:
        with transaction(self._engine) as session:
            return list(session.exec(select(AcmeEabKey).order_by(col(AcmeEabKey.created_at))))

    def revoke_eab_key(self, principal: Principal, key_id: str) -> None:
        """Raises:
        NotFound: no such key.
        """
        with transaction(self._engine) as session:
            row = session.get(AcmeEabKey, key_id, with_for_update=True)
            if row is None:
                raise NotFound("no such EAB key")
            row.revoked_at = self._clock.now()
            session.add(row)
            self._audit.record(session, principal.name, "acme:eab-key:revoked", target=key_id)


def _days(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours / 24:g} days" if hours >= 48 else f"{hours:g} hours"
