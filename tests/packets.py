"""Ethernet frames for driving the tc program in the kernel (BPF_PROG_TEST_RUN)."""

from __future__ import annotations

import ipaddress
import struct

TCP, UDP = 6, 17
SYN, ACK = 0x02, 0x10
_ETH = b"\x02" * 6 + b"\x04" * 6


def ipv4(src: str, dst: str, proto: int, dport: int, flags: int = SYN) -> bytes:
    """An IPv4 TCP segment (with `flags`) or UDP datagram from `src` to `dst`:`dport`."""
    if proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", 40000, dport, 8, 0)
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


def frame(ethertype: int) -> bytes:
    """A minimal frame of another EtherType (ARP, IPv6)."""
    return _ETH + struct.pack("!H", ethertype) + b"\x00" * 46
