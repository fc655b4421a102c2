"""Which addresses may stand for a workload in the IP cache: one rule for the agent that
reports them and the server that accepts them."""

from __future__ import annotations

import ipaddress

from trustd.errors import InvalidRequest


def workload_address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` cannot identify one workload, or None when it can.

    Reports are IPv4 only (the agent reads IPv4 addresses, trustd/agent/addresses.py); the
    IP cache holds IPv6 too, from entries' declared ip_addresses. Loopback, unspecified,
    multicast and reserved (240/4, the limited broadcast among them) addresses name no one
    host (RFC 6890 §2.2.2); link-local addresses (RFC 3927) are reused on every link, so they
    cannot tell one node's workload from another's.
    """
    if address.version != 4:
        return "only IPv4 addresses are reported (declare IPv6 in the entry's ip_addresses)"
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
    """A reported workload address in canonical dotted-quad form.

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
