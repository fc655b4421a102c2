"""ML-DSA (FIPS 204, in X.509 per RFC 9881) trust domains at the pki layer: roots,
intermediates and X509-SVIDs of each level, verified by cryptography's own verifier and by
trustd's path validation; CRLs and OCSP responses signed with ML-DSA; a bundle holding an
EC and an ML-DSA root; and the refusals: no JWTs, no CSR unless asked, none over a TLS
stack that cannot verify ML-DSA."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.x509 import ocsp
from cryptography.x509.verification import PolicyBuilder, Store

from pki.csr import create_csr, parse_csr
from pki.errors import InvalidCrl, InvalidSvid, WeakKey
from pki.keys import (
    KeyType,
    decrypt_private_key,
    describe_key,
    encrypt_private_key,
    generate_private_key,
    jose_private_key,
    jws_algorithm,
    ml_dsa_tls_problem,
)
from pki.revocation import (
    CertStatus,
    RevocationReason,
    RevokedEntry,
    build_crl,
    build_ocsp_response,
    crl_der,
    load_crl,
)
from pki.x509_svid import verify_x509_svid
from tests.unit.pki_helpers import T0, TestCA

ML_DSA = [KeyType.ML_DSA_44, KeyType.ML_DSA_65, KeyType.ML_DSA_87]
OIDS = {
    KeyType.ML_DSA_44: "2.16.840.1.101.3.4.3.17",
    KeyType.ML_DSA_65: "2.16.840.1.101.3.4.3.18",
    KeyType.ML_DSA_87: "2.16.840.1.101.3.4.3.19",
}


def _verified_by_cryptography(
    roots: list[x509.Certificate], leaf: x509.Certificate, ca: TestCA
) -> list[x509.Certificate]:
    # cryptography's (Web PKI) verifier refuses the URI name constraints of trustd's
    # intermediates (test_pki_ca: why pki.x509_path validates paths itself), so it checks
    # root -> leaf; trustd's path validation checks the chains with intermediates.
    store = Store(roots)
    verifier = PolicyBuilder().store(store).time(ca.clock.now()).build_client_verifier()
    return list(verifier.verify(leaf, []).chain)


@pytest.mark.parametrize("key_type", ML_DSA, ids=str)
def test_an_ml_dsa_trust_domain_issues_svids_that_verify(key_type: KeyType) -> None:
    ca = TestCA(root_key_type=key_type, intermediate_key_type=key_type)
    leaf_key = generate_private_key(key_type)
    leaf = ca.issue(key=leaf_key)
    for cert in (ca.root, ca.intermediate, leaf):
        assert cert is not None
        # RFC 9881 §2: the id-ml-dsa-* OID, parameters absent; no hash is named.
        assert cert.signature_algorithm_oid.dotted_string == OIDS[key_type]
        assert cert.signature_hash_algorithm is None
    assert describe_key(leaf.public_key()) == f"ML-DSA-{str(key_type)[-2:]}"
    # RFC 9881 §5: digitalSignature only on an end entity (no key agreement or transport).
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_agreement and not usage.key_encipherment
    direct = TestCA(root_key_type=key_type, with_intermediate=False)
    assert len(_verified_by_cryptography([direct.root], direct.issue(key=leaf_key), direct)) == 2
    spiffe_id = verify_x509_svid(leaf, ca.intermediates, [ca.root], ca.trust_domain, ca.clock)
    assert spiffe_id == ca.spiffe_id()
    # A signature by another ML-DSA key is refused.
    other = TestCA(root_key_type=key_type, intermediate_key_type=key_type)
    with pytest.raises(InvalidSvid):
        verify_x509_svid(leaf, other.intermediates, [other.root], ca.trust_domain, ca.clock)


def test_crls_and_ocsp_are_signed_with_ml_dsa() -> None:
    ca = TestCA(root_key_type=KeyType.ML_DSA_65, intermediate_key_type=KeyType.ML_DSA_65)
    assert ca.intermediate is not None and ca.intermediate_key is not None
    leaf = ca.issue(key=generate_private_key(KeyType.ML_DSA_65))
    entry = RevokedEntry(leaf.serial_number, T0, RevocationReason.KEY_COMPROMISE)
    crl = build_crl(ca.intermediate, ca.intermediate_key, [entry], 1, T0, T0 + timedelta(hours=1))
    loaded = load_crl(crl_der(crl), ca.intermediate)
    assert loaded.signature_algorithm_oid.dotted_string == OIDS[KeyType.ML_DSA_65]
    assert loaded.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    # Signed by another key: refused.
    other = TestCA(root_key_type=KeyType.ML_DSA_65, intermediate_key_type=KeyType.ML_DSA_65)
    assert other.intermediate is not None
    with pytest.raises(InvalidCrl):
        load_crl(crl_der(crl), other.intermediate)

    request = (
        ocsp.OCSPRequestBuilder().add_certificate(leaf, ca.intermediate, hashes.SHA256()).build()
    )
    der = build_ocsp_response(
        request,
        ca.intermediate,
        ca.intermediate_key,
        CertStatus(ocsp.OCSPCertStatus.REVOKED, T0, RevocationReason.KEY_COMPROMISE),
        T0,
        T0 + timedelta(hours=1),
    )
    response = ocsp.load_der_ocsp_response(der)
    assert response.signature_algorithm_oid.dotted_string == OIDS[KeyType.ML_DSA_65]
    assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
    public = ca.intermediate.public_key()
    assert isinstance(public, mldsa.MLDSA65PublicKey)
    public.verify(response.signature, response.tbs_response_bytes)  # raises if it does not


def test_a_mixed_bundle_verifies_ec_and_ml_dsa_workloads_alike() -> None:
    """A trust domain publishing its EC root next to an ML-DSA one: each workload's SVID
    verifies against the one bundle, whichever root issued it."""
    ec_ca = TestCA()
    pq_ca = TestCA(root_key_type=KeyType.ML_DSA_65, intermediate_key_type=KeyType.ML_DSA_65)
    roots = [ec_ca.root, pq_ca.root]
    ec_leaf = ec_ca.issue("/ec")
    pq_leaf = pq_ca.issue("/pq", key=generate_private_key(KeyType.ML_DSA_65))
    domain, clock = ec_ca.trust_domain, ec_ca.clock
    assert verify_x509_svid(ec_leaf, ec_ca.intermediates, roots, domain, clock).path == "/ec"
    assert verify_x509_svid(pq_leaf, pq_ca.intermediates, roots, domain, clock).path == "/pq"
    ec_direct = TestCA(with_intermediate=False)
    pq_direct = TestCA(root_key_type=KeyType.ML_DSA_65, with_intermediate=False)
    both = [ec_direct.root, pq_direct.root]
    for ca in (ec_direct, pq_direct):
        leaf = ca.issue(key=generate_private_key(KeyType.ML_DSA_65))
        assert _verified_by_cryptography(both, leaf, ca)[-1] == ca.root


def test_ml_dsa_keys_sign_no_jwt() -> None:
    key = generate_private_key(KeyType.ML_DSA_65)
    with pytest.raises(WeakKey, match="no registered JWS algorithm"):
        jws_algorithm(key)
    with pytest.raises(WeakKey, match="no registered JWS algorithm"):
        jose_private_key(key)
    assert jose_private_key(ec_key := generate_private_key(KeyType.EC_P256)) is ec_key


def test_ml_dsa_csrs_are_refused_unless_the_caller_allows_them() -> None:
    key = generate_private_key(KeyType.ML_DSA_65)
    pem = create_csr(key).encode()
    with pytest.raises(WeakKey, match="ML-DSA-65 CSR keys are not accepted"):
        parse_csr(pem)
    csr = parse_csr(pem, allow_ml_dsa=True)
    assert csr.is_signature_valid
    assert isinstance(
        parse_csr(create_csr(generate_private_key(KeyType.EC_P256)).encode()),
        x509.CertificateSigningRequest,
    )


def test_ml_dsa_keys_are_stored_encrypted_and_read_back() -> None:
    key = generate_private_key(KeyType.ML_DSA_87)
    kek = b"k" * 32
    back = decrypt_private_key(encrypt_private_key(key, kek), kek)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert back.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)


def test_ml_dsa_is_refused_where_tls_cannot_verify_it() -> None:
    """OpenSSL before 3.5 (Debian 12's 3.0, and Python's ssl on it) has no ML-DSA."""
    problem = ml_dsa_tls_problem((3, 0, 19, 0, 0))
    assert problem is not None and "OpenSSL 3.5" in problem and "3.0.19" in problem
    assert ml_dsa_tls_problem((3, 5, 0, 0, 0)) is None
    assert ml_dsa_tls_problem((4, 0, 0, 0, 0)) is None


# py-spiffe registers the Workload API's messages in protobuf's default pool under its own
# file name, as trustd's agent does: one process cannot import both, so py-spiffe runs in a
# process of its own, as a workload would.
_PY_SPIFFE_READS = """
import base64, json, sys
from spiffe import JwtBundle, TrustDomain, X509Bundle
given = json.load(sys.stdin)
td = TrustDomain("example.org")
x509 = X509Bundle.parse_raw(td, base64.b64decode(given["der"]))
jwt = JwtBundle.parse(td, json.dumps(given["jwks"]).encode())
print(json.dumps({"x509": len(x509.x509_authorities), "jwt": sorted(jwt.jwt_authorities)}))
"""


def test_py_spiffe_reads_ml_dsa_roots_and_skips_akp_jwt_keys() -> None:
    """What py-spiffe (0.3) does with a mixed bundle, as a workload gets it: the Workload
    API's X.509 bundle is DER certificates, which it parses with `cryptography` (ML-DSA
    included); a JWKS holding an AKP key is read by PyJWT's `PyJWKSet`, which skips it."""
    from pki.bundle import public_key_to_jwk

    ec_ca = TestCA()
    pq_ca = TestCA(root_key_type=KeyType.ML_DSA_65, intermediate_key_type=KeyType.ML_DSA_65)
    der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in (ec_ca.root, pq_ca.root))
    jwt_key = generate_private_key(KeyType.EC_P256).public_key()
    keys = [
        {**public_key_to_jwk(jwt_key), "kid": "ec", "use": "jwt-svid"},
        {**public_key_to_jwk(pq_ca.root.public_key()), "kid": "pq", "use": "x509-svid"},
    ]
    given = {"der": base64.b64encode(der).decode(), "jwks": {"keys": keys}}
    read = subprocess.run(
        [sys.executable, "-c", _PY_SPIFFE_READS],
        input=json.dumps(given),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(read.stdout) == {"x509": 2, "jwt": ["ec"]}
