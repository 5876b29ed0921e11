"""Immutable views of groups, circuits, limiters and health checks, for status and metrics.

Times come in two forms: `until` on the clock the caller passed in (monotonic: good for
comparisons, meaningless to a person) and `remaining_s` from the moment of the snapshot (what a
status table shows).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "CircuitSnapshot",
    "CircuitState",
    "GroupSnapshot",
    "HealthSnapshot",
    "LimiterSnapshot",
    "MemberSnapshot",
]


class CircuitState(StrEnum):
    """Closed: visitors flow. Open: none until the cooldown ends. Half open: one probe visitor."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitSnapshot:
    """A member's circuit breaker at one moment."""

    state: CircuitState
    #: When an open circuit turns half open (caller's clock); None unless open.
    until: float | None
    #: Seconds until then; None unless open.
    remaining_s: float | None
    #: Length of the current (or next) ejection: doubles on repeat, capped.
    cooldown_s: float
    #: Dial failures within the window now (closed state).
    recent_failures: int
    #: Times the circuit opened since the member joined.
    opened_total: int
    #: Whether the one half-open probe visitor is out.
    probing: bool


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    """One member of a group at one moment."""

    member_id: str
    weight: int
    healthy: bool
    open_visitors: int
    picked_total: int
    dial_failures_total: int
    circuit: CircuitSnapshot

    @property
    def available(self) -> bool:
        """Would it get a new visitor now (healthy, weighted, circuit letting one through)?"""
        circuit = self.circuit
        lets_through = circuit.state is CircuitState.CLOSED or (
            circuit.state is CircuitState.HALF_OPEN and not circuit.probing
        )
        return self.healthy and self.weight > 0 and lets_through


@dataclass(frozen=True, slots=True)
class GroupSnapshot:
    """A group, its policy and its members in the order they joined."""

    name: str
    policy: str
    members: tuple[MemberSnapshot, ...]
    picked_total: int
    #: Picks that found no member to give the visitor to.
    unavailable_total: int

    @property
    def open_visitors(self) -> int:
        """Visitors open on all members."""
        return sum(member.open_visitors for member in self.members)


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """A service's rate limits at one moment: refusals by reason, sources tracked."""

    service: str
    admitted_total: int
    refused: Mapping[str, int]
    sources_tracked: int

    @property
    def refused_total(self) -> int:
        """Refusals of every reason."""
        return sum(self.refused.values())


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """A member's view of its own target (client side)."""

    #: None until the first check has answered.
    healthy: bool | None
    consecutive_ok: int
    consecutive_failed: int
    checks_total: int
    changes_total: int
    #: What the last check saw ("connected", "HTTP 503", "connection refused", ...).
    last_detail: str
