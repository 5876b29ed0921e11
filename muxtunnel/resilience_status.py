"""Status rows of resumable sessions, of each server `up` keeps a session with, and of each path
to a server (`muxtunnel.status` re-exports them).

Like every status row, frozen and built from live state; `to_dict()` gives their part of
`GET /api/v1/status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PathRow", "ResumeRow", "ServerRow"]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass(frozen=True, slots=True)
class ResumeRow:
    """Session resumption, both roles: totals since the start, and what is held now."""

    #: Sessions that went on over a new carrier.
    resumes: int = 0
    #: Resumes that failed, by reason (the server: refusals; the client: attempts that failed).
    failures: Mapping[str, int] = field(default_factory=dict)
    #: Sessions whose carrier is lost now, waiting for another.
    suspended: int = 0
    #: Bytes held now to write again on a new carrier, all sessions.
    replay_bytes: int = 0
    #: The most bytes one session has held at once.
    replay_peak_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "resumes": self.resumes,
            "failures": dict(sorted(self.failures.items())),
            "suspended": self.suspended,
            "replay_bytes": self.replay_bytes,
            "replay_peak_bytes": self.replay_peak_bytes,
        }


@dataclass(frozen=True, slots=True)
class PathRow:
    """One way to reach a server (client): how it scores, and whether the session runs on it."""

    name: str
    #: Where it connects from and to ("10.0.0.5 -> 203.0.113.7:7835").
    route: str
    #: "active" (the session runs on it), "standby" (attached, measured), "down".
    state: str
    #: Smoothed round trip (None: not measured yet).
    rtt_s: float | None = None
    #: Probes lost of the last ones sent, 0..1.
    loss: float = 0.0
    #: Lower is better; what the choice of path compares (None: unusable).
    score: float | None = None
    #: Times the session moved onto this path.
    switches_in: int = 0
    #: Why it is down (None: it is not).
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "name": self.name,
            "route": self.route,
            "state": self.state,
            "rtt_ms": _ms(self.rtt_s),
            "loss": round(self.loss, 3),
            "score": None if self.score is None else round(self.score, 4),
            "switches_in": self.switches_in,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class ServerRow:
    """One server `up` registers its services with, and the session to it."""

    address: str
    #: A session is up and its services registered.
    connected: bool
    #: The session's carrier is lost and it waits for a new one (its visitors wait too).
    suspended: bool = False
    #: Sessions to this server lost so far (a resumed one is not lost).
    reconnects: int = 0
    resumes: int = 0
    rtt_s: float | None = None
    #: Bytes held now to write again on a new carrier.
    replay_bytes: int = 0
    paths: tuple[PathRow, ...] = ()
    #: The session moved from path to path, by reason ("down", "stalled", "better", "preferred").
    path_switches: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "address": self.address,
            "connected": self.connected,
            "suspended": self.suspended,
            "reconnects": self.reconnects,
            "resumes": self.resumes,
            "rtt_ms": _ms(self.rtt_s),
            "replay_bytes": self.replay_bytes,
            "paths": [path.to_dict() for path in self.paths],
            "path_switches": dict(sorted(self.path_switches.items())),
        }
