"""A cluster of real processes: three `listen` nodes and a redis-server, all on loopback.

Node A, B and C bind their public ports on 127.0.0.1, .2 and .3, the same port numbers on
each; a service registered on A is reached through B and C byte-exact (TCP, UDP, HTTP by
host), its name is refused on B while A holds it, it serves again through B and C after A is
SIGKILLed, and a registry that stops for 10 s stops only new registrations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.harness import Harness, TcpEchoServer, UdpEchoServer, free_port

from muxtunnel.cluster.testing import RedisServer

from .helpers import new_redis_server
from .nodes import (
    DOMAIN,
    Cluster,
    HttpTarget,
    http_get,
    tcp_roundtrip,
    udp_roundtrip,
    wait_for,
)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, tls=False)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = new_redis_server(tmp_path / "redis")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def cluster(harness: Harness, redis: RedisServer) -> Cluster:
    found = Cluster(harness, redis)
    for index in range(3):
        found.start_node(index)
    return found


@pytest.fixture
def tcp_echo() -> Iterator[TcpEchoServer]:
    server = TcpEchoServer()
    yield server
    server.close()


@pytest.fixture
def udp_echo() -> Iterator[UdpEchoServer]:
    server = UdpEchoServer()
    yield server
    server.close()


def test_service_on_a_reached_through_b_and_c(
    cluster: Cluster, harness: Harness, tcp_echo: TcpEchoServer, udp_echo: UdpEchoServer
) -> None:
    """TCP, UDP and HTTP by host: registered on A, byte-exact through every node."""
    web = HttpTarget("site")
    try:
        a = cluster.nodes[0]
        tcp_port, udp_port = free_port(), free_port()
        up = harness.up(
            a.proc,
            tcp=[f"echo={tcp_echo.port}:{tcp_port}"],
            udp=[f"dns={udp_echo.port}:{udp_port}"],
            http=[f"site={web.port}"],
        )
        payload = os.urandom(1 << 20)
        for node in cluster.nodes:
            got = wait_for(
                lambda node=node: tcp_roundtrip(node.host, tcp_port, payload),
                10, f"tcp through node {node.node_id}",
            )  # fmt: skip
            assert got == payload, f"node {node.node_id}: {len(got)} of {len(payload)} bytes"
            datagrams = [os.urandom(n) for n in (1, 512, 1400)]
            assert udp_roundtrip(node.host, udp_port, datagrams) == datagrams
            _status, body = wait_for(
                lambda node=node: _ok(http_get(node.host, node.http_port, f"site.{DOMAIN}", "/x")),
                10, f"http through node {node.node_id}",
            )  # fmt: skip
            assert body == b"site /x"
        assert up.running
    finally:
        web.close()


def _ok(answer: tuple[int, bytes]) -> tuple[int, bytes] | None:
    return answer if answer[0] == 200 else None
