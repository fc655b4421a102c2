"""Certificate revocation lists (RFC 5280 §5) and OCSP responses (RFC 6960).

The CA signs both itself: a CRL per issuing key, and OCSP responses signed by the issuer of
the certificate in question (RFC 6960 §4.2.2.2 allows the CA to be its own responder, so no
delegated responder certificate is needed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
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

    def __post_init__(self) -> None:
        # RFC 5280 §4.1.2.2: serials are positive and at most 20 octets (the CRL encoder
        # relies on this bound).
        if not 0 < self.serial < 2**160:
            raise InvalidCrl(f"serial number out of range: {echo(self.serial)}")


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
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    # cryptography builds and signs everything but the entry list: version, algorithm,
    # issuer, dates and extensions. Its per-entry builders cost about 20 µs each (2 s for
    # 100k entries), so the revokedCertificates list is DER-encoded here, spliced into the
    # TBSCertList and signed again; what was signed is then parsed and checked.
    header = x509.CertificateRevocationListBuilder(
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
    ).sign(issuer_key, signature_hash(issuer_key))
    count = 0
    encoded: list[bytes] = []
    times: dict[datetime, bytes] = {}
    for entry in entries:
        when = times.get(entry.revoked_at)
        if when is None:
            when = times[entry.revoked_at] = _der_time(entry.revoked_at)
        # Inlined `_der` for the two short TLVs of every entry (this loop is the hot path):
        # a serial is at most 21 octets and an entry well under 128, so every length
        # fits the one-octet short form (X.690 §8.1.3.4).
        serial = entry.serial.to_bytes(entry.serial.bit_length() // 8 + 1, "big")
        body = b"\x02" + bytes((len(serial),)) + serial + when
        # RFC 5280 §5.3.1: the reason code unspecified SHOULD be absent instead of used.
        if entry.reason is not RevocationReason.UNSPECIFIED:
            body += _REASON_EXTENSIONS[entry.reason]
        encoded.append(b"\x30" + bytes((len(body),)) + body)
        count += 1
    # RFC 5280 §5.1.2.6: when there are no revoked certificates the list is absent.
    tbs = _splice_entries(
        header.tbs_certlist_bytes, _der(0x30, b"".join(encoded)) if count else b""
    )
    signature_algorithm = _children(header.public_bytes(serialization.Encoding.DER))[1]
    signature = _sign(issuer_key, tbs)
    der = _der(0x30, tbs + signature_algorithm + _der(0x03, b"\x00" + signature))
    try:
        crl = x509.load_der_x509_crl(der)
        valid = crl.is_signature_valid(issuer.public_key()) and len(crl) == count  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidCrl(f"the CRL built does not parse: {exc}") from None
    if not valid:
        raise InvalidCrl("the CRL built does not verify under its issuer")
    return crl


# --------------------------------------------------------------------------- DER


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_time(when: datetime) -> bytes:
    when = when.astimezone(UTC)
    # RFC 5280 §5.1.2.4/§4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, in UTC
    # with seconds and no fractions.
    if when.year < 2050:
        return _der(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    return _der(0x18, when.strftime("%Y%m%d%H%M%SZ").encode("ascii"))


def _reason_extensions(reason: RevocationReason) -> bytes:
    code = x509.CRLReason(reason.flag).public_bytes()  # the ENUMERATED, DER
    # crlEntryExtensions: SEQUENCE OF Extension { id-ce-cRLReasons, OCTET STRING(code) }
    oid = _der(0x06, bytes([0x55, 0x1D, 0x15]))  # 2.5.29.21
    return _der(0x30, _der(0x30, oid + _der(0x04, code)))


_REASON_EXTENSIONS = {
    reason: _reason_extensions(reason)
    for reason in RevocationReason
    if reason is not RevocationReason.UNSPECIFIED
}


def _children(der: bytes) -> list[bytes]:
    """The encoded elements inside the outermost (constructed, definite-length) TLV."""
    offset, end = _content(der, 0)
    children: list[bytes] = []
    while offset < end:
        start = offset
        _, offset = _content(der, offset)
        children.append(der[start:offset])
    return children


def _content(der: bytes, at: int) -> tuple[int, int]:
    """(start of the content, end of the element) of the TLV at *at*."""
    first = der[at + 1]
    if first < 0x80:
        return at + 2, at + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[at + 2 : at + 2 + count], "big")
    return at + 2 + count, at + 2 + count + length


def _splice_entries(tbs: bytes, revoked: bytes) -> bytes:
    # TBSCertList (RFC 5280 §5.1): version, signature, issuer, thisUpdate, nextUpdate,
    # revokedCertificates (absent here), [0] crlExtensions.
    parts = _children(tbs)
    if len(parts) != 6 or parts[5][0] != 0xA0:
        raise InvalidCrl("unexpected TBSCertList layout from the CRL builder")
    return _der(0x30, b"".join(parts[:5]) + revoked + parts[5])


def _sign(key: PrivateKey, data: bytes) -> bytes:
    algorithm = signature_hash(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert algorithm is not None
        return key.sign(data, ec.ECDSA(algorithm))
    if isinstance(key, rsa.RSAPrivateKey):
        assert algorithm is not None
        # The same PKCS#1 v1.5 scheme cryptography chose for the header's algorithm.
        return key.sign(data, padding.PKCS1v15(), algorithm)
    return key.sign(data)


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
