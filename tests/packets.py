"""Ethernet frames (IPv4 and IPv6) for driving the tc program in the kernel
(BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ipaddress
import struct

TCP, UDP, ICMPV6 = 6, 17, 58
SYN, ACK = 0x02, 0x10
_ETH = b"\x02" * 6 + b"\x04" * 6


def ipv4(src: str, dst: str, proto: int, dport: int, flags: int = SYN) -> bytes:
    """An IPv4 TCP segment (with `flags`) or UDP datagram from `src` to `dst`:`dport`."""
    l4 = _l4(proto, dport, flags, 40000)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(l4),
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return _ETH + struct.pack("!H", 0x0800) + header + l4


def _l4(proto: int, dport: int, flags: int, sport: int) -> bytes:
    if proto == TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    return struct.pack("!HHHH", sport, dport, 8, 0)


def ipv6(
    src: str,
    dst: str,
    proto: int,
    dport: int,
    flags: int = SYN,
    *,
    sport: int = 40000,
    hop_limit: int = 64,
    extensions: bytes = b"",
    first_header: int | None = None,
) -> bytes:
    """An IPv6 TCP segment or UDP datagram from `src` to `dst`:`dport` (for ICMPV6,
    `dport` is the ICMPv6 type), behind `extensions` (already chained: `first_header`
    names the first of them, the last names `proto`)."""
    if proto == ICMPV6:
        l4 = struct.pack("!BBHI", dport, 0, 0, 0) + b"\x00" * 16
    else:
        l4 = _l4(proto, dport, flags, sport)
    payload = extensions + l4
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        proto if first_header is None else first_header,
        hop_limit,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return _ETH + struct.pack("!H", 0x86DD) + header + payload


def packet(src: str, dst: str, proto: int, dport: int, flags: int = SYN) -> bytes:
    """`ipv4` or `ipv6`, as the addresses are."""
    if ipaddress.ip_address(src).version == 6:
        return ipv6(src, dst, proto, dport, flags)
    return ipv4(src, dst, proto, dport, flags)


def frame(ethertype: int) -> bytes:
    """A minimal frame of another EtherType (ARP, IPv6)."""
    return _ETH + struct.pack("!H", ethertype) + b"\x00" * 46
