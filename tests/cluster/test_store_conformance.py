"""The store rules (`muxtunnel/cluster/_store.py`), checked on the memory store and on Redis.

Every test runs twice through the `registry` fixture. On Redis time passes for real, so
leases here are short (0.5 s) and the checks read the lease left (`expires_in_s`) rather than
racing a clock; waits only ever make an expiry more certain.
"""

from __future__ import annotations

import time

import anyio
import pytest

from muxtunnel.cluster import (
    Claim,
    ClaimKey,
    Exclusive,
    Grouped,
    Membership,
    NodeRecord,
    Owner,
    read_cluster,
)

from .helpers import Registry

pytestmark = pytest.mark.anyio

LEASE_S = 0.5
A1 = Owner("node-a", "session-1")
A2 = Owner("node-a", "session-2")
B1 = Owner("node-b", "session-1")
C1 = Owner("node-c", "session-1")
WEB = ClaimKey.service("web")
PORT = ClaimKey.port("tcp", 8080)
HOST = ClaimKey.http("web.example.com", "/")


async def test_a_free_name_is_claimed_and_a_second_claimant_is_refused(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    assert (await a.acquire([Claim(WEB, A1)], LEASE_S)).won
    refused = await b.acquire([Claim(WEB, B1)], LEASE_S)
    assert not refused.won
    [lost] = refused.lost
    assert lost.lease == Claim(WEB, B1)
    assert isinstance(lost.holder, Exclusive) and lost.holder.owner == A1
    assert "session-1@node-a" in refused.reason() and "service:web" in refused.reason()
    # Another session of the same node is someone else too: the owner is node and holder.
    assert not (await a.acquire([Claim(WEB, A2)], LEASE_S)).won
    assert (await b.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]


async def test_claiming_again_what_is_ours_succeeds_and_extends_it(registry: Registry) -> None:
    a = registry.store()
    assert (await a.acquire([Claim(WEB, A1)], LEASE_S)).won
    await registry.pass_time(LEASE_S * 0.6)
    assert (await a.lookup([WEB]))[WEB].expires_in_s < LEASE_S * 0.5
    assert (await a.acquire([Claim(WEB, A1)], LEASE_S)).won
    assert (await a.lookup([WEB]))[WEB].expires_in_s > LEASE_S * 0.8


async def test_an_atomic_acquire_takes_everything_or_nothing(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    assert (await b.acquire([Claim(PORT, B1)], LEASE_S)).won
    outcome = await a.acquire([Claim(WEB, A1), Claim(PORT, A1), Claim(HOST, A1)], LEASE_S)
    assert [lost.lease.key for lost in outcome.lost] == [PORT]  # type: ignore[union-attr]
    assert await a.lookup([WEB, HOST]) == {}  # nothing was taken
    # Each on its own: the free ones are taken, the held one reported.
    outcome = await a.acquire([Claim(WEB, A1), Claim(PORT, A1)], LEASE_S, atomic=False)
    assert [lost.lease for lost in outcome.lost] == [Claim(PORT, A1)]
    assert (await a.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]


async def test_renew_extends_only_what_is_still_ours(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    assert (await a.acquire([Claim(WEB, A1), Claim(PORT, A1)], LEASE_S)).won
    assert (await b.acquire([Claim(HOST, B1)], LEASE_S)).won
    await registry.pass_time(LEASE_S * 0.6)
    lost = await a.renew(
        [Claim(WEB, A1), Claim(PORT, A1), Claim(HOST, A1), Claim(ClaimKey.service("x"), A1)],
        LEASE_S,
    )
    assert {x.lease.key: x.holder for x in lost}.keys() == {  # type: ignore[union-attr]
        HOST,
        ClaimKey.service("x"),
    }
    by_key = {x.lease.key: x.holder for x in lost}  # type: ignore[union-attr]
    assert isinstance(by_key[HOST], Exclusive) and by_key[HOST].owner == B1
    assert by_key[ClaimKey.service("x")] is None  # free: the renewal did not take it
    held = await a.lookup([WEB, PORT, HOST, ClaimKey.service("x")])
    assert held[WEB].expires_in_s > LEASE_S * 0.8 and held[PORT].expires_in_s > LEASE_S * 0.8
    assert held[HOST].expires_in_s < LEASE_S * 0.5  # B's, not renewed by A
    assert ClaimKey.service("x") not in held


async def test_release_gives_up_only_what_is_ours(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    assert (await a.acquire([Claim(WEB, A1)], LEASE_S)).won
    assert await b.release([Claim(WEB, B1)]) == 0
    assert (await b.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]
    assert await a.release([Claim(WEB, A1)]) == 1
    assert await a.release([Claim(WEB, A1)]) == 0
    assert await b.lookup([WEB]) == {}
    assert (await b.acquire([Claim(WEB, B1)], LEASE_S)).won


async def test_a_node_that_stops_renewing_loses_its_claim_within_the_lease(
    registry: Registry,
) -> None:
    a, b = registry.store(), registry.store()
    start = registry.now()
    assert (await a.acquire([Claim(WEB, A1)], LEASE_S)).won
    with anyio.fail_after(10):
        while not (await b.acquire([Claim(WEB, B1)], LEASE_S)).won:
            await registry.pass_time(0.02)
    lived_s = registry.now() - start
    # Not before the lease ends; after it, by a poll step plus what a loaded machine adds.
    assert LEASE_S - 0.02 <= lived_s <= LEASE_S + 0.4, lived_s
    assert (await a.lookup([WEB]))[WEB].owner == B1  # type: ignore[union-attr]
    lost = await a.renew([Claim(WEB, A1)], LEASE_S)
    assert [x.holder.owner for x in lost] == [B1]  # type: ignore[union-attr]


async def test_two_nodes_claiming_at_once_exactly_one_wins(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    keys = [ClaimKey.service(f"race-{i}") for i in range(100)]
    wins: dict[ClaimKey, list[Owner]] = {key: [] for key in keys}

    async def claim(store_owner: tuple[object, Owner], key: ClaimKey) -> None:
        store, owner = store_owner
        if (await store.acquire([Claim(key, owner)], 5.0)).won:  # type: ignore[attr-defined]
            wins[key].append(owner)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(claim, (a, A1), key)
                tg.start_soon(claim, (b, B1), key)
    assert all(len(winners) == 1 for winners in wins.values()), wins
    held = await a.lookup(keys)
    assert all(held[key].owner == wins[key][0] for key in keys)  # type: ignore[union-attr]


async def test_groups_hold_one_name_with_members_on_several_nodes(registry: Registry) -> None:
    a, b, c = registry.store(), registry.store(), registry.store()
    for store, owner in ((a, A1), (b, B1), (c, C1)):
        assert (await store.acquire([Membership(WEB, "pool", owner)], LEASE_S)).won
    holding = (await a.lookup([WEB]))[WEB]
    assert isinstance(holding, Grouped) and holding.group == "pool"
    assert [m.owner for m in holding.members] == [A1, B1, C1]
    assert holding.node_ids == {"node-a", "node-b", "node-c"}
    # The name is the group's: an exclusive claim or another group is refused.
    refused = await b.acquire([Claim(WEB, B1)], LEASE_S)
    assert isinstance(refused.lost[0].holder, Grouped) and "group 'pool'" in refused.reason()
    assert not (await b.acquire([Membership(WEB, "other", B1)], LEASE_S)).won
    # And a name held alone cannot be joined.
    assert (await a.acquire([Claim(PORT, A1)], LEASE_S)).won
    assert not (await b.acquire([Membership(PORT, "pool", B1)], LEASE_S)).won
    # A member leaves: the others stay.
    assert await b.release([Membership(WEB, "pool", B1)]) == 1
    holding = (await a.lookup([WEB]))[WEB]
    assert [m.owner for m in holding.members] == [A1, C1]  # type: ignore[union-attr]


async def test_a_group_member_that_stops_renewing_drops_out_and_the_last_frees_the_name(
    registry: Registry,
) -> None:
    a, b = registry.store(), registry.store()
    member_a, member_b = Membership(WEB, "pool", A1), Membership(WEB, "pool", B1)
    assert (await a.acquire([member_a], LEASE_S)).won
    assert (await b.acquire([member_b], LEASE_S)).won
    for _ in range(3):  # A keeps renewing, B stops
        await registry.pass_time(LEASE_S * 0.45)
        assert await a.renew([member_a], LEASE_S) == []
    holding = (await a.lookup([WEB]))[WEB]
    assert [m.owner for m in holding.members] == [A1]  # type: ignore[union-attr]
    assert holding.expires_in_s > LEASE_S * 0.8
    [lost] = await b.renew([member_b], LEASE_S)  # B is out, though the group lives on
    assert isinstance(lost.holder, Grouped) and lost.holder.group == "pool"
    assert (await b.acquire([member_b], LEASE_S)).won  # B may join again
    # Nobody renews: the group's name ends with its longest member lease.
    await registry.pass_time(LEASE_S + 0.05)
    assert await a.lookup([WEB]) == {}
    assert (await b.acquire([Claim(WEB, B1)], LEASE_S)).won


async def test_a_members_health_is_written_with_its_lease_and_read_by_every_node(
    registry: Registry,
) -> None:
    a, b = registry.store(), registry.store()
    sick = Membership(WEB, "pool", A1, healthy=False)
    assert (await a.acquire([sick], LEASE_S)).won
    assert (await b.acquire([Membership(WEB, "pool", B1)], LEASE_S)).won

    async def health() -> list[bool]:
        holding = (await b.lookup([WEB]))[WEB]
        assert isinstance(holding, Grouped)
        return [m.healthy for m in holding.members]

    assert await health() == [False, True]
    # A renewal carries the new value: the same lease, healthy again; and back.
    assert await a.renew([Membership(WEB, "pool", A1)], LEASE_S) == []
    assert await health() == [True, True]
    assert await a.renew([sick], LEASE_S) == []
    assert await health() == [False, True]
    # Health is not part of who holds the name: either value releases the member.
    assert await a.release([Membership(WEB, "pool", A1)]) == 1
    assert await health() == [True]
    assert (await a.acquire([Membership(WEB, "pool", A1)], LEASE_S)).won  # joins healthy
    assert await health() == [True, True]


async def test_the_last_member_leaving_frees_the_name_at_once(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    assert (await a.acquire([Membership(WEB, "pool", A1)], LEASE_S)).won
    assert (await b.acquire([Membership(WEB, "pool", B1)], 3 * LEASE_S)).won
    assert await b.release([Membership(WEB, "pool", B1)]) == 1
    holding = (await a.lookup([WEB]))[WEB]
    # B had the longest lease; the group's now ends with A's.
    assert holding.expires_in_s <= LEASE_S
    assert await a.release([Membership(WEB, "pool", A1)]) == 1
    assert await a.lookup([WEB]) == {}
    assert (await b.acquire([Claim(WEB, B1)], LEASE_S)).won


async def test_nodes_register_list_collide_and_expire(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    node_a = NodeRecord.new("node-a", "10.0.0.1:7001")
    node_b = NodeRecord.new("node-b", "[2001:db8::2]:7001")
    assert (await a.acquire([node_a], LEASE_S)).won
    assert (await b.acquire([node_b], 3 * LEASE_S)).won
    assert await a.nodes() == [node_a, node_b]
    # A second process started with node-a's id is refused, and told by whom.
    impostor = NodeRecord.new("node-a", "10.0.0.9:7001")
    refused = await b.acquire([impostor], LEASE_S)
    assert refused.lost[0].holder == node_a and "10.0.0.1:7001" in refused.reason()
    assert (await a.acquire([node_a], LEASE_S)).won  # the same process again: fine
    await registry.pass_time(LEASE_S + 0.05)
    assert await b.nodes() == [node_b]
    assert (await b.acquire([impostor], LEASE_S)).won
    assert await b.release([node_b]) == 1
    assert await b.nodes() == [impostor]


async def test_listing_shows_every_node_and_what_it_holds(registry: Registry) -> None:
    a, b = registry.store(), registry.store()
    node_a, node_b = NodeRecord.new("node-a", "a:1"), NodeRecord.new("node-b", "b:1")
    assert (await a.acquire([node_a, Claim(WEB, A1), Claim(PORT, A2)], 5.0)).won
    assert (await b.acquire([node_b, Claim(HOST, B1)], 5.0)).won
    pool = ClaimKey.service("pool")
    assert (await a.acquire([Membership(pool, "g", A1)], 5.0)).won
    assert (await b.acquire([Membership(pool, "g", B1)], 5.0)).won
    holdings = await a.holdings()
    assert [key for key, _ in holdings] == sorted([WEB, PORT, HOST, pool])
    view = await read_cluster(b)
    assert [n.node_id for n in view.nodes] == ["node-a", "node-b"]
    view_a, view_b = view.nodes
    assert view_a.record == node_a and view_b.record == node_b
    assert view_a.claims == tuple(sorted([(WEB, A1), (PORT, A2)]))
    assert view_b.claims == ((HOST, B1),)
    assert [(k, g, m.owner) for k, g, m in view_a.memberships] == [(pool, "g", A1)]
    assert [(k, g, m.owner) for k, g, m in view_b.memberships] == [(pool, "g", B1)]


async def test_a_name_held_by_a_node_without_a_record_is_still_listed(registry: Registry) -> None:
    a = registry.store()
    assert (await a.acquire([Claim(WEB, A1)], 5.0)).won
    view = await read_cluster(a)
    assert [(n.node_id, n.record, n.claims) for n in view.nodes] == [("node-a", None, ((WEB, A1),))]


async def test_one_acquire_may_not_name_a_key_twice(registry: Registry) -> None:
    a = registry.store()
    with pytest.raises(ValueError, match="twice"):
        await a.acquire([Claim(WEB, A1), Membership(WEB, "g", A1)], LEASE_S)
    with pytest.raises(ValueError, match="lease_s"):
        await a.acquire([Claim(WEB, A1)], 0.0)
    assert await a.lookup([WEB]) == {}


async def test_a_thousand_names_over_three_nodes(registry: Registry, figures: object) -> None:
    stores = {node: registry.store() for node in ("node-a", "node-b", "node-c")}
    keys = [ClaimKey.service(f"svc-{i:04d}") for i in range(1000)]
    owners = [Owner(node, f"session-{i}") for i, node in enumerate(stores)]
    plan = [(keys[i], owners[i % 3]) for i in range(1000)]
    latencies: list[float] = []

    async def node(owner: Owner) -> None:
        store = stores[owner.node_id]
        for key, who in plan:
            if who == owner:
                t0 = time.perf_counter()
                assert (await store.acquire([Claim(key, owner)], 30.0)).won
                latencies.append(time.perf_counter() - t0)

    with anyio.fail_after(60):
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for owner in owners:
                tg.start_soon(node, owner)
        claim_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        lost = await stores["node-a"].renew([Claim(k, o) for k, o in plan if o == owners[0]], 30.0)
        renew_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        held = await stores["node-b"].lookup(keys)
        lookup_s = time.perf_counter() - t0
        view = await read_cluster(stores["node-c"])
    assert lost == []
    assert all(held[key].owner == who for key, who in plan)  # type: ignore[union-attr]
    assert [(n.node_id, len(n.claims)) for n in view.nodes] == [
        ("node-a", 334),
        ("node-b", 333),
        ("node-c", 333),
    ]
    latencies.sort()
    figures.record(  # type: ignore[attr-defined]
        f"cluster registry ({registry.kind}): 1000 claims over 3 nodes",
        seconds=claim_s,
        claim_p50_ms=latencies[500] * 1000,
        claim_p99_ms=latencies[990] * 1000,
        renew_334_ms=renew_s * 1000,
        lookup_1000_ms=lookup_s * 1000,
    )
