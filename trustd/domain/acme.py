"""ACME server objects (RFC 8555 §7.1) as the services return them and the API renders them:
frozen values, read from the store and never written back by mutation (a change is a new
value passed to a store `update_` function)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pki.acme.identifiers import Identifier
from pki.acme.messages import (
    AccountStatus,
    AuthorizationStatus,
    ChallengeStatus,
    ChallengeType,
    OrderStatus,
)
from pki.acme.profile import RenewalWindow
from trustd.domain.certificates import CertificateKind, CertificateStatus

# `issued_certificates.kind` of certificates issued through ACME.
ACME_CERTIFICATE_KIND = CertificateKind.ACME


@dataclass(frozen=True)
class Account:
    """An ACME account (RFC 8555 §7.1.2), one per key."""

    id: str
    # RFC 7638 thumbprint of `jwk`, the account's current key.
    thumbprint: str
    jwk: dict[str, Any]
    status: AccountStatus
    contact: tuple[str, ...]
    eab_key_id: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class EabKey:
    """An External Account Binding key (RFC 8555 §7.3.4), without its MAC key."""

    id: str
    label: str
    # Names accounts bound to this key may order; the Rego identifier policy reads them.
    dns_suffixes: tuple[str, ...]
    ip_networks: tuple[str, ...]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class SealedEabKey:
    """An EAB key with its MAC key as stored: sealed with the key-encryption key."""

    key: EabKey
    sealed_mac_key: bytes


@dataclass(frozen=True)
class Order:
    """An order (RFC 8555 §7.1.3)."""

    id: str
    account_id: str
    status: OrderStatus
    identifiers: tuple[Identifier, ...]
    profile: str
    not_before: datetime | None
    not_after: datetime | None
    expires: datetime
    # RFC 9773 §5: the ARI certID of the certificate this order replaces.
    replaces: str | None
    certificate_serial: str | None
    # The problem document (RFC 8555 §7.1.3 `error`) of an order that became invalid.
    error: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Authorization:
    """An authorization (RFC 8555 §7.1.4) of one identifier for one order."""

    id: str
    order_id: str
    account_id: str
    identifier_type: str
    # The name authorized: a wildcard's base name (§7.1.4 drops the `*.`).
    identifier_value: str
    wildcard: bool
    status: AuthorizationStatus
    expires: datetime

    @property
    def identifier(self) -> Identifier:
        """The identifier as ordered: a wildcard keeps its `*.` (RFC 8555 §7.1.4)."""
        prefix = "*." if self.wildcard else ""
        return Identifier.parse(self.identifier_type, prefix + self.identifier_value)


@dataclass(frozen=True)
class Challenge:
    """A challenge (RFC 8555 §8) of an authorization."""

    id: str
    authorization_id: str
    type: ChallengeType
    token: str
    status: ChallengeStatus
    validated: datetime | None
    # The problem document of a failed validation (RFC 8555 §8 `error`).
    error: dict[str, Any] | None


@dataclass(frozen=True)
class AcmeCertificate:
    """A certificate issued through ACME, with the order that produced it."""

    serial: str
    issuer_kid: str
    status: CertificateStatus
    not_before: datetime
    not_after: datetime
    certificate_pem: str
    revoked_at: datetime | None
    revocation_reason: str | None
    # None only for a certificate whose order was deleted; ACME keeps such orders.
    order_id: str | None
    account_id: str | None
    identifiers: tuple[Identifier, ...]


class ResourceKind(StrEnum):
    """The ACME resources a request URL names (RFC 8555 §7.1), each read with its account."""

    ORDER = "order"
    AUTHORIZATION = "authz"
    CHALLENGE = "chall"
    CERTIFICATE = "cert"


@dataclass(frozen=True)
class ResourceRef:
    """The resource a request is about, from its URL: read in the same statement as the
    account that signed the request."""

    kind: ResourceKind
    id: str


@dataclass(frozen=True)
class AccountObjects:
    """What one request reads in one statement: the signing account and the objects of the
    resource its URL names, when they are the account's own (RFC 8555 §7.1). For an order,
    its authorizations by identifier value; for an authorization, that one authorization,
    its order and its challenges by type; for a challenge, that challenge, its authorization
    and its order; for a certificate, the certificate and the order that produced it."""

    account: Account
    order: Order | None = None
    authorizations: tuple[Authorization, ...] = ()
    challenges: tuple[Challenge, ...] = ()
    certificate: AcmeCertificate | None = None


@dataclass(frozen=True)
class ValidationObjects:
    """A challenge being validated, its authorization and its order, as locked together."""

    challenge: Challenge
    authorization: Authorization
    order: Order


@dataclass(frozen=True)
class OrderView:
    """An order and the ids of its authorizations, ordered by identifier."""

    order: Order
    authorization_ids: tuple[str, ...]


@dataclass(frozen=True)
class AuthorizationView:
    """An authorization, its challenges, and the Retry-After to send (RFC 8555 §7.5.1)."""

    authorization: Authorization
    challenges: tuple[Challenge, ...]
    retry_after: int | None


@dataclass(frozen=True)
class ChallengeView:
    """A challenge, the id of its authorization (for Link rel="up"), and the Retry-After to
    send (RFC 8555 §7.5.1)."""

    challenge: Challenge
    authorization_id: str
    retry_after: int | None


@dataclass(frozen=True)
class OrderPage:
    """One page of an account's order ids, newest first (RFC 8555 §7.1.2.1)."""

    order_ids: tuple[str, ...]
    more: bool


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
    """A new EAB key and its MAC key, which is shown this once."""

    key: EabKey
    secret: bytes
