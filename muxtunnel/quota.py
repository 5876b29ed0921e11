"""A session's shared resources, split among its services with a guaranteed share each.

Everything a client exposes rides one session, and a session has a fixed number of streams
(`mux.max_streams`) and a compression memory budget. Left first-come, first-served, one
service's visitors (or UDP source ports: each flow is a stream) take what another service of
the same client needs. `Quota` splits a capacity so that cannot happen:

- each of the `n` services is guaranteed `capacity // (2n)` units: it can always get that many,
  whatever the others do;
- the other half is a pool any service may borrow from while it has room;
- a unit is taken only if it fits within the service's guarantee, or the pool still has room
  after every service's unused guarantee is set aside.

So a flood on one service takes at most its guarantee plus the pool (`capacity` / 2 plus its
share, with two services three quarters), and every other service keeps its guarantee. When a
service registers while the others hold more than their new shares, it gets its guarantee as
their units come back (TCP visitors end; a UDP service evicts its own oldest flow to make room).

Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

__all__ = ["Quota", "Share"]


class Quota:
    """`capacity` units shared by named members, each guaranteed its share (see module doc)."""

    __slots__ = ("_members", "_used", "capacity", "used")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: Units in use, all members.
        self.used = 0
        self._used: dict[str, int] = {}
        self._members: set[str] = set()

    @property
    def guaranteed(self) -> int:
        """Units each member can always get: half the capacity, split evenly."""
        return max(1, self.capacity // (2 * max(1, len(self._members))))

    def share(self, name: str) -> Share:
        """Join as `name`; its units are taken and given back through the `Share`."""
        self._members.add(name)
        self._used.setdefault(name, 0)
        return Share(self, name)

    def used_by(self, name: str) -> int:
        return self._used.get(name, 0)

    def try_take(self, name: str, units: int = 1) -> bool:
        """Take `units` for `name` if its guarantee or the free pool allows; False otherwise."""
        if self.used + units > self.capacity:
            return False
        mine = self._used.get(name, 0)
        guaranteed = self.guaranteed
        if mine + units > guaranteed:
            # Beyond its own guarantee: only what no member's unused guarantee needs.
            set_aside = sum(
                max(0, guaranteed - used) for member, used in self._used.items()
                if member != name and member in self._members
            )  # fmt: skip
            if self.used + units + set_aside > self.capacity:
                return False
        self._used[name] = mine + units
        self.used += units
        return True

    def give_back(self, name: str, units: int = 1) -> None:
        """Return units taken by `name`."""
        left = self._used.get(name, 0) - units
        assert left >= 0, f"{name} gave back more than it took"
        self.used -= units
        if left or name in self._members:
            self._used[name] = left
        else:
            self._used.pop(name, None)

    def leave(self, name: str) -> None:
        """`name` is gone: its guarantee goes back to the others (units still out come back
        through `give_back`)."""
        self._members.discard(name)
        if not self._used.get(name):
            self._used.pop(name, None)


class Share:
    """One member's handle on a `Quota`."""

    __slots__ = ("_quota", "name")

    def __init__(self, quota: Quota, name: str) -> None:
        self._quota = quota
        self.name = name

    @property
    def used(self) -> int:
        return self._quota.used_by(self.name)

    def take(self, units: int = 1) -> bool:
        """Take `units` (False: refused, nothing taken)."""
        return self._quota.try_take(self.name, units)

    def give_back(self, units: int = 1) -> None:
        self._quota.give_back(self.name, units)

    def leave(self) -> None:
        self._quota.leave(self.name)
