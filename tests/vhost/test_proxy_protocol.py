"""PROXY protocol headers: the bytes against HAProxy's spec, and parsed by a real nginx."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator

import pytest

from muxtunnel.vhost import RouteOptions, encode_proxy_header, encode_v1, encode_v2
from muxtunnel.vhost.proxy_protocol import V2_SIGNATURE

from .helpers import TIMEOUT_S, Proxy, request
from .nginx import free_port, proxy_protocol_server, running_nginx

# ---------------------------------------------------------------------------------- bytes


def test_v1_lines_match_the_spec_examples() -> None:
    # Spec §2.1: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n" is the longest
    # TCP4 line; TCP6 at most 104 bytes; UNKNOWN when the addresses are not IP.
    assert encode_v1(("192.168.0.1", 56324), ("192.168.0.11", 443)) == (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_v1(("2001:db8::1", 1), ("::1", 80)) == b"PROXY TCP6 2001:db8::1 ::1 1 80\r\n"
    longest = encode_v1(("ffff:f...:ffff".replace("f...", "ffff:ffff:ffff:ffff:ffff:ffff"), 65535),
                        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))  # fmt: skip
    assert len(longest) <= 107
    assert encode_v1(("unknown", 0), ("0.0.0.0", 0)) == b"PROXY UNKNOWN\r\n"
    # One family per header: a v4 visitor on a v6 listener is sent as a mapped v6 address.
    assert encode_v1(("192.0.2.1", 5), ("2001:db8::2", 6)) == (
        b"PROXY TCP6 ::ffff:c000:201 2001:db8::2 5 6\r\n"
    )
    assert encode_v1(("::ffff:192.0.2.1", 5), ("192.0.2.2", 6)) == (
        b"PROXY TCP4 192.0.2.1 192.0.2.2 5 6\r\n"
    )


def parse_v2(data: bytes) -> tuple[int, int, tuple[str, int], tuple[str, int]] | None:
    """An independent reading of spec §2.2 (not the encoder's code): command, family, addresses."""
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
    version_command, family = data[12], data[13]
    assert version_command >> 4 == 2
    (length,) = struct.unpack("!H", data[14:16])
    assert len(data) == 16 + length
    body = data[16:]
    if version_command & 0xF == 0:
        return None  # LOCAL
    if family >> 4 == 1:
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        return (
            version_command & 0xF,
            family,
            (str(ipaddress.IPv4Address(src)), sport),
            (str(ipaddress.IPv4Address(dst)), dport),
        )
    src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
    return (
        version_command & 0xF,
        family,
        (str(ipaddress.IPv6Address(src)), sport),
        (str(ipaddress.IPv6Address(dst)), dport),
    )


def test_v2_headers_match_the_spec_layout() -> None:
    v4 = encode_v2(("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert v4 == V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(
        [192, 168, 0, 1, 192, 168, 0, 11]
    ) + struct.pack("!HH", 56324, 443)
    assert parse_v2(v4) == (1, 0x11, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    v6 = encode_v2(("2001:db8::1", 1234), ("2001:db8::2", 80))
    assert v6[12:16] == b"\x21\x21\x00\x24" and len(v6) == 16 + 36
    assert parse_v2(v6) == (1, 0x21, ("2001:db8::1", 1234), ("2001:db8::2", 80))
    udp = encode_v2(("192.0.2.1", 53), ("192.0.2.2", 5353), transport="udp")
    assert udp[13] == 0x12
    local = encode_v2(("unknown", 0), ("unknown", 0))
    assert local == V2_SIGNATURE + b"\x20\x00\x00\x00" and parse_v2(local) is None
    with pytest.raises(ValueError):
        encode_v2(("192.0.2.1", 70000), ("192.0.2.2", 1))
    with pytest.raises(ValueError):
        encode_proxy_header("v3", ("192.0.2.1", 1), ("192.0.2.2", 2))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- nginx


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """nginx (Debian's) on loopback with `listen ... proxy_protocol`; yields its port."""
    port = free_port()
    with running_nginx(tmp_path_factory.mktemp("nginx"), proxy_protocol_server(port), [port]):
        yield port


def _ask_nginx(port: int, header: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(
            header + b"GET / HTTP/1.1\r\nHost: pp.example.com\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body.decode().strip()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_reads_our_headers(nginx: int, version: str) -> None:
    encode = encode_v1 if version == "v1" else encode_v2
    v4 = _ask_nginx(nginx, encode(("203.0.113.7", 51234), ("198.51.100.1", 443)))
    assert v4.startswith("client=203.0.113.7:51234 server=198.51.100.1:443 peer=127.0.0.1 ")
    v6 = _ask_nginx(nginx, encode(("2001:db8::7", 40000), ("2001:db8::1", 80)))
    assert v6.startswith("client=2001:db8::7:40000 server=2001:db8::1:80 ")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_http_route_with_proxy_protocol_tells_nginx_the_visitor(
    proxy: Proxy, nginx: int, version: str
) -> None:
    proxy.add_http("pp", ["pp.example.com"], ("127.0.0.1", nginx),
                   options=RouteOptions(proxy_protocol=version))  # type: ignore[arg-type]  # fmt: skip
    with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
        visitor_port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: pp.example.com\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    body = data.partition(b"\r\n\r\n")[2].decode()
    assert f"client=127.0.0.1:{visitor_port} server=127.0.0.1:{proxy.http_port} " in body
    assert request(proxy.http_port, "pp.example.com").status == 200
