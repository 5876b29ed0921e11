"""The lease keeper on the memory store: renewal, outages, leases dropped or taken, back-off.

Rounds are driven by hand (`renew_once`) on a fake clock where the store's time matters, and
by the keeper's own loop on the real clock where its timing is the point.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import anyio
import pytest
from structlog.testing import capture_logs

from muxtunnel.cluster import (
    Claim,
    ClaimKey,
    ClaimOutcome,
    Exclusive,
    Grouped,
    Lease,
    LeaseKeeper,
    Lost,
    Membership,
    MemoryStore,
    NodeIdInUse,
    NodeRecord,
    Owner,
    RegistryError,
    RegistryUnavailable,
)

from .helpers import FakeClock

pytestmark = pytest.mark.anyio

LEASE_S = 3.0
A1, B1 = Owner("node-a", "s1"), Owner("node-b", "s1")
WEB, PORT, POOL = ClaimKey.service("web"), ClaimKey.port("udp", 5353), ClaimKey.service("pool")


def node_a() -> NodeRecord:
    return NodeRecord("node-a", "127.0.0.1:7001", 1.0, "first")


class Recorder:
    """An `on_lost` callback that remembers what it was told."""

    def __init__(self) -> None:
        self.lost: list[Lost] = []

    def __call__(self, lost: Lost) -> None:
        self.lost.append(lost)


async def test_rounds_keep_every_kind_of_lease_alive_past_many_leases() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    leases: list[Lease] = [node_a(), Claim(WEB, A1), Membership(POOL, "g", A1)]
    assert (await keeper.acquire(leases)).won
    assert keeper.held == frozenset(leases)
    for _ in range(10):  # 20 s of a 3 s lease
        clock.advance(LEASE_S * 2 / 3)
        assert await keeper.renew_once()
    held = await store.lookup([WEB, POOL])
    assert isinstance(held[WEB], Exclusive) and isinstance(held[POOL], Grouped)
    assert await store.nodes() == [node_a()]
    status = keeper.status()
    assert status.available and status.rounds == 10 and status.held == 3
    assert status.lost_total == status.retaken_total == 0


async def test_what_could_not_be_taken_is_not_held() -> None:
    store = MemoryStore(FakeClock())
    assert (await store.acquire([Claim(PORT, B1)], LEASE_S)).won
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    outcome = await keeper.acquire([Claim(WEB, A1), Claim(PORT, A1)])
    assert not outcome.won and keeper.held == frozenset()
    outcome = await keeper.acquire([Claim(WEB, A1), Claim(PORT, A1)], atomic=False)
    assert [x.lease for x in outcome.lost] == [Claim(PORT, A1)]
    assert keeper.held == {Claim(WEB, A1)}


async def test_a_lease_the_store_dropped_is_taken_again_if_still_free() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    on_lost = Recorder()
    keeper = LeaseKeeper(store, lease_s=LEASE_S, on_lost=on_lost)
    leases: list[Lease] = [node_a(), Claim(WEB, A1), Membership(POOL, "g", A1)]
    assert (await keeper.acquire(leases)).won
    clock.advance(LEASE_S + 1)  # an outage longer than the lease, or a restarted store
    assert await store.lookup([WEB, POOL]) == {} and await store.nodes() == []
    with capture_logs() as logs:
        assert await keeper.renew_once()
    assert on_lost.lost == []
    assert keeper.held == frozenset(leases)
    held = await store.lookup([WEB, POOL])
    assert held[WEB].expires_in_s == pytest.approx(LEASE_S)
    assert [m.owner for m in held[POOL].members] == [A1]  # type: ignore[union-attr]
    assert await store.nodes() == [node_a()]
    assert keeper.status().retaken_total == 3
    assert [e["count"] for e in logs if "took it again" in e["event"]] == [1, 2]


async def test_a_lease_someone_else_took_is_reported_lost_and_no_longer_held() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    on_lost = Recorder()
    keeper = LeaseKeeper(store, lease_s=LEASE_S, on_lost=on_lost)
    leases: list[Lease] = [node_a(), Claim(WEB, A1), Membership(POOL, "g", A1), Claim(PORT, A1)]
    assert (await keeper.acquire(leases)).won
    clock.advance(LEASE_S + 1)
    impostor = NodeRecord("node-a", "127.0.0.9:7001", 2.0, "second")
    taken = [impostor, Claim(WEB, B1), Membership(POOL, "other", B1)]
    assert (await store.acquire(taken, LEASE_S)).won
    assert await keeper.renew_once()
    assert keeper.held == {Claim(PORT, A1)}  # the free one was taken again
    by_lease = {lost.lease: lost.holder for lost in on_lost.lost}
    assert by_lease.keys() == set(leases) - {Claim(PORT, A1)}
    assert by_lease[node_a()] == impostor
    assert by_lease[Claim(WEB, A1)].owner == B1  # type: ignore[union-attr]
    assert by_lease[Membership(POOL, "g", A1)].group == "other"  # type: ignore[union-attr]
    assert keeper.status().lost_total == 3
    assert (
        "held by s1@node-b" in next(x for x in on_lost.lost if x.lease == Claim(WEB, A1)).reason()
    )


async def test_a_failing_on_lost_callback_does_not_stop_the_keeper() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)

    def explode(lost: Lost) -> None:
        raise RuntimeError("callback bug")

    keeper = LeaseKeeper(store, lease_s=LEASE_S, on_lost=explode)
    assert (await keeper.acquire([Claim(WEB, A1), Claim(PORT, A1)])).won
    clock.advance(LEASE_S + 1)
    assert (await store.acquire([Claim(WEB, B1)], LEASE_S)).won
    with capture_logs() as logs:
        assert await keeper.renew_once()
    assert keeper.held == {Claim(PORT, A1)}
    assert any(e["event"] == "on_lost callback failed" for e in logs)
    clock.advance(LEASE_S * 2 / 3)
    assert await keeper.renew_once()


async def test_an_unreachable_store_keeps_all_held_logs_at_doubling_counts_and_recovers() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    on_lost = Recorder()
    keeper = LeaseKeeper(store, lease_s=LEASE_S, on_lost=on_lost)
    leases: list[Lease] = [node_a(), Claim(WEB, A1)]
    assert (await keeper.acquire(leases)).won
    store.unavailable = "connection refused"
    with capture_logs() as logs:
        for _ in range(9):
            assert not await keeper.renew_once()
    warnings = [e for e in logs if e["event"].startswith("registry renewal failed")]
    assert [e["failures"] for e in warnings] == [1, 2, 4, 8]
    assert "connection refused" in warnings[0]["error"]
    status = keeper.status()
    assert not status.available and status.failures == 9 and status.held == 2
    assert status.last_error is not None and "connection refused" in status.last_error
    assert keeper.held == frozenset(leases) and on_lost.lost == []
    # A registration while the store is down is refused with the store's reason.
    with pytest.raises(RegistryUnavailable, match="connection refused"):
        await keeper.acquire([Claim(PORT, A1)])
    store.unavailable = None
    with capture_logs() as logs:
        assert await keeper.renew_once()
    assert [(e["event"], e["failures"]) for e in logs] == [("registry reachable again", 9)]
    assert keeper.status().available and keeper.status().failures == 0


async def test_release_while_the_store_is_down_does_not_raise_and_the_lease_runs_out() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    assert (await keeper.acquire([Claim(WEB, A1)])).won
    store.unavailable = "timeout"
    await keeper.release([Claim(WEB, A1)])
    assert keeper.held == frozenset() and keeper.status().release_failures == 1
    store.unavailable = None
    clock.advance(LEASE_S)
    assert await store.lookup([WEB]) == {}


class ErrorStore(MemoryStore):
    """A memory store that answers renewals and releases with an error, as an out-of-memory
    Redis does."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.failing = False

    async def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lost]:
        if self.failing:
            raise RegistryError("OOM command not allowed when used memory > 'maxmemory'")
        return await super().renew(leases, lease_s)

    async def release(self, leases: Sequence[Lease]) -> int:
        if self.failing:
            raise RegistryError("OOM command not allowed when used memory > 'maxmemory'")
        return await super().release(leases)


async def test_an_error_answer_fails_the_round_but_not_the_keeper() -> None:
    clock = FakeClock()
    store = ErrorStore(clock)
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    assert (await keeper.acquire([Claim(WEB, A1), Claim(PORT, A1)])).won
    store.failing = True
    assert not await keeper.renew_once()
    assert keeper.status().last_error is not None and "OOM" in keeper.status().last_error
    await keeper.release([Claim(PORT, A1)])  # does not raise either
    assert keeper.held == {Claim(WEB, A1)}
    store.failing = False
    assert await keeper.renew_once() and keeper.status().available


class GatedStore(MemoryStore):
    """A memory store whose `acquire` waits for `gate` while `hold_acquire` is set."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.hold_acquire = False
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def acquire(
        self, leases: Sequence[Lease], lease_s: float, *, atomic: bool = True
    ) -> ClaimOutcome:
        if self.hold_acquire:
            self.entered.set()
            await self.gate.wait()
        return await super().acquire(leases, lease_s, atomic=atomic)


async def test_a_lease_released_while_a_round_retakes_it_is_not_left_held() -> None:
    clock = FakeClock()
    store = GatedStore(clock)
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    assert (await keeper.acquire([Claim(WEB, A1)])).won
    clock.advance(LEASE_S + 1)  # dropped: the next round will take it again
    store.hold_acquire = True
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(keeper.renew_once)
            await store.entered.wait()  # the round is about to take it again...
            await keeper.release([Claim(WEB, A1)])  # ...when its session ends
            store.gate.set()
    assert keeper.held == frozenset()
    assert await store.lookup([WEB]) == {}  # released again after the round took it


class GatedRenewStore(MemoryStore):
    """A memory store whose first `renew` waits for `gate` once it has its leases."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.entered = anyio.Event()
        self.gate = anyio.Event()

    async def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lost]:
        if not self.entered.is_set():
            self.entered.set()
            await self.gate.wait()
        return await super().renew(leases, lease_s)


async def test_a_health_update_is_written_at_once_and_never_undone_by_a_stale_round() -> None:
    clock = FakeClock()
    store = GatedRenewStore(clock)
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    well = Membership(POOL, "pool", A1)
    sick = Membership(POOL, "pool", A1, healthy=False)
    assert (await keeper.acquire([well])).won

    async def healthy() -> bool:
        holding = (await store.lookup([POOL]))[POOL]
        assert isinstance(holding, Grouped)
        return holding.members[0].healthy

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(keeper.renew_once)
            await store.entered.wait()  # a round took the healthy lease to write...
            tg.start_soon(keeper.update, [(well, sick)])  # ...when the member fell ill
            await anyio.sleep(0.01)
            store.gate.set()
    assert keeper.held == frozenset({sick})
    assert not await healthy()  # the update was written after the round, not before
    assert await keeper.renew_once()
    assert not await healthy()  # and every round writes it again
    await keeper.update([(sick, well)])
    assert await healthy()


async def test_the_loop_renews_on_its_own_and_its_leases_end_when_it_stops() -> None:
    store = MemoryStore(time.monotonic)  # anyio's clock on asyncio
    keeper = LeaseKeeper(store, lease_s=0.3)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(keeper.run)
            assert (await keeper.acquire([Claim(WEB, A1)])).won
            await anyio.sleep(1.0)  # more than three leases
            assert (await store.lookup([WEB]))[WEB].owner == A1  # type: ignore[union-attr]
            tg.cancel_scope.cancel()
        assert keeper.status().rounds >= 3
        await anyio.sleep(0.35)
        assert await store.lookup([WEB]) == {}


class CountingStore(MemoryStore):
    """A memory store that counts renewals (and is unreachable from the start)."""

    def __init__(self) -> None:
        super().__init__(time.monotonic)
        self.renewals: list[float] = []
        self.unavailable = "down"

    async def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lost]:
        self.renewals.append(time.monotonic())
        return await super().renew(leases, lease_s)


async def test_retries_back_off_and_never_wait_longer_than_a_renewal_interval() -> None:
    store = CountingStore()
    keeper = LeaseKeeper(store, lease_s=0.6, retry_min_s=0.01)  # interval 0.2 s
    keeper.hold([Claim(WEB, A1)])
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(keeper.run)
            await anyio.sleep(1.5)
            tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(store.renewals, store.renewals[1:], strict=False)]
    # 0.01 s doubling (times 0.5..1 jitter) up to the 0.2 s interval: about 5 quick retries,
    # then one every 0.1..0.2 s. Not a busy loop, and never idle for more than the interval.
    assert 6 <= len(store.renewals) <= 30, gaps
    assert sum(gaps[:3]) < 0.3, gaps  # quick at first: 0.035..0.07 s expected
    assert statistics.median(gaps[-5:]) >= 0.08, gaps  # then at the 0.1..0.2 s cap
    assert max(gaps) < 0.2 + 0.3, gaps  # never much above the interval (timer slack only)


async def test_register_node_waits_out_a_dead_record_of_its_id() -> None:
    store = MemoryStore(time.monotonic)
    crashed = NodeRecord("node-a", "127.0.0.1:7001", 1.0, "before-crash")
    assert (await store.acquire([crashed], 0.3)).won  # nobody renews it any more
    keeper = LeaseKeeper(store, lease_s=0.3)
    t0 = time.monotonic()
    with anyio.fail_after(5):
        await keeper.register_node(node_a())
    assert 0.2 <= time.monotonic() - t0 <= 0.3 + 0.5
    assert keeper.held == {node_a()} and await store.nodes() == [node_a()]


async def test_register_node_refuses_an_id_a_live_process_holds() -> None:
    clock = FakeClock()
    store = MemoryStore(clock)
    live = NodeRecord("node-a", "10.1.2.3:7001", 1.0, "live")
    assert (await store.acquire([live], 60.0)).won
    keeper = LeaseKeeper(store, lease_s=LEASE_S)
    with anyio.fail_after(5), pytest.raises(NodeIdInUse, match=r"10\.1\.2\.3:7001"):
        await keeper.register_node(node_a(), wait_s=0.3)
    assert keeper.held == frozenset()
