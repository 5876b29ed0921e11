"""Status rows of load-balancing groups and rate limits (`muxtunnel.status` re-exports them).

Like every status row, frozen and built from live state by the server; `to_dict()` gives their
part of `GET /api/v1/status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AdmissionRow", "GroupRow", "MemberRow"]


@dataclass(frozen=True, slots=True)
class MemberRow:
    """One member of a load-balancing group, as its group sees it."""

    #: Its id in the group (`CLIENT-NAME/SERVICE`).
    id: str
    #: Its own service name, and the session that registered it.
    service: str
    session: int
    weight: int
    #: What its client's health check says (True when it has none).
    healthy: bool
    #: Would it get a new visitor now (healthy, weighted, circuit letting one through)?
    available: bool
    open_connections: int
    visitors_total: int
    dial_failures: int
    #: "closed", "open" or "half_open".
    circuit: str
    #: Seconds until an open circuit lets a probe visitor through (None unless open).
    circuit_remaining_s: float | None = None
    circuit_opened_total: int = 0
    #: What its last health check saw, as its client reported it.
    health_detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        remaining = self.circuit_remaining_s
        return {
            "id": self.id,
            "service": self.service,
            "session": self.session,
            "weight": self.weight,
            "healthy": self.healthy,
            "available": self.available,
            "connections": self.open_connections,
            "visitors_total": self.visitors_total,
            "dial_failures": self.dial_failures,
            "circuit": self.circuit,
            "circuit_remaining_s": None if remaining is None else round(remaining, 3),
            "circuit_opened_total": self.circuit_opened_total,
            "health_detail": self.health_detail,
        }


@dataclass(frozen=True, slots=True)
class GroupRow:
    """A load-balancing group: its policy and members, in the order they joined."""

    name: str
    type: str
    public: str
    #: The `lb:` policy in force ("round_robin", "hash_header:x-user", ...).
    policy: str
    members: tuple[MemberRow, ...] = ()
    #: Visitors given to a member, picks included that were retried.
    picked_total: int = 0
    #: Visitors retried on another member after a failed dial.
    retries_total: int = 0
    #: Visitors no member could take: none available, or every dial they were given failed.
    failed_total: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "name": self.name,
            "type": self.type,
            "public": self.public,
            "policy": self.policy,
            "members": [member.to_dict() for member in self.members],
            "picked_total": self.picked_total,
            "retries_total": self.retries_total,
            "failed_total": self.failed_total,
        }


@dataclass(frozen=True, slots=True)
class AdmissionRow:
    """The rate limits of one service name (`rate_limit`, `per_source`) since the start."""

    name: str
    admitted_total: int
    #: Visitors refused, by reason (`balance.RefusalReason`: service_rate, source_rate, ...).
    refused: Mapping[str, int] = field(default_factory=dict)
    #: Source addresses the per-source limits track now.
    sources_tracked: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "name": self.name,
            "admitted_total": self.admitted_total,
            "refused": dict(self.refused),
            "sources_tracked": self.sources_tracked,
        }
