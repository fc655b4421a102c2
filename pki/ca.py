"""The certificate authority: root and intermediate CA certificates, cross-signing, upstream
authorities, and the certificate helpers every profile uses.

Leaf profiles live beside it: X.509-SVIDs in :mod:`pki.x509_svid`, ACME certificates in
:mod:`pki.acme.profile`; CSRs in :mod:`pki.csr`.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.x509.oid import NameOID

from pki.clock import Clock
from pki.errors import (
    CaError,
    InvalidBundle,
    InvalidSpiffeId,
    InvalidSvid,
    WeakKey,
    echo,
)
from pki.keys import (
    PrivateKey,
    PublicKey,
    allowed_public_key,
    check_public_key,
    describe_key,
    same_public_key,
    signature_hash,
)
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_path import (
    MAX_PATH_DEPTH,
    describe,
    extension,
    is_self_issued,
    is_self_signed,
    issued_by,
    validate_path,
)

# Clock-skew allowances.  Peers whose clocks run slightly behind ours must still accept a
# certificate issued "now", so not_before is backdated.
CA_BACKDATE = timedelta(seconds=60)


# RFC 5280 §4.1.2.2: serial numbers are positive and at most 20 octets.
MAX_SERIAL = 2**159


_ORGANIZATION = "trustd"


# RFC 5280 Appendix A: ub-common-name is 64 characters.
_UB_COMMON_NAME = 64


def random_serial() -> int:
    # RFC 5280 §4.1.2.2 / CA/B BR §7.1: at least 64 bits of CSPRNG output; we use 159 so the
    # DER INTEGER stays positive and within 20 octets.
    while True:
        serial = secrets.randbits(159)
        if serial:
            return serial


def _common_name(kind: str, trust_domain: TrustDomain) -> str:
    cn = f"trustd {kind} CA for {trust_domain.name}"
    if len(cn) <= _UB_COMMON_NAME:
        return cn
    # The CN is only a label for humans; the trust domain itself is in the URI SAN.  A
    # digest keeps long trust domains from colliding after truncation.
    digest = hashlib.sha256(trust_domain.name.encode()).hexdigest()[:16]
    return f"trustd {kind} CA {digest}"


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 §4.2.1.1: the AKI keyIdentifier is the issuer's SKI, so path builders can
    # pick the right issuer when several share a name (rotation).
    ski = extension(issuer, x509.SubjectKeyIdentifier)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(
        allowed_public_key(issuer.public_key())
    )


def require_signing_certificate(cert: x509.Certificate, what: str) -> None:
    """X509-SVID §3.2: a signing certificate has cA=true and keyCertSign."""
    bc = extension(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        raise CaError(f"{what} {describe(cert)} is not a CA certificate (cA is not true)")
    ku = extension(cert, x509.KeyUsage)
    if ku is None or not ku.value.key_cert_sign:
        raise CaError(f"{what} {describe(cert)} does not have keyUsage keyCertSign")


def spiffe_uris(cert: x509.Certificate) -> list[str]:
    san = extension(cert, x509.SubjectAlternativeName)
    if san is None:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


@dataclass(frozen=True)
class Authority:
    """A CA certificate, its private key, and the path from it to its root.

    ``chain`` holds the certificates *above* ``certificate`` up to but excluding the
    self-signed ``root``; it is empty when the authority is the root or sits directly
    under it.  Construction checks that the key matches and that every link verifies.
    """

    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    root: x509.Certificate

    def __post_init__(self) -> None:
        object.__setattr__(self, "chain", tuple(self.chain))
        if not same_public_key(self.certificate.public_key(), self.private_key.public_key()):
            raise CaError(f"private key does not match CA certificate {describe(self.certificate)}")
        require_signing_certificate(self.certificate, "authority certificate")
        if not is_self_signed(self.root):
            raise CaError(f"root {describe(self.root)} is not self-signed")
        if self.certificate == self.root:
            if self.chain:
                raise CaError("an authority that is the root must have an empty chain")
            return
        path = (self.certificate, *self.chain, self.root)
        for child, parent in itertools.pairwise(path):
            if not issued_by(child, parent):
                raise CaError(
                    f"chain is broken: {describe(child)} was not issued by {describe(parent)}"
                )

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def is_root(self) -> bool:
        return self.certificate == self.root

    @property
    def issuing_chain(self) -> tuple[x509.Certificate, ...]:
        """Certificates to send after a leaf it issues: itself and ``chain``, never the root."""
        if self.is_root:
            return ()
        return (self.certificate, *self.chain)

    @property
    def trust_domain(self) -> TrustDomain:
        """The trust domain named by the authority's ``spiffe://<td>`` URI SAN.

        Raises:
            CaError: the certificate carries no single SPIFFE trust domain ID.
        """
        uris = spiffe_uris(self.certificate)
        if len(uris) != 1:
            raise CaError(
                f"authority {describe(self.certificate)} must carry exactly one "
                f"spiffe://<trust domain> URI SAN, found {len(uris)}"
            )
        try:
            sid = SpiffeId.parse(uris[0])
        except InvalidSpiffeId as exc:
            raise CaError(f"authority URI SAN is not a SPIFFE ID: {exc.detail}") from None
        # X509-SVID §3.2: a signing certificate's SPIFFE ID MUST NOT have a path.
        if sid.path:
            raise CaError(f"authority SPIFFE ID {echo(str(sid))} must not have a path")
        return sid.trust_domain


def _signing_cert_builder(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: PublicKey,
    trust_domain: TrustDomain,
    not_before: datetime,
    not_after: datetime,
    path_length: int,
    aki: x509.AuthorityKeyIdentifier,
    name_constraints: x509.NameConstraints | None,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        # RFC 5280 §4.2.1.9: CAs MUST mark basicConstraints critical.
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        # X509-SVID §4.3: key usage MUST be critical; signing certs MUST set keyCertSign and
        # MAY set cRLSign.  Appendix A: digitalSignature only on leaves, so it is not set.
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        # X509-SVID §3.2: a signing certificate SHOULD be an SVID whose ID has no path.
        # Subject is non-empty here, so RFC 5280 §4.2.1.6 lets the SAN be non-critical.
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain.id_string())]),
            critical=False,
        )
    )
    if name_constraints is not None:
        # RFC 5280 §4.2.1.10: conforming CAs MUST mark name constraints critical.
        builder = builder.add_extension(name_constraints, critical=True)
    return builder


def _require_positive_ttl(ttl: timedelta) -> None:
    if ttl <= timedelta(0):
        raise CaError(f"ttl must be positive, got {ttl}")


def create_root(
    trust_domain: TrustDomain, key: PrivateKey, clock: Clock, ttl: timedelta
) -> x509.Certificate:
    """Create a self-signed root CA certificate for *trust_domain*.

    Raises:
        CaError: *ttl* is not positive.
        WeakKey: *key* is not an allowed key type.
    """
    _require_positive_ttl(ttl)
    public_key = allowed_public_key(key.public_key())
    now = clock.now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, _common_name("root", trust_domain)),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = _signing_cert_builder(
        subject=name,
        issuer=name,
        public_key=public_key,
        trust_domain=trust_domain,
        not_before=now - CA_BACKDATE,
        not_after=now + ttl,
        # root -> trustd intermediate -> leaf: one CA below the root.
        path_length=1,
        aki=x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
        name_constraints=None,
    )
    cert = builder.sign(key, signature_hash(key))
    if not is_self_signed(cert):
        raise CaError("created root does not verify under its own key")
    try:
        validate_path([cert], now)
    except InvalidSvid as exc:
        raise CaError(f"created root failed validation: {exc.detail}") from exc
    return cert


def _remaining_ca_depth(issuer: Authority) -> int | None:
    """How many more CA certificates may appear below *issuer*, or None for unlimited."""
    path = (
        (issuer.certificate, *issuer.chain, issuer.root) if not issuer.is_root else (issuer.root,)
    )
    remaining: int | None = None
    for depth, cert in enumerate(path):
        bc = extension(cert, x509.BasicConstraints)
        if bc is None or bc.value.path_length is None:
            continue
        # RFC 5280 §4.2.1.9: pathLenConstraint counts non-self-issued intermediates below.
        below = sum(1 for c in path[:depth] if not is_self_issued(c))
        left = bc.value.path_length - below
        remaining = left if remaining is None else min(remaining, left)
    return remaining


def create_intermediate(
    trust_domain: TrustDomain,
    key: PrivateKey,
    issuer: Authority,
    clock: Clock,
    ttl: timedelta,
) -> x509.Certificate:
    """Create an intermediate CA for *trust_domain*, signed by *issuer*.

    The certificate is name-constrained to ``spiffe://<trust_domain>/...`` URIs and may
    not issue further CAs (pathLenConstraint 0); its lifetime is capped at the issuer's.

    Raises:
        CaError: *ttl* is not positive, *issuer* is not valid now or may not issue CAs, or
            the result does not chain to the issuer's root.
        WeakKey: *key* is not an allowed key type.
    """
    _require_positive_ttl(ttl)
    public_key = allowed_public_key(key.public_key())
    now = clock.now()
    if not issuer.not_before <= now < issuer.not_after:
        raise CaError(
            f"issuer {describe(issuer.certificate)} is not valid at {now.isoformat()} "
            f"(valid {issuer.not_before.isoformat()} to {issuer.not_after.isoformat()})"
        )
    remaining = _remaining_ca_depth(issuer)
    if remaining is not None and remaining < 1:
        raise CaError(
            f"issuer {describe(issuer.certificate)} may not issue CA certificates "
            "(its pathLenConstraint is exhausted)"
        )
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, _common_name("intermediate", trust_domain)),
            # Successive intermediates (rotation) get distinct subjects so that path
            # builders matching on names alone cannot confuse them.
            x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8)),
        ]
    )
    # RFC 5280 §4.2.1.10: URI constraints apply to the host part, and a constraint without
    # a leading '.' names exactly that host, so spiffe://<td>/... is permitted and every
    # other URI is not.  DNS and IP names stay unconstrained (no subtrees of those types).
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(trust_domain.name)],
        excluded_subtrees=None,
    )
    builder = _signing_cert_builder(
        subject=subject,
        issuer=issuer.certificate.subject,
        public_key=public_key,
        trust_domain=trust_domain,
        # Nest inside the issuer's validity so no link of the chain outlives another.
        not_before=max(now - CA_BACKDATE, issuer.not_before),
        not_after=min(now + ttl, issuer.not_after),
        path_length=0,
        aki=authority_key_identifier(issuer.certificate),
        name_constraints=constraints,
    )
    cert = builder.sign(issuer.private_key, signature_hash(issuer.private_key))
    try:
        validate_path([cert, *issuer.issuing_chain, issuer.root], now)
    except InvalidSvid as exc:
        raise CaError(f"created intermediate failed validation: {exc.detail}") from exc
    return cert


def create_cross_certificate(
    new_root: x509.Certificate, new_root_key: PrivateKey, issuer: Authority, clock: Clock
) -> x509.Certificate:
    """Certify *new_root*'s key and name under the current root *issuer* ("new with old",
    RFC 4210 §4.4), so that verifiers which only hold the old root still validate what the
    new root's intermediates sign while the bundle change propagates.

    Raises:
        CaError: *issuer* is not valid now, *new_root_key* does not match *new_root*, or
            the result does not verify under *issuer*.
    """
    now = clock.now()
    if not issuer.not_before <= now < issuer.not_after:
        raise CaError(f"issuer {describe(issuer.certificate)} is not valid at {now.isoformat()}")
    if not same_public_key(new_root.public_key(), new_root_key.public_key()):
        raise CaError("the new root's key does not match its certificate")
    trust_domain = issuer.trust_domain
    bc = extension(new_root, x509.BasicConstraints)
    builder = _signing_cert_builder(
        subject=new_root.subject,
        issuer=issuer.certificate.subject,
        public_key=allowed_public_key(new_root.public_key()),
        trust_domain=trust_domain,
        not_before=max(now - CA_BACKDATE, issuer.not_before),
        not_after=min(new_root.not_valid_after_utc, issuer.not_after),
        path_length=bc.value.path_length if bc and bc.value.path_length is not None else 1,
        aki=authority_key_identifier(issuer.certificate),
        name_constraints=None,
    )
    cert = builder.sign(issuer.private_key, signature_hash(issuer.private_key))
    if not issued_by(cert, issuer.certificate):
        raise CaError("cross certificate does not verify under its issuer")
    return cert


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse one or more PEM certificates.

    Raises:
        InvalidBundle: *data* holds no certificate or a malformed one.
    """
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise InvalidBundle("data holds no valid PEM certificates") from None
    if not certs:
        raise InvalidBundle("data holds no PEM certificates")
    return certs


def certificate_pem(cert: x509.Certificate) -> str:
    """PEM text of *cert*."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as trustd stores and names it: lowercase hex, no leading zeros."""
    return format(cert.serial_number, "x")


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER certificate, without colons."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_upstream_authority(
    cert_pem: bytes,
    key_pem: bytes,
    key_password: bytes | None,
    bundle_pem: bytes | None = None,
) -> Authority:
    """Load an upstream root or intermediate CA (certificate, key and chain) from PEM.

    *cert_pem* starts with the CA certificate and may be followed by its issuers;
    *bundle_pem* holds further issuers up to and including the self-signed root.

    Raises:
        CaError: unparsable input, wrong key password, key/certificate mismatch, a
            certificate that is not a CA with keyCertSign, a weak key, or no path from the
            certificate to a self-signed root in the supplied certificates.
    """
    try:
        certs = load_pem_certificates(cert_pem)
        pool = certs[1:] + (load_pem_certificates(bundle_pem) if bundle_pem else [])
    except InvalidBundle as exc:
        raise CaError(f"upstream CA certificates: {exc.detail}") from None
    cert = certs[0]
    try:
        loaded = serialization.load_pem_private_key(key_pem, password=key_password)
    except TypeError:
        raise CaError(
            "upstream CA key: password given for an unencrypted key, or missing for an "
            "encrypted one"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        # `from None`: never chain an error that might quote key bytes.
        raise CaError(
            "upstream CA key could not be loaded: wrong password or corrupt PEM"
        ) from None
    if not isinstance(
        loaded,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | mldsa.MLDSA44PrivateKey
        | mldsa.MLDSA65PrivateKey
        | mldsa.MLDSA87PrivateKey,
    ):
        raise CaError(f"upstream CA key type {describe_key(loaded)} is not supported")
    key: PrivateKey = loaded
    try:
        check_public_key(cert.public_key())
    except WeakKey as exc:
        raise CaError(f"upstream CA certificate: {exc.detail}") from None
    if not same_public_key(cert.public_key(), key.public_key()):
        raise CaError("upstream CA key does not match the upstream CA certificate")
    require_signing_certificate(cert, "upstream certificate")

    chain: list[x509.Certificate] = []
    current = cert
    for _ in range(MAX_PATH_DEPTH):
        if is_self_signed(current):
            return Authority(certificate=cert, private_key=key, chain=tuple(chain), root=current)
        parent = next((c for c in pool if c not in chain and issued_by(current, c)), None)
        if parent is None:
            raise CaError(
                f"no issuer of {describe(current)} in the supplied bundle; the bundle must "
                "hold every certificate up to the self-signed root"
            )
        require_signing_certificate(parent, "upstream chain certificate")
        if not is_self_signed(parent):
            chain.append(parent)
        current = parent
    raise CaError(f"upstream chain is longer than {MAX_PATH_DEPTH} certificates")
