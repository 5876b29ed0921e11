"""The paths of `up` to its server (`client.paths`) and how one is chosen (`client.switch_after_s`,
`client.path_*`): resolved configuration, as `model` holds the rest."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PathSpec", "PathTuning"]


@dataclass(frozen=True, slots=True)
class PathSpec:
    """One way to reach the server (`client.paths`): from a source address or an interface,
    to the server's usual address or another of its addresses."""

    name: str
    #: The local address to connect from (None: the system's choice, or `interface`'s).
    bind: str | None = None
    #: The interface to connect through (SO_BINDTODEVICE; None: the routing table decides).
    interface: str | None = None
    #: Another address of the same server (None: `server_host:server_port`). The server is
    #: still verified under its usual name.
    server: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class PathTuning:
    """How paths are measured and chosen (`client.switch_after_s`, `client.path_*`)."""

    #: A better path must stay better this long before the session moves to it (hysteresis).
    switch_after_s: float = 5.0
    #: A round trip on every path this often (MPUDP's heartbeats are 1 s apart; 0.25 s keeps a
    #: dead active path's notice under the 3 s stall the issue allows).
    probe_interval_s: float = 0.25
    #: No answer on a path for this long: it is stalled (the active one is left at once).
    stall_s: float = 1.5
    #: Seconds added to a path's score at 100 % probe loss (10 % loss weighs as 50 ms).
    loss_penalty_s: float = 0.5
    #: "Better" means lower by more than this much, and by more than `margin_ratio` of the
    #: active path's score (so that jitter on equal paths never moves the session).
    margin_s: float = 0.005
    margin_ratio: float = 0.2
