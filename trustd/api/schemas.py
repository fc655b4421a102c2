"""Public wire models. Table models stay internal; unknown fields are refused."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pki.revocation import RevocationReason
from trustd.services.auth import Role
from trustd.store.models import CaKeyKind


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
