"""Tables. The schema changes only through Alembic migrations (`alembic/versions`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from pki.rotation import KeyKind, SlotStatus
from trustd.store.types import UTCDateTime

CaKeyKind = KeyKind
# A CA key's status is its rotation slot's (prepared/active/old/tainted/revoked/retired).
CaKeyStatus = SlotStatus


class CertificateKind(StrEnum):
    X509_SVID = "x509-svid"
    NODE_SVID = "node-svid"
    SERVING = "serving"


class CertificateStatus(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"


class AuditOutcome(StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


class CaKey(SQLModel, table=True):
    __tablename__ = "ca_keys"

    id: int | None = Field(default=None, primary_key=True)
    kid: str = Field(max_length=64, unique=True)
    kind: str = Field(max_length=32, index=True)
    status: str = Field(max_length=16, index=True)
    key_type: str = Field(max_length=16)
    # PKCS#8, encrypted with the key-encryption key; NULL when the key lives outside
    # trustd (an upstream authority whose key stays in the operator's files).
    encrypted_key: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    public_key_pem: str = Field(sa_column=Column(Text, nullable=False))
    certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    # Certificates between this authority and its root, PEM, excluding the root.
    chain_pem: str = Field(default="", sa_column=Column(Text, nullable=False))
    upstream: bool = False
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime)
    # The CA key that signed this certificate (an intermediate's root); NULL for roots.
    issuer_kid: str | None = Field(default=None, max_length=64, index=True)
    # For a root that replaced another: this root's key certified by its predecessor, so
    # verifiers that only hold the predecessor still reach the new root (cross-signing).
    cross_certificate_pem: str | None = Field(default=None, sa_column=Column(Text))
    status_changed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class IssuedCertificate(SQLModel, table=True):
    __tablename__ = "issued_certificates"

    serial: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=16)
    spiffe_id: str | None = Field(default=None, max_length=2048, index=True)
    issuer_kid: str = Field(max_length=64, foreign_key="ca_keys.kid", index=True)
    status: str = Field(max_length=16, default=CertificateStatus.VALID)
    not_before: datetime = Field(sa_type=UTCDateTime)
    not_after: datetime = Field(sa_type=UTCDateTime, index=True)
    certificate_pem: str = Field(sa_column=Column(Text, nullable=False))
    requested_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revocation_reason: str | None = Field(default=None, max_length=32)


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    actor: str = Field(max_length=256, index=True)
    action: str = Field(max_length=64, index=True)
    target: str | None = Field(default=None, max_length=2048)
    outcome: str = Field(max_length=16)
    request_id: str | None = Field(default=None, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class AdminToken(SQLModel, table=True):
    __tablename__ = "admin_tokens"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    role: str = Field(max_length=32)
    # SHA-256 of the secret part: the secret is 256 random bits, so a fast hash is enough
    # and a stolen database yields no usable token.
    token_hash: str = Field(max_length=64)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class BundleState(SQLModel, table=True):
    """One row: the trust bundle's `spiffe_sequence` (SPIFFE Trust Domain and Bundle §4.1)."""

    __tablename__ = "bundle_state"

    id: int = Field(default=1, primary_key=True)
    sequence: int = 0
    updated_at: datetime = Field(sa_type=UTCDateTime)


class NodeStatus(StrEnum):
    ACTIVE = "active"
    EVICTED = "evicted"
    BANNED = "banned"


class JoinToken(SQLModel, table=True):
    """Single-use node attestation secret; only its hash is kept."""

    __tablename__ = "join_tokens"

    id: str = Field(primary_key=True, max_length=32)
    token_hash: str = Field(max_length=64)
    selectors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Node(SQLModel, table=True):
    """An attested agent. Evicted nodes must attest again; banned nodes cannot."""

    __tablename__ = "nodes"

    spiffe_id: str = Field(primary_key=True, max_length=2048)
    attestor: str = Field(max_length=32)
    agent_id: str = Field(max_length=512)
    selectors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(max_length=16, index=True)
    # The node SVID the agent holds now and the one before it: node credentials signed with
    # either key are accepted, so a renewal never locks the agent out mid-flight.
    svid_serial: str = Field(max_length=64, index=True)
    svid_public_key_pem: str = Field(sa_column=Column(Text, nullable=False))
    previous_svid_serial: str | None = Field(default=None, max_length=64, index=True)
    previous_public_key_pem: str | None = Field(default=None, sa_column=Column(Text))
    svid_not_after: datetime = Field(sa_type=UTCDateTime)
    attested_at: datetime = Field(sa_type=UTCDateTime)
    last_seen: datetime | None = Field(default=None, sa_type=UTCDateTime)
    applied_revision: int = 0


class RegistrationEntry(SQLModel, table=True):
    """Maps selectors under a parent (node or node alias) to a SPIFFE ID."""

    __tablename__ = "registration_entries"
    __table_args__ = (
        UniqueConstraint("spiffe_id", "parent_id", "selectors_key", name="uq_entry_identity"),
    )

    id: str = Field(primary_key=True, max_length=32)
    spiffe_id: str = Field(max_length=2048, index=True)
    parent_id: str = Field(max_length=2048, index=True)
    selectors: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # The selectors sorted and joined: what makes two entries the same entry.
    selectors_key: str = Field(sa_column=Column(Text, nullable=False))
    x509_ttl: int
    jwt_ttl: int
    dns_names: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    admin: bool = False
    downstream: bool = False
    hint: str = Field(default="", max_length=256)
    # The workload's addresses (CIDR prefixes), for the agents' IP -> identity table.
    ip_addresses: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    revision: int = Field(index=True)
    created_by: str = Field(max_length=256)
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class SyncState(SQLModel, table=True):
    """One row: the revision every agent-visible change (entries, nodes, bundle) advances."""

    __tablename__ = "sync_state"

    id: int = Field(default=1, primary_key=True)
    revision: int = 0


class AttestationReplay(SQLModel, table=True):
    """Evidence already used (a PSAT, an x509pop nonce), kept until it would expire anyway."""

    __tablename__ = "attestation_replay"

    digest: str = Field(primary_key=True, max_length=64)
    attestor: str = Field(max_length=32)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


# Tables defined in their own modules, imported here so Alembic sees one metadata.
from trustd.store import acme_models as _acme_models  # noqa: E402, F401
from trustd.store import policy_models as _policy_models  # noqa: E402, F401
from trustd.store import rotation_models as _rotation_models  # noqa: E402, F401
from trustd.store import ui_models as _ui_models  # noqa: E402, F401
from trustd.store import verdict_models as _verdict_models  # noqa: E402, F401
