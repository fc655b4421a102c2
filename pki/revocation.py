"""Certificate revocation lists (RFC 5280 §5) and OCSP responses (RFC 6960).

The CA signs both itself: a CRL per issuing key, and OCSP responses signed by the issuer of
the certificate in question (RFC 6960 §4.2.2.2 allows the CA to be its own responder, so no
delegated responder certificate is needed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp

from pki.errors import InvalidCrl, InvalidOcspRequest, echo
from pki.keys import PrivateKey, allowed_public_key, signature_hash
from pki.x509_path import extension

# RFC 5280 §5.2.3: the CRL number is a non-negative integer of at most 20 octets.
MAX_CRL_NUMBER = 2**159
MAX_OCSP_REQUEST_BYTES = 4096


class RevocationReason(StrEnum):
    """RFC 5280 §5.3.1 reason codes that trustd accepts.

    certificateHold and removeFromCRL are not offered: a revocation here is final.
    """

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "cACompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"

    @property
    def flag(self) -> x509.ReasonFlags:
        return x509.ReasonFlags(self.value)


@dataclass(frozen=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason: RevocationReason


def build_crl(
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    entries: Iterable[RevokedEntry],
    number: int,
    this_update: datetime,
    next_update: datetime,
) -> x509.CertificateRevocationList:
    """Sign a complete v2 CRL for the certificates *issuer* has revoked.

    Raises:
        InvalidCrl: *number* is out of range or *next_update* is not after *this_update*.
    """
    if not 0 <= number < MAX_CRL_NUMBER:
        raise InvalidCrl(f"RFC 5280 §5.2.3: CRL number out of range: {echo(number)}")
    if next_update <= this_update:
        raise InvalidCrl("nextUpdate must be later than thisUpdate")
    ski = extension(issuer, x509.SubjectKeyIdentifier)
    if ski is None:
        raise InvalidCrl("the issuer certificate has no subjectKeyIdentifier")
    revoked: list[x509.RevokedCertificate] = []
    for entry in entries:
        item = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
        )
        # RFC 5280 §5.3.1: the reason code unspecified SHOULD be absent instead of used.
        if entry.reason is not RevocationReason.UNSPECIFIED:
            item = item.add_extension(x509.CRLReason(entry.reason.flag), critical=False)
        revoked.append(item.build())
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    # The entries go to the constructor in one list: `add_revoked_certificate` copies the
    # list on every call, which is quadratic (100k entries took 30 s instead of 1 s).
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=this_update,
        # RFC 5280 §5.1.2.5: conforming CRL issuers MUST include nextUpdate.
        next_update=next_update,
        extensions=[
            # RFC 5280 §5.2.1: the AKI MUST be included, so relying parties pick the right
            # key when several of our CAs share a name.
            x509.Extension(aki.oid, False, aki),
            # RFC 5280 §5.2.3: a monotonically increasing CRL number, non-critical.
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        ],
        revoked_certificates=revoked,
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def load_crl(data: bytes, issuer: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a DER CRL and check that *issuer* signed it.

    Raises:
        InvalidCrl: unparsable, or not signed by *issuer*.
    """
    try:
        crl = x509.load_der_x509_crl(data)
        valid = crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm, InvalidSignature):
        raise InvalidCrl("the data is not a DER CRL this issuer signed") from None
    if not valid:
        raise InvalidCrl("the CRL is not signed by this issuer")
    return crl


# --------------------------------------------------------------------------- OCSP

_OCSP_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    # RFC 6960 §4.1.1 / RFC 5019 §2.1.1: SHA-1 CertIDs are what most clients send; the hash
    # only names the issuer, it protects nothing. SHA-2 CertIDs are accepted as well.
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def parse_ocsp_request(data: bytes) -> ocsp.OCSPRequest:
    """Parse a DER OCSPRequest with exactly one CertID.

    Raises:
        InvalidOcspRequest: too large, not DER, more than one request, or a CertID hash
            algorithm outside the allow-list.
    """
    if len(data) > MAX_OCSP_REQUEST_BYTES:
        raise InvalidOcspRequest(
            f"OCSP request is {len(data)} bytes; the limit is {MAX_OCSP_REQUEST_BYTES}"
        )
    try:
        request = ocsp.load_der_ocsp_request(data)
        algorithm = request.hash_algorithm
        _ = request.serial_number, request.extensions
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidOcspRequest(f"not a DER OCSP request with one CertID: {exc}") from None
    if algorithm.name not in _OCSP_HASHES:
        raise InvalidOcspRequest(f"CertID hash algorithm {algorithm.name} is not accepted")
    return request


def _issuer_hashes(
    issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    # RFC 6960 §4.1.1: issuerNameHash is over the DER issuer name, issuerKeyHash over the
    # value of the issuer's subjectPublicKey BIT STRING (without tag, length, unused bits).
    name = issuer.subject.public_bytes()
    return _digest(algorithm, name), _digest(algorithm, _subject_public_key_bits(issuer))


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    return hashlib.new(algorithm.name, data).digest()


def _subject_public_key_bits(cert: x509.Certificate) -> bytes:
    key = allowed_public_key(cert.public_key())
    # The BIT STRING holds: an uncompressed EC point (RFC 5480 §2.2), an RSAPublicKey
    # (RFC 3279 §2.3.1), or the raw Ed25519 key (RFC 8410 §4).
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ocsp_request_names(request: ocsp.OCSPRequest, issuer: x509.Certificate) -> bool:
    """Whether *request*'s CertID names *issuer* (name and key hash both match)."""
    name_hash, key_hash = _issuer_hashes(issuer, request.hash_algorithm)
    return request.issuer_name_hash == name_hash and request.issuer_key_hash == key_hash


@dataclass(frozen=True)
class CertStatus:
    """What the responder knows about one serial: good, revoked (with when and why), or
    unknown (RFC 6960 §2.2: the responder does not know the certificate)."""

    status: ocsp.OCSPCertStatus
    revoked_at: datetime | None = None
    reason: RevocationReason | None = None


GOOD = CertStatus(ocsp.OCSPCertStatus.GOOD)
UNKNOWN = CertStatus(ocsp.OCSPCertStatus.UNKNOWN)


def build_ocsp_response(
    request: ocsp.OCSPRequest,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    status: CertStatus,
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """A signed, successful BasicOCSPResponse for the request's single CertID, DER.

    Raises:
        InvalidOcspRequest: the request does not name *issuer*.
    """
    if not ocsp_request_names(request, issuer):
        raise InvalidOcspRequest("the request names another issuer")
    revoked = status.status is ocsp.OCSPCertStatus.REVOKED
    reason = status.reason if revoked else None
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash,
            issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number,
            algorithm=request.hash_algorithm,
            cert_status=status.status,
            this_update=this_update,
            # RFC 5019 §2.2.4: nextUpdate tells caches how long the answer holds.
            next_update=next_update,
            revocation_time=status.revoked_at if revoked else None,
            # RFC 5280 §5.3.1 applies to OCSP too: an unspecified reason is left out.
            revocation_reason=(
                reason.flag
                if reason is not None and reason is not RevocationReason.UNSPECIFIED
                else None
            ),
        )
        # RFC 5019 §2.2.3 / RFC 6960 §4.2.2.3: identify the responder by key hash.
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    )
    try:
        nonce = request.extensions.get_extension_for_class(x509.OCSPNonce)
    except x509.ExtensionNotFound:
        nonce = None
    if nonce is not None:
        # RFC 8954 §2.1: echo the client's nonce so it can tell the answer is fresh.
        builder = builder.add_extension(nonce.value, critical=False)
    response = builder.sign(issuer_key, signature_hash(issuer_key))
    return response.public_bytes(serialization.Encoding.DER)


def ocsp_error(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned OCSP error response (RFC 6960 §2.3), DER."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(
        serialization.Encoding.DER
    )
