"""Which addresses may stand for a workload in the IP cache: one rule for the agent that
reports them and the server that accepts them."""

from __future__ import annotations

import ipaddress

from trustd.errors import InvalidRequest

# RFC 4291 §2.5.7: site-local unicast, deprecated by RFC 3879 (ambiguous between sites).
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")


def workload_address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` cannot identify one workload, or None when it can.

    IPv4: loopback, unspecified, multicast and reserved (240/4, the limited broadcast among
    them) addresses name no one host (RFC 6890 §2.2.2); link-local addresses (RFC 3927) are
    reused on every link, so they cannot tell one node's workload from another's.

    IPv6 (RFC 4291 §2.4): global unicast and unique local (fc00::/7, RFC 4193) addresses
    are accepted. Refused: the unspecified address (§2.5.2) and loopback (§2.5.3), which
    name no host; link-local (fe80::/10, §2.5.6), configured on every interface and unique
    on its link only, so the same address may be another workload's on the next veth;
    multicast (ff00::/8, §2.7), a group; IPv4-mapped (::ffff:0:0/96, §2.5.5.2), which no
    packet carries (the datapath sees the IPv4 address, reported as such); site-local
    (§2.5.7, deprecated); an address with a zone (RFC 4007 §11), which is link-scoped; and
    the rest of what IANA reserves outside those ranges (::/8 among them, RFC 4291 §2.4).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return "an address with a zone index"
        if address.ipv4_mapped is not None:
            return "an IPv4-mapped address (report the IPv4 address)"
        if address in _SITE_LOCAL:
            return "a site-local address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_reserved:
        return "a reserved address"
    return None


def parse_workload_address(value: str) -> str:
    """A reported workload address in canonical form (dotted quad; RFC 5952 for IPv6).

    Raises:
        InvalidRequest: not an IP address, or one that cannot identify a workload.
    """
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidRequest(f"not an IP address: {value!r}") from None
    problem = workload_address_problem(address)
    if problem is not None:
        raise InvalidRequest(f"{problem}: {value!r}")
    return str(address)
