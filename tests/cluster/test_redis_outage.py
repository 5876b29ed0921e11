"""The Redis store and the lease keeper when redis-server crashes, hangs or comes back empty.

Each test has a redis-server of its own (`own_redis`): `stop` kills it (SIGKILL; it saves
nothing, so it restarts empty), `pause` freezes it with its connections open (SIGSTOP).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio
import anyio.to_thread
import pytest

from muxtunnel.cluster import (
    Claim,
    ClaimKey,
    Exclusive,
    Lease,
    LeaseKeeper,
    Lost,
    Membership,
    NodeRecord,
    Owner,
    RedisStore,
    RegistryStore,
    RegistryUnavailable,
)
from muxtunnel.cluster.testing import RedisServer

pytestmark = pytest.mark.anyio

A1, B1 = Owner("node-a", "s1"), Owner("node-b", "s1")
WEB, PORT = ClaimKey.service("web"), ClaimKey.port("tcp", 2222)
#: Leases of the keeper tests: renewed every 0.5 s, calls bounded at 0.5 s (a third).
LEASE_S = 1.5
CALL_TIMEOUT_S = 0.5


def every_call(store: RegistryStore) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    return [
        ("acquire", lambda: store.acquire([Claim(ClaimKey.service("new"), A1)], 5.0)),
        ("renew", lambda: store.renew([Claim(WEB, A1)], 5.0)),
        ("release", lambda: store.release([Claim(WEB, A1)])),
        ("lookup", lambda: store.lookup([WEB])),
        ("list nodes", store.nodes),
        ("list claims", store.holdings),
    ]


async def test_a_stopped_server_fails_every_call_at_once_and_a_restart_needs_nothing(
    own_redis: RedisServer,
) -> None:
    store = RedisStore.from_url(own_redis.url, timeout_s=CALL_TIMEOUT_S)
    try:
        assert (await store.acquire([Claim(WEB, A1)], 30.0)).won  # the pool has a connection
        own_redis.stop()
        for name, call in every_call(store):
            t0 = time.monotonic()
            with pytest.raises(RegistryUnavailable, match=f"127.0.0.1:{own_redis.port}/0.*{name}"):
                await call()
            assert time.monotonic() - t0 < CALL_TIMEOUT_S + 0.5, name  # refused: no waiting
        own_redis.start()
        # The restarted server kept nothing (no persistence); the store reconnects by itself.
        assert await store.lookup([WEB]) == {}
        assert (await store.acquire([Claim(WEB, A1)], 30.0)).won
    finally:
        await store.aclose()


async def test_a_hung_server_fails_every_call_within_the_timeout_and_loses_nothing(
    own_redis: RedisServer,
) -> None:
    store = RedisStore.from_url(own_redis.url, timeout_s=0.3)
    try:
        assert (await store.acquire([Claim(WEB, A1)], 30.0)).won
        own_redis.pause()
        try:
            for name, call in every_call(store):
                t0 = time.monotonic()
                with pytest.raises(RegistryUnavailable, match=r"no answer within 0\.3 s"):
                    await call()
                took_s = time.monotonic() - t0
                assert 0.25 <= took_s < 0.3 + 0.7, (name, took_s)
        finally:
            own_redis.resume()
        held = await store.lookup([WEB])
        assert isinstance(held[WEB], Exclusive) and held[WEB].owner == A1
    finally:
        await store.aclose()


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    """Poll `check` every 20 ms until true; the seconds it took."""
    t0 = time.monotonic()
    with anyio.fail_after(timeout_s):
        while not await check():
            await anyio.sleep(0.02)
    return time.monotonic() - t0


def keeper_leases() -> list[Lease]:
    claims: list[Lease] = [Claim(ClaimKey.service(f"svc-{i}"), A1) for i in range(100)]
    group = Membership(ClaimKey.service("pool"), "g", A1)
    return [NodeRecord.new("node-a", "127.0.0.1:7001"), group, *claims]


async def all_back(store: RegistryStore, leases: list[Lease]) -> bool:
    """Every lease is in the store again, held by node-a."""
    keys = [lease.key for lease in leases if isinstance(lease, Claim | Membership)]
    try:
        held = await store.lookup(keys)
        nodes = await store.nodes()
    except RegistryUnavailable:
        return False
    return len(held) == len(keys) and [n.node_id for n in nodes] == ["node-a"]


@pytest.mark.parametrize("outage", ["restart", "freeze"])
async def test_the_keeper_rides_out_an_outage_and_takes_its_leases_back(
    own_redis: RedisServer, outage: str, figures: object
) -> None:
    store = RedisStore.from_url(own_redis.url, timeout_s=CALL_TIMEOUT_S)
    observer = RedisStore.from_url(own_redis.url, timeout_s=CALL_TIMEOUT_S)
    lost: list[Lost] = []
    keeper = LeaseKeeper(store, lease_s=LEASE_S, on_lost=lost.append)
    leases = keeper_leases()
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await tg.start(keeper.run)
                assert (await keeper.acquire(leases)).won
                own_redis.stop() if outage == "restart" else own_redis.pause()
                down_at = time.monotonic()

                async def keeper_noticed() -> bool:
                    return not keeper.status().available

                await wait_for(keeper_noticed, 3 * LEASE_S)
                await anyio.sleep(2.0 - (time.monotonic() - down_at))  # down 2 s > one lease
                status = keeper.status()
                assert status.held == len(leases) and keeper.held == frozenset(leases)
                assert status.failures >= 2 and lost == []
                # In a thread: the keeper's loop keeps running while redis-server starts.
                back = own_redis.start if outage == "restart" else own_redis.resume
                await anyio.to_thread.run_sync(back)
                recovery_s = await wait_for(lambda: all_back(observer, leases), 10)
                assert lost == [] and keeper.status().available
                tg.cancel_scope.cancel()
    finally:
        await store.aclose()
        await observer.aclose()
    # The restart forgot every lease and the freeze outlived them: all were taken again.
    assert keeper.status().retaken_total >= len(leases)
    figures.record(  # type: ignore[attr-defined]
        f"cluster keeper: leases back after a 2 s redis-server {outage}",
        seconds=recovery_s,
        leases=len(leases),
        lease_s=LEASE_S,
        failed_rounds=keeper.status().failed_rounds,
    )
    # Retries back off to at most one renewal interval (0.5 s), plus the call bound.
    assert recovery_s < LEASE_S / 3 + CALL_TIMEOUT_S + 1.0, recovery_s


async def test_after_a_restart_a_name_another_node_took_first_is_reported_lost(
    own_redis: RedisServer,
) -> None:
    a = RedisStore.from_url(own_redis.url, timeout_s=CALL_TIMEOUT_S)
    b = RedisStore.from_url(own_redis.url, timeout_s=CALL_TIMEOUT_S)
    lost: list[Lost] = []
    keeper = LeaseKeeper(a, lease_s=LEASE_S, on_lost=lost.append)
    try:
        assert (await keeper.acquire([Claim(WEB, A1), Claim(PORT, A1)])).won
        own_redis.stop()
        assert not await keeper.renew_once()
        own_redis.start()
        assert (await b.acquire([Claim(WEB, B1)], LEASE_S)).won  # B registers first
        assert await keeper.renew_once()
        assert [(x.lease, x.holder.owner) for x in lost] == [  # type: ignore[union-attr]
            (Claim(WEB, A1), B1)
        ]
        assert keeper.held == {Claim(PORT, A1)}
        assert (await b.lookup([PORT]))[PORT].owner == A1  # type: ignore[union-attr]
    finally:
        await a.aclose()
        await b.aclose()
