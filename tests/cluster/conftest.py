"""Fixtures for the registry tests: a throwaway redis-server, and `registry`, which runs a test
once on the memory store and once on the Redis store; and for the tests of real nodes:
`cluster`, three `listen` nodes on a redis-server of their own.

The session's redis-server listens on a free loopback port and saves nothing; each test gets
its own key prefix on it, so tests never see each other's keys. Without redis-server the Redis
half skips locally but FAILS when CI is set: in CI it is the only check of the Redis store.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e.harness import Harness, TcpEchoServer, UdpEchoServer

from muxtunnel.cluster.testing import RedisServer

from .helpers import Registry, new_redis_server
from .nodes import Cluster

_prefixes = itertools.count(1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session (tests keep apart by key prefix)."""
    server = new_redis_server(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop, freeze or restart it."""
    server = new_redis_server(tmp_path / "redis")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    """The same test on both stores."""
    if request.param == "memory":
        reg = Registry("memory")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        reg = Registry("redis", server.url, f"t{next(_prefixes)}:")
    try:
        yield reg
    finally:
        await reg.aclose()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    # TLS as by default: the nodes share one state directory, hence one self-signed
    # certificate (as the README advises), and node-to-node sessions run over TLS too.
    h = Harness(tmp_path)
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
