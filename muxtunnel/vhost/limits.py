"""Per-source connection caps and bounded "log once" memory for the shared HTTP/TLS ports.

- `SourceLimiter`: at most `per_source` concurrent connections from one source, with at most
  `max_sources` sources tracked at once (the table only holds sources with a live connection,
  so it is also a global cap). A source is an IPv4 address or an IPv6 /64: one subscriber
  usually holds a whole /64, and counting single IPv6 addresses would let one attacker use
  2^64 "sources". Refusals are counted and logged at counts 1, 2, 4, 8, ...
- `OnceSet`: remembers the last `capacity` keys seen, so "log once per name" cannot grow
  without bound under a flood of random names.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from muxtunnel import log as _log
from muxtunnel.sources import address_key

__all__ = ["OnceSet", "SourceLimiter", "SourceTicket", "log_doubling", "source_key"]

log = structlog.get_logger("muxtunnel.vhost")


def log_doubling(event: str, count: int, **context: object) -> None:
    """Log `event` when `count` is a power of two: a flood makes a handful of lines."""
    _log.log_doubling(log, event, count, **context)


#: The unit a per-source cap counts: the IPv4 address, or the IPv6 /64 (one rule with the
#: authentication's failure limits).
source_key = address_key


class SourceTicket:
    """One admitted connection; hand it back to `SourceLimiter.release` exactly once."""

    __slots__ = ("key", "released")

    def __init__(self, key: str) -> None:
        self.key = key
        self.released = False


class SourceLimiter:
    """Concurrent connections per source, in a bounded table."""

    def __init__(self, per_source: int, max_sources: int) -> None:
        if per_source < 1 or max_sources < 1:
            raise ValueError("connection limits must be at least 1")
        self.per_source = per_source
        self.max_sources = max_sources
        self._live: dict[str, int] = {}
        self.refused_per_source = 0
        self.refused_table_full = 0

    def __len__(self) -> int:
        return len(self._live)

    def live(self, host: str) -> int:
        """Connections now open from `host`'s source."""
        return self._live.get(source_key(host), 0)

    def acquire(self, host: str) -> SourceTicket | None:
        """Admit one connection from `host`, or None (counted and logged) if over a cap."""
        key = source_key(host)
        count = self._live.get(key, 0)
        if count >= self.per_source:
            self.refused_per_source += 1
            log_doubling("connection refused: too many from its source",
                         self.refused_per_source, source=key, limit=self.per_source)  # fmt: skip
            return None
        if count == 0 and len(self._live) >= self.max_sources:
            self.refused_table_full += 1
            log_doubling("connection refused: too many sources connected at once",
                         self.refused_table_full, limit=self.max_sources)  # fmt: skip
            return None
        self._live[key] = count + 1
        return SourceTicket(key)

    def release(self, ticket: SourceTicket) -> None:
        if ticket.released:
            return
        ticket.released = True
        left = self._live[ticket.key] - 1
        if left:
            self._live[ticket.key] = left
        else:
            del self._live[ticket.key]


class OnceSet:
    """Has this key been seen lately? The oldest keys are forgotten past `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def first_time(self, key: str) -> bool:
        """True the first time `key` shows up (again, once it has been forgotten)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True
