"""Challenge validation: http-01 and dns-01 (RFC 8555 §8.3, §8.4), tls-alpn-01 (RFC 8737),
for DNS and IP identifiers (RFC 8738), against targets an operator allows.

Every connection goes to an address that was resolved and checked against the target policy
first (the default denies link-local and cloud metadata addresses), and HTTP carries the
name in the Host header, so a DNS answer that changes between check and connect cannot
redirect validation to a denied address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.resolver
import dns.reversename
import httpx
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from pki.acme.errors import (
    AcmeError,
    ConnectionProblem,
    DnsProblem,
    IncorrectResponse,
    TlsProblem,
    Unauthorized,
)
from pki.acme.identifiers import Identifier, IdentifierType
from pki.acme.jws import b64encode
from pki.acme.messages import ChallengeType

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 8737 §3: the acmeIdentifier extension and the ALPN protocol name.
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ACME_TLS_ALPN = "acme-tls/1"
_HTTP_BODY_LIMIT = 8192

# Link-local (which holds 169.254.169.254, the AWS/GCP/Azure/OpenStack metadata service) and
# the other metadata endpoints: AWS IPv6 (fd00:ec2::254), Alibaba (100.100.100.200), Azure
# WireServer (168.63.129.16), Oracle (192.0.0.192); plus addresses that are never a host.
DEFAULT_DENIED_NETWORKS = (
    "169.254.0.0/16",
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.100.100.200/32",
    "168.63.129.16/32",
    "192.0.0.192/32",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "ff00::/8",
)


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 §8.1: token "." base64url(JWK thumbprint)."""
    return f"{token}.{thumbprint}"


def dns01_txt(key_authz: str) -> str:
    """RFC 8555 §8.4: the TXT record value, base64url(SHA-256(key authorization))."""
    return b64encode(hashlib.sha256(key_authz.encode()).digest())


def challenge_types_for(identifier: Identifier) -> tuple[ChallengeType, ...]:
    """Which challenges can prove control of *identifier*: wildcards only through dns-01
    (RFC 8555 §7.1.3), IP addresses never through dns-01 (RFC 8738 §7)."""
    if identifier.wildcard:
        return (ChallengeType.DNS_01,)
    if identifier.type is IdentifierType.IP:
        return (ChallengeType.HTTP_01, ChallengeType.TLS_ALPN_01)
    return (ChallengeType.HTTP_01, ChallengeType.DNS_01, ChallengeType.TLS_ALPN_01)


@dataclass(frozen=True)
class TargetPolicy:
    """Which addresses validation may connect to: any not denied, or, when `allow` is not
    empty, only those inside it and not denied."""

    allow: tuple[IpNetwork, ...] = ()
    deny: tuple[IpNetwork, ...] = field(
        default_factory=lambda: tuple(ipaddress.ip_network(n) for n in DEFAULT_DENIED_NETWORKS)
    )

    @classmethod
    def parse(cls, allow: Sequence[str], deny: Sequence[str]) -> TargetPolicy:
        """Raises:
        ValueError: an entry is not a network in CIDR notation.
        """
        return cls(
            tuple(ipaddress.ip_network(n, strict=False) for n in allow),
            tuple(ipaddress.ip_network(n, strict=False) for n in deny),
        )

    def permits(self, address: IpAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if any(address in net for net in self.deny):
            return False
        return not self.allow or any(address in net for net in self.allow)


@dataclass(frozen=True)
class ValidationConfig:
    targets: TargetPolicy
    http_port: int = 80
    tls_port: int = 443
    # "HOST" or "HOST:PORT" of the DNS server to ask; None uses the system resolver.
    resolver: str | None = None
    timeout: float = 10.0


class Validator:
    """Performs one challenge validation; raises the RFC 8555 problem that describes why it
    failed, returns when it succeeded."""

    def __init__(self, config: ValidationConfig) -> None:
        self._config = config
        # One client for every http-01 fetch: building one per fetch costs more than the
        # fetch (it builds a TLS context). It is thread-safe and never follows redirects.
        self._http = httpx.Client(timeout=config.timeout, follow_redirects=False, trust_env=False)
        self._resolver: dns.resolver.Resolver | None = None
        if config.resolver:
            host, _, port = config.resolver.rpartition(":")
            if not host or not port.isdigit():
                host, port = config.resolver, "53"
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [host.strip("[]")]
            resolver.port = int(port)
            resolver.lifetime = config.timeout
            self._resolver = resolver

    def validate(
        self, challenge: ChallengeType, identifier: Identifier, token: str, key_authz: str
    ) -> None:
        """Raises:
        ConnectionProblem, IncorrectResponse, DnsProblem, TlsProblem, Unauthorized: the
            validation failed; the detail says what was seen.
        """
        if challenge not in challenge_types_for(identifier):
            raise Unauthorized(f"{challenge} cannot validate {identifier.value}")
        if challenge is ChallengeType.HTTP_01:
            self._http01(identifier, token, key_authz)
        elif challenge is ChallengeType.DNS_01:
            self._dns01(identifier, key_authz)
        else:
            self._tls_alpn01(identifier, key_authz)

    # ------------------------------------------------------------------ resolution

    def _query(self, name: str, rdtype: str) -> list[str]:
        assert self._resolver is not None
        try:
            answer = self._resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsProblem(f"DNS query for {rdtype} {name} timed out") from None
        except dns.exception.DNSException as exc:
            raise DnsProblem(f"DNS query for {rdtype} {name} failed: {exc}") from None
        return [rdata.to_text() for rdata in answer]

    def addresses(self, identifier: Identifier) -> list[IpAddress]:
        """The addresses to validate *identifier* at, IPv6 first (RFC 8555 §8.3), filtered
        by the target policy.

        Raises:
            DnsProblem: the name does not resolve.
            ConnectionProblem: every address is outside the allowed networks.
        """
        if identifier.type is IdentifierType.IP:
            found: list[IpAddress] = [ipaddress.ip_address(identifier.value)]
        elif self._resolver is not None:
            found = [
                ipaddress.ip_address(a)
                for rdtype in ("AAAA", "A")
                for a in self._query(identifier.value, rdtype)
            ]
        else:
            try:
                infos = socket.getaddrinfo(identifier.value, None, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise DnsProblem(f"{identifier.value} does not resolve: {exc.strerror}") from None
            found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
            found.sort(key=lambda a: a.version, reverse=True)
        if not found:
            raise DnsProblem(f"{identifier.value} has no A or AAAA records")
        allowed = [a for a in dict.fromkeys(found) if self._config.targets.permits(a)]
        if not allowed:
            raise ConnectionProblem(
                f"{identifier.value} resolves only to addresses validation may not reach"
            )
        return allowed

    # ------------------------------------------------------------------ http-01

    def _http01(self, identifier: Identifier, token: str, key_authz: str) -> None:
        port = self._config.http_port
        host = identifier.value if identifier.type is IdentifierType.DNS else None
        last: AcmeError | None = None
        for address in self.addresses(identifier):
            literal = f"[{address}]" if address.version == 6 else str(address)
            url = f"http://{literal}:{port}/.well-known/acme-challenge/{token}"
            # RFC 8555 §8.3: Host is the domain (or the address, RFC 8738 §6).
            headers = {"Host": (host or literal) + ("" if port == 80 else f":{port}")}
            try:
                body = _fetch(self._http, url, headers)
            except ConnectionProblem as exc:
                last = exc
                continue
            # RFC 8555 §8.3: the body is the key authorization, trailing whitespace ignored.
            if body.rstrip() != key_authz.encode():
                raise IncorrectResponse(
                    f"http-01 at {identifier.value} returned a body that is not the key "
                    "authorization"
                )
            return
        assert last is not None
        raise last

    # ------------------------------------------------------------------ dns-01

    def _dns01(self, identifier: Identifier, key_authz: str) -> None:
        if self._resolver is None:
            self._resolver = dns.resolver.Resolver()
            self._resolver.lifetime = self._config.timeout
        name = f"_acme-challenge.{identifier.base}"
        records = [r.strip('"').replace('" "', "") for r in self._query(name, "TXT")]
        if not records:
            raise DnsProblem(f"no TXT record at {name}")
        if dns01_txt(key_authz) not in records:
            raise IncorrectResponse(f"no TXT record at {name} holds the expected digest")

    # ------------------------------------------------------------------ tls-alpn-01

    def _tls_alpn01(self, identifier: Identifier, key_authz: str) -> None:
        # RFC 8738 §6: an IP identifier is named by its reverse-DNS name in SNI.
        if identifier.type is IdentifierType.IP:
            sni = dns.reversename.from_address(identifier.value).to_text(omit_final_dot=True)
        else:
            sni = identifier.value
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # RFC 8737 §3: the certificate is self-signed and checked field by field below.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols([ACME_TLS_ALPN])
        last: AcmeError | None = None
        for address in self.addresses(identifier):
            try:
                with (
                    socket.create_connection(
                        (str(address), self._config.tls_port), timeout=self._config.timeout
                    ) as raw,
                    context.wrap_socket(raw, server_hostname=sni) as tls,
                ):
                    protocol = tls.selected_alpn_protocol()
                    der = tls.getpeercert(binary_form=True)
            except ssl.SSLError as exc:
                raise TlsProblem(f"TLS handshake with {address} failed: {exc.reason}") from None
            except OSError as exc:
                last = ConnectionProblem(f"cannot connect to {address}: {exc.strerror or exc}")
                continue
            if protocol != ACME_TLS_ALPN:
                raise TlsProblem(f"{address} did not negotiate the {ACME_TLS_ALPN} protocol")
            if der is None:
                raise TlsProblem(f"{address} presented no certificate")
            check_tls_alpn_certificate(x509.load_der_x509_certificate(der), identifier, key_authz)
            return
        assert last is not None
        raise last


def check_tls_alpn_certificate(
    cert: x509.Certificate, identifier: Identifier, key_authz: str
) -> None:
    """RFC 8737 §3: exactly one SAN naming the identifier, and a critical acmeIdentifier
    extension holding SHA-256 of the key authorization.

    Raises:
        IncorrectResponse: the certificate does not prove control of *identifier*.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        acme = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound as exc:
        raise IncorrectResponse(
            f"the tls-alpn-01 certificate lacks {exc.oid.dotted_string}"
        ) from None
    except ValueError:
        raise IncorrectResponse(
            "the tls-alpn-01 certificate's extensions cannot be parsed"
        ) from None
    names = list(san)
    expected: x509.GeneralName = (
        x509.DNSName(identifier.value)
        if identifier.type is IdentifierType.DNS
        else x509.IPAddress(ipaddress.ip_address(identifier.value))
    )
    if names != [expected]:
        raise IncorrectResponse(
            f"the tls-alpn-01 certificate must name exactly {identifier.value} in its SAN"
        )
    if not acme.critical:
        raise IncorrectResponse("the acmeIdentifier extension must be critical (RFC 8737 §3)")
    digest = hashlib.sha256(key_authz.encode()).digest()
    raw = acme.value.value if isinstance(acme.value, x509.UnrecognizedExtension) else b""
    # The extension value is a DER OCTET STRING of the 32-byte digest.
    if raw != b"\x04\x20" + digest:
        raise IncorrectResponse("the acmeIdentifier extension does not hold the expected digest")


def _fetch(client: httpx.Client, url: str, headers: dict[str, str]) -> bytes:
    """GET *url* (plain http) without following redirects, reading at most a few KiB.

    Raises:
        ConnectionProblem: connection failure, or a status other than 200.
    """
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                raise ConnectionProblem(f"http-01 at {url} answered HTTP {response.status_code}")
            body = b""
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > _HTTP_BODY_LIMIT:
                    raise ConnectionProblem(f"http-01 response from {url} is too large")
            return body
    except httpx.HTTPError as exc:
        raise ConnectionProblem(f"http-01 request to {url} failed: {exc}") from None
