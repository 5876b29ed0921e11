"""A lazy timer per visitor connection: moving its deadline later costs one float store.

Every wait of a keep-alive request is bounded (idle, head, send, response), and an anyio
cancel scope per wait cost about a fifth of a small proxied request (measured with
`bench/micro/vhost_proxy.py`: ~330 -> ~250 us of CPU without them). Here one timer handle of
the event loop serves the whole connection:

- `set(timeout_s, what)` records the deadline; the handle is rescheduled only when the new
  deadline is earlier than the one it waits for (rare: the defaults only ever move it later);
- when the handle fires before the deadline it re-arms itself for the current one; once the
  deadline has passed it records `expired = what` and cancels the connection's scope, whose
  owner turns `what` into the right answer (408, 504, a reset);
- `clear()` before any wait that must not be bounded by it (a streaming response body, a raw
  pipe, a wait bounded by a scope of its own).

The timer is the running asyncio loop's (`call_at`; anyio has no public timer callback).
anyio's clock on asyncio is that loop's `time()`, and muxtunnel runs on asyncio (or uvloop).
"""

from __future__ import annotations

import asyncio
import math

import anyio

__all__ = ["Deadline"]


class Deadline:
    """Cancels `scope` once the deadline last `set` passes; `expired` says what timed out."""

    __slots__ = ("_handle", "_handle_at", "_loop", "_scope", "at", "expired", "what")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self._loop = asyncio.get_running_loop()
        self._scope = scope
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = math.inf
        self.at = math.inf
        self.what = ""
        self.expired: str | None = None

    def set(self, timeout_s: float, what: str) -> None:
        at = self._loop.time() + timeout_s
        self.at = at
        self.what = what
        if at < self._handle_at:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(at, self._fire)
            self._handle_at = at

    def clear(self) -> None:
        self.at = math.inf

    def close(self) -> None:
        """Stop the timer for good (the connection is over)."""
        self.at = math.inf
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._handle_at = math.inf
        if self.at == math.inf:
            return
        if self._loop.time() < self.at:
            self._handle = self._loop.call_at(self.at, self._fire)
            self._handle_at = self.at
            return
        self.expired = self.what
        self._scope.cancel()
