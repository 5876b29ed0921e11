"""Accounting by source address: the unit per-address limits apply to, and the failure limiter.

`address_key` decides what "one source" is (an IPv4 address, an IPv6 /64). `FailureLimiter`
bounds failed authentications per source with a token bucket each, in bounded memory, and never
forgets a blocked source while one that may still try is tracked (an attacker must not reset his
own budget by failing from many other addresses). Nothing here reads a clock or logs: `now`
comes from the caller.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from dataclasses import dataclass

__all__ = ["FailureLimiter", "address_key"]


def address_key(host: str) -> str:
    """The unit a failure limit applies to: an IPv4 address, or the /64 of an IPv6 address.

    One IPv6 host usually controls a whole /64, so limiting single v6 addresses limits nothing.
    IPv4-mapped IPv6 addresses count as their IPv4 address. Non-IP strings are used as they are.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float
    #: Which of the source's entries in the eviction heap is current (the others are stale).
    entry: int = 0


class FailureLimiter:
    """Per-source token bucket of failed authentications.

    Each source starts with `burst` tokens; every failure takes one; tokens come back at
    `per_min` per minute up to `burst`. A source with less than one token is refused before any
    verification work. `now` is any monotonic time in seconds.

    Memory is bounded: at most `max_sources` sources are tracked, and a source whose bucket
    has refilled is dropped. Past the bound the source with the most tokens *now* is forgotten
    first: the least failed or longest refilled, never a blocked source while one that may
    still try is tracked. (Forgetting the least recently touched one let an attacker reset his
    own blocked address by failing once from each of 10 000 others.) Since every bucket refills
    at the same rate, "tokens now" orders sources the same way at any time: `tokens - updated *
    rate` is a constant of each bucket between failures, so a heap keyed on it stays valid
    while time passes and only a failure pushes a new entry (stale ones are skipped, and the
    heap is rebuilt when they outnumber the live ones).
    """

    def __init__(self, burst: int, per_min: float, *, max_sources: int = 10_000) -> None:
        if burst < 1 or per_min <= 0 or max_sources < 1:
            raise ValueError("FailureLimiter needs burst >= 1, per_min > 0, max_sources >= 1")
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}
        #: (-(tokens - updated * rate), entry number, source): the top has the most tokens now.
        self._heap: list[tuple[float, int, str]] = []
        self._entries = itertools.count(1)
        self._per_s = per_min / 60.0

    @property
    def per_s(self) -> float:
        """Tokens a source gets back per second."""
        return self._per_s

    @per_s.setter
    def per_s(self, value: float) -> None:  # a reload: the heap's keys depend on the rate
        self._per_s = value
        self._compact()

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, source: str, now: float) -> _Bucket | None:
        bucket = self._buckets.get(source)
        if bucket is None:
            return None
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.per_s)
        bucket.updated = max(bucket.updated, now)
        if bucket.tokens >= self.burst:
            del self._buckets[source]  # its heap entries go stale
            return None
        return bucket

    def allowed(self, source: str, now: float) -> bool:
        """May `source` try to authenticate now?"""
        bucket = self._refill(source, now)
        return bucket is None or bucket.tokens >= 1.0

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until `source` is allowed again (0 if it is allowed now)."""
        bucket = self._refill(source, now)
        if bucket is None or bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self.per_s

    def record_failure(self, source: str, now: float) -> None:
        """Take one token from `source` (never below zero)."""
        bucket = self._refill(source, now)
        if bucket is None:
            while len(self._buckets) >= self.max_sources:
                self._evict()
            bucket = self._buckets[source] = _Bucket(float(self.burst), now)
        bucket.tokens = max(0.0, bucket.tokens - 1.0)
        bucket.entry = next(self._entries)
        rank = bucket.tokens - bucket.updated * self.per_s
        heapq.heappush(self._heap, (-rank, bucket.entry, source))
        if len(self._heap) > 2 * len(self._buckets) + 64:
            self._compact()

    def _evict(self) -> None:
        """Forget the tracked source with the most tokens now."""
        while self._heap:
            _, entry, source = heapq.heappop(self._heap)
            bucket = self._buckets.get(source)
            if bucket is not None and bucket.entry == entry:
                del self._buckets[source]
                return
        raise AssertionError("a tracked source without a heap entry")

    def _compact(self) -> None:
        self._heap = [
            (-(bucket.tokens - bucket.updated * self.per_s), bucket.entry, source)
            for source, bucket in self._buckets.items()
        ]
        heapq.heapify(self._heap)
