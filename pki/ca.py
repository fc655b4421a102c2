"""The certificate authority: signing certificates, X.509-SVID issuance and verification.

Issuance is an explicit pipeline, after SPIRE's credtemplate/credvalidator split:

    params -> template -> cryptography builder -> sign -> validate what was signed -> return

so a bug in the template or builder produces an exception, never a non-conforming SVID.

Path validation for :func:`verify_x509_svid` lives in :mod:`pki.x509_path`, which explains
why it does not use ``cryptography.x509.verification``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.clock import Clock
from pki.errors import (
    CaError,
    InvalidBundle,
    InvalidCsr,
    InvalidSpiffeId,
    InvalidSvid,
    InvalidSvidParams,
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
    MAX_INTERMEDIATES,
    MAX_PATH_DEPTH,
    build_path,
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
SVID_BACKDATE = timedelta(seconds=30)

DEFAULT_MAX_CSR_BYTES = 16384
MAX_EXTRA_SANS = 100
# RFC 5280 §4.1.2.2: serial numbers are positive and at most 20 octets.
_MAX_SERIAL = 2**159

_ORGANIZATION = "trustd"
# RFC 5280 Appendix A: ub-common-name is 64 characters.
_UB_COMMON_NAME = 64

_LDH = frozenset(string.ascii_lowercase + string.digits + "-")

# --------------------------------------------------------------------------- helpers


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


def dns_name_problem(name: str) -> str | None:
    """Return why *name* is not an acceptable DNS SAN, or None if it is."""
    if not name:
        return "DNS name is empty"
    if len(name) > 253:
        return "DNS name is longer than 253 characters"
    labels = name.split(".")
    if labels[0] == "*":
        # Only a whole left-most label may be a wildcard, and never the whole name.
        labels = labels[1:]
        if not labels:
            return "DNS name must not be a bare wildcard"
    for label in labels:
        if not label:
            return "DNS name has an empty label"
        if len(label) > 63:
            return "DNS label is longer than 63 characters"
        if any(c not in _LDH for c in label):
            return "DNS name must be lowercase letters, digits, '-' and '.' (LDH)"
        if label.startswith("-") or label.endswith("-"):
            return "DNS label must not start or end with '-'"
    return None


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # RFC 5280 §4.2.1.1: the AKI keyIdentifier is the issuer's SKI, so path builders can
    # pick the right issuer when several share a name (rotation).
    ski = extension(issuer, x509.SubjectKeyIdentifier)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(
        allowed_public_key(issuer.public_key())
    )


def _require_signing_certificate(cert: x509.Certificate, what: str) -> None:
    """X509-SVID §3.2: a signing certificate has cA=true and keyCertSign."""
    bc = extension(cert, x509.BasicConstraints)
    if bc is None or not bc.value.ca:
        raise CaError(f"{what} {describe(cert)} is not a CA certificate (cA is not true)")
    ku = extension(cert, x509.KeyUsage)
    if ku is None or not ku.value.key_cert_sign:
        raise CaError(f"{what} {describe(cert)} does not have keyUsage keyCertSign")


def _spiffe_uris(cert: x509.Certificate) -> list[str]:
    san = extension(cert, x509.SubjectAlternativeName)
    if san is None:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


# --------------------------------------------------------------------------- authority


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
        _require_signing_certificate(self.certificate, "authority certificate")
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
        uris = _spiffe_uris(self.certificate)
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
        aki=_authority_key_identifier(issuer.certificate),
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
        aki=_authority_key_identifier(issuer.certificate),
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
        loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CaError(f"upstream CA key type {describe_key(loaded)} is not supported")
    key: PrivateKey = loaded
    try:
        check_public_key(cert.public_key())
    except WeakKey as exc:
        raise CaError(f"upstream CA certificate: {exc.detail}") from None
    if not same_public_key(cert.public_key(), key.public_key()):
        raise CaError("upstream CA key does not match the upstream CA certificate")
    _require_signing_certificate(cert, "upstream certificate")

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
        _require_signing_certificate(parent, "upstream chain certificate")
        if not is_self_signed(parent):
            chain.append(parent)
        current = parent
    raise CaError(f"upstream chain is longer than {MAX_PATH_DEPTH} certificates")


# --------------------------------------------------------------------------- X.509-SVIDs


@dataclass(frozen=True)
class X509SvidParams:
    """What the caller asks for: identity, subject key, lifetime, optional DNS and IP SANs,
    and an optional CRL distribution point.

    DNS names are lowercased, names and addresses are de-duplicated (first occurrence wins)
    and everything is validated here, so a params object that exists can always be issued.
    X509-SVID §2 allows any number of SANs of types other than URI.
    """

    spiffe_id: SpiffeId
    public_key: PublicKey
    ttl: timedelta
    dns_names: tuple[str, ...] = ()
    crl_url: str | None = None
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.spiffe_id, SpiffeId):
            raise InvalidSvidParams(
                f"spiffe_id must be a SpiffeId, got {type(self.spiffe_id).__name__}"
            )
        if not isinstance(self.ttl, timedelta) or self.ttl <= timedelta(0):
            raise InvalidSvidParams(f"ttl must be a positive timedelta, got {echo(self.ttl)}")
        if isinstance(self.dns_names, str):
            # A bare string would otherwise be split into one-character "names".
            raise InvalidSvidParams(
                f"dns_names must be a sequence of names, got the string {echo(self.dns_names)}"
            )
        names: list[str] = []
        for raw in self.dns_names:
            if not isinstance(raw, str):
                raise InvalidSvidParams(f"DNS name must be a string, got {echo(raw)}")
            name = raw.lower()
            problem = dns_name_problem(name)
            if problem is not None:
                raise InvalidSvidParams(f"{problem}: {echo(raw)}", dns_name=echo(raw))
            if name not in names:
                names.append(name)
        object.__setattr__(self, "dns_names", tuple(names))
        if isinstance(self.ip_addresses, str | bytes):
            raise InvalidSvidParams(
                f"ip_addresses must be a sequence of addresses, got {echo(self.ip_addresses)}"
            )
        addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for raw_ip in self.ip_addresses:
            try:
                address = ipaddress.ip_address(raw_ip)
            except ValueError:
                raise InvalidSvidParams(
                    f"not an IP address: {echo(raw_ip)}", ip_address=echo(raw_ip)
                ) from None
            if address not in addresses:
                addresses.append(address)
        if len(names) + len(addresses) > MAX_EXTRA_SANS:
            raise InvalidSvidParams(
                f"at most {MAX_EXTRA_SANS} DNS names and IP addresses together, "
                f"got {len(names) + len(addresses)}"
            )
        object.__setattr__(self, "ip_addresses", tuple(addresses))
        if self.crl_url is not None:
            try:
                parts = urlsplit(self.crl_url) if self.crl_url.isascii() else None
            except ValueError:  # e.g. an unterminated IPv6 literal
                parts = None
            # RFC 5280 §4.2.1.13 / §4.2.1.6: an HTTP URI naming a DER CRL.
            if (
                parts is None
                or parts.scheme not in ("http", "https")
                or not parts.hostname
                or any(c.isspace() for c in self.crl_url)
            ):
                raise InvalidSvidParams(
                    f"crl_url must be an absolute http(s) URL: {echo(self.crl_url)}"
                )


@dataclass(frozen=True)
class _SvidTemplate:
    """Everything the builder needs, decided before any cryptography object is built."""

    issuer: x509.Name
    subject_public_key: PublicKey
    spiffe_id: SpiffeId
    dns_names: tuple[str, ...]
    ip_addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    serial: int
    not_before: datetime
    not_after: datetime
    key_usage: x509.KeyUsage
    aki: x509.AuthorityKeyIdentifier
    crl_url: str | None


def _leaf_key_usage(public_key: PublicKey) -> x509.KeyUsage:
    # X509-SVID §4.3: leaves MUST set digitalSignature and MUST NOT set keyCertSign/cRLSign.
    # keyEncipherment only makes sense for RSA key transport, keyAgreement only for ECDH.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=isinstance(public_key, ec.EllipticCurvePublicKey),
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _svid_template(
    authority: Authority, params: X509SvidParams, clock: Clock, serial: int | None
) -> _SvidTemplate:
    subject_key = allowed_public_key(params.public_key)
    trust_domain = authority.trust_domain
    # SPIFFE-ID §3: an SVID is valid only if signed by an authority of the ID's own domain.
    params.spiffe_id.require_member_of(trust_domain)
    # X509-SVID §3.1: leaf SPIFFE IDs MUST have a non-root path component.
    if params.spiffe_id.is_trust_domain_id:
        raise InvalidSpiffeId(
            f"X509-SVID §3.1: a leaf SVID's SPIFFE ID must have a path, got "
            f"{echo(str(params.spiffe_id))}",
            value=echo(str(params.spiffe_id)),
        )
    if serial is None:
        serial = random_serial()
    elif not 0 < serial < _MAX_SERIAL:
        raise InvalidSvidParams(
            "serial must be positive and fit in 20 octets (RFC 5280 §4.1.2.2)",
            serial=echo(serial),
        )
    now = clock.now()
    if not authority.not_before <= now < authority.not_after:
        raise CaError(
            f"authority {describe(authority.certificate)} is not valid at {now.isoformat()}"
        )
    return _SvidTemplate(
        issuer=authority.certificate.subject,
        subject_public_key=subject_key,
        spiffe_id=params.spiffe_id,
        dns_names=params.dns_names,
        ip_addresses=params.ip_addresses,
        serial=serial,
        not_before=max(now - SVID_BACKDATE, authority.not_before),
        # Never outlive the issuer: a leaf past its CA's expiry cannot be validated anyway.
        not_after=min(now + params.ttl, authority.not_after),
        key_usage=_leaf_key_usage(subject_key),
        aki=_authority_key_identifier(authority.certificate),
        crl_url=params.crl_url,
    )


def _svid_builder(template: _SvidTemplate) -> x509.CertificateBuilder:
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(template.spiffe_id))]
    sans.extend(x509.DNSName(name) for name in template.dns_names)
    sans.extend(x509.IPAddress(address) for address in template.ip_addresses)
    builder = (
        x509.CertificateBuilder()
        # X509-SVID §3.1: the subject is not required; leaving it empty keeps identity in one
        # place (the URI SAN) ...
        .subject_name(x509.Name([]))
        .issuer_name(template.issuer)
        .public_key(template.subject_public_key)
        .serial_number(template.serial)
        .not_valid_before(template.not_before)
        .not_valid_after(template.not_after)
        # ... and RFC 5280 §4.1.2.6 / X509-SVID §3.1 then require the SAN to be critical.
        # X509-SVID §2: exactly one URI SAN; DNS and IP SANs are allowed.
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        # X509-SVID §4.1: leaves MUST set cA=false.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # X509-SVID §4.3: key usage MUST be present and critical.
        .add_extension(template.key_usage, critical=True)
        # X509-SVID §4.4: leaves SHOULD carry EKU with both serverAuth and clientAuth.
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(template.subject_public_key),
            critical=False,
        )
        .add_extension(template.aki, critical=False)
    )
    if template.crl_url is not None:
        builder = builder.add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(template.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    return builder


def _check_issued_svid(
    cert: x509.Certificate, template: _SvidTemplate, authority: Authority
) -> None:
    """Validate what was signed: the spec profile, our own template, and the chain."""
    trust_domain = authority.trust_domain
    spiffe_id = validate_x509_svid(cert, trust_domain)
    problems: list[str] = []
    if spiffe_id != template.spiffe_id:
        problems.append("SPIFFE ID differs from the request")
    if not same_public_key(cert.public_key(), template.subject_public_key):
        problems.append("subject public key differs from the request")
    san = extension(cert, x509.SubjectAlternativeName)
    if san is None or tuple(san.value.get_values_for_type(x509.DNSName)) != template.dns_names:
        problems.append("DNS SANs differ from the request")
    if san is None or tuple(san.value.get_values_for_type(x509.IPAddress)) != (
        template.ip_addresses
    ):
        problems.append("IP address SANs differ from the request")
    bc = extension(cert, x509.BasicConstraints)
    if bc is None or not bc.critical:
        problems.append("basicConstraints missing or not critical")
    if extension(cert, x509.ExtendedKeyUsage) is None:
        problems.append("extendedKeyUsage missing")
    if cert.not_valid_after_utc > authority.not_after:
        problems.append("leaf outlives its issuer")
    if cert.serial_number != template.serial:
        problems.append("serial number differs from the template")
    if problems:
        raise InvalidSvid("; ".join(problems))
    # The authority's own chain was validated when it was created or loaded; per leaf only
    # the new signature needs checking (a full path validation would triple the cost).
    try:
        cert.verify_directly_issued_by(authority.certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise InvalidSvid(f"signature does not verify under the issuing CA: {exc}") from None


def issue_x509_svid(
    authority: Authority,
    params: X509SvidParams,
    clock: Clock,
    serial: int | None = None,
) -> x509.Certificate:
    """Issue an X.509-SVID for *params* signed by *authority*.

    Raises:
        InvalidSpiffeId: the SPIFFE ID is outside the authority's trust domain or has no path.
        InvalidSvidParams: *serial* is out of range.
        WeakKey: the subject public key is not allowed.
        CaError: the authority is not valid now or has no trust domain ID, or the signed
            certificate failed validation (a bug, never a bad request).
    """
    template = _svid_template(authority, params, clock, serial)
    builder = _svid_builder(template)
    cert = builder.sign(authority.private_key, signature_hash(authority.private_key))
    try:
        _check_issued_svid(cert, template, authority)
    except InvalidSvid as exc:
        raise CaError(f"issued X.509-SVID failed validation: {exc.detail}") from exc
    return cert


def validate_x509_svid(cert: x509.Certificate, trust_domain: TrustDomain) -> SpiffeId:
    """Check the X509-SVID leaf profile on *cert* and return its SPIFFE ID.

    This checks the certificate alone; :func:`verify_x509_svid` also checks the chain.

    Raises:
        InvalidSvid: a leaf rule of the X509-SVID spec is broken; the detail names it.
    """
    try:
        return _validate_leaf(cert, trust_domain)
    except ValueError as exc:
        # cryptography raises ValueError subclasses (e.g. DuplicateExtension) when it parses
        # extensions lazily; a certificate it cannot parse is not an SVID.
        raise InvalidSvid(f"certificate extensions cannot be parsed: {exc}") from None


def _validate_leaf(cert: x509.Certificate, trust_domain: TrustDomain) -> SpiffeId:
    if cert.version is not x509.Version.v3:
        raise InvalidSvid("RFC 5280 §4.1.2.1: an X.509-SVID must be a version 3 certificate")
    san = extension(cert, x509.SubjectAlternativeName)
    if san is None:
        raise InvalidSvid("X509-SVID §2: certificate has no subjectAltName extension")
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    # X509-SVID §2, §5.2: exactly one URI SAN; more than one MUST be rejected.
    if len(uris) != 1:
        raise InvalidSvid(
            f"X509-SVID §2: certificate must have exactly one URI SAN, found {len(uris)}"
        )
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        # X509-SVID §5.2: the URI's scheme must be spiffe and it must be a valid SPIFFE ID.
        raise InvalidSvid(f"X509-SVID §2: URI SAN is not a SPIFFE ID: {exc.detail}") from None
    # X509-SVID §3.1, §5.2: a leaf SPIFFE ID MUST have a non-root path.
    if spiffe_id.is_trust_domain_id:
        raise InvalidSvid(
            f"X509-SVID §3.1: leaf SPIFFE ID {echo(str(spiffe_id))} has no path component"
        )
    if not spiffe_id.is_member_of(trust_domain):
        raise InvalidSvid(
            f"SPIFFE ID {echo(str(spiffe_id))} is not in trust domain {echo(trust_domain.name)}"
        )
    # X509-SVID §3.1 / RFC 5280 §4.1.2.6: with an empty subject the SAN MUST be critical.
    if len(cert.subject) == 0 and not san.critical:
        raise InvalidSvid("X509-SVID §3.1: subject is empty but subjectAltName is not critical")
    for dns_name in san.value.get_values_for_type(x509.DNSName):
        problem = dns_name_problem(dns_name)
        if problem is not None:
            raise InvalidSvid(f"DNS SAN {echo(dns_name)} is invalid: {problem}")
    # X509-SVID §4.1, §5.2: leaves MUST have cA=false (an absent extension means false).
    bc = extension(cert, x509.BasicConstraints)
    if bc is not None and bc.value.ca:
        raise InvalidSvid("X509-SVID §4.1: a leaf SVID must not be a CA (cA is true)")
    ku = extension(cert, x509.KeyUsage)
    # X509-SVID §4.3: keyUsage MUST be present and critical on every SVID.
    if ku is None:
        raise InvalidSvid("X509-SVID §4.3: keyUsage extension is missing")
    if not ku.critical:
        raise InvalidSvid("X509-SVID §4.3: keyUsage extension must be critical")
    if not ku.value.digital_signature:
        raise InvalidSvid("X509-SVID §4.3: a leaf SVID must set digitalSignature")
    # X509-SVID §4.3, §5.2: leaves MUST NOT set keyCertSign or cRLSign.
    if ku.value.key_cert_sign:
        raise InvalidSvid("X509-SVID §4.3: a leaf SVID must not set keyCertSign")
    if ku.value.crl_sign:
        raise InvalidSvid("X509-SVID §4.3: a leaf SVID must not set cRLSign")
    # X509-SVID §4.4: when EKU is present, serverAuth and clientAuth MUST both be set.
    eku = extension(cert, x509.ExtendedKeyUsage)
    if eku is not None:
        for oid, label in (
            (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
            (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
        ):
            if oid not in eku.value:
                raise InvalidSvid(f"X509-SVID §4.4: extendedKeyUsage lacks {label}")
    try:
        check_public_key(cert.public_key())
    except WeakKey as exc:
        raise InvalidSvid(f"subject key is not allowed: {exc.detail}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidSvid("subject public key cannot be parsed") from None
    return spiffe_id


# --------------------------------------------------------------------------- path validation


def verify_x509_svid(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    trust_domain: TrustDomain,
    clock: Clock,
) -> SpiffeId:
    """Verify *leaf* as an X.509-SVID of *trust_domain* chaining to one of *roots*.

    *roots* must be the X.509 authorities of *trust_domain*'s own bundle (Trust Domain and
    Bundle §3: validators choose the bundle of the trust domain the SVID claims).

    Checks the leaf profile (:func:`validate_x509_svid`), then RFC 5280 §6.1 path
    validation: signatures, validity at ``clock.now()``, cA and keyCertSign on every
    issuer, pathLenConstraint, name constraints (URI, DNS, IP and directoryName; other
    constrained name types fail closed), and unknown critical extensions.

    Raises:
        InvalidSvid: the leaf or the path is invalid; the detail names the broken rule.
    """
    spiffe_id = validate_x509_svid(leaf, trust_domain)
    if not roots:
        raise InvalidSvid("no trusted roots were supplied")
    if len(intermediates) > MAX_INTERMEDIATES:
        raise InvalidSvid(
            f"too many intermediates ({len(intermediates)}); at most {MAX_INTERMEDIATES}"
        )
    path = build_path(leaf, list(intermediates), list(roots))
    validate_path(path, clock.now())
    return spiffe_id


# --------------------------------------------------------------------------- CSRs


def create_csr(key: PrivateKey) -> str:
    """A PEM CSR proving possession of *key*. Its subject is empty: the signer decides the
    identity (X509-SVID §4), so the CSR carries nothing else.
    """
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return (
        csr.sign(key, signature_hash(key)).public_bytes(serialization.Encoding.PEM).decode("ascii")
    )


def parse_csr(data: bytes, max_size: int = DEFAULT_MAX_CSR_BYTES) -> x509.CertificateSigningRequest:
    """Parse a PEM or DER PKCS#10 CSR and check its proof of possession and key type.

    Only the public key is meant to be used: the CSR's subject and SANs are never trusted,
    the caller decides the SPIFFE ID.

    Raises:
        InvalidCsr: larger than *max_size* bytes, unparsable, or its self-signature is
            invalid.
        WeakKey: the CSR's key is not on the allow-list.
    """
    if not isinstance(data, bytes):
        raise InvalidCsr(f"CSR must be bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise InvalidCsr(
            f"CSR is {len(data)} bytes; the limit is {max_size} bytes",
            size=len(data),
            limit=max_size,
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError:
        raise InvalidCsr("CSR is not a parsable PEM or DER PKCS#10 request") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise WeakKey("CSR public key type is not supported") from None
    check_public_key(public_key)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    # RFC 2986 §3: the signature proves possession of the private key; without it anyone
    # could get a certificate for someone else's public key.
    if not signature_ok:
        raise InvalidCsr("CSR signature is invalid (no proof of possession of the key)")
    return csr


def csr_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    """The allowed public key of a CSR returned by :func:`parse_csr`.

    Raises:
        WeakKey: the key is not on the allow-list.
    """
    return allowed_public_key(csr.public_key())
