"""ACME server tables (RFC 8555 §7.1): accounts, orders, authorizations, challenges and the
External Account Binding keys. Issued certificates live in `issued_certificates` (kind
`acme`), so revocation, CRLs and OCSP cover them like every other certificate.

Below the tables, the only SQL the ACME server runs: `create_ fetch_ list_ update_ prune_`
functions that take the caller's `Session` (the service keeps the transaction) and speak in
`trustd.domain.acme` values, never rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Alias,
    BindParameter,
    Column,
    Index,
    Label,
    LargeBinary,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlmodel import Field, Session, SQLModel, col
from sqlmodel import select as sqlmodel_select

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
    AccountObjects,
    AcmeCertificate,
    Authorization,
    Challenge,
    EabKey,
    Order,
    ResourceKind,
    ResourceRef,
    SealedEabKey,
    ValidationObjects,
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

# The tables as Core objects: the request path reads and writes them with Core statements,
# which cost a fraction of the ORM's identity map and unit of work for the same SQL.
_ACCOUNTS = AcmeAccount.metadata.tables["acme_accounts"]
_ORDERS = AcmeOrder.metadata.tables["acme_orders"]
_AUTHZS = AcmeAuthorization.metadata.tables["acme_authorizations"]
_CHALLENGES = AcmeChallenge.metadata.tables["acme_challenges"]
_CERTIFICATES = IssuedCertificate.metadata.tables["issued_certificates"]


class _Columns:
    """Reads one table's columns out of a joined row by name, whatever their position.

    A joined select labels every column `<table>_<column>`; a row of a single-table select
    carries the bare names. Either way the converters below read `m["status"]`."""

    __slots__ = ("_prefix", "_row")

    def __init__(self, row: Mapping[Any, Any], prefix: str = "") -> None:
        self._row = row
        self._prefix = prefix

    def __getitem__(self, name: str) -> Any:
        return self._row[self._prefix + name]

    def present(self) -> bool:
        """Whether an outer join found the row (its primary key is not NULL)."""
        return self._row[self._prefix + "id"] is not None


Row = Mapping[Any, Any] | _Columns


def _account(m: Row) -> Account:
    return Account(
        id=m["id"],
        thumbprint=m["thumbprint"],
        jwk=dict(m["jwk"]),
        status=AccountStatus(m["status"]),
        contact=tuple(m["contact"]),
        eab_key_id=m["eab_key_id"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
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


def _order(m: Row) -> Order:
    return Order(
        id=m["id"],
        account_id=m["account_id"],
        status=OrderStatus(m["status"]),
        identifiers=_identifiers(m["identifiers"]),
        profile=m["profile"],
        not_before=m["not_before"],
        not_after=m["not_after"],
        expires=m["expires"],
        replaces=m["replaces"],
        certificate_serial=m["certificate_serial"],
        error=dict(m["error"]) if m["error"] is not None else None,
        created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _authorization(m: Row) -> Authorization:
    return Authorization(
        id=m["id"],
        order_id=m["order_id"],
        account_id=m["account_id"],
        identifier_type=m["identifier_type"],
        identifier_value=m["identifier_value"],
        wildcard=bool(m["wildcard"]),
        status=AuthorizationStatus(m["status"]),
        expires=m["expires"],
    )


def _challenge(m: Row) -> Challenge:
    return Challenge(
        id=m["id"],
        authorization_id=m["authorization_id"],
        type=ChallengeType(m["type"]),
        token=m["token"],
        status=ChallengeStatus(m["status"]),
        validated=m["validated"],
        error=dict(m["error"]) if m["error"] is not None else None,
    )


def _certificate(cert: Row, order: Row | None) -> AcmeCertificate:
    return AcmeCertificate(
        serial=cert["serial"],
        issuer_kid=cert["issuer_kid"],
        status=CertificateStatus(cert["status"]),
        not_before=cert["not_before"],
        not_after=cert["not_after"],
        certificate_pem=cert["certificate_pem"],
        revoked_at=cert["revoked_at"],
        revocation_reason=cert["revocation_reason"],
        order_id=order["id"] if order is not None else None,
        account_id=order["account_id"] if order is not None else None,
        identifiers=_identifiers(order["identifiers"]) if order is not None else (),
    )


def _labelled(*tables: Table | Alias) -> list[Label[Any]]:
    """Every column of *tables*, labelled `<name>_<column>` (read back with `_Columns`)."""
    return [c.label(f"{t.name}_{c.key}") for t in tables for c in t.c]


# --------------------------------------------------------------------------- accounts


def create_account(session: Session, account: Account) -> None:
    """Insert *account*.

    Raises:
        IntegrityError: an account with its id or thumbprint exists.
    """
    session.execute(
        insert(_ACCOUNTS).values(
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
    query = select(_ACCOUNTS).where(_ACCOUNTS.c.id == account_id)
    if for_update:
        query = query.with_for_update()
    row = session.execute(query).mappings().first()
    return _account(row) if row is not None else None


def fetch_account_by_thumbprint(session: Session, thumbprint: str) -> Account | None:
    """The account whose current key has the RFC 7638 *thumbprint* (one per key, §7.3.1)."""
    row = (
        session.execute(select(_ACCOUNTS).where(_ACCOUNTS.c.thumbprint == thumbprint))
        .mappings()
        .first()
    )
    return _account(row) if row is not None else None


def list_accounts(session: Session) -> list[Account]:
    """Every account, oldest first."""
    rows = session.execute(select(_ACCOUNTS).order_by(_ACCOUNTS.c.created_at)).mappings()
    return [_account(r) for r in rows]


def update_account(session: Session, account: Account) -> None:
    """Write the mutable members of *account* (key, status, contact, updated_at)."""
    session.execute(
        update(_ACCOUNTS)
        .where(_ACCOUNTS.c.id == account.id)
        .values(
            thumbprint=account.thumbprint,
            jwk=dict(account.jwk),
            status=account.status,
            contact=list(account.contact),
            updated_at=account.updated_at,
        )
    )


# --------------------------------------------------------------------------- one request


def _build_account_reads() -> dict[ResourceKind | None, Select[Any]]:
    """The joined select of each kind of request target, built once: the request path runs
    them with bind parameters (`account_id`, `target_id`) and SQLAlchemy compiles each once.
    Another account's resource does not join (not-found leaks nothing)."""
    a, o, z, c, t = _ACCOUNTS, _ORDERS, _AUTHZS, _CHALLENGES, _CERTIFICATES
    account_id: BindParameter[str] = bindparam("account_id")
    target_id: BindParameter[str] = bindparam("target_id")
    own = a.c.id == account_id
    return {
        None: select(*_labelled(a)).where(own),
        ResourceKind.ORDER: select(*_labelled(a, o, z))
        .select_from(a)
        .outerjoin(o, and_(o.c.id == target_id, o.c.account_id == a.c.id))
        .outerjoin(z, z.c.order_id == o.c.id)
        .where(own)
        .order_by(z.c.identifier_value),
        ResourceKind.AUTHORIZATION: select(*_labelled(a, z, o, c))
        .select_from(a)
        .outerjoin(z, and_(z.c.id == target_id, z.c.account_id == a.c.id))
        .outerjoin(o, o.c.id == z.c.order_id)
        .outerjoin(c, c.c.authorization_id == z.c.id)
        .where(own)
        .order_by(c.c.type),
        # The challenge joins by id; its authorization only if it is the account's, and
        # `fetch_account_objects` drops a challenge whose authorization did not join.
        ResourceKind.CHALLENGE: select(*_labelled(a, c, z, o))
        .select_from(a)
        .outerjoin(c, c.c.id == target_id)
        .outerjoin(z, and_(z.c.id == c.c.authorization_id, z.c.account_id == a.c.id))
        .outerjoin(o, o.c.id == z.c.order_id)
        .where(own),
        ResourceKind.CERTIFICATE: select(*_labelled(a, o, t))
        .select_from(a)
        .outerjoin(o, and_(o.c.certificate_serial == target_id, o.c.account_id == a.c.id))
        .outerjoin(
            t, and_(t.c.serial == o.c.certificate_serial, t.c.kind == str(ACME_CERTIFICATE_KIND))
        )
        .where(own),
    }


_ACCOUNT_READS = _build_account_reads()


def fetch_account_objects(
    session: Session, account_id: str, target: ResourceRef | None
) -> AccountObjects | None:
    """The account *account_id* and, in the same statement, the resource a request names
    (RFC 8555 §7.1: the URL of an order, authorization, challenge or certificate) with what
    the request needs beside it: an order with its authorizations (by identifier value), an
    authorization with its order and challenges (by type), a challenge with its
    authorization and order, a certificate with its order. Another account's resource is
    not found (not-found leaks nothing): only the account's own rows join. None if there is
    no such account.
    """
    kind = target.kind if target is not None else None
    rows = (
        session.execute(
            _ACCOUNT_READS[kind],
            {"account_id": account_id, "target_id": target.id if target is not None else None},
        )
        .mappings()
        .all()
    )
    if not rows:
        return None
    first = rows[0]
    account = _account(_Columns(first, "acme_accounts_"))
    if kind is None:
        return AccountObjects(account=account)
    found_order = _Columns(first, "acme_orders_")
    order = _order(found_order) if found_order.present() else None
    if kind is ResourceKind.CERTIFICATE:
        serial = first["issued_certificates_serial"]
        certificate = (
            _certificate(_Columns(first, "issued_certificates_"), found_order)
            if serial is not None
            else None
        )
        return AccountObjects(account=account, order=order, certificate=certificate)
    authorizations: dict[str, Authorization] = {}
    challenges: dict[str, Challenge] = {}
    for row in rows:
        if (z := _Columns(row, "acme_authorizations_")).present():
            authorizations.setdefault(z["id"], _authorization(z))
        if kind is not ResourceKind.ORDER and (c := _Columns(row, "acme_challenges_")).present():
            challenges.setdefault(c["id"], _challenge(c))
    return AccountObjects(
        account=account,
        order=order,
        authorizations=tuple(authorizations.values()),
        # A challenge of another account's authorization is not found, like no challenge.
        challenges=tuple(challenges.values()) if authorizations else (),
    )


_VALIDATION_READ = (
    select(*_labelled(_CHALLENGES, _AUTHZS, _ORDERS))
    .select_from(_CHALLENGES)
    .join(_AUTHZS, _AUTHZS.c.id == _CHALLENGES.c.authorization_id)
    .join(_ORDERS, _ORDERS.c.id == _AUTHZS.c.order_id)
    .where(_CHALLENGES.c.id == bindparam("challenge_id"))
    .with_for_update(of=[_CHALLENGES, _AUTHZS, _ORDERS])
)


def fetch_validation(session: Session, challenge_id: str) -> ValidationObjects | None:
    """The challenge *challenge_id* with its authorization and order, all three locked for
    the transaction, in one statement."""
    row = session.execute(_VALIDATION_READ, {"challenge_id": challenge_id}).mappings().first()
    if row is None:
        return None
    return ValidationObjects(
        challenge=_challenge(_Columns(row, "acme_challenges_")),
        authorization=_authorization(_Columns(row, "acme_authorizations_")),
        order=_order(_Columns(row, "acme_orders_")),
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
    rows = session.exec(sqlmodel_select(AcmeEabKey).order_by(col(AcmeEabKey.created_at)))
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
    """Insert an order with its authorizations and their challenges: one statement per
    table, parents first so that the foreign keys hold at every statement."""
    session.execute(
        insert(_ORDERS).values(
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
    )
    if authorizations:
        session.execute(
            insert(_AUTHZS),
            [
                {
                    "id": a.id,
                    "order_id": a.order_id,
                    "account_id": a.account_id,
                    "identifier_type": a.identifier_type,
                    "identifier_value": a.identifier_value,
                    "wildcard": a.wildcard,
                    "status": a.status,
                    "expires": a.expires,
                }
                for a in authorizations
            ],
        )
    if challenges:
        session.execute(
            insert(_CHALLENGES),
            [
                {
                    "id": c.id,
                    "authorization_id": c.authorization_id,
                    "type": c.type,
                    "token": c.token,
                    "status": c.status,
                    "validated": c.validated,
                    "error": c.error,
                }
                for c in challenges
            ],
        )


def fetch_order(session: Session, order_id: str, *, for_update: bool = False) -> Order | None:
    """The order *order_id*, locked for the transaction if *for_update*."""
    query = select(_ORDERS).where(_ORDERS.c.id == order_id)
    if for_update:
        query = query.with_for_update()
    row = session.execute(query).mappings().first()
    return _order(row) if row is not None else None


def fetch_order_by_certificate(
    session: Session, serial: str, *, account_id: str | None = None
) -> Order | None:
    """The order that produced the certificate *serial* (of *account_id*, if given)."""
    query = select(_ORDERS).where(_ORDERS.c.certificate_serial == serial)
    if account_id is not None:
        query = query.where(_ORDERS.c.account_id == account_id)
    row = session.execute(query).mappings().first()
    return _order(row) if row is not None else None


def fetch_order_id_replacing(
    session: Session, cert_id: str, *, statuses: Collection[OrderStatus]
) -> str | None:
    """The id of an order in one of *statuses* whose `replaces` (RFC 9773 §5) is *cert_id*."""
    found = session.execute(
        select(_ORDERS.c.id).where(
            _ORDERS.c.replaces == cert_id, _ORDERS.c.status.in_([str(s) for s in statuses])
        )
    ).first()
    return str(found[0]) if found is not None else None


def list_order_ids(session: Session, account_id: str, *, offset: int, limit: int) -> list[str]:
    """Ids of the orders of *account_id*, newest first (ties by id), from *offset*."""
    rows = session.execute(
        select(_ORDERS.c.id)
        .where(_ORDERS.c.account_id == account_id)
        .order_by(_ORDERS.c.created_at.desc(), _ORDERS.c.id)
        .offset(offset)
        .limit(limit)
    )
    return [str(r[0]) for r in rows]


def list_orders(
    session: Session,
    *,
    account_id: str | None = None,
    status: str | None = None,
    limit: int = 1000,
) -> list[Order]:
    """The newest *limit* orders, optionally of one account or in one status."""
    query = select(_ORDERS).order_by(_ORDERS.c.created_at.desc()).limit(limit)
    if account_id:
        query = query.where(_ORDERS.c.account_id == account_id)
    if status:
        query = query.where(_ORDERS.c.status == status)
    return [_order(r) for r in session.execute(query).mappings()]


def list_orders_expiring(
    session: Session, *, statuses: Collection[OrderStatus], now: datetime
) -> list[Order]:
    """Orders in one of *statuses* whose `expires` is at or before *now*."""
    rows = session.execute(
        select(_ORDERS).where(
            _ORDERS.c.status.in_([str(s) for s in statuses]), _ORDERS.c.expires <= now
        )
    ).mappings()
    return [_order(r) for r in rows]


def update_order(session: Session, order: Order, *, expected: OrderStatus | None = None) -> bool:
    """Write the mutable members of *order* (status, certificate, error, updated_at); with
    *expected*, only if the stored status still is *expected* (a compare-and-set: of two
    requests moving one order on, one wins). Returns whether the row was written."""
    query = update(_ORDERS).where(_ORDERS.c.id == order.id)
    if expected is not None:
        query = query.where(_ORDERS.c.status == str(expected))
    result = session.execute(
        query.values(
            status=order.status,
            certificate_serial=order.certificate_serial,
            error=order.error,
            updated_at=order.updated_at,
        )
    )
    return _rowcount(result) == 1


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def prune_orders(session: Session, *, status: OrderStatus, expired_before: datetime) -> int:
    """Delete the orders in *status* that expired before *expired_before*, with their
    authorizations and challenges; returns how many orders went."""
    order_ids = [
        str(r[0])
        for r in session.execute(
            select(_ORDERS.c.id).where(
                _ORDERS.c.status == str(status), _ORDERS.c.expires <= expired_before
            )
        )
    ]
    if not order_ids:
        return 0
    authz_ids = select(_AUTHZS.c.id).where(_AUTHZS.c.order_id.in_(order_ids))
    # Children first: the foreign keys hold at every statement.
    session.execute(delete(_CHALLENGES).where(_CHALLENGES.c.authorization_id.in_(authz_ids)))
    session.execute(delete(_AUTHZS).where(_AUTHZS.c.order_id.in_(order_ids)))
    session.execute(delete(_ORDERS).where(_ORDERS.c.id.in_(order_ids)))
    return len(order_ids)


# --------------------------------------------------------------------------- authorizations


def fetch_authorization(
    session: Session, authz_id: str, *, for_update: bool = False
) -> Authorization | None:
    """The authorization *authz_id*, locked for the transaction if *for_update*."""
    query = select(_AUTHZS).where(_AUTHZS.c.id == authz_id)
    if for_update:
        query = query.with_for_update()
    row = session.execute(query).mappings().first()
    return _authorization(row) if row is not None else None


def list_authorizations(session: Session, order_id: str) -> list[Authorization]:
    """The authorizations of *order_id*, by identifier value."""
    rows = session.execute(
        select(_AUTHZS).where(_AUTHZS.c.order_id == order_id).order_by(_AUTHZS.c.identifier_value)
    ).mappings()
    return [_authorization(r) for r in rows]


def update_authorization(session: Session, authz: Authorization) -> None:
    """Write the status of *authz*."""
    session.execute(update(_AUTHZS).where(_AUTHZS.c.id == authz.id).values(status=authz.status))


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
    query = update(_AUTHZS).where(_AUTHZS.c.status == str(current))
    if order_id is not None:
        query = query.where(_AUTHZS.c.order_id == order_id)
    if account_id is not None:
        query = query.where(_AUTHZS.c.account_id == account_id)
    return _rowcount(session.execute(query.values(status=target)))


# --------------------------------------------------------------------------- challenges


def fetch_challenge(
    session: Session, challenge_id: str, *, for_update: bool = False
) -> Challenge | None:
    """The challenge *challenge_id*, locked for the transaction if *for_update*."""
    query = select(_CHALLENGES).where(_CHALLENGES.c.id == challenge_id)
    if for_update:
        query = query.with_for_update()
    row = session.execute(query).mappings().first()
    return _challenge(row) if row is not None else None


def list_challenges(session: Session, authz_id: str) -> tuple[Challenge, ...]:
    """The challenges of *authz_id*, by type."""
    rows = session.execute(
        select(_CHALLENGES)
        .where(_CHALLENGES.c.authorization_id == authz_id)
        .order_by(_CHALLENGES.c.type)
    ).mappings()
    return tuple(_challenge(r) for r in rows)


def update_challenge(
    session: Session, challenge: Challenge, *, expected: ChallengeStatus | None = None
) -> bool:
    """Write the status, validation time and error of *challenge*; with *expected*, only
    if the stored status still is *expected* (compare-and-set). Returns whether the row was
    written."""
    query = update(_CHALLENGES).where(_CHALLENGES.c.id == challenge.id)
    if expected is not None:
        query = query.where(_CHALLENGES.c.status == str(expected))
    result = session.execute(
        query.values(status=challenge.status, validated=challenge.validated, error=challenge.error)
    )
    return _rowcount(result) == 1


# --------------------------------------------------------------------------- certificates


def fetch_acme_certificate(session: Session, serial: str) -> AcmeCertificate | None:
    """The certificate *serial* if it was issued through ACME, with its order."""
    t, o = _CERTIFICATES, _ORDERS
    row = (
        session.execute(
            select(*_labelled(t, o))
            .select_from(t)
            .outerjoin(o, o.c.certificate_serial == t.c.serial)
            .where(t.c.serial == serial, t.c.kind == str(ACME_CERTIFICATE_KIND))
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    order = _Columns(row, "acme_orders_")
    return _certificate(_Columns(row, "issued_certificates_"), order if order.present() else None)


def list_acme_certificates(session: Session, *, limit: int = 1000) -> list[AcmeCertificate]:
    """The newest *limit* certificates issued through ACME, with their orders."""
    t, o = _CERTIFICATES, _ORDERS
    rows = session.execute(
        select(*_labelled(t, o))
        .select_from(t)
        .join(o, o.c.certificate_serial == t.c.serial)
        .order_by(t.c.created_at.desc())
        .limit(limit)
    ).mappings()
    return [
        _certificate(_Columns(r, "issued_certificates_"), _Columns(r, "acme_orders_")) for r in rows
    ]
