"""PROXY protocol headers (HAProxy's "The PROXY protocol", versions 1 and 2).

A service behind the tunnel sees the tunnel client's address on every connection; with a
PROXY header written first, nginx (`listen ... proxy_protocol`), HAProxy (`accept-proxy`) and
others learn the visitor's real address and port instead.

- v1 (spec §2.1): one text line, at most 107 bytes:
  `PROXY TCP4 <src> <dst> <sport> <dport>\\r\\n` (TCP6 for IPv6), `PROXY UNKNOWN\\r\\n` when
  the addresses are not IP (a test double, a Unix socket).
- v2 (spec §2.2): the 12-byte signature, then version/command (0x2 << 4 | 0x1 PROXY, or 0x0
  LOCAL), family/transport (0x11 TCP over IPv4, 0x21 TCP over IPv6, 0x12/0x22 for UDP), a
  16-bit big-endian length, and the addresses: 4+4+2+2 bytes (IPv4) or 16+16+2+2 (IPv6).

Both ends must be one family (the spec says so); a mix of IPv4 and IPv6 is sent as IPv6 with
the IPv4 address mapped (`::ffff:a.b.c.d`), as HAProxy does.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

__all__ = ["V2_SIGNATURE", "encode_proxy_header", "encode_v1", "encode_v2"]

#: Spec §2.2: "\r\n\r\n\0\r\nQUIT\n".
V2_SIGNATURE = b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
_V2_PROXY = 0x21  # version 2, command PROXY
_V2_LOCAL = 0x20  # version 2, command LOCAL
_FAMILY_INET = 0x10
_FAMILY_INET6 = 0x20
_TRANSPORT_STREAM = 0x01
_TRANSPORT_DGRAM = 0x02

Address = tuple[str, int]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addresses(source: Address, destination: Address) -> tuple[IPAddress, IPAddress] | None:
    try:
        src = ipaddress.ip_address(source[0])
        dst = ipaddress.ip_address(destination[0])
    except ValueError:
        return None
    if not (0 <= source[1] <= 65535 and 0 <= destination[1] <= 65535):
        raise ValueError("port out of range")
    if isinstance(src, ipaddress.IPv6Address) and src.ipv4_mapped is not None:
        src = src.ipv4_mapped
    if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
        dst = dst.ipv4_mapped
    if src.version != dst.version:
        src, dst = _as_v6(src), _as_v6(dst)
    return src, dst


def _as_v6(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


def encode_v1(source: Address, destination: Address) -> bytes:
    """A v1 header for a TCP connection from `source` to `destination` (host, port)."""
    pair = _addresses(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(
    source: Address, destination: Address, *, transport: Literal["tcp", "udp"] = "tcp"
) -> bytes:
    """A v2 header (command PROXY; LOCAL with no address when they are not IP)."""
    pair = _addresses(source, destination)
    if pair is None:
        return V2_SIGNATURE + bytes((_V2_LOCAL, 0x00)) + b"\x00\x00"
    src, dst = pair
    family = _FAMILY_INET if src.version == 4 else _FAMILY_INET6
    protocol = _TRANSPORT_STREAM if transport == "tcp" else _TRANSPORT_DGRAM
    body = (
        src.packed + dst.packed + source[1].to_bytes(2, "big") + destination[1].to_bytes(2, "big")
    )
    return (
        V2_SIGNATURE + bytes((_V2_PROXY, family | protocol)) + len(body).to_bytes(2, "big") + body
    )


def encode_proxy_header(
    version: Literal["v1", "v2"], source: Address, destination: Address
) -> bytes:
    """The header of `version` for a TCP connection `source` -> `destination`."""
    if version == "v1":
        return encode_v1(source, destination)
    if version == "v2":
        return encode_v2(source, destination)
    raise ValueError(f"unknown PROXY protocol version {version!r}")
