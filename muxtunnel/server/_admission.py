"""Admission of connections that have not authenticated yet (the slowloris defence)."""

from __future__ import annotations

import anyio
import structlog

from muxtunnel.log import log_doubling

__all__ = ["PreAuthGate", "PreAuthTicket"]

log = structlog.get_logger("muxtunnel.server")


class PreAuthTicket:
    """A connection's place among those not yet authenticated; `scope` is cancelled to evict it."""

    __slots__ = ("scope", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.scope = anyio.CancelScope()


class PreAuthGate:
    """Bounds the connections that have not authenticated yet.

    At most `per_source` per address (per /64 for IPv6): a connection beyond that is refused at
    once. At most `total` in all: when full, the oldest one is evicted to make room, so a flood
    from many addresses costs honest clients nothing (they authenticate within a round trip or
    two, long before they become the oldest) and cannot lock them out for a whole
    `auth_timeout_s`. Refusals and evictions are counted, and logged at counts 1, 2, 4, 8, ...:
    never a line per connection.
    """

    def __init__(self) -> None:
        self._waiting: dict[PreAuthTicket, None] = {}  # oldest first
        self._by_source: dict[str, int] = {}
        self.refused = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def admit(self, source: str, total: int, per_source: int) -> PreAuthTicket | None:
        """A ticket for a new connection from `source`, or None if it must be refused."""
        if self._by_source.get(source, 0) >= per_source:
            self.refused += 1
            log_doubling(log, "pre-auth connection refused: too many from its address",
                         self.refused, source=source, limit=per_source)  # fmt: skip
            return None
        while len(self._waiting) >= total:
            oldest = next(iter(self._waiting))
            self.release(oldest)
            oldest.scope.cancel()
            self.evicted += 1
            log_doubling(log, "pre-auth connection evicted: too many waiting to authenticate",
                         self.evicted, limit=total)  # fmt: skip
        ticket = PreAuthTicket(source)
        self._waiting[ticket] = None
        self._by_source[source] = self._by_source.get(source, 0) + 1
        return ticket

    def release(self, ticket: PreAuthTicket) -> None:
        """The connection authenticated or ended: it no longer counts."""
        if self._waiting.pop(ticket, 0) is None:
            left = self._by_source[ticket.source] - 1
            if left:
                self._by_source[ticket.source] = left
            else:
                del self._by_source[ticket.source]
