"""Admission of connections that have not proven anything yet (the slowloris defence).

Used for the server's control port (connections that have not authenticated) and the HTTP
endpoints (connections whose request has not arrived): both must bound what a peer can hold by
connecting and saying nothing.
"""

from __future__ import annotations

import anyio

from muxtunnel.log import Refusals

__all__ = ["AdmissionGate", "Ticket"]


class Ticket:
    """A connection's place at the gate; `scope` is cancelled to evict it."""

    __slots__ = ("scope", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.scope = anyio.CancelScope()


class AdmissionGate:
    """Bounds the connections waiting to prove themselves, per source address and in all.

    At most `per_source` per address (per /64 for IPv6): a connection beyond that is refused at
    once. At most `total` in all: when full, the oldest one is evicted to make room, so a flood
    from many addresses costs honest peers nothing (they are through within a round trip or
    two, long before they become the oldest) and cannot lock them out for a whole deadline.
    Refusals and evictions are counted in `refusals` as `{kind}_per_source` and
    `{kind}_evicted`, and logged at counts 1, 2, 4, 8, ...: never a line per connection.
    """

    def __init__(self, refusals: Refusals, kind: str = "preauth", what: str = "pre-auth") -> None:
        self._waiting: dict[Ticket, None] = {}  # oldest first
        self._by_source: dict[str, int] = {}
        self.refusals = refusals
        self._kind = kind
        self._what = what

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, source: str, total: int, per_source: int) -> Ticket | None:
        """A ticket for a new connection from `source`, or None if it must be refused."""
        if self._by_source.get(source, 0) >= per_source:
            self.refusals.refuse(
                f"{self._kind}_per_source",
                f"{self._what} connection refused: too many from its address",
                source=source,
                limit=per_source,
            )
            return None
        while len(self._waiting) >= total:
            oldest = next(iter(self._waiting))
            self.release(oldest)
            oldest.scope.cancel()
            self.refusals.refuse(
                f"{self._kind}_evicted",
                f"{self._what} connection evicted: too many waiting",
                limit=total,
            )
        ticket = Ticket(source)
        self._waiting[ticket] = None
        self._by_source[source] = self._by_source.get(source, 0) + 1
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The connection proved itself or ended: it no longer counts."""
        if self._waiting.pop(ticket, 0) is None:
            left = self._by_source[ticket.source] - 1
            if left:
                self._by_source[ticket.source] = left
            else:
                del self._by_source[ticket.source]
