"""Cluster registry figures against a throwaway redis-server on loopback, without pytest.

    .venv/bin/python -m bench.micro.cluster_registry [--restarts 3] [--leases 1000]

- claim: one `acquire` of one name (a registration with one key), p50/p99 over 2000 names;
  "register 3" is a service name, a port and a host taken together (all or nothing);
- lookup: one name a visitor asks for, p50/p99;
- 1000 claims: three nodes (three clients) claiming 1000 names between them, one at a time
  each, and one node alone;
- renew: one keeper round over `--leases` leases (the steady-state cost per lease_s/3);
- recovery: a keeper holding `--leases` leases (lease 3 s, renewed every 1 s) while
  redis-server is killed for 2 s and restarted empty: seconds from the server answering
  again until every lease is back. The keeper retries with doubling back-off capped at the
  renewal interval, so this lies between a round trip and about one interval.

Nothing here asserts a speed; loopback figures are a floor, a LAN adds its round trip per call.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread

from muxtunnel.cluster import Claim, ClaimKey, Lease, LeaseKeeper, Owner, RedisStore
from muxtunnel.cluster.testing import RedisServer

LEASE_S = 30.0


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.3f} ms  p99 {p99 * 1000:.3f} ms"


async def _latencies(server: RedisServer) -> None:
    store = RedisStore.from_url(server.url, prefix="bench-latency:")
    owner = Owner("node-a", "s1")
    claims, registers, lookups = [], [], []
    for i in range(2000):
        t0 = time.perf_counter()
        await store.acquire([Claim(ClaimKey.service(f"c{i}"), owner)], LEASE_S)
        claims.append(time.perf_counter() - t0)
    for i in range(2000):
        keys = [ClaimKey.service(f"r{i}"), ClaimKey.port("tcp", 1 + i), ClaimKey.https(f"r{i}.x")]
        t0 = time.perf_counter()
        await store.acquire([Claim(key, owner) for key in keys], LEASE_S)
        registers.append(time.perf_counter() - t0)
    for i in range(2000):
        t0 = time.perf_counter()
        await store.lookup([ClaimKey.service(f"c{i}")])
        lookups.append(time.perf_counter() - t0)
    await store.aclose()
    print(f"claim one name         {_ms(claims)}")
    print(f"register 3 names       {_ms(registers)}")
    print(f"lookup one name        {_ms(lookups)}")


async def _claim_share(store: RedisStore, n: int, nodes: int) -> None:
    owner = Owner(f"node-{n}", "s1")
    for i in range(n, 1000, nodes):
        assert (await store.acquire([Claim(ClaimKey.service(f"s{i}"), owner)], LEASE_S)).won


async def _thousand(server: RedisServer) -> None:
    for nodes in (3, 1):
        stores = [RedisStore.from_url(server.url, prefix=f"bench-{nodes}:") for _ in range(nodes)]
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for n in range(nodes):
                tg.start_soon(_claim_share, stores[n], n, nodes)
        print(f"1000 claims, {nodes} node(s)  {time.perf_counter() - t0:.3f} s")
        for store in stores:
            await store.aclose()


async def _renew_and_recover(server: RedisServer, leases_n: int, restarts: int) -> None:
    store = RedisStore.from_url(server.url, prefix="bench-keeper:", timeout_s=1.0)
    observer = RedisStore.from_url(server.url, prefix="bench-keeper:", timeout_s=1.0)
    keeper = LeaseKeeper(store, lease_s=3.0)
    keys = [ClaimKey.service(f"k{i}") for i in range(leases_n)]
    leases: list[Lease] = [Claim(key, Owner("node-a", f"s{i}")) for i, key in enumerate(keys)]
    assert (await keeper.acquire(leases, atomic=False)).won
    rounds = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert await keeper.renew_once()
        rounds.append(time.perf_counter() - t0)
    print(f"renew {leases_n} leases     {_ms(rounds)} per round")
    recoveries = []
    async with anyio.create_task_group() as tg:
        await tg.start(keeper.run)
        for _ in range(restarts):
            server.stop()
            await anyio.sleep(2.0)
            await anyio.to_thread.run_sync(server.start)
            t0 = time.perf_counter()
            with anyio.fail_after(30):
                while True:
                    try:
                        if len(await observer.lookup(keys)) == leases_n:
                            break
                    except Exception:
                        pass
                    await anyio.sleep(0.01)
            recoveries.append(time.perf_counter() - t0)
        tg.cancel_scope.cancel()
    await store.aclose()
    await observer.aclose()
    figures = ", ".join(f"{r:.3f}" for r in recoveries)
    print(f"recovery after restart {figures} s  ({leases_n} leases, 3 s lease, 2 s down)")


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp)) as server:
        await _latencies(server)
        await _thousand(server)
        await _renew_and_recover(server, args.leases, args.restarts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=3, help="redis-server restarts (3)")
    parser.add_argument("--leases", type=int, default=1000, help="leases the keeper holds")
    anyio.run(_main, parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
