"""UDP through real `listen` and `up` processes, with a UDP echo service as the local target.

Datagrams must arrive whole, once, with their exact content, up to the largest IPv4 payload
(65507 bytes). Larger ones are dropped: over IPv4 no socket can even send one, so the oversize
cases run over IPv6 loopback (::1), where a UDP payload may be up to 65527 bytes: the visitor
sends one to the public port (server side drops it), and the local service answers with one
(client side drops it). Either way the flow stays usable.
"""

from __future__ import annotations

import random
import socket
import time

import pytest
from testenv import skip_or_fail

from .harness import Harness, UdpEchoServer, free_port

MAX_IPV4_PAYLOAD = 65507
MAX_IPV6_PAYLOAD = 65527
SIZES = (1, 1472, 8192, MAX_IPV4_PAYLOAD)


def _visitor(family: socket.AddressFamily = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    sock.settimeout(10)
    return sock


def _nothing_arrives(sock: socket.socket, wait_s: float = 1.0) -> None:
    sock.settimeout(wait_s)
    try:
        data = sock.recv(1 << 17)
    except TimeoutError:
        return
    finally:
        sock.settimeout(10)
    pytest.fail(f"unexpected datagram of {len(data)} bytes")


def test_datagram_sizes_arrive_once_and_exact(harness: Harness, udp_echo: UdpEchoServer) -> None:
    listen = harness.listen()
    up = harness.up(listen, udp=[f"echo={udp_echo.port}:{free_port()}"])
    public = up.public("echo")
    payloads = [random.Random(size).randbytes(size) for size in SIZES]
    with _visitor() as visitor:
        for payload in payloads:
            visitor.sendto(payload, public)
            echoed = visitor.recv(1 << 17)
            assert (len(echoed), echoed == payload) == (len(payload), True)
        _nothing_arrives(visitor)  # no duplicates on the way back
    assert [len(d) for d in udp_echo.received] == list(SIZES)  # none twice at the target
    assert udp_echo.received == payloads


def test_two_visitors_get_their_own_flows(harness: Harness, udp_echo: UdpEchoServer) -> None:
    listen = harness.listen()
    up = harness.up(listen, udp=[f"echo={udp_echo.port}:{free_port()}"])
    public = up.public("echo")
    with _visitor() as first, _visitor() as second:
        for round_ in range(3):
            for name, sock in (("first", first), ("second", second)):
                message = f"{name} {round_}".encode()
                sock.sendto(message, public)
                assert sock.recv(1 << 16) == message


def test_idle_flow_expires_and_the_next_datagram_opens_a_new_one(
    harness: Harness, udp_echo: UdpEchoServer
) -> None:
    config = harness.write("server.yaml", "server:\n  udp_flow_idle_s: 0.5\n")
    listen = harness.listen("--config", config)
    up = harness.up(listen, udp=[f"echo={udp_echo.port}:{free_port()}"])
    public = up.public("echo")
    with _visitor() as visitor:
        visitor.sendto(b"first", public)
        assert visitor.recv(100) == b"first"
        senders = set(udp_echo.senders)
        time.sleep(2.0)  # > idle time + the expiry sweep's period
        visitor.sendto(b"second", public)
        assert visitor.recv(100) == b"second"
    # The client dials the local service afresh for the new flow: a new source port.
    assert len(senders) == 1 and len(set(udp_echo.senders)) == 2


def test_client_udp_flow_idle_s_expires_flows(harness: Harness, udp_echo: UdpEchoServer) -> None:
    """config.example.yaml: client.udp_flow_idle_s closes the client's idle flows."""
    config = harness.write("client.yaml", "client:\n  udp_flow_idle_s: 0.5\n")
    listen = harness.listen()  # the server keeps its flows for the default 60 s
    up = harness.up(listen, udp=[f"echo={udp_echo.port}:{free_port()}"], config=config)
    public = up.public("echo")
    with _visitor() as visitor:
        visitor.sendto(b"first", public)
        assert visitor.recv(100) == b"first"
        time.sleep(2.0)
        visitor.sendto(b"second", public)
        assert visitor.recv(100) == b"second"
    assert len(set(udp_echo.senders)) == 2, "the client kept its idle flow"


def test_oversize_datagrams_are_dropped_ipv6(harness: Harness) -> None:
    try:
        udp_echo = UdpEchoServer("::1")
    except OSError as exc:
        skip_or_fail(f"no IPv6 loopback: {exc}")
    try:
        listen = harness.listen(host="::1")
        remote = free_port("::1")
        up = harness.up(listen, udp=[f"echo=[::1]:{udp_echo.port}:{remote}"])
        host, port = up.public("echo")
        assert (host, port) == ("::1", remote)
        public = (host, port)
        largest = random.Random(7).randbytes(MAX_IPV4_PAYLOAD)
        with _visitor(socket.AF_INET6) as visitor:
            # Visitor -> server: a flow's first datagram, too big, opens no flow.
            visitor.sendto(b"A" * (MAX_IPV4_PAYLOAD + 1), public)
            _nothing_arrives(visitor)
            # The largest allowed one opens the flow and comes back whole.
            visitor.sendto(largest, public)
            assert visitor.recv(1 << 17) == largest
            # Too big on a flow that exists: dropped, the flow carries on.
            visitor.sendto(b"B" * MAX_IPV6_PAYLOAD, public)
            visitor.sendto(b"after", public)
            assert visitor.recv(1 << 17) == b"after"
            # Target -> client: a reply too big for the tunnel is dropped, the next one passes.
            visitor.sendto(f"send:{MAX_IPV4_PAYLOAD + 1}".encode(), public)
            _nothing_arrives(visitor)
            visitor.sendto(f"send:{MAX_IPV4_PAYLOAD}".encode(), public)
            assert visitor.recv(1 << 17) == b"R" * MAX_IPV4_PAYLOAD
            _nothing_arrives(visitor, 0.5)
        assert udp_echo.received == [
            largest,
            b"after",
            f"send:{MAX_IPV4_PAYLOAD + 1}".encode(),
            f"send:{MAX_IPV4_PAYLOAD}".encode(),
        ]
    finally:
        udp_echo.close()


def test_oversize_cannot_be_sent_over_ipv4() -> None:
    """Why the oversize cases above use IPv6: the IPv4 stack refuses such datagrams itself."""
    with _visitor() as sock, pytest.raises(OSError):
        sock.sendto(b"x" * (MAX_IPV4_PAYLOAD + 1), ("127.0.0.1", 9))


def test_empty_datagrams_arrive_both_ways(harness: Harness, udp_echo: UdpEchoServer) -> None:
    """A 0-byte datagram opens a flow, reaches the service and its 0-byte echo comes back."""
    listen = harness.listen()
    up = harness.up(listen, udp=[f"echo={udp_echo.port}:{free_port()}"])
    public = up.public("echo")
    with _visitor() as visitor:
        visitor.sendto(b"", public)  # the flow's first datagram
        assert visitor.recv(100) == b""
        visitor.sendto(b"x", public)
        assert visitor.recv(100) == b"x"
        visitor.sendto(b"", public)  # and one on a flow that is open
        assert visitor.recv(100) == b""
        _nothing_arrives(visitor, 0.3)
    assert udp_echo.received == [b"", b"x", b""]
