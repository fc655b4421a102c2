"""ACME server tables (RFC 8555 §7.1): accounts, orders, authorizations, challenges and the
External Account Binding keys. Issued certificates live in `issued_certificates` (kind
`acme`), so revocation, CRLs and OCSP cover them like every other certificate.

Below the tables, the only SQL the ACME server runs: `create_ fetch_ list_ update_ prune_`
functions that take the caller's `Session` (the service keeps the transaction) and speak in
`trustd.domain.acme` values, never rows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, delete, update
from sqlmodel import Field, Session, SQLModel, col, select

from pki.acme.identifiers import Identifier
from pki.acme.messages import (
    AccountStatus,
    AuthorizationStatus,
    ChallengeStatus,
    ChallengeType,
    OrderStatus,
)
from trustd.domain.acme import (
    ACME_CERTIFICATE_KIND,
    Account,
    AcmeCertificate,
    Authorization,
    Challenge,
    EabKey,
    Order,
    SealedEabKey,
)
from trustd.domain.certificates import CertificateStatus
from trustd.store.certificates import IssuedCertificate
from trustd.store.types import UTCDateTime


class AcmeEabKey(SQLModel, table=True):
    """An External Account Binding key (RFC 8555 §7.3.4) handed to a party out of band."""

    __tablename__ = "acme_eab_keys"

    id: str = Field(primary_key=True, max_length=64)
    # The MAC key, encrypted with the key-encryption key like the CA keys.
    encrypted_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    label: str = Field(max_length=128)
    # Names accounts bound to this key may order (DNS suffixes, CIDR networks); the Rego
    # identifier policy reads them. Empty lists add no restriction beyond the global policy.
    dns_suffixes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    ip_networks: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AcmeAccount(SQLModel, table=True):
    __tablename__ = "acme_accounts"

    id: str = Field(primary_key=True, max_length=32)
    # RFC 7638 thumbprint of the current key: one account per key (RFC 8555 §7.3.1).
    thumbprint: str = Field(max_length=64, unique=True)
    jwk: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16)
    contact: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    eab_key_id: str | None = Field(
        default=None, max_length=64, foreign_key="acme_eab_keys.id", index=True
    )
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AcmeOrder(SQLModel, table=True):
    __tablename__ = "acme_orders"
    __table_args__ = (
        Index("ix_acme_orders_account_id_created_at", "account_id", "created_at"),
        Index("ix_acme_orders_status_expires", "status", "expires"),
    )

    id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(max_length=32, foreign_key="acme_accounts.id")
    status: str = Field(max_length=16)
    identifiers: list[dict[str, str]] = Field(sa_column=Column(JSON, nullable=False))
    profile: str = Field(max_length=64)
    not_before: datetime | None = Field(default=None, sa_type=UTCDateTime)
    not_after: datetime | None = Field(default=None, sa_type=UTCDateTime)
    expires: datetime = Field(sa_type=UTCDateTime)
    # RFC 9773 §5: the ARI certID of the certificate this order replaces.
    replaces: str | None = Field(default=None, max_length=256, index=True)
    certificate_serial: str | None = Field(
        default=None, max_length=64, foreign_key="issued_certificates.serial", index=True
    )
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class AcmeAuthorization(SQLModel, table=True):
    __tablename__ = "acme_authorizations"

    id: str = Field(primary_key=True, max_length=32)
    order_id: str = Field(max_length=32, foreign_key="acme_orders.id", index=True)
    account_id: str = Field(max_length=32, foreign_key="acme_accounts.id", index=True)
    identifier_type: str = Field(max_length=8)
    identifier_value: str = Field(max_length=255)
    wildcard: bool = False
    status: str = Field(max_length=16)
    expires: datetime = Field(sa_type=UTCDateTime)


class AcmeChallenge(SQLModel, table=True):
    __tablename__ = "acme_challenges"

    id: str = Field(primary_key=True, max_length=32)
    authorization_id: str = Field(max_length=32, foreign_key="acme_authorizations.id", index=True)
    type: str = Field(max_length=16)
    token: str = Field(max_length=64)
    status: str = Field(max_length=16)
    validated: datetime | None = Field(default=None, sa_type=UTCDateTime)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


__all__ = [
    "ACME_CERTIFICATE_KIND",
    "AcmeAccount",
    "AcmeAuthorization",
    "AcmeChallenge",
    "AcmeEabKey",
    "AcmeOrder",
]


# --------------------------------------------------------------------------- rows to values


def _account(row: AcmeAccount) -> Account:
    return Account(
        id=row.id,
        thumbprint=row.thumbprint,
        jwk=dict(row.jwk),
        status=AccountStatus(row.status),
        contact=tuple(row.contact),
        eab_key_id=row.eab_key_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _eab_key(row: AcmeEabKey) -> EabKey:
    return EabKey(
        id=row.id,
        label=row.label,
        dns_suffixes=tuple(row.dns_suffixes),
        ip_networks=tuple(row.ip_networks),
        created_by=row.created_by,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def _identifiers(stored: Sequence[dict[str, str]]) -> tuple[Identifier, ...]:
    # Stored as the order's JSON (RFC 8555 §7.1.3 `identifiers`), canonical since newOrder.
    return tuple(Identifier.parse(i["type"], i["value"]) for i in stored)


def _order(row: AcmeOrder) -> Order:
    return Order(
        id=row.id,
        account_id=row.account_id,
        status=OrderStatus(row.status),
        identifiers=_identifiers(row.identifiers),
        profile=row.profile,
        not_before=row.not_before,
        not_after=row.not_after,
        expires=row.expires,
        replaces=row.replaces,
        certificate_serial=row.certificate_serial,
        error=dict(row.error) if row.error is not None else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _authorization(row: AcmeAuthorization) -> Authorization:
    return Authorization(
        id=row.id,
        order_id=row.order_id,
        account_id=row.account_id,
        identifier_type=row.identifier_type,
        identifier_value=row.identifier_value,
        wildcard=row.wildcard,
        status=AuthorizationStatus(row.status),
        expires=row.expires,
    )


def _challenge(row: AcmeChallenge) -> Challenge:
    return Challenge(
        id=row.id,
        authorization_id=row.authorization_id,
        type=ChallengeType(row.type),
        token=row.token,
        status=ChallengeStatus(row.status),
        validated=row.validated,
        error=dict(row.error) if row.error is not None else None,
    )


def _certificate(cert: IssuedCertificate, order: AcmeOrder | None) -> AcmeCertificate:
    return AcmeCertificate(
        serial=cert.serial,
        issuer_kid=cert.issuer_kid,
        status=CertificateStatus(cert.status),
        not_before=cert.not_before,
        not_after=cert.not_after,
        certificate_pem=cert.certificate_pem,
        revoked_at=cert.revoked_at,
        revocation_reason=cert.revocation_reason,
        order_id=order.id if order is not None else None,
        account_id=order.account_id if order is not None else None,
        identifiers=_identifiers(order.identifiers) if order is not None else (),
    )


# --------------------------------------------------------------------------- accounts


def create_account(session: Session, account: Account) -> None:
    """Insert *account*.

    Raises:
        IntegrityError: an account with its id or thumbprint exists (at flush or commit).
    """
    session.add(
        AcmeAccount(
            id=account.id,
            thumbprint=account.thumbprint,
            jwk=dict(account.jwk),
            status=account.status,
            contact=list(account.contact),
            eab_key_id=account.eab_key_id,
            created_at=account.created_at,
            updated_at=account.updated_at,
        )
    )


def fetch_account(session: Session, account_id: str, *, for_update: bool = False) -> Account | None:
    """The account *account_id*, locked for the transaction if *for_update*."""
    row = session.get(AcmeAccount, account_id, with_for_update=for_update)
    return _account(row) if row is not None else None


def fetch_account_by_thumbprint(session: Session, thumbprint: str) -> Account | None:
    """The account whose current key has the RFC 7638 *thumbprint* (one per key, §7.3.1)."""
    row = session.exec(select(AcmeAccount).where(AcmeAccount.thumbprint == thumbprint)).first()
    return _account(row) if row is not None else None


def list_accounts(session: Session) -> list[Account]:
    """Every account, oldest first."""
    rows = session.exec(select(AcmeAccount).order_by(col(AcmeAccount.created_at)))
    return [_account(r) for r in rows]


def update_account(session: Session, account: Account) -> None:
    """Write the mutable members of *account* (key, status, contact, updated_at)."""
    session.execute(
        update(AcmeAccount)
        .where(col(AcmeAccount.id) == account.id)
        .values(
            thumbprint=account.thumbprint,
            jwk=dict(account.jwk),
            status=account.status,
            contact=list(account.contact),
            updated_at=account.updated_at,
        )
    )


# --------------------------------------------------------------------------- EAB keys


def create_eab_key(session: Session, key: EabKey, sealed_mac_key: bytes) -> None:
    """Insert *key* with its MAC key sealed by the key-encryption key."""
    session.add(
        AcmeEabKey(
            id=key.id,
            encrypted_key=sealed_mac_key,
            label=key.label,
            dns_suffixes=list(key.dns_suffixes),
            ip_networks=list(key.ip_networks),
            created_by=key.created_by,
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
        )
    )


def fetch_eab_key(session: Session, key_id: str, *, for_update: bool = False) -> EabKey | None:
    """The EAB key *key_id*, without its MAC key."""
    row = session.get(AcmeEabKey, key_id, with_for_update=for_update)
    return _eab_key(row) if row is not None else None


def fetch_sealed_eab_key(session: Session, key_id: str) -> SealedEabKey | None:
    """The EAB key *key_id* with its sealed MAC key, to verify a binding (§7.3.4)."""
    row = session.get(AcmeEabKey, key_id)
    return SealedEabKey(_eab_key(row), row.encrypted_key) if row is not None else None


def list_eab_keys(session: Session) -> list[EabKey]:
    """Every EAB key, oldest first, without MAC keys."""
    rows = session.exec(select(AcmeEabKey).order_by(col(AcmeEabKey.created_at)))
    return [_eab_key(r) for r in rows]


def update_eab_key(session: Session, key: EabKey) -> None:
    """Write the mutable members of *key* (expiry, revocation)."""
    session.execute(
        update(AcmeEabKey)
        .where(col(AcmeEabKey.id) == key.id)
        .values(expires_at=key.expires_at, revoked_at=key.revoked_at)
    )


# --------------------------------------------------------------------------- orders


def create_order(
    session: Session,
    order: Order,
    authorizations: Sequence[Authorization],
    challenges: Sequence[Challenge],
) -> None:
    """Insert an order with its authorizations and their challenges."""
    order_row = AcmeOrder(
        id=order.id,
        account_id=order.account_id,
        status=order.status,
        identifiers=[i.to_json() for i in order.identifiers],
        profile=order.profile,
        not_before=order.not_before,
        not_after=order.not_after,
        expires=order.expires,
        replaces=order.replaces,
        certificate_serial=order.certificate_serial,
        error=order.error,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )
    authz_rows = [
        AcmeAuthorization(
            id=a.id,
            order_id=a.order_id,
            account_id=a.account_id,
            identifier_type=a.identifier_type,
            identifier_value=a.identifier_value,
            wildcard=a.wildcard,
            status=a.status,
            expires=a.expires,
        )
        for a in authorizations
    ]
    challenge_rows = [
        AcmeChallenge(
            id=c.id,
            authorization_id=c.authorization_id,
            type=c.type,
            token=c.token,
            status=c.status,
            validated=c.validated,
            error=c.error,
        )
        for c in challenges
    ]
    # No ORM relationships: flush parents first so foreign keys hold on insert.
    for rows in ([order_row], authz_rows, challenge_rows):
        session.add_all(rows)
        session.flush()


def fetch_order(session: Session, order_id: str, *, for_update: bool = False) -> Order | None:
    """The order *order_id*, locked for the transaction if *for_update*."""
    row = session.get(AcmeOrder, order_id, with_for_update=for_update)
    return _order(row) if row is not None else None


def fetch_order_by_certificate(
    session: Session, serial: str, *, account_id: str | None = None
) -> Order | None:
    """The order that produced the certificate *serial* (of *account_id*, if given)."""
    query = select(AcmeOrder).where(AcmeOrder.certificate_serial == serial)
    if account_id is not None:
        query = query.where(AcmeOrder.account_id == account_id)
    row = session.exec(query).first()
    return _order(row) if row is not None else None


def fetch_order_id_replacing(
    session: Session, cert_id: str, *, statuses: Collection[OrderStatus]
) -> str | None:
    """The id of an order in one of *statuses* whose `replaces` (RFC 9773 §5) is *cert_id*."""
    return session.exec(
        select(AcmeOrder.id).where(
            AcmeOrder.replaces == cert_id, col(AcmeOrder.status).in_(list(statuses))
        )
    ).first()


def list_order_ids(session: Session, account_id: str, *, offset: int, limit: int) -> list[str]:
    """Ids of the orders of *account_id*, newest first (ties by id), from *offset*."""
    return list(
        session.exec(
            select(AcmeOrder.id)
            .where(AcmeOrder.account_id == account_id)
            .order_by(col(AcmeOrder.created_at).desc(), col(AcmeOrder.id))
            .offset(offset)
            .limit(limit)
        ).all()
    )


def list_orders(
    session: Session,
    *,
    account_id: str | None = None,
    status: str | None = None,
    limit: int = 1000,
) -> list[Order]:
    """The newest *limit* orders, optionally of one account or in one status."""
    query = select(AcmeOrder).order_by(col(AcmeOrder.created_at).desc()).limit(limit)
    if account_id:
        query = query.where(AcmeOrder.account_id == account_id)
    if status:
        query = query.where(AcmeOrder.status == status)
    return [_order(r) for r in session.exec(query)]


def list_orders_expiring(
    session: Session, *, statuses: Collection[OrderStatus], now: datetime
) -> list[Order]:
    """Orders in one of *statuses* whose `expires` is at or before *now*."""
    rows = session.exec(
        select(AcmeOrder).where(col(AcmeOrder.status).in_(list(statuses)), AcmeOrder.expires <= now)
    )
    return [_order(r) for r in rows]


def update_order(session: Session, order: Order) -> None:
    """Write the mutable members of *order* (status, certificate, error, updated_at)."""
    session.execute(
        update(AcmeOrder)
        .where(col(AcmeOrder.id) == order.id)
        .values(
            status=order.status,
            certificate_serial=order.certificate_serial,
            error=order.error,
            updated_at=order.updated_at,
        )
    )


def prune_orders(session: Session, *, status: OrderStatus, expired_before: datetime) -> int:
    """Delete the orders in *status* that expired before *expired_before*, with their
    authorizations and challenges; returns how many orders went."""
    order_ids = list(
        session.exec(
            select(AcmeOrder.id).where(
                AcmeOrder.status == status, AcmeOrder.expires <= expired_before
            )
        ).all()
    )
    if not order_ids:
        return 0
    authz_ids = select(AcmeAuthorization.id).where(col(AcmeAuthorization.order_id).in_(order_ids))
    # Children first: the foreign keys hold at every statement.
    session.execute(delete(AcmeChallenge).where(col(AcmeChallenge.authorization_id).in_(authz_ids)))
    session.execute(delete(AcmeAuthorization).where(col(AcmeAuthorization.order_id).in_(order_ids)))
    session.execute(delete(AcmeOrder).where(col(AcmeOrder.id).in_(order_ids)))
    return len(order_ids)


# --------------------------------------------------------------------------- authorizations


def fetch_authorization(
    session: Session, authz_id: str, *, for_update: bool = False
) -> Authorization | None:
    """The authorization *authz_id*, locked for the transaction if *for_update*."""
    row = session.get(AcmeAuthorization, authz_id, with_for_update=for_update)
    return _authorization(row) if row is not None else None


def list_authorizations(session: Session, order_id: str) -> list[Authorization]:
    """The authorizations of *order_id*, by identifier value."""
    rows = session.exec(
        select(AcmeAuthorization)
        .where(AcmeAuthorization.order_id == order_id)
        .order_by(col(AcmeAuthorization.identifier_value))
    )
    return [_authorization(r) for r in rows]


def list_authorization_ids(session: Session, order_id: str) -> tuple[str, ...]:
    """The ids of the authorizations of *order_id*, by identifier value."""
    return tuple(
        session.exec(
            select(AcmeAuthorization.id)
            .where(AcmeAuthorization.order_id == order_id)
            .order_by(col(AcmeAuthorization.identifier_value))
        ).all()
    )


def update_authorization(session: Session, authz: Authorization) -> None:
    """Write the status of *authz*."""
    session.execute(
        update(AcmeAuthorization)
        .where(col(AcmeAuthorization.id) == authz.id)
        .values(status=authz.status)
    )


def update_authorization_statuses(
    session: Session,
    *,
    current: AuthorizationStatus,
    target: AuthorizationStatus,
    order_id: str | None = None,
    account_id: str | None = None,
) -> int:
    """Move every authorization of *order_id* or *account_id* that is in *current* to
    *target*; returns how many moved.

    Raises:
        ValueError: neither *order_id* nor *account_id* is given.
    """
    if order_id is None and account_id is None:
        raise ValueError("update_authorization_statuses needs an order or an account")
    query = update(AcmeAuthorization).where(col(AcmeAuthorization.status) == current)
    if order_id is not None:
        query = query.where(col(AcmeAuthorization.order_id) == order_id)
    if account_id is not None:
        query = query.where(col(AcmeAuthorization.account_id) == account_id)
    result = session.execute(query.values(status=target))
    return int(getattr(result, "rowcount", 0) or 0)


# --------------------------------------------------------------------------- challenges


def fetch_challenge(
    session: Session, challenge_id: str, *, for_update: bool = False
) -> Challenge | None:
    """The challenge *challenge_id*, locked for the transaction if *for_update*."""
    row = session.get(AcmeChallenge, challenge_id, with_for_update=for_update)
    return _challenge(row) if row is not None else None


def list_challenges(session: Session, authz_id: str) -> tuple[Challenge, ...]:
    """The challenges of *authz_id*, by type."""
    rows = session.exec(
        select(AcmeChallenge)
        .where(AcmeChallenge.authorization_id == authz_id)
        .order_by(col(AcmeChallenge.type))
    )
    return tuple(_challenge(r) for r in rows)


def update_challenge(session: Session, challenge: Challenge) -> None:
    """Write the status, validation time and error of *challenge*."""
    session.execute(
        update(AcmeChallenge)
        .where(col(AcmeChallenge.id) == challenge.id)
        .values(status=challenge.status, validated=challenge.validated, error=challenge.error)
    )


# --------------------------------------------------------------------------- certificates


def fetch_acme_certificate(session: Session, serial: str) -> AcmeCertificate | None:
    """The certificate *serial* if it was issued through ACME, with its order."""
    found = session.exec(
        select(IssuedCertificate, AcmeOrder)
        .join(
            AcmeOrder,
            col(AcmeOrder.certificate_serial) == IssuedCertificate.serial,
            isouter=True,
        )
        .where(IssuedCertificate.serial == serial, IssuedCertificate.kind == ACME_CERTIFICATE_KIND)
    ).first()
    return _certificate(*found) if found is not None else None


def list_acme_certificates(session: Session, *, limit: int = 1000) -> list[AcmeCertificate]:
    """The newest *limit* certificates issued through ACME, with their orders."""
    rows = session.exec(
        select(IssuedCertificate, AcmeOrder)
        .join(AcmeOrder, col(AcmeOrder.certificate_serial) == IssuedCertificate.serial)
        .order_by(col(IssuedCertificate.created_at).desc())
        .limit(limit)
    ).all()
    return [_certificate(cert, order) for cert, order in rows]
