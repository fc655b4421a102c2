"""Shared builders for the ``pki`` tests: a TestCA that builds hierarchies, and a raw
certificate builder for making deliberately non-conforming certificates.

A plain module (not a conftest) so tests import exactly what they use.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from functools import cache

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.ca import Authority, create_intermediate, create_root
from pki.clock import Clock, FakeClock
from pki.keys import KeyType, PrivateKey, PublicKey, generate_private_key, signature_hash
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_svid import X509SvidParams, issue_x509_svid

T0 = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)


@cache
def cached_key(key_type: KeyType, slot: int = 0) -> PrivateKey:
    """A process-wide cached key: RSA generation is slow and most tests need any key."""
    return generate_private_key(key_type)


@cache
def cached_rsa_key(bits: int, exponent: int = 65537) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=exponent, key_size=bits)


@cache
def cached_ec_key(curve_name: str) -> ec.EllipticCurvePrivateKey:
    curve = {
        "secp192r1": ec.SECP192R1(),
        "secp256k1": ec.SECP256K1(),
        "secp256r1": ec.SECP256R1(),
        "secp384r1": ec.SECP384R1(),
        "secp521r1": ec.SECP521R1(),
    }[curve_name]
    return ec.generate_private_key(curve)


class TestCA:
    """A root CA, optionally an intermediate under it, and a fake clock, for one domain."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(
        self,
        trust_domain: str = "example.org",
        *,
        clock: FakeClock | None = None,
        root_key_type: KeyType = KeyType.EC_P256,
        intermediate_key_type: KeyType = KeyType.EC_P256,
        root_ttl: timedelta = timedelta(days=365),
        intermediate_ttl: timedelta = timedelta(days=30),
        with_intermediate: bool = True,
    ) -> None:
        self.trust_domain = TrustDomain.parse(trust_domain)
        self.clock = clock if clock is not None else FakeClock(T0)
        self.root_key = generate_private_key(root_key_type)
        self.root = create_root(self.trust_domain, self.root_key, self.clock, root_ttl)
        self.root_authority = Authority(self.root, self.root_key, (), self.root)
        self.intermediate_key: PrivateKey | None = None
        self.intermediate: x509.Certificate | None = None
        self.authority = self.root_authority
        if with_intermediate:
            self.intermediate_key = generate_private_key(intermediate_key_type)
            self.intermediate = create_intermediate(
                self.trust_domain,
                self.intermediate_key,
                self.root_authority,
                self.clock,
                intermediate_ttl,
            )
            self.authority = Authority(self.intermediate, self.intermediate_key, (), self.root)

    def spiffe_id(self, path: str = "/workload") -> SpiffeId:
        return SpiffeId(self.trust_domain, path)

    def params(
        self,
        path: str = "/workload",
        *,
        key: PrivateKey | None = None,
        ttl: timedelta = timedelta(hours=1),
        dns_names: Sequence[str] = (),
        crl_url: str | None = None,
    ) -> X509SvidParams:
        subject_key = key if key is not None else cached_key(KeyType.EC_P256)
        return X509SvidParams(
            spiffe_id=self.spiffe_id(path),
            public_key=subject_key.public_key(),
            ttl=ttl,
            dns_names=tuple(dns_names),
            crl_url=crl_url,
        )

    def issue(
        self,
        path: str = "/workload",
        *,
        key: PrivateKey | None = None,
        ttl: timedelta = timedelta(hours=1),
        dns_names: Sequence[str] = (),
    ) -> x509.Certificate:
        return issue_x509_svid(
            self.authority, self.params(path, key=key, ttl=ttl, dns_names=dns_names), self.clock
        )

    @property
    def intermediates(self) -> list[x509.Certificate]:
        return [self.intermediate] if self.intermediate is not None else []


def leaf_key_usage(
    *, digital_signature: bool = True, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def ca_key_usage() -> x509.KeyUsage:
    return leaf_key_usage(digital_signature=False, key_cert_sign=True, crl_sign=True)


BOTH_EKUS = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)

_DEFAULT = object()


def raw_certificate(
    *,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    public_key: PublicKey,
    not_before: datetime,
    not_after: datetime,
    subject: x509.Name | None = None,
    sans: Sequence[x509.GeneralName] | None = None,
    san_critical: bool = True,
    basic_constraints: x509.BasicConstraints | None = None,
    bc_critical: bool = True,
    key_usage: x509.KeyUsage | None = None,
    ku_critical: bool = True,
    eku: x509.ExtendedKeyUsage | None = BOTH_EKUS,
    name_constraints: x509.NameConstraints | None = None,
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    serial: int = 0x1234,
) -> x509.Certificate:
    """Build and sign any certificate, conforming or not.  Only what is asked for is added."""
    subject_name = subject if subject is not None else x509.Name([])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject_name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=san_critical)
    if basic_constraints is not None:
        builder = builder.add_extension(basic_constraints, critical=bc_critical)
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=ku_critical)
    if eku is not None:
        builder = builder.add_extension(eku, critical=False)
    if name_constraints is not None:
        builder = builder.add_extension(name_constraints, critical=True)
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, signature_hash(issuer_key))


def raw_ca(
    *,
    name: str,
    issuer_cert: x509.Certificate | None,
    issuer_key: PrivateKey,
    key: PrivateKey,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None = None,
    name_constraints: x509.NameConstraints | None = None,
    key_usage: x509.KeyUsage | None = None,
    ca: bool = True,
    uri: str | None = None,
) -> x509.Certificate:
    """A CA certificate with a distinct subject, for building odd hierarchies."""
    return raw_certificate(
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        public_key=key.public_key(),
        not_before=not_before,
        not_after=not_after,
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]),
        sans=[x509.UniformResourceIdentifier(uri)] if uri else None,
        san_critical=False,
        basic_constraints=x509.BasicConstraints(ca=ca, path_length=path_length),
        key_usage=key_usage if key_usage is not None else ca_key_usage(),
        eku=None,
        name_constraints=name_constraints,
    )


def raw_leaf(
    issuer_cert: x509.Certificate,
    issuer_key: PrivateKey,
    clock: Clock,
    *,
    uris: Sequence[str] = ("spiffe://example.org/workload",),
    dns_names: Sequence[str] = (),
    key: PrivateKey | None = None,
    **overrides: object,
) -> x509.Certificate:
    """A leaf that conforms to X509-SVID unless *overrides* say otherwise."""
    now = clock.now()
    subject_key = key if key is not None else cached_key(KeyType.EC_P256)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans.extend(x509.DNSName(d) for d in dns_names)
    kwargs: dict[str, object] = {
        "issuer_cert": issuer_cert,
        "issuer_key": issuer_key,
        "public_key": subject_key.public_key(),
        "not_before": now - timedelta(seconds=30),
        "not_after": now + timedelta(hours=1),
        "sans": sans,
        "basic_constraints": x509.BasicConstraints(ca=False, path_length=None),
        "key_usage": leaf_key_usage(),
    }
    kwargs.update(overrides)
    return raw_certificate(**kwargs)  # type: ignore[arg-type]
