"""The TLS server certificate profile for ACME orders, and ACME Renewal Information.

Issuance follows the same pipeline as X509-SVIDs (`pki.x509_svid`): params -> template -> builder
-> sign -> validate what was signed. The profile is a plain TLS server certificate in the
shape of the CA/Browser Forum Baseline Requirements §7.1.2.7 (subscriber certificates) so
that any TLS client accepts it: DNS/IP SANs only, no SPIFFE URI, serverAuth (+clientAuth when
the profile asks), the CRL distribution point and, when enabled, an OCSP responder URL.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from pki.acme.errors import BadCsr, Malformed
from pki.acme.identifiers import Identifier, IdentifierType
from pki.acme.jws import b64decode, b64encode
from pki.ca import Authority, random_serial
from pki.clock import Clock
from pki.errors import CaError
from pki.keys import PublicKey, same_public_key, signature_hash
from pki.x509_path import extension

# Clients whose clocks run slightly behind must accept a certificate issued "now".
BACKDATE = timedelta(seconds=30)
# CA/B BR §6.1.5: RSA of at least 2048 bits (a multiple of 8) or ECDSA on P-256/P-384/P-521.
# Ed25519 is outside the BR and unsupported by most TLS stacks' path validators.
_BR_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


@dataclass(frozen=True)
class Profile:
    """A certificate profile an order may name (draft-ietf-acme-profiles)."""

    name: str
    description: str
    lifetime: timedelta
    client_auth: bool = False


def check_leaf_key(public_key: PublicKey) -> None:
    """Insist on a key the TLS server profile issues for.

    Raises:
        BadCsr: Ed25519, or an RSA modulus that is not a multiple of 8 bits.
    """
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _BR_CURVES:
        return
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size % 8 == 0:
        return
    raise BadCsr(
        "TLS server certificates are issued for RSA (2048-8192 bits) and ECDSA P-256/P-384/"
        "P-521 keys only (CA/B Forum BR §6.1.5)"
    )


@dataclass(frozen=True)
class TlsServerParams:
    public_key: PublicKey
    identifiers: tuple[Identifier, ...]
    profile: Profile
    crl_url: str
    ocsp_url: str | None = None
    not_before: datetime | None = None
    not_after: datetime | None = None

    def __post_init__(self) -> None:
        if not self.identifiers:
            raise Malformed("a certificate needs at least one identifier")


def _sans(identifiers: tuple[Identifier, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for ident in identifiers:
        if ident.type is IdentifierType.DNS:
            names.append(x509.DNSName(ident.value))
        else:
            names.append(x509.IPAddress(ipaddress.ip_address(ident.value)))
    return names


def _key_usage(public_key: PublicKey) -> x509.KeyUsage:
    # CA/B BR §7.1.2.7.11: digitalSignature; keyEncipherment only for RSA key transport.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def validity(
    authority: Authority, params: TlsServerParams, clock: Clock
) -> tuple[datetime, datetime]:
    """The validity period the certificate will get: the order's notBefore/notAfter when
    given, else now (backdated) plus the profile lifetime; never outside the issuer's.

    Raises:
        CaError: the authority is not valid now, or the period would be empty.
    """
    now = clock.now()
    if not authority.not_before <= now < authority.not_after:
        raise CaError("the issuing authority is not valid now")
    not_before = max(params.not_before or now - BACKDATE, authority.not_before)
    not_after = min(
        params.not_after or not_before + params.profile.lifetime,
        not_before + params.profile.lifetime,
        authority.not_after,
    )
    if not_after <= not_before:
        raise CaError("the requested validity period is empty")
    return not_before, not_after


def issue_tls_server_certificate(
    authority: Authority, params: TlsServerParams, clock: Clock
) -> x509.Certificate:
    """Sign a TLS server certificate for *params* with *authority*, then check what was
    signed against the request.

    Raises:
        BadCsr: the key is not one the profile issues for.
        CaError: the authority is not valid now, or the signed certificate does not match
            the request (a bug, never a bad request).
    """
    check_leaf_key(params.public_key)
    not_before, not_after = validity(authority, params, clock)
    eku = [ExtendedKeyUsageOID.SERVER_AUTH]
    if params.profile.client_auth:
        eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    issuer_ski = extension(authority.certificate, x509.SubjectKeyIdentifier)
    if issuer_ski is None:
        raise CaError("the issuing authority has no subjectKeyIdentifier")
    builder = (
        x509.CertificateBuilder()
        # CA/B BR §7.1.2.7.2 and RFC 5280 §4.1.2.6: the names live in the SAN; an empty
        # subject then requires the SAN to be critical (BR §7.1.2.7.12).
        .subject_name(x509.Name([]))
        .issuer_name(authority.certificate.subject)
        .public_key(params.public_key)
        .serial_number(random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_sans(params.identifiers)), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(params.public_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        # RFC 5280 §4.2.1.1: AKI keyIdentifier = the issuer's SKI, which ARI certIDs use too.
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski.value),
            critical=False,
        )
        # RFC 5280 §4.2.1.13: where relying parties fetch the issuer's CRL.
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        full_name=[x509.UniformResourceIdentifier(params.crl_url)],
                        relative_name=None,
                        reasons=None,
                        crl_issuer=None,
                    )
                ]
            ),
            critical=False,
        )
    )
    if params.ocsp_url is not None:
        # RFC 5280 §4.2.2.1 / BR §7.1.2.7.7: the OCSP responder for this certificate.
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier(params.ocsp_url),
                    )
                ]
            ),
            critical=False,
        )
    cert = builder.sign(authority.private_key, signature_hash(authority.private_key))
    _check_issued(cert, params, authority)
    return cert


def _check_issued(cert: x509.Certificate, params: TlsServerParams, authority: Authority) -> None:
    problems: list[str] = []
    if not same_public_key(cert.public_key(), params.public_key):
        problems.append("subject key differs from the CSR")
    san = extension(cert, x509.SubjectAlternativeName)
    if san is None or list(san.value) != _sans(params.identifiers):
        problems.append("SANs differ from the order")
    elif san.value.get_values_for_type(x509.UniformResourceIdentifier):
        problems.append("a TLS server certificate must not carry a URI SAN")
    eku = extension(cert, x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.SERVER_AUTH not in eku.value:
        problems.append("extendedKeyUsage lacks serverAuth")
    if cert.not_valid_after_utc > authority.not_after:
        problems.append("certificate outlives its issuer")
    if problems:
        raise CaError("issued TLS server certificate failed validation: " + "; ".join(problems))
    try:
        cert.verify_directly_issued_by(authority.certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CaError(f"issued certificate does not verify under its issuer: {exc}") from None


# --------------------------------------------------------------------------- ARI (RFC 9773)


def serial_bytes(serial: int) -> bytes:
    """The content octets of the DER INTEGER encoding of a positive serial number."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big")


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(DER serial content).

    Raises:
        Malformed: the certificate has no AKI keyIdentifier.
    """
    aki = extension(cert, x509.AuthorityKeyIdentifier)
    if aki is None or aki.value.key_identifier is None:
        raise Malformed("the certificate has no authorityKeyIdentifier keyIdentifier")
    return f"{b64encode(aki.value.key_identifier)}.{b64encode(serial_bytes(cert.serial_number))}"


@dataclass(frozen=True)
class CertId:
    key_identifier: bytes
    serial: int

    @property
    def serial_hex(self) -> str:
        return format(self.serial, "x")


def parse_cert_id(value: str) -> CertId:
    """Parse an RFC 9773 certID.

    Raises:
        Malformed: not two base64url parts, or the serial is not a positive DER INTEGER.
    """
    aki, dot, serial = value.partition(".")
    if not dot or not aki or not serial:
        raise Malformed("a certID is base64url(keyIdentifier).base64url(serial)")
    key_id = b64decode(aki, "certID keyIdentifier")
    raw = b64decode(serial, "certID serial")
    # DER INTEGER: positive, minimal (no redundant leading zero octet).
    if not raw or raw[0] & 0x80 or (len(raw) > 1 and raw[0] == 0 and not raw[1] & 0x80):
        raise Malformed("the certID serial is not a positive DER INTEGER")
    return CertId(key_id, int.from_bytes(raw, "big"))


@dataclass(frozen=True)
class RenewalWindow:
    start: datetime
    end: datetime


def suggested_window(
    not_before: datetime, not_after: datetime, now: datetime, revoked: bool
) -> RenewalWindow:
    """RFC 9773 §4.2: when to renew. Normally the middle of the last third of the lifetime
    (so renewals spread out and a failed one has time to be retried); a revoked certificate
    gets a window in the past, which tells the client to renew at once (§4.2).
    """
    if revoked:
        return RenewalWindow(now - timedelta(hours=1), now - timedelta(seconds=1))
    life = not_after - not_before
    return RenewalWindow(not_before + life * 2 / 3, not_before + life * 5 / 6)
