"""Rate limits on new visitors: per service and per source address.

Pure: every call takes `now` (seconds on a monotonic clock). A `VisitorLimiter` belongs to one
service name and answers `admit(source, now)` for each new visitor (TCP connection, UDP flow,
HTTP request) with an `Admission` (release it when the visitor ends) or a `Refusal` (a reason
and a `retry_after_s` for HTTP's `Retry-After`). What to do with a refused visitor is the
caller's: RST for TCP, 429 for HTTP, no flow for UDP.

Checks, in order, and nothing is taken unless all pass (a refused visitor costs no tokens):
1. the source's open visitors against `per_source.max_connections`;
2. the source's bucket (`per_source.new_per_s`);
3. the service's bucket (`rate_limit.new_per_s`, `burst`).

Memory: per-source state lives in a table of at most `max_sources` entries. Sources with open
visitors are never dropped (their count must stay exact); the others form an LRU and the least
recently seen is dropped to make room. A dropped source comes back with a full bucket, so a
flood of addresses cannot grow memory, and at worst lets a source it pushed out start afresh
(the service's bucket still holds the total). When every entry has open visitors, a new source
is refused (`source_table_full`) rather than let in untracked.

The `source` string is the unit a limit applies to: the server passes an IPv4 address, or the
/64 of an IPv6 address (one host usually holds a whole /64).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import structlog

from muxtunnel.balance.settings import PerSourceLimit, RateLimit
from muxtunnel.balance.snapshot import LimiterSnapshot
from muxtunnel.log import log_doubling

__all__ = [
    "BUSY_RETRY_AFTER_S",
    "MAX_SOURCES",
    "Admission",
    "Refusal",
    "RefusalReason",
    "TokenBucket",
    "VisitorLimiter",
]

log = structlog.get_logger("muxtunnel.balance")

#: Sources tracked per service. nginx sizes its `limit_req` zones the same way: "one megabyte
#: zone can keep about 16 thousand 64-byte states". Ours cost about 300 bytes each (measured by
#: tests/balance/test_balance_ratelimit.py), so a full table is about 4.6 MiB.
MAX_SOURCES = 16 * 1024
#: `Retry-After` when a source is at its connection cap: no bucket says when a slot frees, and
#: one second is the smallest delay the header can express.
BUSY_RETRY_AFTER_S = 1.0


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` saved up; starts full at its first use."""

    __slots__ = ("_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._updated: float | None = None

    def set_rate(self, rate_per_s: float, burst: float) -> None:
        """New rate and size; the tokens saved so far stay (up to the new size)."""
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = min(self._tokens, burst)

    def tokens(self, now: float) -> float:
        """Tokens available at `now`."""
        if self._updated is not None and now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_s)
        if self._updated is None or now > self._updated:
            self._updated = now
        return self._tokens

    def ready(self, now: float) -> bool:
        """Is a whole token there?"""
        return self.tokens(now) >= 1.0

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        if self.tokens(now) < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def wait_s(self, now: float) -> float:
        """Seconds until a whole token is there (0 if one is)."""
        return max(0.0, (1.0 - self.tokens(now)) / self.rate_per_s)


class RefusalReason(StrEnum):
    """Why a visitor was refused; the metrics label."""

    SERVICE_RATE = "service_rate"
    SOURCE_RATE = "source_rate"
    SOURCE_CONNECTIONS = "source_connections"
    SOURCE_TABLE_FULL = "source_table_full"


_MESSAGES = {
    RefusalReason.SERVICE_RATE: "visitor refused: service rate limit",
    RefusalReason.SOURCE_RATE: "visitor refused: rate limit of its source address",
    RefusalReason.SOURCE_CONNECTIONS: "visitor refused: its source address is at max_connections",
    RefusalReason.SOURCE_TABLE_FULL: "visitor refused: too many source addresses hold visitors",
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """A visitor the limits refused."""

    reason: RefusalReason
    retry_after_s: float

    @property
    def retry_after_header(self) -> str:
        """The value of HTTP's `Retry-After`: whole seconds, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s)))


class _Source:
    __slots__ = ("bucket", "open")

    def __init__(self, bucket: TokenBucket | None) -> None:
        self.bucket = bucket
        self.open = 0


class Admission:
    """An admitted visitor: `release()` when it ends (idempotent)."""

    __slots__ = ("_limiter", "_source", "_state")

    def __init__(self, limiter: VisitorLimiter, source: str, state: _Source | None) -> None:
        self._limiter = limiter
        self._source = source
        self._state = state

    def release(self) -> None:
        """The visitor ended: its source may open another one."""
        state, self._state = self._state, None
        if state is not None:
            self._limiter._released(self._source, state)


class VisitorLimiter:
    """The rate limits of one service; see the module docstring."""

    def __init__(
        self,
        service: str,
        rate_limit: RateLimit | None = None,
        per_source: PerSourceLimit | None = None,
        *,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.service = service
        self.max_sources = max_sources
        self.rate_limit: RateLimit | None = None
        self.per_source: PerSourceLimit | None = None
        self._service_bucket: TokenBucket | None = None
        self._busy: dict[str, _Source] = {}  # sources with open visitors
        self._idle: OrderedDict[str, _Source] = OrderedDict()  # the others, oldest first
        self.admitted_total = 0
        self.refused: Counter[RefusalReason] = Counter()
        self.update(rate_limit, per_source)

    def update(self, rate_limit: RateLimit | None, per_source: PerSourceLimit | None) -> None:
        """New limits (a reload); buckets keep the tokens they have, counts stay exact."""
        self.rate_limit = rate_limit
        if rate_limit is None:
            self._service_bucket = None
        elif self._service_bucket is None:
            self._service_bucket = TokenBucket(rate_limit.new_per_s, rate_limit.burst)
        else:
            self._service_bucket.set_rate(rate_limit.new_per_s, rate_limit.burst)
        self.per_source = per_source
        if per_source is None:
            self._idle.clear()  # busy entries stay until their visitors end
            return
        for state in (*self._busy.values(), *self._idle.values()):
            if per_source.new_per_s is None:
                state.bucket = None
            elif state.bucket is None:
                state.bucket = TokenBucket(per_source.new_per_s, per_source.burst)
            else:
                state.bucket.set_rate(per_source.new_per_s, per_source.burst)

    @property
    def sources_tracked(self) -> int:
        """Entries in the per-source table."""
        return len(self._busy) + len(self._idle)

    def admit(self, source: str, now: float) -> Admission | Refusal:
        """Let a new visitor from `source` in, or say why not."""
        per_source = self.per_source
        state: _Source | None = None
        if per_source is not None:
            state = self._busy.get(source)
            if state is None:
                state = self._idle.get(source)
                if state is not None:
                    self._idle.move_to_end(source)
            if state is not None:
                cap = per_source.max_connections
                if cap is not None and state.open >= cap:
                    return self._refuse(
                        RefusalReason.SOURCE_CONNECTIONS, BUSY_RETRY_AFTER_S, source
                    )
                if state.bucket is not None and not state.bucket.ready(now):
                    return self._refuse(RefusalReason.SOURCE_RATE, state.bucket.wait_s(now), source)
            elif len(self._busy) >= self.max_sources:
                return self._refuse(RefusalReason.SOURCE_TABLE_FULL, BUSY_RETRY_AFTER_S, source)
        bucket = self._service_bucket
        if bucket is not None:
            if not bucket.take(now):
                return self._refuse(RefusalReason.SERVICE_RATE, bucket.wait_s(now), source)
        self.admitted_total += 1
        if per_source is None:
            return Admission(self, source, None)
        if state is None:
            state = self._track(source, per_source)
        if state.bucket is not None:
            state.bucket.take(now)
        if state.open == 0:
            self._idle.pop(source, None)
            self._busy[source] = state
        state.open += 1
        return Admission(self, source, state)

    def _track(self, source: str, per_source: PerSourceLimit) -> _Source:
        while self._idle and self.sources_tracked >= self.max_sources:
            self._idle.popitem(last=False)
        bucket = None
        if per_source.new_per_s is not None:
            bucket = TokenBucket(per_source.new_per_s, per_source.burst)
        return _Source(bucket)

    def _released(self, source: str, state: _Source) -> None:
        state.open -= 1
        if state.open > 0 or self._busy.get(source) is not state:
            return
        del self._busy[source]
        if self.per_source is None:
            return
        while self._idle and self.sources_tracked >= self.max_sources:
            self._idle.popitem(last=False)
        self._idle[source] = state

    def _refuse(self, reason: RefusalReason, retry_after_s: float, source: str) -> Refusal:
        self.refused[reason] += 1
        log_doubling(log, _MESSAGES[reason], self.refused[reason], service=self.service,
                     reason=reason.value, source=source)  # fmt: skip
        return Refusal(reason, retry_after_s)

    def snapshot(self) -> LimiterSnapshot:
        """Counts for status and metrics."""
        return LimiterSnapshot(
            service=self.service,
            admitted_total=self.admitted_total,
            refused=MappingProxyType({reason.value: n for reason, n in self.refused.items()}),
            sources_tracked=self.sources_tracked,
        )
