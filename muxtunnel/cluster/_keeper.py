"""The lease keeper: one task per node that keeps what the node holds in the registry alive.

What it owns: the set of leases this node holds (its node record, the names its clients
registered, its group memberships). What must stay true:

1. Every held lease is renewed every `lease_s / 3`, so two renewals can fail (or be late) before
   a lease runs out in the store.
2. The store being unreachable changes nothing here: the set is kept, nothing is reported lost
   (callers keep serving and decide for themselves, with `status()`), and rounds are retried
   with doubling back-off (capped at the renewal interval). Failures are logged at counts
   1, 2, 4, 8, ...; the first round that succeeds again logs the recovery.
3. A lease the store no longer has (it ran out during an outage, or a restarted Redis forgot
   it) is taken again at once if its key is still free: nobody else was given it, so holding
   it again is safe. Only a lease someone else now holds is lost: it leaves the set and
   `on_lost` is called with what holds it now.
4. A lease released while a round is in flight is never left held by that round: what the
   round took again after it was released is released again.
5. A lease changed in place (`update`: a member's health) is written at once, and never
   overwritten by a round that read the old value: rounds and updates write one at a time
   (`_writing`), and each round reads the held set once it may write.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc

from muxtunnel.cluster._model import (
    ClaimOutcome,
    Lease,
    Lost,
    NodeIdInUse,
    NodeRecord,
    RegistryError,
)
from muxtunnel.cluster._store import RegistryStore
from muxtunnel.log import get_logger

__all__ = ["KeeperStatus", "LeaseKeeper"]

log = get_logger("muxtunnel.cluster")

#: First retry after a failed round. A restarted Redis answers within tens of milliseconds;
#: doubling from 0.1 s reaches a 3.3 s interval (10 s leases) in six tries.
RETRY_MIN_S = 0.1
#: How often `register_node` looks again while an older record of the node id lives.
NODE_WAIT_POLL_S = 0.25


@dataclass(frozen=True)
class KeeperStatus:
    """What the keeper knows, for status, metrics and callers deciding what to keep serving."""

    #: The last renewal round reached the store (True before the first round).
    available: bool
    #: Leases held (and renewed).
    held: int
    #: Failed rounds in a row (0 while available).
    failures: int
    #: Seconds since the last successful round (None: no round yet).
    since_renewal_s: float | None
    #: No successful round for longer than a lease: the store may have let leases run out.
    at_risk: bool
    rounds: int
    failed_rounds: int
    #: Leases someone else took: each one was reported to `on_lost`.
    lost_total: int
    #: Leases the store had dropped and that were taken again.
    retaken_total: int
    #: Releases that could not reach the store (those leases ran out on their own).
    release_failures: int
    last_error: str | None


class LeaseKeeper:
    """Renews a node's leases every `lease_s / 3`; reports to `on_lost` any taken by others."""

    def __init__(
        self,
        store: RegistryStore,
        *,
        lease_s: float,
        on_lost: Callable[[Lost], None] | None = None,
        retry_min_s: float = RETRY_MIN_S,
    ) -> None:
        self.store = store
        self.lease_s = lease_s
        self.interval_s = lease_s / 3
        self.retry_min_s = retry_min_s
        self._on_lost = on_lost
        self._held: dict[Lease, None] = {}  # insertion-ordered set
        self._failures = 0
        self._last_ok: float | None = None
        self._rounds = 0
        self._failed_rounds = 0
        self._lost_total = 0
        self._retaken_total = 0
        self._release_failures = 0
        self._last_error: str | None = None
        self._down_since: float | None = None
        self._writing = anyio.Lock()
        self._updates_failed = 0

    # ------------------------------------------------------------------------------ holding

    @property
    def held(self) -> frozenset[Lease]:
        """The leases being renewed."""
        return frozenset(self._held)

    def hold(self, leases: Sequence[Lease]) -> None:
        """Renew these from the next round on (e.g. a node record to take once the store is
        back: the round takes it again if its key is free)."""
        self._held.update(dict.fromkeys(leases))

    def forget(self, leases: Sequence[Lease]) -> None:
        """Stop renewing these (they run out in the store within a lease)."""
        for lease in leases:
            self._held.pop(lease, None)

    async def update(self, changes: Sequence[tuple[Lease, Lease]]) -> None:
        """Hold each new lease in place of its old one (same key and holder, a new value such
        as a member's health) and write them now. Never raises a registry error: what could
        not be written is written by the next round."""
        for old, new in changes:
            if old in self._held:
                self._held = {new if lease == old else lease: None for lease in self._held}
        leases = [new for _, new in changes if new in self._held]
        if not leases:
            return
        async with self._writing:
            try:
                with anyio.fail_after(self.interval_s):
                    await self.store.renew(leases, self.lease_s)
            except (RegistryError, TimeoutError) as exc:
                self._updates_failed += 1
                if _power_of_two(self._updates_failed):
                    log.warning(
                        "registry update failed; the next renewal writes it",
                        count=self._updates_failed,
                        error=str(exc) or "timeout",
                    )

    async def acquire(self, leases: Sequence[Lease], *, atomic: bool = True) -> ClaimOutcome:
        """Take `leases` in the store and hold those taken. Raises `RegistryUnavailable`."""
        outcome = await self.store.acquire(leases, self.lease_s, atomic=atomic)
        if outcome.won or not atomic:
            refused = {lost.lease for lost in outcome.lost}
            self.hold([lease for lease in leases if lease not in refused])
        return outcome

    async def release(self, leases: Sequence[Lease]) -> None:
        """Stop holding `leases` and give them up in the store. Never raises a registry error
        (an unreachable store, an error answer): the leases then run out within `lease_s`."""
        self.forget(leases)
        try:
            await self.store.release(leases)
        except RegistryError as exc:
            self._release_failures += 1
            if _power_of_two(self._release_failures):
                log.warning(
                    "registry release failed; the leases run out on their own",
                    count=self._release_failures,
                    leases=len(leases),
                    within_s=self.lease_s,
                    error=str(exc),
                )

    async def register_node(self, record: NodeRecord, *, wait_s: float | None = None) -> None:
        """Take and hold this node's record.

        An older record of the same node id (this node before a crash, or another process
        given the same id) is waited out for up to `wait_s` (default: one lease, the longest a
        crashed process's record can live); past that, `NodeIdInUse`. Raises
        `RegistryUnavailable` when the store cannot be reached.
        """
        deadline = anyio.current_time() + (self.lease_s if wait_s is None else wait_s)
        while True:
            outcome = await self.acquire([record])
            if outcome.won:
                return
            if anyio.current_time() >= deadline:
                raise NodeIdInUse(outcome.reason())
            await anyio.sleep(NODE_WAIT_POLL_S)

    # ----------------------------------------------------------------------------- renewing

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew forever (until cancelled): every `interval_s`, sooner after a failure."""
        task_status.started()
        while True:
            if await self.renew_once():
                delay = self.interval_s
            else:
                backoff = self.retry_min_s * 2 ** min(self._failures - 1, 30)
                # Half to full of the step ("equal jitter"): nodes that lost the store together
                # do not all come back in the same millisecond.
                delay = min(self.interval_s, backoff) * random.uniform(0.5, 1.0)
            await anyio.sleep(delay)

    async def renew_once(self) -> bool:
        """One round: renew, take again what the store dropped, report what others took.

        True when the store answered. Bounded by one renewal interval.
        """
        retaken: list[Lease] = []
        gone: list[Lost] = []
        self._rounds += 1
        try:
            with anyio.fail_after(self.interval_s):
                async with self._writing:
                    leases = list(self._held)
                    lost = await self.store.renew(leases, self.lease_s) if leases else []
                dropped = [x.lease for x in lost if x.lease in self._held]
                if dropped:
                    outcome = await self.store.acquire(dropped, self.lease_s, atomic=False)
                    gone = list(outcome.lost)
                    refused = {x.lease for x in gone}
                    retaken = [lease for lease in dropped if lease not in refused]
        except (RegistryError, TimeoutError) as exc:
            # RegistryError beyond RegistryUnavailable: the store answered with an error (out
            # of memory, data under our prefix we cannot read). Same handling: keep what is
            # held, say why, try again; a renewal loop must not die of one bad answer.
            self._round_failed(exc)
            return False
        self._round_succeeded()
        await self._settle(retaken, gone)
        return True

    async def _settle(self, retaken: list[Lease], gone: list[Lost]) -> None:
        released_meanwhile = [lease for lease in retaken if lease not in self._held]
        if released_meanwhile:
            await self.release(released_meanwhile)
        for lease in retaken:
            if lease in self._held:
                self._retaken_total += 1
                if _power_of_two(self._retaken_total):
                    log.info(
                        "registry had dropped a lease; took it again",
                        count=self._retaken_total,
                        lease=_name(lease),
                    )
        for lost in gone:
            if lost.lease not in self._held:
                continue  # released while the round ran
            del self._held[lost.lease]
            self._lost_total += 1
            if _power_of_two(self._lost_total):
                log.warning(
                    "lease lost to another holder", count=self._lost_total, reason=lost.reason()
                )
            if self._on_lost is not None:
                try:
                    self._on_lost(lost)
                except Exception:
                    log.exception("on_lost callback failed", reason=lost.reason())

    def _round_failed(self, exc: BaseException) -> None:
        now = anyio.current_time()
        self._failures += 1
        self._failed_rounds += 1
        self._last_error = str(exc) or f"no answer within {self.interval_s:.3g} s"
        if self._down_since is None:
            self._down_since = now
        if _power_of_two(self._failures):
            log.warning(
                "registry renewal failed; keeping what this node holds, retrying",
                failures=self._failures,
                held=len(self._held),
                error=self._last_error,
            )

    def _round_succeeded(self) -> None:
        now = anyio.current_time()
        if self._failures:
            down_s = now - self._down_since if self._down_since is not None else 0.0
            log.info(
                "registry reachable again",
                failures=self._failures,
                down_s=round(down_s, 3),
                held=len(self._held),
            )
        self._failures = 0
        self._down_since = None
        self._last_ok = now

    def status(self) -> KeeperStatus:
        """A snapshot of the keeper's state."""
        since = None if self._last_ok is None else anyio.current_time() - self._last_ok
        return KeeperStatus(
            available=self._failures == 0,
            held=len(self._held),
            failures=self._failures,
            since_renewal_s=since,
            at_risk=since is not None and since > self.lease_s,
            rounds=self._rounds,
            failed_rounds=self._failed_rounds,
            lost_total=self._lost_total,
            retaken_total=self._retaken_total,
            release_failures=self._release_failures,
            last_error=self._last_error,
        )


def _power_of_two(count: int) -> bool:
    return count > 0 and count & (count - 1) == 0


def _name(lease: Lease) -> str:
    return f"node {lease.node_id}" if isinstance(lease, NodeRecord) else str(lease.key)
