"""Token buckets for the abuse budgets. Time comes in as an argument: the core reads no clock."""

from __future__ import annotations


class TokenBucket:
    """`burst` tokens, refilled at `rate_per_s`; `take` answers whether one was available."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, burst: int, rate_per_s: float) -> None:
        self._burst = float(burst)
        self._rate = rate_per_s
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None and now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now if self._last is None else max(self._last, now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
