"""The CA: signing certificates, the X509-SVID profile, path validation and CSRs."""

from __future__ import annotations

import hashlib
import ipaddress
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ed25519
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from pki.ca import (
    CA_BACKDATE,
    Authority,
    certificate_pem,
    create_intermediate,
    create_root,
    fingerprint_sha256,
    load_pem_certificates,
    load_upstream_authority,
)
from pki.clock import FakeClock
from pki.csr import csr_public_key, parse_csr
from pki.errors import (
    CaError,
    InvalidBundle,
    InvalidCsr,
    InvalidSpiffeId,
    InvalidSvid,
    InvalidSvidParams,
    WeakKey,
)
from pki.keys import KeyType, PrivateKey, is_ml_dsa, same_public_key
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import (
    SVID_BACKDATE,
    X509SvidParams,
    issue_x509_svid,
    validate_x509_svid,
    verify_x509_svid,
)
from tests.unit.pki_helpers import (
    T0,
    TestCA,
    cached_ec_key,
    cached_key,
    cached_rsa_key,
    leaf_key_usage,
    raw_ca,
    raw_leaf,
)

TD = TrustDomain("example.org")


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(kind)


# --------------------------------------------------------------------------- root


def test_root_profile(ca: TestCA) -> None:
    root = ca.root
    now = T0
    assert root.version is x509.Version.v3
    assert root.subject == root.issuer
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "trustd"
    cn = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "trustd root CA for example.org"
    bc = _ext(root, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 1
    ku = _ext(root, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    # X509-SVID Appendix A: digitalSignature is set if and only if the SVID is a leaf.
    assert not ku.value.digital_signature
    ski = _ext(root, x509.SubjectKeyIdentifier)
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(ca.root_key.public_key())
    aki = _ext(root, x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest
    san = _ext(root, x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert 0 < root.serial_number < 2**159
    assert root.not_valid_before_utc == now - CA_BACKDATE
    assert root.not_valid_after_utc == now + timedelta(days=365)
    root.verify_directly_issued_by(root)


def test_root_serials_are_random() -> None:
    key = cached_key(KeyType.EC_P256)
    clock = FakeClock(T0)
    serials = {create_root(TD, key, clock, timedelta(days=1)).serial_number for _ in range(8)}
    assert len(serials) == 8
    # 159 random bits: the chance that all eight fall below 2**150 is 2**-72.
    assert max(serials) > 2**150


def test_root_common_name_stays_within_ub_common_name() -> None:
    td = TrustDomain("a" * 200 + ".example.org")
    root = create_root(td, cached_key(KeyType.EC_P256), FakeClock(T0), timedelta(days=1))
    cn = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str)
    assert len(cn) <= 64
    san = _ext(root, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [td.id_string()]


def test_root_refuses_bad_ttl_and_weak_key() -> None:
    with pytest.raises(CaError, match="ttl must be positive"):
        create_root(TD, cached_key(KeyType.EC_P256), FakeClock(T0), timedelta(0))
    with pytest.raises(WeakKey):
        create_root(TD, cached_rsa_key(1024), FakeClock(T0), timedelta(days=1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "hash_name"),
    [
        (lambda: cached_key(KeyType.EC_P256), "sha256"),
        (lambda: cached_key(KeyType.EC_P384), "sha384"),
        (lambda: cached_ec_key("secp521r1"), "sha512"),
        (lambda: cached_key(KeyType.RSA_2048), "sha256"),
        (lambda: cached_key(KeyType.ED25519), None),
    ],
)
def test_signature_hash_follows_the_signing_key(key: object, hash_name: str | None) -> None:
    root = create_root(TD, key(), FakeClock(T0), timedelta(days=1))  # type: ignore[operator]
    algorithm = root.signature_hash_algorithm
    assert (algorithm.name if algorithm else None) == hash_name


# --------------------------------------------------------------------------- intermediate


def test_intermediate_profile(ca: TestCA) -> None:
    inter = ca.intermediate
    assert inter is not None
    assert inter.issuer == ca.root.subject
    inter.verify_directly_issued_by(ca.root)
    cn = inter.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "trustd intermediate CA for example.org"
    assert inter.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    bc = _ext(inter, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    assert bc.value.path_length == 0
    ku = _ext(inter, x509.KeyUsage)
    assert ku.critical
    assert ku.value.key_cert_sign
    assert ku.value.crl_sign
    assert not ku.value.digital_signature
    nc = _ext(inter, x509.NameConstraints)
    assert nc.critical
    assert nc.value.permitted_subtrees == [x509.UniformResourceIdentifier("example.org")]
    assert nc.value.excluded_subtrees is None
    aki = _ext(inter, x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == _ext(ca.root, x509.SubjectKeyIdentifier).value.digest
    assert _ext(
        inter, x509.SubjectKeyIdentifier
    ).value == x509.SubjectKeyIdentifier.from_public_key(inter.public_key())
    san = _ext(inter, x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert inter.not_valid_before_utc == T0 - CA_BACKDATE
    assert inter.not_valid_after_utc == T0 + timedelta(days=30)


def test_intermediate_lifetime_is_capped_at_the_issuer() -> None:
    ca = TestCA(root_ttl=timedelta(days=10), intermediate_ttl=timedelta(days=100))
    assert ca.intermediate is not None
    assert ca.intermediate.not_valid_after_utc == ca.root.not_valid_after_utc


def test_successive_intermediates_have_distinct_subjects(ca: TestCA) -> None:
    other = create_intermediate(
        TD, cached_key(KeyType.EC_P256), ca.root_authority, ca.clock, timedelta(days=1)
    )
    assert ca.intermediate is not None
    assert other.subject != ca.intermediate.subject


def test_intermediate_refuses_exhausted_path_length(ca: TestCA) -> None:
    with pytest.raises(CaError, match="pathLenConstraint is exhausted"):
        create_intermediate(
            TD, cached_key(KeyType.EC_P256), ca.authority, ca.clock, timedelta(days=1)
        )


def test_intermediate_refuses_expired_issuer() -> None:
    ca = TestCA(with_intermediate=False, root_ttl=timedelta(days=1))
    ca.clock.advance(timedelta(days=2))
    with pytest.raises(CaError, match="is not valid at"):
        create_intermediate(
            TD, cached_key(KeyType.EC_P256), ca.root_authority, ca.clock, timedelta(days=1)
        )


# --------------------------------------------------------------------------- authority


def test_authority_properties(ca: TestCA) -> None:
    assert ca.authority.trust_domain == TD
    assert not ca.authority.is_root
    assert ca.authority.issuing_chain == (ca.intermediate,)
    assert ca.authority.not_after == ca.intermediate.not_valid_after_utc  # type: ignore[union-attr]
    assert ca.root_authority.is_root
    assert ca.root_authority.issuing_chain == ()


def test_authority_refuses_mismatched_key(ca: TestCA) -> None:
    with pytest.raises(CaError, match="private key does not match"):
        Authority(ca.root, cached_key(KeyType.EC_P384), (), ca.root)


def test_authority_refuses_non_ca_certificate(ca: TestCA) -> None:
    key = cached_key(KeyType.EC_P256)
    leaf = ca.issue(key=key)
    with pytest.raises(CaError, match="not a CA certificate"):
        Authority(leaf, key, (), ca.root)


def test_authority_refuses_broken_chain(ca: TestCA) -> None:
    other = TestCA("example.org")
    assert ca.intermediate is not None and ca.intermediate_key is not None
    with pytest.raises(CaError, match="chain is broken"):
        Authority(ca.intermediate, ca.intermediate_key, (), other.root)
    with pytest.raises(CaError, match="must have an empty chain"):
        Authority(ca.root, ca.root_key, (ca.intermediate,), ca.root)
    with pytest.raises(CaError, match="is not self-signed"):
        Authority(ca.intermediate, ca.intermediate_key, (), ca.intermediate)


def test_authority_without_spiffe_id_has_no_trust_domain() -> None:
    key = cached_key(KeyType.EC_P256)
    root = raw_ca(
        name="upstream",
        issuer_cert=None,
        issuer_key=key,
        key=key,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=1),
    )
    authority = Authority(root, key, (), root)
    with pytest.raises(CaError, match="exactly one spiffe://"):
        _ = authority.trust_domain
    with pytest.raises(CaError, match="exactly one spiffe://"):
        issue_x509_svid(authority, TestCA.params(TestCA(with_intermediate=False)), FakeClock(T0))


# --------------------------------------------------------------------------- X509-SVID profile


KEY_TYPES = list(KeyType)


@pytest.mark.parametrize("subject_key_type", KEY_TYPES)
def test_svid_meets_every_x509_svid_must(ca: TestCA, subject_key_type: KeyType) -> None:
    key = cached_key(subject_key_type)
    cert = ca.issue("/ns/prod/sa/web", key=key, dns_names=["web.example.org", "*.web.example.org"])
    assert cert.version is x509.Version.v3
    # X509-SVID §3.1: subject may be empty; then the SAN MUST be critical (RFC 5280 §4.1.2.6).
    assert len(cert.subject) == 0
    san = _ext(cert, x509.SubjectAlternativeName)
    assert san.critical
    # X509-SVID §2: exactly one URI SAN, the SPIFFE ID; DNS SANs allowed.
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/prod/sa/web"
    ]
    assert san.value.get_values_for_type(x509.DNSName) == ["web.example.org", "*.web.example.org"]
    # X509-SVID §4.1: cA false.
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert not bc.value.ca
    assert bc.value.path_length is None
    # X509-SVID §4.3: key usage critical, digitalSignature, never keyCertSign or cRLSign.
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign
    assert not ku.value.crl_sign
    assert not ku.value.content_commitment
    assert not ku.value.data_encipherment
    assert ku.value.key_encipherment == (subject_key_type is KeyType.RSA_2048)
    assert ku.value.key_agreement == (subject_key_type in (KeyType.EC_P256, KeyType.EC_P384))
    # X509-SVID §4.4: EKU with serverAuth and clientAuth.
    eku = _ext(cert, x509.ExtendedKeyUsage)
    assert set(eku.value) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # RFC 5280 §4.2.1.1/§4.2.1.2: key identifiers.
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        key.public_key()
    )
    assert ca.intermediate is not None
    assert (
        _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier
        == _ext(ca.intermediate, x509.SubjectKeyIdentifier).value.digest
    )
    assert same_public_key(cert.public_key(), key.public_key())
    assert cert.issuer == ca.intermediate.subject
    cert.verify_directly_issued_by(ca.intermediate)
    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_before_utc == T0 - SVID_BACKDATE
    assert cert.not_valid_after_utc == T0 + timedelta(hours=1)
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.CRLDistributionPoints)
    assert validate_x509_svid(cert, TD) == SpiffeId.parse("spiffe://example.org/ns/prod/sa/web")
    assert verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock) == ca.spiffe_id(
        "/ns/prod/sa/web"
    )


@pytest.mark.parametrize("ca_key_type", KEY_TYPES)
def test_issuance_works_with_every_ca_key_type(ca_key_type: KeyType) -> None:
    ca = TestCA(root_key_type=ca_key_type, intermediate_key_type=ca_key_type)
    cert = ca.issue()
    assert verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock) == ca.spiffe_id()


def test_svid_directly_under_root() -> None:
    ca = TestCA(with_intermediate=False)
    cert = ca.issue()
    assert cert.issuer == ca.root.subject
    assert verify_x509_svid(cert, [], [ca.root], TD, ca.clock) == ca.spiffe_id()


def test_svid_crl_distribution_point(ca: TestCA) -> None:
    params = ca.params(crl_url="http://crl.example.org/intermediate.crl")
    cert = issue_x509_svid(ca.authority, params, ca.clock)
    dp = _ext(cert, x509.CRLDistributionPoints)
    assert not dp.critical
    assert dp.value[0].full_name == [
        x509.UniformResourceIdentifier("http://crl.example.org/intermediate.crl")
    ]


def test_svid_serial_given_or_random(ca: TestCA) -> None:
    assert issue_x509_svid(ca.authority, ca.params(), ca.clock, serial=42).serial_number == 42
    serials = {ca.issue().serial_number for _ in range(5)}
    assert len(serials) == 5
    for bad in (0, -1, 2**159):
        with pytest.raises(InvalidSvidParams, match="20 octets"):
            issue_x509_svid(ca.authority, ca.params(), ca.clock, serial=bad)


def test_svid_lifetime_is_capped_at_the_authority(ca: TestCA) -> None:
    cert = ca.issue(ttl=timedelta(days=3650))
    assert cert.not_valid_after_utc == ca.authority.not_after


def test_svid_refuses_other_trust_domain(ca: TestCA) -> None:
    params = X509SvidParams(
        spiffe_id=SpiffeId.parse("spiffe://evil.org/workload"),
        public_key=cached_key(KeyType.EC_P256).public_key(),
        ttl=timedelta(hours=1),
    )
    with pytest.raises(InvalidSpiffeId, match=r"not a member of trust domain 'example\.org'"):
        issue_x509_svid(ca.authority, params, ca.clock)


def test_svid_refuses_trust_domain_id(ca: TestCA) -> None:
    # X509-SVID §3.1: leaf SPIFFE IDs MUST have a non-root path component.
    with pytest.raises(InvalidSpiffeId, match="must have a path"):
        issue_x509_svid(ca.authority, ca.params(""), ca.clock)


def test_svid_refuses_weak_subject_key(ca: TestCA) -> None:
    params = X509SvidParams(
        spiffe_id=ca.spiffe_id(),
        public_key=cached_rsa_key(1024).public_key(),
        ttl=timedelta(hours=1),
    )
    with pytest.raises(WeakKey, match="RSA-1024"):
        issue_x509_svid(ca.authority, params, ca.clock)


def test_svid_refuses_expired_authority() -> None:
    ca = TestCA(intermediate_ttl=timedelta(days=1))
    ca.clock.advance(timedelta(days=2))
    with pytest.raises(CaError, match="is not valid at"):
        ca.issue()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ttl": timedelta(0)}, "ttl must be a positive"),
        ({"ttl": timedelta(seconds=-1)}, "ttl must be a positive"),
        ({"dns_names": ("bad name",)}, "LDH"),
        ({"dns_names": ("a..b",)}, "empty label"),
        ({"dns_names": ("-a.example",)}, "start or end with '-'"),
        ({"dns_names": ("a" * 64 + ".example",)}, "longer than 63"),
        ({"dns_names": ("a." * 127 + "example",)}, "longer than 253"),
        ({"dns_names": ("*",)}, "bare wildcard"),
        ({"dns_names": ("a.*.example",)}, "LDH"),
        ({"dns_names": ("",)}, "empty"),
        ({"dns_names": "web.example.org"}, "got the string"),
        ({"crl_url": "ldap://crl.example.org"}, "http(s)"),
        ({"crl_url": "http:///nohost"}, "http(s)"),
        ({"crl_url": "http://crl.example.org/a b"}, "http(s)"),
    ],
)
def test_svid_params_validation(kwargs: dict[str, object], reason: str) -> None:
    base: dict[str, object] = {
        "spiffe_id": SpiffeId.parse("spiffe://example.org/w"),
        "public_key": cached_key(KeyType.EC_P256).public_key(),
        "ttl": timedelta(hours=1),
    }
    base.update(kwargs)
    with pytest.raises(InvalidSvidParams) as info:
        X509SvidParams(**base)  # type: ignore[arg-type]
    assert reason in info.value.detail


def test_svid_ip_address_sans(ca: TestCA) -> None:
    params = X509SvidParams(
        spiffe_id=ca.spiffe_id("/trustd/server"),
        public_key=cached_key(KeyType.EC_P256).public_key(),
        ttl=timedelta(hours=1),
        dns_names=("trustd.example.org",),
        ip_addresses=(  # type: ignore[arg-type]
            "10.0.0.1",
            ipaddress.ip_address("::1"),
            ipaddress.ip_address("10.0.0.1"),
        ),
    )
    assert params.ip_addresses == (
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("::1"),
    )
    cert = issue_x509_svid(ca.authority, params, ca.clock)
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == list(params.ip_addresses)
    assert san.get_values_for_type(x509.DNSName) == ["trustd.example.org"]
    # X509-SVID §2: still exactly one URI SAN.
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/trustd/server"
    ]
    assert verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ip_addresses": ("10.0.0.300",)}, "not an IP address"),
        ({"ip_addresses": ("example.org",)}, "not an IP address"),
        ({"ip_addresses": "10.0.0.1"}, "sequence of addresses"),
        (
            {
                "dns_names": tuple(f"h{i}.example.org" for i in range(60)),
                "ip_addresses": tuple(f"10.0.0.{i}" for i in range(41)),
            },
            "at most 100 DNS names and IP addresses together, got 101",
        ),
        ({"crl_url": "http://[::1/crl"}, "http(s)"),
    ],
)
def test_svid_params_san_limits(kwargs: dict[str, object], reason: str) -> None:
    with pytest.raises(InvalidSvidParams) as info:
        X509SvidParams(
            spiffe_id=SpiffeId.parse("spiffe://example.org/w"),
            public_key=cached_key(KeyType.EC_P256).public_key(),
            ttl=timedelta(hours=1),
            **kwargs,  # type: ignore[arg-type]
        )
    assert reason in info.value.detail


def test_svid_params_canonicalise_dns_names() -> None:
    params = X509SvidParams(
        spiffe_id=SpiffeId.parse("spiffe://example.org/w"),
        public_key=cached_key(KeyType.EC_P256).public_key(),
        ttl=timedelta(hours=1),
        dns_names=["Web.Example.org", "web.example.org", "*.api.example.org"],  # type: ignore[arg-type]
    )
    assert params.dns_names == ("web.example.org", "*.api.example.org")


# --------------------------------------------------------------------------- leaf validator


def _valid_leaf(ca: TestCA, **overrides: object) -> x509.Certificate:
    assert ca.intermediate is not None and ca.intermediate_key is not None
    return raw_leaf(ca.intermediate, ca.intermediate_key, ca.clock, **overrides)  # type: ignore[arg-type]


def test_raw_leaf_helper_is_a_valid_svid(ca: TestCA) -> None:
    leaf = _valid_leaf(ca)
    assert verify_x509_svid(leaf, ca.intermediates, [ca.root], TD, ca.clock) == ca.spiffe_id()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"sans": None}, "§2: certificate has no subjectAltName"),
        ({"uris": ()}, "exactly one URI SAN, found 0"),
        (
            {"uris": ("spiffe://example.org/a", "spiffe://example.org/b")},
            "exactly one URI SAN, found 2",
        ),
        ({"uris": ("https://example.org/a",)}, "URI SAN is not a SPIFFE ID"),
        ({"uris": ("spiffe://example.org/a/",)}, "trailing"),
        ({"uris": ("spiffe://example.org",)}, "§3.1: leaf SPIFFE ID"),
        ({"uris": ("spiffe://other.org/a",)}, "not in trust domain 'example.org'"),
        ({"san_critical": False}, "subjectAltName is not critical"),
        ({"dns_names": ("UPPER.example.org",)}, "DNS SAN"),
        ({"basic_constraints": x509.BasicConstraints(ca=True, path_length=None)}, "§4.1"),
        ({"key_usage": None}, "keyUsage extension is missing"),
        ({"ku_critical": False}, "keyUsage extension must be critical"),
        ({"key_usage": leaf_key_usage(digital_signature=False)}, "must set digitalSignature"),
        ({"key_usage": leaf_key_usage(key_cert_sign=True)}, "must not set keyCertSign"),
        ({"key_usage": leaf_key_usage(crl_sign=True)}, "must not set cRLSign"),
        (
            {"eku": x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])},
            "lacks clientAuth",
        ),
        (
            {"eku": x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])},
            "lacks serverAuth",
        ),
    ],
)
def test_validator_names_each_broken_rule(
    ca: TestCA, overrides: dict[str, object], reason: str
) -> None:
    leaf = _valid_leaf(ca, **overrides)
    with pytest.raises(InvalidSvid) as info:
        validate_x509_svid(leaf, TD)
    assert reason in info.value.detail
    with pytest.raises(InvalidSvid):
        verify_x509_svid(leaf, ca.intermediates, [ca.root], TD, ca.clock)


def test_validator_accepts_optional_variants(ca: TestCA) -> None:
    # X509-SVID §4.4: EKU is a SHOULD; §4.1: absent basicConstraints means cA=false; a
    # non-empty subject allows a non-critical SAN.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")])
    leaf = _valid_leaf(ca, eku=None, basic_constraints=None, subject=subject, san_critical=False)
    assert validate_x509_svid(leaf, TD) == ca.spiffe_id()


def test_validator_refuses_weak_subject_key(ca: TestCA) -> None:
    leaf = _valid_leaf(ca, key=cached_rsa_key(1024))
    with pytest.raises(InvalidSvid, match="subject key is not allowed: RSA-1024"):
        validate_x509_svid(leaf, TD)


# --------------------------------------------------------------------------- path validation


def test_verify_at_validity_edges() -> None:
    ca = TestCA()
    cert = ca.issue(ttl=timedelta(hours=1))
    ca.clock.set(cert.not_valid_before_utc - timedelta(seconds=1))
    with pytest.raises(InvalidSvid, match="not valid before"):
        verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock)
    ca.clock.set(cert.not_valid_before_utc)
    verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock)
    ca.clock.set(cert.not_valid_after_utc)
    verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock)
    ca.clock.advance(timedelta(seconds=1))
    with pytest.raises(InvalidSvid, match="expired at"):
        verify_x509_svid(cert, ca.intermediates, [ca.root], TD, ca.clock)


def test_verify_refuses_expired_intermediate() -> None:
    ca = TestCA(intermediate_ttl=timedelta(days=1))
    assert ca.intermediate is not None and ca.intermediate_key is not None
    # A leaf that (wrongly) outlives its issuer is still refused once the issuer expires.
    leaf = raw_leaf(
        ca.intermediate,
        ca.intermediate_key,
        ca.clock,
        not_after=T0 + timedelta(days=5),
    )
    ca.clock.advance(timedelta(days=2))
    with pytest.raises(InvalidSvid, match="expired at"):
        verify_x509_svid(leaf, ca.intermediates, [ca.root], TD, ca.clock)


def test_verify_refuses_untrusted_root(ca: TestCA) -> None:
    cert = ca.issue()
    stranger = TestCA()
    with pytest.raises(InvalidSvid, match="no certification path"):
        verify_x509_svid(cert, ca.intermediates, [stranger.root], TD, ca.clock)
    with pytest.raises(InvalidSvid, match="no certification path"):
        verify_x509_svid(cert, [], [ca.root], TD, ca.clock)
    with pytest.raises(InvalidSvid, match="no trusted roots"):
        verify_x509_svid(cert, ca.intermediates, [], TD, ca.clock)


def test_verify_refuses_same_name_different_key() -> None:
    # Two CAs for one trust domain have the same root subject; only the signature decides.
    a = TestCA(with_intermediate=False)
    b = TestCA(with_intermediate=False)
    assert a.root.subject == b.root.subject
    cert = a.issue()
    with pytest.raises(InvalidSvid, match="no certification path"):
        verify_x509_svid(cert, [], [b.root], TD, a.clock)
    assert verify_x509_svid(cert, [], [b.root, a.root], TD, a.clock) == a.spiffe_id()


def test_verify_refuses_tampered_leaf(ca: TestCA) -> None:
    der = bytearray(ca.issue().public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    tampered = x509.load_der_x509_certificate(bytes(der))
    with pytest.raises(InvalidSvid, match="no certification path"):
        verify_x509_svid(tampered, ca.intermediates, [ca.root], TD, ca.clock)


def test_verify_refuses_too_many_intermediates(ca: TestCA) -> None:
    with pytest.raises(InvalidSvid, match="too many intermediates"):
        verify_x509_svid(ca.issue(), ca.intermediates * 17, [ca.root], TD, ca.clock)


def test_verify_ignores_irrelevant_intermediates(ca: TestCA) -> None:
    noise = TestCA().intermediates
    cert = ca.issue()
    assert verify_x509_svid(cert, [*noise, *ca.intermediates], [ca.root], TD, ca.clock)


def test_name_constraints_stop_a_foreign_intermediate() -> None:
    # An intermediate constrained to other.org signs a leaf claiming example.org.
    other = TestCA("other.org")
    assert other.intermediate is not None and other.intermediate_key is not None
    leaf = raw_leaf(
        other.intermediate,
        other.intermediate_key,
        other.clock,
        uris=("spiffe://example.org/workload",),
    )
    validate_x509_svid(leaf, TD)  # the leaf alone looks fine ...
    with pytest.raises(InvalidSvid, match="outside the permitted subtrees"):
        verify_x509_svid(leaf, other.intermediates, [other.root], TD, other.clock)


def test_name_constraints_apply_to_host_exactly() -> None:
    # RFC 5280 §4.2.1.10: "example.org" permits exactly that host, not sub.example.org.
    ca = TestCA("example.org")
    assert ca.intermediate is not None and ca.intermediate_key is not None
    leaf = raw_leaf(
        ca.intermediate,
        ca.intermediate_key,
        ca.clock,
        uris=("spiffe://sub.example.org/workload",),
    )
    with pytest.raises(InvalidSvid, match="outside the permitted subtrees"):
        verify_x509_svid(
            leaf, ca.intermediates, [ca.root], TrustDomain("sub.example.org"), ca.clock
        )


def _constrained_ca(
    name_constraints: x509.NameConstraints,
) -> tuple[TestCA, x509.Certificate, PrivateKey]:
    ca = TestCA(with_intermediate=False)
    key = cached_key(KeyType.EC_P256, 1)
    inter = raw_ca(
        name="constrained",
        issuer_cert=ca.root,
        issuer_key=ca.root_key,
        key=key,
        not_before=T0 - timedelta(hours=1),
        not_after=T0 + timedelta(days=1),
        path_length=0,
        name_constraints=name_constraints,
    )
    return ca, inter, key


@pytest.mark.parametrize(
    ("constraints", "dns_names", "ok"),
    [
        (x509.NameConstraints([x509.DNSName("example.org")], None), ["a.example.org"], True),
        (x509.NameConstraints([x509.DNSName("example.org")], None), ["example.org"], True),
        (x509.NameConstraints([x509.DNSName("example.org")], None), ["badexample.org"], False),
        (x509.NameConstraints([x509.DNSName("example.org")], None), ["a.example.com"], False),
        (
            x509.NameConstraints(None, [x509.DNSName("bad.example.org")]),
            ["x.bad.example.org"],
            False,
        ),
        (x509.NameConstraints(None, [x509.DNSName("bad.example.org")]), ["good.example.org"], True),
        (
            x509.NameConstraints(None, [x509.UniformResourceIdentifier(".example.org")]),
            [],
            True,
        ),
        (x509.NameConstraints(None, [x509.UniformResourceIdentifier("example.org")]), [], False),
        (
            x509.NameConstraints([x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))], None),
            [],
            True,
        ),
    ],
)
def test_name_constraint_semantics(
    constraints: x509.NameConstraints, dns_names: list[str], ok: bool
) -> None:
    ca, inter, key = _constrained_ca(constraints)
    leaf = raw_leaf(inter, key, ca.clock, dns_names=dns_names)
    if ok:
        assert verify_x509_svid(leaf, [inter], [ca.root], TD, ca.clock) == ca.spiffe_id()
    else:
        with pytest.raises(InvalidSvid, match="subtree"):
            verify_x509_svid(leaf, [inter], [ca.root], TD, ca.clock)


def test_ip_and_directory_name_constraints() -> None:
    ca, inter, key = _constrained_ca(
        x509.NameConstraints(
            [
                x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
                x509.DirectoryName(
                    x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ok")])
                ),
            ],
            None,
        )
    )
    subject_ok = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ok"),
            x509.NameAttribute(NameOID.COMMON_NAME, "w"),
        ]
    )
    subject_bad = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "evil")])
    uri = x509.UniformResourceIdentifier("spiffe://example.org/workload")
    cases = [
        (subject_ok, [uri, x509.IPAddress(ipaddress.ip_address("10.1.2.3"))], True),
        (subject_ok, [uri, x509.IPAddress(ipaddress.ip_address("192.168.0.1"))], False),
        (subject_ok, [uri, x509.IPAddress(ipaddress.ip_address("::1"))], False),
        (subject_bad, [uri], False),
    ]
    for subject, sans, ok in cases:
        leaf = raw_leaf(inter, key, ca.clock, subject=subject, sans=sans)
        if ok:
            verify_x509_svid(leaf, [inter], [ca.root], TD, ca.clock)
        else:
            with pytest.raises(InvalidSvid, match="subtree"):
                verify_x509_svid(leaf, [inter], [ca.root], TD, ca.clock)


def test_unsupported_name_constraint_type_fails_closed() -> None:
    ca, inter, key = _constrained_ca(x509.NameConstraints([x509.RFC822Name("example.org")], None))
    uri = x509.UniformResourceIdentifier("spiffe://example.org/workload")
    no_email = raw_leaf(inter, key, ca.clock)
    verify_x509_svid(no_email, [inter], [ca.root], TD, ca.clock)
    with_email = raw_leaf(inter, key, ca.clock, sans=[uri, x509.RFC822Name("a@example.org")])
    with pytest.raises(InvalidSvid, match="does not implement"):
        verify_x509_svid(with_email, [inter], [ca.root], TD, ca.clock)


def test_uri_constraint_rejects_uri_without_domain_host() -> None:
    ca, inter, key = _constrained_ca(
        x509.NameConstraints([x509.UniformResourceIdentifier("example.org")], None)
    )
    leaf = raw_leaf(inter, key, ca.clock, uris=("spiffe://10.0.0.1/workload",))
    with pytest.raises(InvalidSvid, match="without a domain-name host"):
        verify_x509_svid(leaf, [inter], [ca.root], TrustDomain("10.0.0.1"), ca.clock)


def test_path_length_is_enforced() -> None:
    ca = TestCA()  # root pathlen 1 -> intermediate pathlen 0
    assert ca.intermediate is not None and ca.intermediate_key is not None
    key = cached_key(KeyType.EC_P256, 2)
    below = raw_ca(
        name="too deep",
        issuer_cert=ca.intermediate,
        issuer_key=ca.intermediate_key,
        key=key,
        not_before=T0 - timedelta(hours=1),
        not_after=T0 + timedelta(days=1),
    )
    leaf = raw_leaf(below, key, ca.clock)
    with pytest.raises(InvalidSvid, match="pathLenConstraint 0 but 1 CA"):
        verify_x509_svid(leaf, [below, *ca.intermediates], [ca.root], TD, ca.clock)


def test_issuer_must_be_a_ca_with_key_cert_sign() -> None:
    ca = TestCA(with_intermediate=False)
    key = cached_key(KeyType.EC_P256, 3)
    for kwargs, reason in (
        ({"ca": False}, "is not a CA"),
        ({"key_usage": leaf_key_usage()}, "keyCertSign"),
    ):
        inter = raw_ca(
            name="not really a ca",
            issuer_cert=ca.root,
            issuer_key=ca.root_key,
            key=key,
            not_before=T0 - timedelta(hours=1),
            not_after=T0 + timedelta(days=1),
            **kwargs,  # type: ignore[arg-type]
        )
        leaf = raw_leaf(inter, key, ca.clock)
        with pytest.raises(InvalidSvid, match=reason):
            verify_x509_svid(leaf, [inter], [ca.root], TD, ca.clock)


def test_unknown_critical_extension_is_refused(ca: TestCA) -> None:
    odd = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = _valid_leaf(ca, extra=[(odd, True)])
    with pytest.raises(
        InvalidSvid, match=r"unsupported critical extension 1\.3\.6\.1\.4\.1\.99999\.1"
    ):
        verify_x509_svid(leaf, ca.intermediates, [ca.root], TD, ca.clock)
    harmless = _valid_leaf(ca, extra=[(odd, False)])
    verify_x509_svid(harmless, ca.intermediates, [ca.root], TD, ca.clock)


def test_weak_issuer_key_is_refused() -> None:
    weak = cached_rsa_key(1024)
    root = raw_ca(
        name="weak root",
        issuer_cert=None,
        issuer_key=weak,  # type: ignore[arg-type]
        key=weak,  # type: ignore[arg-type]
        not_before=T0 - timedelta(hours=1),
        not_after=T0 + timedelta(days=1),
    )
    clock = FakeClock(T0)
    leaf = raw_leaf(root, weak, clock)  # type: ignore[arg-type]
    with pytest.raises(InvalidSvid, match="RSA-1024"):
        verify_x509_svid(leaf, [], [root], TD, clock)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_agrees_with_cryptography_verifier_where_it_applies(key_type: KeyType) -> None:
    # Differential check: for chains cryptography's Web PKI verifier can handle (no URI
    # name constraints, no Ed25519 CA), both verifiers must accept the same SVID.
    ca = TestCA(with_intermediate=False, root_key_type=key_type)
    cert = ca.issue(key=cached_key(key_type))
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca.root]))
        .time(ca.clock.now())
        .build_client_verifier()
    )
    verified = verifier.verify(cert, [])
    assert verified.subjects == [x509.UniformResourceIdentifier(str(ca.spiffe_id()))]
    assert verify_x509_svid(cert, [], [ca.root], TD, ca.clock) == ca.spiffe_id()


def test_cryptography_verifier_refuses_uri_name_constraints(ca: TestCA) -> None:
    # Documents why pki.x509_path implements path validation itself (see its docstring).
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([ca.root]))
        .time(ca.clock.now())
        .build_client_verifier()
    )
    with pytest.raises(verification.VerificationError, match="name constraint"):
        verifier.verify(ca.issue(), ca.intermediates)


# --------------------------------------------------------------------------- upstream CA


def _pem_key(key: PrivateKey, password: bytes | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def test_load_upstream_root(ca: TestCA) -> None:
    authority = load_upstream_authority(
        certificate_pem(ca.root).encode(), _pem_key(ca.root_key, b"s3cret"), b"s3cret"
    )
    assert authority.is_root
    assert authority.root == ca.root
    assert authority.chain == ()
    # The upstream root can then sign trustd's own intermediate.
    inter = create_intermediate(
        TD, cached_key(KeyType.EC_P256), authority, ca.clock, timedelta(days=1)
    )
    inter.verify_directly_issued_by(ca.root)


def test_load_upstream_intermediate_with_bundle() -> None:
    ca = TestCA()
    # An upstream intermediate that may issue one more CA below it.
    key = cached_key(KeyType.EC_P384)
    upstream_root_key = cached_key(KeyType.EC_P256, 4)
    upstream_root = raw_ca(
        name="corp root",
        issuer_cert=None,
        issuer_key=upstream_root_key,
        key=upstream_root_key,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=100),
    )
    upstream_inter = raw_ca(
        name="corp issuing",
        issuer_cert=upstream_root,
        issuer_key=upstream_root_key,
        key=key,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=50),
        path_length=1,
    )
    authority = load_upstream_authority(
        certificate_pem(upstream_inter).encode(),
        _pem_key(key, None),
        None,
        certificate_pem(upstream_root).encode() + certificate_pem(ca.root).encode(),
    )
    assert authority.root == upstream_root
    assert authority.chain == ()
    assert authority.issuing_chain == (upstream_inter,)
    inter = create_intermediate(
        TD, cached_key(KeyType.EC_P256), authority, ca.clock, timedelta(days=1)
    )
    trustd = Authority(inter, cached_key(KeyType.EC_P256), (upstream_inter,), upstream_root)
    leaf = issue_x509_svid(trustd, ca.params(), ca.clock)
    assert verify_x509_svid(leaf, trustd.issuing_chain, [upstream_root], TD, ca.clock)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ({"password": b"wrong"}, "wrong password or corrupt"),
        ({"password": None}, "missing for an encrypted one"),
        ({"key": "other"}, "does not match"),
        ({"cert": b"garbage"}, "no valid PEM certificates"),
        ({"key_pem": b"garbage"}, "wrong password or corrupt"),
        ({"cert": "leaf"}, "not a CA certificate"),
        ({"cert": "intermediate"}, "no issuer of"),
    ],
)
def test_load_upstream_errors(ca: TestCA, mutate: dict[str, object], reason: str) -> None:
    cert_pem = certificate_pem(ca.root).encode()
    key: PrivateKey = ca.root_key
    if mutate.get("key") == "other":
        key = cached_key(KeyType.EC_P384)
    if mutate.get("cert") == "leaf":
        key = cached_key(KeyType.EC_P256)
        cert_pem = certificate_pem(ca.issue(key=key)).encode()
    elif mutate.get("cert") == "intermediate":
        assert ca.intermediate is not None and ca.intermediate_key is not None
        key = ca.intermediate_key
        cert_pem = certificate_pem(ca.intermediate).encode()
    elif isinstance(mutate.get("cert"), bytes):
        cert_pem = mutate["cert"]  # type: ignore[assignment]
    key_pem = _pem_key(key, b"pw")
    if "key_pem" in mutate:
        key_pem = mutate["key_pem"]  # type: ignore[assignment]
    password = mutate.get("password", b"pw")
    with pytest.raises(CaError) as info:
        load_upstream_authority(cert_pem, key_pem, password)  # type: ignore[arg-type]
    assert reason in info.value.detail
    assert "PRIVATE KEY" not in info.value.detail


# --------------------------------------------------------------------------- CSRs


def _csr(
    key: object, *, san: str | None = "spiffe://evil.org/admin"
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attacker")])
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(san)]), critical=False
        )
    # Ed25519 and ML-DSA hash internally; DSA and the weak curves take SHA-256.
    internal = isinstance(key, ed25519.Ed25519PrivateKey) or is_ml_dsa(key)
    return builder.sign(key, None if internal else hashes.SHA256())  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_parse_csr_pem_and_der(key_type: KeyType) -> None:
    key = cached_key(key_type)
    csr = _csr(key)
    for data in (
        csr.public_bytes(serialization.Encoding.PEM),
        csr.public_bytes(serialization.Encoding.DER),
    ):
        # ML-DSA CSRs only where the caller allows them (test_pki_ml_dsa).
        parsed = parse_csr(data, allow_ml_dsa=key_type.post_quantum)
        assert same_public_key(csr_public_key(parsed), key.public_key())


def test_csr_identity_is_never_trusted(ca: TestCA) -> None:
    # The CSR asks for spiffe://evil.org/admin; the caller decides the identity.
    key = cached_key(KeyType.EC_P256)
    parsed = parse_csr(_csr(key).public_bytes(serialization.Encoding.PEM))
    params = X509SvidParams(ca.spiffe_id("/web"), csr_public_key(parsed), timedelta(hours=1))
    cert = issue_x509_svid(ca.authority, params, ca.clock)
    assert _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    ) == ["spiffe://example.org/web"]
    assert len(cert.subject) == 0


def test_csr_oversized() -> None:
    with pytest.raises(InvalidCsr, match="the limit is 16384 bytes") as info:
        parse_csr(b"0" * 16385)
    assert info.value.fields == {"size": 16385, "limit": 16384}
    data = _csr(cached_key(KeyType.EC_P256)).public_bytes(serialization.Encoding.DER)
    with pytest.raises(InvalidCsr, match="the limit is 100 bytes"):
        parse_csr(data, max_size=100)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"\x30\x03\x02\x01\x00",
    ],
)
def test_csr_garbage(data: bytes) -> None:
    with pytest.raises(InvalidCsr, match="not a parsable"):
        parse_csr(data)


def test_csr_bad_self_signature() -> None:
    der = bytearray(_csr(cached_key(KeyType.EC_P256)).public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # flip a bit inside the signature value
    with pytest.raises(InvalidCsr, match="signature is invalid"):
        parse_csr(bytes(der))


def _der_sequence(content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return b"\x30" + bytes([n]) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x30" + bytes([0x80 | len(length)]) + length + content


def test_csr_signature_by_another_key() -> None:
    # Proof of possession: key A's request body with key B's signature is refused.
    a = _csr(cached_key(KeyType.EC_P256))
    b = _csr(cached_key(KeyType.EC_P256, 5))
    b_der = b.public_bytes(serialization.Encoding.DER)
    b_tail = b_der[b_der.index(b.tbs_certrequest_bytes) + len(b.tbs_certrequest_bytes) :]
    spliced = _der_sequence(a.tbs_certrequest_bytes + b_tail)
    x509.load_der_x509_csr(spliced)  # well-formed ...
    with pytest.raises(InvalidCsr, match="signature is invalid"):  # ... but not possessed
        parse_csr(spliced)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: cached_rsa_key(1024), "RSA-1024"),
        (lambda: cached_ec_key("secp192r1"), "EC secp192r1"),
        (lambda: cached_ec_key("secp256k1"), "EC secp256k1"),
        (lambda: dsa.generate_private_key(2048), "DSA-2048"),
    ],
    ids=["rsa1024", "p192", "secp256k1", "dsa"],
)
def test_csr_weak_keys(make: object, named: str) -> None:
    csr = _csr(make())  # type: ignore[operator]
    with pytest.raises(WeakKey, match=named):
        parse_csr(csr.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------- PEM helpers


def test_fingerprint_and_pem_helpers(ca: TestCA) -> None:
    der = ca.root.public_bytes(serialization.Encoding.DER)
    assert fingerprint_sha256(ca.root) == hashlib.sha256(der).hexdigest()
    assert ":" not in fingerprint_sha256(ca.root)
    assert ca.intermediate is not None
    pem = certificate_pem(ca.root) + certificate_pem(ca.intermediate)
    assert load_pem_certificates(pem.encode()) == [ca.root, ca.intermediate]
    for bad in (b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(InvalidBundle):
            load_pem_certificates(bad)
