"""The registry store in one process's memory: a single node's default, and higher layers' tests.

Same rules as the Redis store (see `_store.py`), with time read from the clock passed in, so a
test can jump past a lease instead of sleeping. Several "nodes" in one test share one instance.
`unavailable` makes every call fail as a store that cannot be reached would.

Invariant: a key is in at most one of `_exclusive` and `_groups`; a group's key lives while any
member's lease does. Expired entries are pruned when touched, so nothing answers from the dead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import anyio.lowlevel

from muxtunnel.cluster._model import (
    Claim,
    ClaimKey,
    ClaimOutcome,
    Exclusive,
    Grouped,
    Holding,
    Lease,
    Lost,
    Member,
    Membership,
    NodeRecord,
    Owner,
    RegistryUnavailable,
    lease_ms,
)
from muxtunnel.cluster._store import check_distinct

__all__ = ["MemoryStore"]


class MemoryStore:
    """A `RegistryStore` in memory; `clock()` gives seconds (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.description = "memory"
        self._clock = clock
        self._exclusive: dict[ClaimKey, tuple[Owner, float]] = {}
        self._groups: dict[ClaimKey, tuple[str, dict[Owner, float]]] = {}
        self._nodes: dict[str, tuple[NodeRecord, float]] = {}
        #: Members whose node last wrote them unhealthy.
        self._unhealthy: set[tuple[ClaimKey, Owner]] = set()
        #: When set, every call raises `RegistryUnavailable` with this reason (fault injection).
        self.unavailable: str | None = None
        self.closed = False

    # ------------------------------------------------------------------------------- reading

    def _holding(self, key: ClaimKey, now: float) -> Holding | None:
        held = self._exclusive.get(key)
        if held is not None:
            if held[1] > now:
                return Exclusive(held[0], held[1] - now)
            del self._exclusive[key]
        group = self._groups.get(key)
        if group is not None:
            name, members = group
            for owner in [o for o, until in members.items() if until <= now]:
                del members[owner]
                self._unhealthy.discard((key, owner))
            if members:
                listed = tuple(
                    Member(o, members[o] - now, (key, o) not in self._unhealthy)
                    for o in sorted(members)
                )
                return Grouped(name, listed, max(members.values()) - now)
            del self._groups[key]
        return None

    def _node(self, node_id: str, now: float) -> NodeRecord | None:
        held = self._nodes.get(node_id)
        if held is not None and held[1] > now:
            return held[0]
        self._nodes.pop(node_id, None)
        return None

    def _holder_of(self, lease: Lease, now: float) -> Holding | NodeRecord | None:
        if isinstance(lease, NodeRecord):
            return self._node(lease.node_id, now)
        return self._holding(lease.key, now)

    def _is_free_or_ours(self, lease: Lease, now: float) -> bool:
        current = self._holder_of(lease, now)
        if current is None:
            return True
        if isinstance(lease, Claim):
            return isinstance(current, Exclusive) and current.owner == lease.owner
        if isinstance(lease, Membership):
            return isinstance(current, Grouped) and current.group == lease.group
        return current == lease

    def _holds(self, lease: Lease, now: float) -> bool:
        """The lease is alive and its holder's (for a member: its own lease, not the group's)."""
        current = self._holder_of(lease, now)
        if isinstance(lease, Claim):
            return isinstance(current, Exclusive) and current.owner == lease.owner
        if isinstance(lease, Membership):
            return (
                isinstance(current, Grouped)
                and current.group == lease.group
                and any(m.owner == lease.member for m in current.members)
            )
        return current == lease

    # ------------------------------------------------------------------------------- writing

    def _take(self, lease: Lease, until: float) -> None:
        if isinstance(lease, Claim):
            self._exclusive[lease.key] = (lease.owner, until)
        elif isinstance(lease, Membership):
            group = self._groups.setdefault(lease.key, (lease.group, {}))
            group[1][lease.member] = until
            if lease.healthy:
                self._unhealthy.discard((lease.key, lease.member))
            else:
                self._unhealthy.add((lease.key, lease.member))
        else:
            self._nodes[lease.node_id] = (lease, until)

    def _drop(self, lease: Lease) -> None:
        if isinstance(lease, Claim):
            del self._exclusive[lease.key]
        elif isinstance(lease, Membership):
            members = self._groups[lease.key][1]
            del members[lease.member]
            self._unhealthy.discard((lease.key, lease.member))
            if not members:
                del self._groups[lease.key]
        else:
            del self._nodes[lease.node_id]

    async def _enter(self) -> float:
        await anyio.lowlevel.checkpoint()
        if self.closed:
            raise RuntimeError("the registry store is closed")
        if self.unavailable is not None:
            raise RegistryUnavailable(f"registry {self.description}: {self.unavailable}")
        return self._clock()

    # ---------------------------------------------------------------------------- the store

    async def acquire(
        self, leases: Sequence[Lease], lease_s: float, *, atomic: bool = True
    ) -> ClaimOutcome:
        """See `RegistryStore.acquire`."""
        until_ms = lease_ms(lease_s)
        check_distinct(leases)
        now = await self._enter()
        until = now + until_ms / 1000
        refused = [lease for lease in leases if not self._is_free_or_ours(lease, now)]
        if refused and atomic:
            return ClaimOutcome(tuple(Lost(x, self._holder_of(x, now)) for x in refused))
        for lease in leases:
            if lease not in refused:
                self._take(lease, until)
        return ClaimOutcome(tuple(Lost(x, self._holder_of(x, now)) for x in refused))

    async def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lost]:
        """See `RegistryStore.renew`."""
        until_ms = lease_ms(lease_s)
        now = await self._enter()
        lost = []
        for lease in leases:
            if self._holds(lease, now):
                self._take(lease, now + until_ms / 1000)
            else:
                lost.append(Lost(lease, self._holder_of(lease, now)))
        return lost

    async def release(self, leases: Sequence[Lease]) -> int:
        """See `RegistryStore.release`."""
        now = await self._enter()
        released = 0
        for lease in leases:
            if self._holds(lease, now):
                self._drop(lease)
                released += 1
        return released

    async def lookup(self, keys: Sequence[ClaimKey]) -> dict[ClaimKey, Holding]:
        """See `RegistryStore.lookup`."""
        now = await self._enter()
        found = {}
        for key in keys:
            holding = self._holding(key, now)
            if holding is not None:
                found[key] = holding
        return found

    async def nodes(self) -> list[NodeRecord]:
        """See `RegistryStore.nodes`."""
        now = await self._enter()
        live = (self._node(node_id, now) for node_id in sorted(self._nodes))
        return [record for record in live if record is not None]

    async def holdings(self) -> list[tuple[ClaimKey, Holding]]:
        """See `RegistryStore.holdings`."""
        now = await self._enter()
        keys = sorted(self._exclusive.keys() | self._groups.keys())
        held = ((key, self._holding(key, now)) for key in keys)
        return [(key, holding) for key, holding in held if holding is not None]

    async def aclose(self) -> None:
        """See `RegistryStore.aclose`."""
        self.closed = True
