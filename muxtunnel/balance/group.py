"""A load-balancing group: the members registered under one service name and how visitors are
shared among them.

Pure: no sockets, no clock, no `await`; every call that depends on time takes `now` (seconds
on the caller's monotonic clock). One group per service name lives in the server for as long
as the name has members; the server calls, in order:

1. `add_member` when a client registers into the group, `remove_member` when it leaves;
   `set_health` when the member's client reports its target's health.
2. `pick(now, key=..., exclude=...)` for each new visitor (TCP connection, UDP flow, HTTP
   request). It returns a `Visit` (see `member.py`) or None when no member may take the visitor.
3. On the visit: `succeeded(now)` once the dial reached the service, or `failed(now)` when it
   failed before any byte reached the service, then `close()` when the visitor ends. After a
   failure the server may retry the visitor once with `pick(..., exclude={that member's id})`.

Invariants: a member that is unhealthy, has weight 0, has an open circuit, has a half-open
circuit whose probe is out, or is excluded is never picked; `open_visitors` counts visits
picked and not yet closed (health never closes a visit: open visitors are not cut).
"""

from __future__ import annotations

import random
from collections.abc import Collection
from typing import Generic, TypeVar

import structlog

from muxtunnel.balance._pickers import Picker, make_picker
from muxtunnel.balance.member import Member, Visit
from muxtunnel.balance.settings import GroupSettings
from muxtunnel.balance.snapshot import GroupSnapshot
from muxtunnel.log import log_doubling

__all__ = ["DuplicateMember", "Group"]

H = TypeVar("H")
log = structlog.get_logger("muxtunnel.balance")


class DuplicateMember(ValueError):
    """A member with this id is already in the group."""


def _check_weight(weight: int) -> None:
    if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
        raise ValueError(f"weight must be a whole number of at least 0 (got {weight!r})")


class Group(Generic[H]):
    """The members of one group and its policy; `H` is the type of a member's handle."""

    def __init__(
        self, name: str, settings: GroupSettings | None = None, *, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.settings = settings if settings is not None else GroupSettings()
        self._rng = rng if rng is not None else random.Random()
        self._picker: Picker = make_picker(self.settings.policy, self._rng)
        self._members: list[Member[H]] = []
        self._by_id: dict[str, Member[H]] = {}
        self.picked_total = 0
        self.unavailable_total = 0

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, member_id: object) -> bool:
        return member_id in self._by_id

    @property
    def members(self) -> tuple[Member[H], ...]:
        """The members in the order they joined."""
        return tuple(self._members)

    def member(self, member_id: str) -> Member[H]:
        """The member with this id (KeyError if none)."""
        return self._by_id[member_id]

    def add_member(
        self, member_id: str, handle: H, *, weight: int = 1, healthy: bool = True
    ) -> Member[H]:
        """A new member. `member_id` should stay the same across reconnects of the same client,
        so that hashed keys come back to it; it must be unique in the group."""
        _check_weight(weight)
        if member_id in self._by_id:
            raise DuplicateMember(f"{self.name}: member {member_id!r} is already in the group")
        member = Member(
            self.name, member_id, handle, weight=weight, healthy=healthy,
            circuit=self.settings.circuit,
        )  # fmt: skip
        self._members.append(member)
        self._by_id[member_id] = member
        log.info("group member joined", group=self.name, member=member_id, weight=weight,
                 healthy=healthy, members=len(self._members))  # fmt: skip
        return member

    def remove_member(self, member_id: str) -> Member[H] | None:
        """The member leaves; its open visits run on and may still be closed. None if absent."""
        member = self._by_id.pop(member_id, None)
        if member is None:
            return None
        index = self._members.index(member)
        del self._members[index]
        self._picker.removed(index)
        log.info("group member left", group=self.name, member=member_id,
                 open_visitors=member.open_visitors, members=len(self._members))  # fmt: skip
        return member

    def set_health(self, member_id: str, healthy: bool) -> bool:
        """The member's target is (un)healthy; True if that changed anything."""
        member = self._by_id.get(member_id)
        if member is None or member.healthy == healthy:
            return False
        member.healthy = healthy
        log.info("group member health changed", group=self.name, member=member_id,
                 healthy=healthy, open_visitors=member.open_visitors)  # fmt: skip
        return True

    def usable(self, now: float) -> bool:
        """Could a visitor be given to a member now (one is healthy, weighted, circuit closed)?"""
        return any(member.usable(now) for member in self._members)

    def set_weight(self, member_id: str, weight: int) -> None:
        """A new weight for a member (0: no new visitors)."""
        _check_weight(weight)
        self._by_id[member_id].weight = weight

    def update(self, settings: GroupSettings) -> None:
        """New settings (a reload). A new policy starts its rotation afresh; circuits keep state."""
        if settings.policy != self.settings.policy:
            self._picker = make_picker(settings.policy, self._rng)
            for member in self._members:
                member.swrr_current = 0
        if settings.circuit != self.settings.circuit:
            for member in self._members:
                member.circuit.update(settings.circuit)
        self.settings = settings

    def pick(
        self,
        now: float,
        *,
        key: str | bytes | None = None,
        exclude: Collection[str] = (),
    ) -> Visit[H] | None:
        """A member for a new visitor, as a `Visit`; None when no member may take it.

        `key` is what a hashing policy hashes (the source IP, without the port, for
        `hash_source`; the header's value for `hash_header`); other policies ignore it, and a
        hashing policy sends a visitor without a key round robin. `exclude`: member ids not to pick
        (the member whose dial just failed, for a retry).
        """

        def usable(member: Member[H]) -> bool:
            return member.usable(now) and member.member_id not in exclude

        raw_key = key.encode() if isinstance(key, str) else key
        member = self._picker.choose(self._members, usable, raw_key)
        if member is None:
            self.unavailable_total += 1
            log_doubling(log, "no group member available for a visitor", self.unavailable_total,
                         group=self.name, members=len(self._members))  # fmt: skip
            return None
        self.picked_total += 1
        probe = member.circuit.picked(now)
        if probe:
            log.info("circuit half open: sending one probe visitor", group=self.name,
                     member=member.member_id)  # fmt: skip
        return Visit(member, probe=probe)

    def snapshot(self, now: float) -> GroupSnapshot:
        """The group at `now`, for status and metrics."""
        return GroupSnapshot(
            name=self.name,
            policy=str(self.settings.policy),
            members=tuple(member.snapshot(now) for member in self._members),
            picked_total=self.picked_total,
            unavailable_total=self.unavailable_total,
        )
