"""A circuit breaker for one group member: passive health from the dials of real visitors.

Pure: every method takes `now` (seconds on any monotonic clock) and nothing here sleeps.

States and transitions:

- CLOSED: visitors flow. A dial failure is remembered with its time; `failures` of them within
  `window_s` open the circuit. Successes do not erase failures (the window does).
- OPEN until `until`: the member gets no visitors. The first call at or after `until` finds
  the circuit HALF_OPEN (the switch is lazy: no timer runs).
- HALF_OPEN: exactly one visitor, the probe, may be picked. Its success closes the circuit; its
  failure opens it again for twice the previous cooldown (capped at `max_cooldown_s`). A probe
  that leaves without an outcome (visitor gone before the dial finished) frees the slot at once;
  one whose outcome never comes frees it after `PROBE_TIMEOUT_S`.

Invariants: at most `failures - 1` failure times are kept (memory is bounded whatever the
failure rate); outcomes of visitors that are not the probe never move an open or half-open
circuit (they were picked before it opened); the cooldown is always within
[`cooldown_s`, `max_cooldown_s`].

"On repeat": the cooldown doubles when the circuit reopens from HALF_OPEN, and also when it
trips from CLOSED less than one cooldown after a probe closed it (a member that passes its probe
and falls over at once is still the same bad member); otherwise it starts again from
`cooldown_s`.
"""

from __future__ import annotations

import math
from collections import deque

from muxtunnel.balance.settings import CircuitSettings
from muxtunnel.balance.snapshot import CircuitSnapshot, CircuitState

__all__ = ["PROBE_TIMEOUT_S", "CircuitBreaker"]

#: A probe whose outcome has not come after this long no longer holds the half-open slot. The
#: outcome of a dial comes when the client answers the stream open, and 10 s is how long tunnels
#: wait for that answer before giving a visitor up (frp's `userConnTimeout`, bore's expiry of
#: pending connections).
PROBE_TIMEOUT_S = 10.0


class CircuitBreaker:
    """Closed, open or half open; see the module docstring for the rules."""

    def __init__(self, settings: CircuitSettings) -> None:
        self.settings = settings
        self._state = CircuitState.CLOSED
        self._failures: deque[float] = deque()
        self._until = 0.0
        self._level = 0  # doublings in the current cooldown
        self._cooldown_s = settings.cooldown_s
        self._closed_at: float | None = None  # when a probe last closed the circuit
        self._probe_since: float | None = None
        self.opened_total = 0

    def update(self, settings: CircuitSettings) -> None:
        """New settings (a reload): they apply from the next failure on."""
        self.settings = settings
        self._cooldown_s = min(max(self._cooldown_s, settings.cooldown_s), settings.max_cooldown_s)
        while len(self._failures) >= settings.failures:
            self._failures.popleft()

    def state(self, now: float) -> CircuitState:
        """The state at `now` (an open circuit whose cooldown ended is half open)."""
        if self._state is CircuitState.OPEN and now >= self._until:
            self._state = CircuitState.HALF_OPEN
            self._probe_since = None
        return self._state

    def allows(self, now: float) -> bool:
        """May a visitor be picked for this member now?"""
        state = self.state(now)
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return False
        return self._probe_since is None or now - self._probe_since >= PROBE_TIMEOUT_S

    def picked(self, now: float) -> bool:
        """A visitor was given to this member; True if it is the half-open probe."""
        if self.state(now) is CircuitState.HALF_OPEN:
            self._probe_since = now
            return True
        return False

    def probe_abandoned(self) -> None:
        """The probe visitor left before its dial had an outcome: let another one try."""
        if self._state is CircuitState.HALF_OPEN:
            self._probe_since = None

    def failed(self, now: float, *, probe: bool = False) -> bool:
        """A dial failed before any byte reached the service. True if this opened the circuit."""
        state = self.state(now)
        if state is CircuitState.HALF_OPEN:
            if not probe:
                return False
            self._open(now, repeat=True)
            return True
        if state is CircuitState.OPEN:
            return False
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - self.settings.window_s:
            failures.popleft()
        if len(failures) < self.settings.failures:
            return False
        recent_close = self._closed_at is not None and now - self._closed_at < self._cooldown_s
        self._open(now, repeat=recent_close)
        return True

    def succeeded(self, now: float, *, probe: bool = False) -> bool:
        """A dial reached the service. True if this closed a half-open circuit."""
        if probe and self.state(now) is CircuitState.HALF_OPEN:
            self._state = CircuitState.CLOSED
            self._closed_at = now
            self._probe_since = None
            self._failures.clear()
            return True
        return False

    def _open(self, now: float, *, repeat: bool) -> None:
        settings = self.settings
        top = math.ceil(math.log2(settings.max_cooldown_s / settings.cooldown_s))
        self._level = min(self._level + 1, top) if repeat else 0
        self._cooldown_s = min(settings.cooldown_s * 2**self._level, settings.max_cooldown_s)
        self._state = CircuitState.OPEN
        self._until = now + self._cooldown_s
        self._failures.clear()
        self._probe_since = None
        self.opened_total += 1

    @property
    def cooldown_s(self) -> float:
        """Length of the current ejection, or of the last one."""
        return self._cooldown_s

    def snapshot(self, now: float) -> CircuitSnapshot:
        """The breaker at `now`, for status."""
        state = self.state(now)
        is_open = state is CircuitState.OPEN
        window_start = now - self.settings.window_s
        return CircuitSnapshot(
            state=state,
            until=self._until if is_open else None,
            remaining_s=max(0.0, self._until - now) if is_open else None,
            cooldown_s=self._cooldown_s,
            recent_failures=sum(1 for at in self._failures if at > window_start),
            opened_total=self.opened_total,
            probing=state is CircuitState.HALF_OPEN and not self.allows(now),
        )
