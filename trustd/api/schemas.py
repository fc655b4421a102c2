"""Public wire models. Table models stay internal; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pki.revocation import RevocationReason
from pki.rotation import KeyKind as CaKeyKind
from trustd.domain.verdicts import VerdictDelta
from trustd.roles import Role


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class X509SvidRequest(_Strict):
    spiffe_id: str = Field(max_length=2048, examples=["spiffe://example.org/web"])
    csr: str = Field(max_length=16384, description="PKCS#10 certificate signing request, PEM")
    ttl: int | None = Field(default=None, gt=0, description="Lifetime in seconds")
    dns_names: list[str] = Field(default_factory=list, max_length=32)


class X509SvidResponse(_Strict):
    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    certificate: str = Field(description="The X509-SVID, PEM")
    intermediates: list[str] = Field(description="Intermediate CA certificates, PEM, leaf first")
    bundle: str = Field(description="The trust domain's X.509 authorities, PEM")


class JwtSvidRequest(_Strict):
    spiffe_id: str = Field(max_length=2048)
    audience: list[str] = Field(min_length=1, max_length=16)
    ttl: int | None = Field(default=None, gt=0, description="Lifetime in seconds")


class JwtSvidResponse(_Strict):
    token: str
    spiffe_id: str
    audience: list[str]
    kid: str
    expires_at: datetime


class AuthorityPublic(_Strict):
    kind: str
    kid: str
    status: str
    key_type: str
    upstream: bool
    not_before: datetime
    not_after: datetime
    subject: str | None
    sha256: str | None


class CaPublic(_Strict):
    trust_domain: str
    bundle_sequence: int
    authorities: list[AuthorityPublic]


class TokenCreate(_Strict):
    name: str = Field(min_length=1, max_length=128)
    role: Role = Role.ADMIN
    ttl: int | None = Field(default=None, gt=0, description="Lifetime in seconds")


class TokenPublic(_Strict):
    id: str
    name: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="Shown once; only its hash is stored")


class Health(_Strict):
    status: Literal["ok"]


class EntryCreate(_Strict):
    spiffe_id: str = Field(max_length=2048)
    parent_id: str = Field(max_length=2048)
    selectors: list[str] = Field(min_length=1, max_length=64)
    x509_ttl: int | None = Field(default=None, gt=0, description="Seconds")
    jwt_ttl: int | None = Field(default=None, gt=0, description="Seconds")
    dns_names: list[str] = Field(default_factory=list, max_length=32)
    admin: bool = False
    downstream: bool = False
    hint: str = Field(default="", max_length=256)
    ip_addresses: list[str] = Field(default_factory=list, max_length=64)


class EntryBatch(_Strict):
    entries: list[EntryCreate] = Field(min_length=1, max_length=500)


class EntryUpdate(_Strict):
    spiffe_id: str | None = Field(default=None, max_length=2048)
    parent_id: str | None = Field(default=None, max_length=2048)
    selectors: list[str] | None = Field(default=None, min_length=1, max_length=64)
    x509_ttl: int | None = Field(default=None, gt=0)
    jwt_ttl: int | None = Field(default=None, gt=0)
    dns_names: list[str] | None = Field(default=None, max_length=32)
    admin: bool | None = None
    downstream: bool | None = None
    hint: str | None = Field(default=None, max_length=256)
    ip_addresses: list[str] | None = Field(default=None, max_length=64)


class EntryPublic(_Strict):
    id: str
    spiffe_id: str
    parent_id: str
    selectors: list[str]
    x509_ttl: int
    jwt_ttl: int
    dns_names: list[str]
    admin: bool
    downstream: bool
    hint: str
    ip_addresses: list[str] = Field(default_factory=list)
    revision: int
    created_at: datetime
    updated_at: datetime


class ReportedAddressPublic(_Strict):
    node_id: str
    address: str
    reported_at: datetime


class EntryDetail(EntryPublic):
    reported_addresses: list[ReportedAddressPublic] = Field(
        description="Addresses agents found held by workloads with this SPIFFE ID"
    )


class EntryPage(_Strict):
    entries: list[EntryPublic]
    total: int
    limit: int
    offset: int


class JoinTokenCreate(_Strict):
    ttl: int | None = Field(default=None, gt=0, le=7 * 86400, description="Seconds")
    selectors: list[str] = Field(default_factory=list, max_length=32)


class JoinTokenCreated(_Strict):
    id: str
    token: str = Field(description="Shown once")
    expires_at: datetime
    selectors: list[str]
    spiffe_id: str = Field(description="The node's SPIFFE ID once it attests with this token")
    server_url: str
    ca_sha256: list[str] = Field(description="Root CA fingerprints the agent may pin")


class AttestRequest(_Strict):
    attestor: str = Field(max_length=32, examples=["join_token", "k8s_psat", "x509pop"])
    evidence: dict[str, Any]
    csr: str | None = Field(
        default=None, max_length=16384, description="The node key's CSR (not for challenges)"
    )


class ChallengeResponse(_Strict):
    challenge: str


class SvidChain(_Strict):
    spiffe_id: str
    certificate: str
    intermediates: list[str]
    not_after: datetime


class AttestResponse(_Strict):
    spiffe_id: str
    svid: SvidChain
    bundle: dict[str, Any] = Field(description="The SPIFFE bundle (JWKS)")


class NodePublic(_Strict):
    spiffe_id: str
    attestor: str
    agent_id: str
    selectors: list[str]
    status: str
    svid_serial: str
    svid_not_after: datetime
    attested_at: datetime
    last_seen: datetime | None
    applied_revision: int


class NodeAction(_Strict):
    spiffe_id: str = Field(max_length=2048)


class RevokedSvid(_Strict):
    serial: str
    spiffe_id: str | None
    reason: str
    revision: int


class SyncResponse(_Strict):
    changed: bool
    revision: int
    entries: list[EntryPublic] = Field(default_factory=list)
    bundle: dict[str, Any] | None = None
    revocations: list[RevokedSvid] = Field(default_factory=list)
    revocation_revision: int = 0
    # Enforcing agents only: the node's verdicts, changed since `verdict_since`.
    verdicts: VerdictDelta | None = None


class Ack(_Strict):
    revision: int = Field(ge=0)
    verdict_revision: int | None = Field(default=None, ge=0)


class AgentVerdictLag(_Strict):
    node_id: str
    revision: int
    applied_revision: int
    lag: int
    applied_at: datetime | None


class CsrForEntry(_Strict):
    entry_id: str = Field(max_length=32)
    csr: str = Field(max_length=16384)


class SvidBatchRequest(_Strict):
    csrs: list[CsrForEntry] = Field(min_length=1, max_length=500)


class SignedForEntry(SvidChain):
    entry_id: str


class RefusedForEntry(_Strict):
    entry_id: str
    detail: str


class SvidBatchResponse(_Strict):
    svids: list[SignedForEntry]
    refused: list[RefusedForEntry]


class AgentJwtRequest(_Strict):
    entry_id: str = Field(max_length=32)
    audience: list[str] = Field(min_length=1, max_length=16)


class ReportedIdentity(_Strict):
    spiffe_id: str = Field(max_length=2048)
    addresses: list[str] = Field(max_length=64, description="IPv4 addresses, dotted quad")


class AddressReport(_Strict):
    """Every workload address the agent knows of, by SPIFFE ID; replaces its last report."""

    identities: list[ReportedIdentity] = Field(max_length=1000)


class RenewRequest(_Strict):
    csr: str = Field(max_length=16384)


# --------------------------------------------------------------------------- rotation, revocation


class RevokeRequest(_Strict):
    """Exactly one of `serial` and `spiffe_id`."""

    serial: str | None = Field(default=None, max_length=64, pattern="^[0-9a-fA-F]+$")
    spiffe_id: str | None = Field(default=None, max_length=2048)
    reason: RevocationReason = RevocationReason.UNSPECIFIED


class RevokeResult(_Strict):
    serials: list[str]
    revision: int


class CertificatePublic(_Strict):
    serial: str
    kind: str
    spiffe_id: str | None
    issuer_kid: str
    status: str
    not_before: datetime
    not_after: datetime
    requested_by: str
    created_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None


class CertificateDetail(CertificatePublic):
    certificate: str = Field(description="PEM")


class RevocationEventPublic(_Strict):
    revision: int
    serial: str
    issuer_kid: str
    spiffe_id: str | None
    reason: str
    revoked_at: datetime
    not_after: datetime


class RevocationFeedPublic(_Strict):
    revision: int = Field(description="Ask again with since=<this> for what comes next")
    events: list[RevocationEventPublic]


class KeyPrepare(_Strict):
    kind: CaKeyKind


class KeyActivate(_Strict):
    kind: CaKeyKind
    kid: str | None = Field(default=None, max_length=64)


class KeyRevoke(_Strict):
    reason: RevocationReason = RevocationReason.KEY_COMPROMISE


class KeyChangePublic(_Strict):
    kid: str
    kind: str
    status: str
    bundle_sequence: int
