"""X.509-SVIDs (X509-SVID spec): the leaf profile, issuance and verification.

Issuance is an explicit pipeline, after SPIRE's credtemplate/credvalidator split:

    params -> template -> cryptography builder -> sign -> validate what was signed -> return

so a bug in the template or builder produces an exception, never a non-conforming SVID.

Path validation for :func:`verify_x509_svid` lives in :mod:`pki.x509_path`, which explains
why it does not use ``cryptography.x509.verification``.
"""

from __future__ import annotations

import ipaddress
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki.ca import MAX_SERIAL, Authority, authority_key_identifier, random_serial
from pki.clock import Clock
from pki.errors import (
    CaError,
    InvalidSpiffeId,
    InvalidSvid,
    InvalidSvidParams,
    WeakKey,
    echo,
)
from pki.keys import (
    PublicKey,
    allowed_public_key,
    check_public_key,
    same_public_key,
    signature_hash,
)
from pki.spiffe_id import SpiffeId, TrustDomain
from pki.x509_path import (
    MAX_INTERMEDIATES,
    build_path,
    describe,
    extension,
    validate_path,
)

SVID_BACKDATE = timedelta(seconds=30)


MAX_EXTRA_SANS = 100


_LDH = frozenset(string.ascii_lowercase + string.digits + "-")


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
    elif not 0 < serial < MAX_SERIAL:
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
        aki=authority_key_identifier(authority.certificate),
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


def verify_x509_svid_in_bundles(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    roots_by_domain: Mapping[TrustDomain, Sequence[x509.Certificate]],
    clock: Clock,
) -> SpiffeId:
    """Verify *leaf* against the roots of the trust domain of its own SPIFFE ID, among the
    bundles a federated relying party holds (own and foreign).

    spiffe/spiffe#375, Trust Domain and Bundle §3: the bundle is chosen by the SPIFFE ID the
    SVID claims, never by trying every root held, so a CA of one trust domain can never
    vouch for an ID of another.

    Raises:
        InvalidSvid: no single SPIFFE ID, no bundle for its trust domain, or the leaf or
            path is invalid (see :func:`verify_x509_svid`).
    """
    claimed = _claimed_trust_domain(leaf)
    roots = roots_by_domain.get(claimed)
    if not roots:
        raise InvalidSvid(f"no bundle of trust domain {claimed.name} is held")
    return verify_x509_svid(leaf, intermediates, roots, claimed, clock)


def _claimed_trust_domain(leaf: x509.Certificate) -> TrustDomain:
    try:
        san = extension(leaf, x509.SubjectAlternativeName)
    except ValueError as exc:
        raise InvalidSvid(f"certificate extensions cannot be parsed: {exc}") from None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier) if san else []
    if len(uris) != 1:
        raise InvalidSvid(
            f"X509-SVID §2: certificate must have exactly one URI SAN, found {len(uris)}"
        )
    try:
        return SpiffeId.parse(uris[0]).trust_domain
    except InvalidSpiffeId as exc:
        raise InvalidSvid(f"X509-SVID §2: URI SAN is not a SPIFFE ID: {exc.detail}") from None
