"""A member of a group, and a visit: one visitor given to one member, until it ends.

A `Visit` is how the caller reports back what happened to the visitor a pick gave it: the dial
reached the service (`succeeded`), it failed before any byte reached the service (`failed`), and
the visitor ended (`close`). The visit keeps the member's count of open visitors exact whatever
order those calls come in: each one after the first outcome, and every `close` after the first,
changes nothing.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import structlog

from muxtunnel.balance.circuit import CircuitBreaker
from muxtunnel.balance.settings import CircuitSettings
from muxtunnel.balance.snapshot import MemberSnapshot
from muxtunnel.log import log_doubling

__all__ = ["Member", "Visit"]

H = TypeVar("H")
log = structlog.get_logger("muxtunnel.balance")


class Member(Generic[H]):
    """One registration in a group: `handle` is whatever the caller needs to reach it."""

    __slots__ = (
        "circuit",
        "dial_failures_total",
        "group",
        "handle",
        "hash_prefix",
        "healthy",
        "member_id",
        "open_visitors",
        "picked_total",
        "swrr_current",
        "weight",
    )

    def __init__(
        self,
        group: str,
        member_id: str,
        handle: H,
        *,
        weight: int,
        healthy: bool,
        circuit: CircuitSettings,
    ) -> None:
        self.group = group
        self.member_id = member_id
        self.handle = handle
        self.weight = weight
        self.healthy = healthy
        self.circuit = CircuitBreaker(circuit)
        self.open_visitors = 0
        self.picked_total = 0
        self.dial_failures_total = 0
        #: Smooth weighted round robin's running weight (see `_pickers.Weighted`).
        self.swrr_current = 0
        encoded = member_id.encode()
        #: Length-prefixed id, so that no (id, key) pair hashes like another.
        self.hash_prefix = len(encoded).to_bytes(4, "big") + encoded

    def __repr__(self) -> str:
        return f"Member({self.group}/{self.member_id}, weight={self.weight})"

    def usable(self, now: float) -> bool:
        """Healthy, weighted and with a circuit that lets a visitor through."""
        return self.healthy and self.weight > 0 and self.circuit.allows(now)

    def snapshot(self, now: float) -> MemberSnapshot:
        """This member at `now`."""
        return MemberSnapshot(
            member_id=self.member_id,
            weight=self.weight,
            healthy=self.healthy,
            open_visitors=self.open_visitors,
            picked_total=self.picked_total,
            dial_failures_total=self.dial_failures_total,
            circuit=self.circuit.snapshot(now),
        )


class Visit(Generic[H]):
    """One visitor on one member: report its dial's outcome, then close it."""

    __slots__ = ("_closed", "_outcome", "member", "probe")

    def __init__(self, member: Member[H], *, probe: bool) -> None:
        self.member = member
        #: True for the one visitor a half-open circuit lets through.
        self.probe = probe
        self._outcome: bool | None = None
        self._closed = False
        member.open_visitors += 1
        member.picked_total += 1

    @property
    def handle(self) -> H:
        """The chosen member's handle."""
        return self.member.handle

    @property
    def closed(self) -> bool:
        """Has the visit ended (closed, or failed)?"""
        return self._closed

    def succeeded(self, now: float) -> None:
        """The dial reached the service: the member works (closes a half-open circuit)."""
        if self._outcome is not None or self._closed:
            return
        self._outcome = True
        if self.member.circuit.succeeded(now, probe=self.probe):
            log.info("circuit closed: probe visitor got through", group=self.member.group,
                     member=self.member.member_id)  # fmt: skip

    def failed(self, now: float) -> None:
        """The dial failed before any byte reached the service. Ends the visit.

        The caller may then pick again, excluding this member, and retry the visitor there.
        """
        if self._outcome is not None or self._closed:
            self.close()
            return
        self._outcome = False
        member = self.member
        member.dial_failures_total += 1
        log_doubling(log, "dial to a group member failed", member.dial_failures_total,
                     group=member.group, member=member.member_id)  # fmt: skip
        if member.circuit.failed(now, probe=self.probe):
            log.warning("circuit opened: member ejected", group=member.group,
                        member=member.member_id, cooldown_s=member.circuit.cooldown_s,
                        probe=self.probe)  # fmt: skip
        self.close()

    def close(self) -> None:
        """The visitor ended. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.member.open_visitors -= 1
        if self.probe and self._outcome is None:
            self.member.circuit.probe_abandoned()
