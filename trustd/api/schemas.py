"""Public wire models. Table models stay internal; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from pki.bundle import MAX_BUNDLE_BYTES
from pki.federation import BundleEndpointProfile
from pki.revocation import RevocationReason
from pki.rotation import KeyKind as CaKeyKind
from trustd.api.wire import Count, Flag, Seconds, WireModel
from trustd.domain.nodes import MAX_ALWAYS_ALLOWED, Unmanaged
from trustd.domain.verdicts import VerdictDelta
from trustd.roles import Role


class X509SvidRequest(WireModel):
    spiffe_id: str = Field(max_length=2048, examples=["spiffe://example.org/web"])
    csr: str = Field(max_length=16384, description="PKCS#10 certificate signing request, PEM")
    ttl: Seconds | None = Field(default=None, description="Lifetime in seconds")
    dns_names: list[str] = Field(default_factory=list, max_length=32)


class X509SvidResponse(WireModel):
    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    certificate: str = Field(description="The X509-SVID, PEM")
    intermediates: list[str] = Field(description="Intermediate CA certificates, PEM, leaf first")
    bundle: str = Field(description="The trust domain's X.509 authorities, PEM")


class JwtSvidRequest(WireModel):
    spiffe_id: str = Field(max_length=2048)
    audience: list[str] = Field(min_length=1, max_length=16)
    ttl: Seconds | None = Field(default=None, description="Lifetime in seconds")


class JwtSvidResponse(WireModel):
    token: str
    spiffe_id: str
    audience: list[str]
    kid: str
    expires_at: datetime


# A public JWK has at most a handful of members (kty, crv, x, y, n, e, alg, kid, use).
_JWK_MEMBERS = 16
_WORKLOAD_JWK = (
    "The workload's public key as a JWK (RFC 7517) with `alg` (ES256/384/512, RS256/384/512, "
    "PS256/384/512): it goes into the token's `cnf.jwk` (WIMSE Workload Credentials §3.1)"
)


class WitSvidRequest(WireModel):
    spiffe_id: str = Field(max_length=2048)
    jwk: dict[str, Any] = Field(max_length=_JWK_MEMBERS, description=_WORKLOAD_JWK)
    ttl: Seconds | None = Field(default=None, description="Lifetime in seconds")


class WitSvidResponse(WireModel):
    token: str = Field(description="The WIT-SVID, JWS compact serialization (typ wit+jwt)")
    spiffe_id: str
    kid: str
    jti: str | None
    expires_at: datetime


class AuthorityPublic(WireModel):
    kind: str
    kid: str
    status: str
    key_type: str
    upstream: bool
    not_before: datetime
    not_after: datetime
    subject: str | None
    sha256: str | None
    # Where the private key lives: file (sealed in the database), pkcs11 (a token object,
    # named by its CKA_ID and label) or upstream (the upstream CA's own key file).
    key_backend: str
    key_location: str
    key_id: str | None = None


class CaPublic(WireModel):
    trust_domain: str
    bundle_sequence: int
    authorities: list[AuthorityPublic]
    # Where new CA keys are made (`ca_key_backend`), and the token when it is pkcs11.
    key_backend: str
    pkcs11_token: str | None = None


class TokenCreate(WireModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role = Role.ADMIN
    ttl: Seconds | None = Field(default=None, description="Lifetime in seconds")


class TokenPublic(WireModel):
    id: str
    name: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="Shown once; only its hash is stored")


class Health(WireModel):
    status: Literal["ok"]


class EntryCreate(WireModel):
    spiffe_id: str = Field(max_length=2048)
    parent_id: str = Field(max_length=2048)
    selectors: list[str] = Field(min_length=1, max_length=64)
    x509_ttl: Seconds | None = Field(default=None, description="Seconds")
    jwt_ttl: Seconds | None = Field(default=None, description="Seconds")
    dns_names: list[str] = Field(default_factory=list, max_length=32)
    admin: Flag = False
    downstream: Flag = False
    hint: str = Field(default="", max_length=256)
    ip_addresses: list[str] = Field(default_factory=list, max_length=64)
    federates_with: list[str] = Field(
        default_factory=list, max_length=32, description="Federated trust domains"
    )


class EntryBatch(WireModel):
    entries: list[EntryCreate] = Field(min_length=1, max_length=500)


class EntryUpdate(WireModel):
    spiffe_id: str | None = Field(default=None, max_length=2048)
    parent_id: str | None = Field(default=None, max_length=2048)
    selectors: list[str] | None = Field(default=None, min_length=1, max_length=64)
    x509_ttl: Seconds | None = None
    jwt_ttl: Seconds | None = None
    dns_names: list[str] | None = Field(default=None, max_length=32)
    admin: Flag | None = None
    downstream: Flag | None = None
    hint: str | None = Field(default=None, max_length=256)
    ip_addresses: list[str] | None = Field(default=None, max_length=64)
    federates_with: list[str] | None = Field(default=None, max_length=32)


class EntryPublic(WireModel):
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
    federates_with: list[str] = Field(default_factory=list)
    revision: int
    created_at: datetime
    updated_at: datetime


class ReportedAddressPublic(WireModel):
    node_id: str
    address: str
    reported_at: datetime


class EntryDetail(EntryPublic):
    reported_addresses: list[ReportedAddressPublic] = Field(
        description="Addresses agents found held by workloads with this SPIFFE ID"
    )


class EntryPage(WireModel):
    entries: list[EntryPublic]
    total: int
    limit: int
    offset: int


class JoinTokenCreate(WireModel):
    ttl: Seconds | None = Field(default=None, le=7 * 86400, description="Seconds")
    selectors: list[str] = Field(default_factory=list, max_length=32)


class JoinTokenCreated(WireModel):
    id: str
    token: str = Field(description="Shown once")
    expires_at: datetime
    selectors: list[str]
    spiffe_id: str = Field(description="The node's SPIFFE ID once it attests with this token")
    server_url: str
    ca_sha256: list[str] = Field(description="Root CA fingerprints the agent may pin")


class AttestRequest(WireModel):
    attestor: str = Field(max_length=32, examples=["join_token", "k8s_psat", "x509pop", "tpm"])
    evidence: dict[str, Any]
    csr: str | None = Field(
        default=None, max_length=16384, description="The node key's CSR (not for challenges)"
    )


class ChallengeResponse(WireModel):
    challenge: str
    credential_blob: str | None = Field(
        default=None, description="tpm: TPM2_MakeCredential's TPM2B_ID_OBJECT (base64url)"
    )
    encrypted_secret: str | None = Field(
        default=None, description="tpm: its TPM2B_ENCRYPTED_SECRET (base64url)"
    )


class SvidChain(WireModel):
    spiffe_id: str
    certificate: str
    intermediates: list[str]
    not_after: datetime


class AttestResponse(WireModel):
    spiffe_id: str
    svid: SvidChain
    bundle: dict[str, Any] = Field(description="The SPIFFE bundle (JWKS)")


class NodePublic(WireModel):
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
    # Enforcement scope: what its workloads' packets to unmanaged destinations get, and the
    # prefixes they always reach.
    unmanaged: Unmanaged
    always_allowed: list[str]


class NodeAction(WireModel):
    spiffe_id: str = Field(max_length=2048)


class NodeScopeRequest(WireModel):
    spiffe_id: str = Field(max_length=2048)
    unmanaged: Unmanaged = Unmanaged.ALLOW
    always_allowed: list[str] = Field(default_factory=list, max_length=MAX_ALWAYS_ALLOWED)


class NodeScopePublic(WireModel):
    """The enforcement scope an agent applies (sent on the sync channel)."""

    unmanaged: Unmanaged
    always_allowed: list[str]


class RevokedSvid(WireModel):
    serial: str
    spiffe_id: str | None
    reason: str
    revision: int
    # The certificate's own expiry: after it, nobody needs to remember the serial.
    not_after: datetime | None = None


class QuarantineNotice(WireModel):
    """A quarantined identity as agents get it: they serve and mint no SVID for it and
    refuse it on the Workload API with the reason, until `until` (None: until released)."""

    spiffe_id: str
    reason: str
    until: datetime | None


class SyncResponse(WireModel):
    changed: bool
    revision: int
    entries: list[EntryPublic] = Field(default_factory=list)
    bundle: dict[str, Any] | None = None
    revocations: list[RevokedSvid] = Field(default_factory=list)
    revocation_revision: int = 0
    # Enforcing agents only: the node's verdicts, changed since `verdict_since`.
    verdicts: VerdictDelta | None = None
    # Every quarantine in force of the node's entries' SPIFFE IDs (sent with the entries).
    quarantines: list[QuarantineNotice] = Field(default_factory=list)
    # The node's enforcement scope (sent with the entries).
    scope: NodeScopePublic | None = None
    # The bundles of the trust domains the node's entries federate with, by trust domain
    # name (sent with the entries; each change of one advances the revision).
    federated_bundles: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Ack(WireModel):
    revision: Count
    verdict_revision: Count | None = None


class AgentVerdictLag(WireModel):
    node_id: str
    revision: int
    applied_revision: int
    lag: int
    applied_at: datetime | None


class CsrForEntry(WireModel):
    entry_id: str = Field(max_length=32)
    csr: str = Field(max_length=16384)


class SvidBatchRequest(WireModel):
    csrs: list[CsrForEntry] = Field(min_length=1, max_length=500)


class SignedForEntry(SvidChain):
    entry_id: str


class RefusedForEntry(WireModel):
    entry_id: str
    detail: str


class SvidBatchResponse(WireModel):
    svids: list[SignedForEntry]
    refused: list[RefusedForEntry]


class AgentJwtRequest(WireModel):
    entry_id: str = Field(max_length=32)
    audience: list[str] = Field(min_length=1, max_length=16)


class AgentWitRequest(WireModel):
    entry_id: str = Field(max_length=32)
    jwk: dict[str, Any] = Field(max_length=_JWK_MEMBERS, description=_WORKLOAD_JWK)


class ReportedIdentity(WireModel):
    spiffe_id: str = Field(max_length=2048)
    addresses: list[str] = Field(
        max_length=64, description="IPv4 (dotted quad) and IPv6 addresses, global or unique local"
    )


class AddressReport(WireModel):
    """Every workload address the agent knows of, by SPIFFE ID; replaces its last report."""

    identities: list[ReportedIdentity] = Field(max_length=1000)


class RenewRequest(WireModel):
    csr: str = Field(max_length=16384)


# --------------------------------------------------------------------------- rotation, revocation


class RevokeRequest(WireModel):
    """Exactly one of `serial` and `spiffe_id`."""

    serial: str | None = Field(default=None, max_length=64, pattern="^[0-9a-fA-F]+$")
    spiffe_id: str | None = Field(default=None, max_length=2048)
    reason: RevocationReason = RevocationReason.UNSPECIFIED
    quarantine: Flag | None = Field(
        default=None,
        description="Also quarantine the identity; by default only for keyCompromise",
    )


class QuarantineRequest(WireModel):
    spiffe_id: str = Field(max_length=2048)
    reason: str = Field(min_length=1, max_length=512)
    until: datetime | None = Field(default=None, description="RFC 3339; none: until released")


class ReleaseRequest(WireModel):
    spiffe_id: str = Field(max_length=2048)


class QuarantinePublic(WireModel):
    spiffe_id: str
    reason: str
    quarantined_by: str
    quarantined_at: datetime
    until: datetime | None
    verdict_revision: int | None


class ReleasePublic(WireModel):
    quarantine: QuarantinePublic
    released_by: str
    released_at: datetime


class RevokeResult(WireModel):
    serials: list[str]
    revision: int
    # The quarantine this revocation made of the certificates' identity (none: none made).
    quarantined: QuarantinePublic | None = None


class CertificatePublic(WireModel):
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


class IdentityPublic(WireModel):
    """What trustd knows of one SPIFFE ID."""

    spiffe_id: str
    entries: int
    svids: list[CertificatePublic]
    revoked: list[CertificatePublic]
    quarantine: QuarantinePublic | None
    # Nodes whose agents applied the verdict revision carrying the quarantine.
    applied_by: list[str]


class RevocationEventPublic(WireModel):
    revision: int
    serial: str
    issuer_kid: str
    spiffe_id: str | None
    reason: str
    revoked_at: datetime
    not_after: datetime


class RevocationFeedPublic(WireModel):
    revision: int = Field(description="Ask again with since=<this> for what comes next")
    events: list[RevocationEventPublic]


class KeyPrepare(WireModel):
    kind: CaKeyKind


class KeyMigrate(WireModel):
    to: Literal["file", "pkcs11"]


class KeyActivate(WireModel):
    kind: CaKeyKind
    kid: str | None = Field(default=None, max_length=64)


class KeyRevoke(WireModel):
    reason: RevocationReason = RevocationReason.KEY_COMPROMISE


class KeyChangePublic(WireModel):
    kid: str
    kind: str
    status: str
    bundle_sequence: int


class FederationRequest(WireModel):
    trust_domain: str = Field(max_length=255)
    bundle_endpoint_url: str = Field(max_length=2048)
    profile: BundleEndpointProfile
    endpoint_spiffe_id: str | None = Field(default=None, max_length=2048)
    bundle: str | None = Field(
        default=None,
        max_length=MAX_BUNDLE_BYTES,
        description="Bootstrap bundle: a SPIFFE bundle (JWKS) or PEM roots",
    )


class FederationStatusPublic(WireModel):
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    failures: int
    next_refresh_at: datetime | None


class FederationPublic(WireModel):
    trust_domain: str
    bundle_endpoint_url: str
    profile: BundleEndpointProfile
    endpoint_spiffe_id: str | None
    bundle_sequence: int | None
    bundle_refresh_hint: int | None
    x509_authorities: int
    jwt_authorities: int
    revision: int
    created_by: str
    created_at: datetime
    status: FederationStatusPublic
    bundle: dict[str, Any] | None = Field(default=None, description="The held SPIFFE bundle")
