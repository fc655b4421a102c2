"""ACME identifiers: DNS names (RFC 8555 §7.1.4) and IP addresses (RFC 8738), in canonical
form, and the names a CSR asks for (RFC 8555 §7.4).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki.acme.errors import BadCsr, Malformed, RejectedIdentifier, UnsupportedIdentifier
from pki.errors import echo
from pki.x509_svid import dns_name_problem

MAX_IDENTIFIERS = 100


class IdentifierType(StrEnum):
    DNS = "dns"
    IP = "ip"


@dataclass(frozen=True, order=True)
class Identifier:
    """A canonical identifier; construct through :meth:`parse`."""

    type: IdentifierType
    value: str

    @classmethod
    def parse(cls, type_: object, value: object) -> Identifier:
        """Parse and canonicalise an identifier object's `type` and `value`.

        Raises:
            UnsupportedIdentifier: a type other than dns and ip.
            RejectedIdentifier: a value that is not a valid name or address.
            Malformed: a value that is not a string.
        """
        if not isinstance(value, str):
            raise Malformed("an identifier value must be a string")
        if type_ == IdentifierType.DNS:
            # RFC 8555 §7.1.4: ASCII (A-label) names; compare case-insensitively.
            name = value.lower()
            try:
                ipaddress.ip_address(name)
            except ValueError:
                pass
            else:
                # RFC 8738 §3: addresses are "ip" identifiers, never "dns".
                raise RejectedIdentifier(f"{echo(value)} is an IP address; use type 'ip'")
            problem = dns_name_problem(name)
            if problem is not None:
                raise RejectedIdentifier(f"{problem}: {echo(value)}", identifier=echo(value))
            return cls(IdentifierType.DNS, name)
        if type_ == IdentifierType.IP:
            try:
                address = ipaddress.ip_address(value)
            except ValueError:
                raise RejectedIdentifier(f"{echo(value)} is not an IP address") from None
            # RFC 8738 §3: RFC 1123 dotted quad or RFC 5952 canonical IPv6 text.
            if str(address) != value:
                raise RejectedIdentifier(
                    f"IP identifier {echo(value)} is not canonical; use {str(address)!r}"
                )
            return cls(IdentifierType.IP, str(address))
        raise UnsupportedIdentifier(
            f"identifier type {echo(type_)} is not supported; use 'dns' or 'ip'"
        )

    @property
    def wildcard(self) -> bool:
        return self.type is IdentifierType.DNS and self.value.startswith("*.")

    @property
    def base(self) -> str:
        """The name an authorization covers: RFC 8555 §7.1.4 drops the `*.` of a wildcard."""
        return self.value[2:] if self.wildcard else self.value

    def to_json(self) -> dict[str, str]:
        return {"type": str(self.type), "value": self.value}


def parse_identifiers(value: object) -> tuple[Identifier, ...]:
    """Parse a newOrder `identifiers` array: non-empty, de-duplicated, sorted.

    Raises:
        Malformed, RejectedIdentifier, UnsupportedIdentifier: see :meth:`Identifier.parse`.
    """
    if not isinstance(value, list) or not value:
        raise Malformed("'identifiers' must be a non-empty array")
    if len(value) > MAX_IDENTIFIERS:
        raise RejectedIdentifier(f"an order may name at most {MAX_IDENTIFIERS} identifiers")
    found: set[Identifier] = set()
    for item in value:
        if not isinstance(item, dict):
            raise Malformed("each identifier must be an object with 'type' and 'value'")
        found.add(Identifier.parse(item.get("type"), item.get("value")))
    return tuple(sorted(found))


def csr_identifiers(csr: x509.CertificateSigningRequest) -> set[Identifier]:
    """The identifiers a CSR asks for: its SAN DNS names and IP addresses, and its common
    name (RFC 8555 §7.4 allows the CN to repeat one of them).

    Raises:
        BadCsr: a name in the CSR is not a valid identifier, or it asks for other SAN types.
    """
    names: set[Identifier] = set()
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    except ValueError:
        raise BadCsr("the CSR's extensions cannot be parsed") from None
    try:
        if san is not None:
            for general_name in san:
                if isinstance(general_name, x509.DNSName):
                    names.add(Identifier.parse(IdentifierType.DNS, general_name.value))
                elif isinstance(general_name, x509.IPAddress):
                    names.add(Identifier.parse(IdentifierType.IP, str(general_name.value)))
                else:
                    raise BadCsr(
                        f"the CSR asks for a {type(general_name).__name__} name; only DNS "
                        "names and IP addresses are issued"
                    )
        for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            cn = str(attribute.value)
            try:
                names.add(Identifier.parse(IdentifierType.IP, cn))
            except RejectedIdentifier:
                names.add(Identifier.parse(IdentifierType.DNS, cn))
    except (RejectedIdentifier, Malformed) as exc:
        raise BadCsr(f"the CSR names an invalid identifier: {exc.detail}") from None
    return names
