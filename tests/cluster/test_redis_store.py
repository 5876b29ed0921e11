"""What is particular to the Redis store: its keys, its pool, its scripts, TLS, foreign data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from muxtunnel.cluster import (
    Claim,
    ClaimKey,
    Membership,
    NodeRecord,
    Owner,
    RedisStore,
    RegistryError,
    RegistryUnavailable,
)
from muxtunnel.cluster.testing import RedisServer, TlsFiles
from muxtunnel.tls import generate_self_signed

from .helpers import new_redis_server

pytestmark = pytest.mark.anyio

A1, B1 = Owner("node-a", "s1"), Owner("node-b", "s1")
WEB = ClaimKey.service("web")


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client, to look at what the store wrote."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def test_keys_live_under_the_prefix_and_expire_with_their_lease(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="layout:")
    try:
        node = NodeRecord.new("node-a", "127.0.0.1:7001")
        pool = ClaimKey.http("a.example.com", "/api")
        leases = [node, Claim(WEB, A1), Membership(pool, "g", A1)]
        assert (await store.acquire(leases, 7.0)).won
        assert sorted(await raw.keys("layout:*")) == [
            "layout:claim:http:a.example.com/api",
            "layout:claim:service:web",
            "layout:members:http:a.example.com/api",
            "layout:node:node-a",
        ]
        assert await raw.get("layout:claim:service:web") == "x node-a s1"
        assert await raw.get("layout:claim:http:a.example.com/api") == "g g"
        assert await raw.get("layout:node:node-a") == node.encode()
        for key in await raw.keys("layout:*"):
            assert 6000 < await raw.pttl(key) <= 7000, key
    finally:
        await store.aclose()


async def test_two_prefixes_are_two_registries(redis_server: RedisServer) -> None:
    one = RedisStore.from_url(redis_server.url, prefix="one[*]:")  # glob characters, escaped
    two = RedisStore.from_url(redis_server.url, prefix="one")
    try:
        assert (await one.acquire([Claim(WEB, A1), NodeRecord.new("n", "h:1")], 5.0)).won
        assert (await two.acquire([Claim(WEB, B1)], 5.0)).won
        assert [key for key, _ in await one.holdings()] == [WEB]
        assert (await one.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]
        assert await two.nodes() == [] and len(await one.nodes()) == 1
    finally:
        await one.aclose()
        await two.aclose()


async def test_connections_stay_within_the_pool_bound_under_a_burst(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="pool:", max_connections=3)
    peak = 0

    async def lookup() -> None:
        await store.lookup([ClaimKey.service(f"s{i}") for i in range(200)])

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for _ in range(60):
                    tg.start_soon(lookup)
                for _ in range(20):
                    clients = await raw.client_list()
                    peak = max(peak, sum(c["name"] == "muxtunnel" for c in clients))
                    await anyio.sleep(0.005)
        clients = await raw.client_list()
        assert 1 <= sum(c["name"] == "muxtunnel" for c in clients) <= 3
        assert peak <= 3
    finally:
        await store.aclose()


async def test_scripts_are_loaded_again_when_the_server_forgot_them(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="flush:")
    try:
        assert (await store.acquire([Claim(WEB, A1)], 5.0)).won
        await raw.script_flush()  # what a restart does to the script cache
        assert await store.renew([Claim(WEB, A1)], 5.0) == []
        assert (await store.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]
    finally:
        await store.aclose()


async def test_foreign_data_under_the_prefix_is_a_clear_error_not_a_crash(
    redis_server: RedisServer, raw: redis.asyncio.Redis
) -> None:
    store = RedisStore.from_url(redis_server.url, prefix="foreign:")
    try:
        await raw.set("foreign:claim:service:web", "something else")
        await raw.lpush("foreign:claim:service:list", "x")
        await raw.set("foreign:claim:unknown-kind:x", "x a b")
        with pytest.raises(RegistryError, match="unreadable service:web"):
            await store.lookup([WEB])
        with pytest.raises(RegistryError, match="WRONGTYPE"):
            await store.lookup([ClaimKey.service("list")])
        assert not isinstance(RegistryError("x"), RegistryUnavailable)
        # An acquire is refused (the value is not ours), and says what it found.
        with pytest.raises(RegistryError, match="unreadable"):
            await store.acquire([Claim(WEB, A1)], 5.0)
    finally:
        await store.aclose()


async def test_rediss_reaches_a_tls_server_and_refuses_an_unknown_certificate(
    tmp_path: Path,
) -> None:
    cert_pem, key_pem, _ = generate_self_signed(["127.0.0.1"])
    cert, key = tmp_path / "redis.crt", tmp_path / "redis.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    server = new_redis_server(tmp_path / "redis", tls=TlsFiles(str(cert), str(key)))
    trusted = RedisStore.from_url(f"{server.tls_url}?ssl_ca_certs={cert}", timeout_s=2.0)
    untrusted = RedisStore.from_url(server.tls_url, timeout_s=2.0)
    try:
        assert (await trusted.acquire([Claim(WEB, A1)], 5.0)).won
        assert (await trusted.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]
        with pytest.raises(RegistryUnavailable, match=r"(?i)certificate"):
            await untrusted.lookup([WEB])
    finally:
        await trusted.aclose()
        await untrusted.aclose()
        server.close()
