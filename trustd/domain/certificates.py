"""Issued certificates: what kind of credential a record is and whether it still stands."""

from __future__ import annotations

from enum import StrEnum


class CertificateKind(StrEnum):
    X509_SVID = "x509-svid"
    NODE_SVID = "node-svid"
    SERVING = "serving"


class CertificateStatus(StrEnum):
    VALID = "valid"
    REVOKED = "revoked"
