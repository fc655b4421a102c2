"""Issued certificates: what kind of credential a record is, whether it still stands, and
what issuance hands back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import cached_property

from cryptography import x509

from pki.ca import certificate_pem
from pki.spiffe_id import SpiffeId


class CertificateKind(StrEnum):
    X509_SVID = "x509-svid"
    NODE_SVID = "node-svid"
    SERVING = "serving"
    # A TLS server certificate ordered over ACME (RFC 8555); it carries no SPIFFE ID.
    ACME = "acme"


class CertificateStatus(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"


@dataclass(frozen=True)
class IssuedX509:
    """A signed X509-SVID, recorded before anyone is handed it."""

    certificate: x509.Certificate
    # Intermediates from the issuing CA up to, excluding, the root (X509-SVID §5.3).
    intermediates: tuple[x509.Certificate, ...]
    spiffe_id: SpiffeId
    issuer_kid: str

    @cached_property
    def pem(self) -> str:
        """The certificate as PEM: stored with the record and handed out."""
        return certificate_pem(self.certificate)


@dataclass(frozen=True)
class CertificateRecord:
    """One issued certificate as recorded before it was handed out (`issued_certificates`)."""

    serial: str
    kind: str
    spiffe_id: str | None
    issuer_kid: str
    status: str
    not_before: datetime
    not_after: datetime
    certificate_pem: str
    requested_by: str
    created_at: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
