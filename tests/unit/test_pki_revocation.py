"""CRL and OCSP building and parsing (RFC 5280 §5, RFC 6960)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from pki.ca import Authority, create_intermediate, create_root
from pki.clock import FakeClock
from pki.errors import InvalidCrl, InvalidOcspRequest
from pki.keys import KeyType, PrivateKey, generate_private_key, signature_hash
from pki.revocation import (
    GOOD,
    MAX_OCSP_REQUEST_BYTES,
    CertStatus,
    RevocationReason,
    RevokedEntry,
    build_crl,
    build_ocsp_response,
    crl_der,
    load_crl,
    ocsp_error,
    ocsp_request_names,
    parse_ocsp_request,
)
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid

NOW = datetime(2030, 1, 1, tzinfo=UTC)
TD = TrustDomain.parse("example.org")


def _ca(
    key_type: KeyType = KeyType.EC_P256,
) -> tuple[x509.Certificate, PrivateKey, x509.Certificate]:
    clock = FakeClock(NOW)
    root_key = generate_private_key(key_type)
    root = create_root(TD, root_key, clock, timedelta(days=30))
    key = generate_private_key(key_type)
    inter = create_intermediate(
        TD, key, Authority(root, root_key, (), root), clock, timedelta(days=1)
    )
    return inter, key, root


def test_crl_carries_number_aki_next_update_and_reasons() -> None:
    inter, key, root = _ca()
    entries = [
        RevokedEntry(10, NOW, RevocationReason.KEY_COMPROMISE),
        RevokedEntry(11, NOW, RevocationReason.UNSPECIFIED),
    ]
    crl = load_crl(crl_der(build_crl(inter, key, entries, 7, NOW, NOW + timedelta(hours=1))), inter)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert crl.next_update_utc == NOW + timedelta(hours=1)
    first = crl.get_revoked_certificate_by_serial_number(10)
    assert first is not None
    assert first.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    second = crl.get_revoked_certificate_by_serial_number(11)
    assert second is not None and len(second.extensions) == 0  # unspecified is left out
    with pytest.raises(InvalidCrl):
        load_crl(crl_der(build_crl(inter, key, [], 1, NOW, NOW + timedelta(hours=1))), root)
    with pytest.raises(InvalidCrl):
        load_crl(b"not a crl", inter)


def test_crl_refuses_bad_numbers_and_windows() -> None:
    inter, key, _ = _ca()
    with pytest.raises(InvalidCrl, match="CRL number"):
        build_crl(inter, key, [], -1, NOW, NOW + timedelta(hours=1))
    with pytest.raises(InvalidCrl, match="nextUpdate"):
        build_crl(inter, key, [], 1, NOW, NOW)


@pytest.mark.parametrize(
    "key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.ED25519]
)
# RFC 5019 §2.1.1: most clients still name certificates by SHA-1 CertIDs.
@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()])  # noqa: S303
def test_ocsp_issuer_hashes_match_cryptography(
    key_type: KeyType, algorithm: hashes.HashAlgorithm
) -> None:
    ca = _ca(key_type)
    inter, _, root = ca
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(*_hashes(ca, algorithm), 5, algorithm)
        .build()
    )
    parsed = parse_ocsp_request(request.public_bytes(serialization.Encoding.DER))
    assert ocsp_request_names(parsed, inter)
    assert not ocsp_request_names(parsed, root)


def _hashes(
    ca: tuple[x509.Certificate, PrivateKey, x509.Certificate], algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    # Independent computation: cryptography's own CertID for a leaf the CA issued.
    issuer, key, root = ca
    leaf = issue_x509_svid(
        Authority(issuer, key, (), root),
        X509SvidParams(
            SpiffeId.parse("spiffe://example.org/w"),
            generate_private_key(KeyType.EC_P256).public_key(),
            timedelta(hours=1),
        ),
        FakeClock(NOW),
    )
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm).build()
    return request.issuer_name_hash, request.issuer_key_hash


def test_ocsp_response_for_revoked_and_good() -> None:
    ca = _ca()
    inter, key, root = ca
    request = parse_ocsp_request(
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(*_hashes(ca, hashes.SHA256()), 42, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )
    revoked = CertStatus(ocsp.OCSPCertStatus.REVOKED, NOW, RevocationReason.SUPERSEDED)
    answer = ocsp.load_der_ocsp_response(
        build_ocsp_response(request, inter, key, revoked, NOW, NOW + timedelta(hours=1))
    )
    assert answer.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason is x509.ReasonFlags.superseded
    assert answer.serial_number == 42
    assert (
        answer.responder_key_hash
        == inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    )
    good = ocsp.load_der_ocsp_response(
        build_ocsp_response(request, inter, key, GOOD, NOW, NOW + timedelta(hours=1))
    )
    assert good.certificate_status is ocsp.OCSPCertStatus.GOOD
    with pytest.raises(InvalidOcspRequest, match="another issuer"):
        build_ocsp_response(request, root, key, GOOD, NOW, NOW + timedelta(hours=1))


def test_malformed_ocsp_requests_are_refused() -> None:
    for data in (b"", b"\x30\x00", b"junk" * 10):
        with pytest.raises(InvalidOcspRequest):
            parse_ocsp_request(data)
    with pytest.raises(InvalidOcspRequest, match="limit"):
        parse_ocsp_request(b"\x30" * (MAX_OCSP_REQUEST_BYTES + 1))
    error = ocsp.load_der_ocsp_response(ocsp_error(ocsp.OCSPResponseStatus.UNAUTHORIZED))
    assert error.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.parametrize("key_type", [KeyType.EC_P384, KeyType.RSA_2048, KeyType.ED25519])
def test_crl_entries_encode_exactly_as_cryptography_does(key_type: KeyType) -> None:
    # build_crl encodes the entry list itself; cryptography's own builder is the reference.
    inter, key, _ = _ca(key_type)
    later = datetime(2051, 6, 1, 12, 30, 5, tzinfo=UTC)  # GeneralizedTime from 2050 on
    entries = [
        RevokedEntry(1, NOW, RevocationReason.UNSPECIFIED),
        RevokedEntry(0x80, NOW + timedelta(seconds=1), RevocationReason.KEY_COMPROMISE),
        RevokedEntry(2**159 - 1, later, RevocationReason.CA_COMPROMISE),
        *(RevokedEntry(1000 + n, NOW, reason) for n, reason in enumerate(RevocationReason)),
    ]
    mine = build_crl(inter, key, entries, 3, NOW, NOW + timedelta(hours=1))
    reference = x509.CertificateRevocationListBuilder(
        issuer_name=inter.subject,
        last_update=NOW,
        next_update=NOW + timedelta(hours=1),
        extensions=list(mine.extensions),
        revoked_certificates=[
            (
                x509.RevokedCertificateBuilder()
                .serial_number(e.serial)
                .revocation_date(e.revoked_at)
                .add_extension(x509.CRLReason(e.reason.flag), critical=False)
                if e.reason is not RevocationReason.UNSPECIFIED
                else x509.RevokedCertificateBuilder()
                .serial_number(e.serial)
                .revocation_date(e.revoked_at)
            ).build()
            for e in entries
        ],
    ).sign(key, signature_hash(key))
    assert mine.tbs_certlist_bytes == reference.tbs_certlist_bytes
    assert mine.signature_algorithm_oid == reference.signature_algorithm_oid
    assert load_crl(crl_der(mine), inter) == mine
    empty = build_crl(inter, key, [], 4, NOW, NOW + timedelta(hours=1))
    assert len(empty) == 0 and empty.is_signature_valid(inter.public_key())  # type: ignore[arg-type]


@pytest.mark.parametrize("serial", [0, -1, 2**160])
def test_revoked_entry_serial_must_fit_rfc_5280(serial: int) -> None:
    with pytest.raises(InvalidCrl, match="serial number out of range"):
        RevokedEntry(serial, NOW, RevocationReason.UNSPECIFIED)
