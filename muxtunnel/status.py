"""What a running `listen` or `up` is doing, as immutable snapshots.

Status flows up: `Server.status()` and `Client.status()` build a snapshot from their live state,
and everything that shows state (the admin API, the metrics endpoint, the live console,
`muxtunnel status`) consumes a `Callable[[], ServerStatus | ClientStatus]`. None of those
consumers imports `server` or `client`, and none sees a live object it could change.

Rows are frozen dataclasses with defaults for every optional field, so a later feature adds a
field without touching the code that builds or reads the others. `type` is a plain string
("tcp", "udp" today) for the same reason. `to_dict()` gives the JSON of `GET /api/v1/status`.

Direction, everywhere: `bytes_in` flows towards the service, `bytes_out` back to the visitors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from muxtunnel.cluster_status import ClusterRow
from muxtunnel.group_status import AdmissionRow, GroupRow, MemberRow
from muxtunnel.resilience_status import PathRow, ResumeRow, ServerRow

__all__ = [
    "DEFAULT_ADMIN_ADDRESS",
    "STATUS_PATH",
    "AdmissionRow",
    "ClientStatus",
    "ConnectionRow",
    "GroupRow",
    "MemberRow",
    "PathRow",
    "ResumeRow",
    "ServerRow",
    "ServerStatus",
    "ServiceRow",
    "SessionRow",
    "Status",
    "TrafficRow",
    "WebRow",
    "WebTrafficRow",
]

#: Where the admin API serves the status document.
STATUS_PATH = "/api/v1/status"
#: Where `muxtunnel status` looks when not told (the control port 7835, plus one).
DEFAULT_ADMIN_ADDRESS = "127.0.0.1:7836"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """One open visitor connection."""

    service: str
    peer: str
    age_s: float
    bytes_in: int
    bytes_out: int

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "service": self.service,
            "peer": self.peer,
            "age_s": round(self.age_s, 3),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One live session: a client's, on the server; the one to the server, on the client."""

    id: int
    peer: str
    age_s: float
    #: Latest keepalive round trip (None until the first pong).
    rtt_s: float | None
    #: Open mux streams, the control channel included.
    streams: int
    #: The services it registered (a visitor session: the private services it may visit).
    services: tuple[str, ...] = ()
    #: Its carrier is lost and it waits for a new one; times it went on over a new one.
    suspended: bool = False
    resumes: int = 0
    #: "client" (it registers services) or "visitor" (`muxtunnel visit`).
    role: str = "client"

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "id": self.id,
            "peer": self.peer,
            "age_s": round(self.age_s, 3),
            "rtt_ms": _ms(self.rtt_s),
            "streams": self.streams,
            "services": sorted(self.services),
            "suspended": self.suspended,
            "resumes": self.resumes,
            "role": self.role,
        }


@dataclass(frozen=True, slots=True)
class ServiceRow:
    """One service: registered (server) or configured (client)."""

    name: str
    #: "tcp" or "udp"; a string so that later kinds of service fit.
    type: str
    #: Public address, or None while it is not registered.
    public: str | None
    #: Visitor connections open now (TCP; 0 for UDP).
    open_connections: int = 0
    #: Visitor connections, or UDP flows, since the registration (server) or start (client).
    connections_total: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    #: Compression agreed for visitor streams (None: none).
    compression: str | None = None
    #: With compression: its visitors' tunnel bytes both ways, {"plain": as the visitors
    #: sent and got them, "compressed": as they crossed the carrier} (None: none compressed).
    carrier_bytes: Mapping[str, int] | None = None
    #: UDP datagrams dropped, by reason (None for TCP).
    udp_dropped: Mapping[str, int] | None = None
    #: Server: the session that serves it.
    session: int | None = None
    #: Server: the limits enforced on it.
    limits: Mapping[str, int | None] = field(default_factory=dict)
    #: Client: where its visitors go.
    local: str | None = None
    #: http/https: every URL visitors reach it at (`public` is the first).
    urls: tuple[str, ...] = ()
    #: http: final responses to its visitors by status class ("2xx": 10, ...); None otherwise.
    responses: Mapping[str, int] | None = None
    #: Server: a load-balancing group's members now (None: not a group). Client: the group
    #: the service is a member of, and what its health check says ("healthy", "unhealthy:
    #: connect: Connection refused", "unknown"; None without a check).
    members: int | None = None
    group: str | None = None
    health: str | None = None
    #: No public port: reached through `muxtunnel visit` only.
    private: bool = False
    #: Server, private services: `visit` sessions allowed to reach it now.
    visitor_sessions: int = 0
    #: `visit`: whether the service's provider is online (None: not known, or not `visit`).
    provider_online: bool | None = None

    @property
    def connections(self) -> int:
        """What the tables show: TCP connections open now, or UDP flows so far."""
        return self.connections_total if self.type == "udp" else self.open_connections

    def traffic(self) -> TrafficRow:
        """The row's counters as a traffic row."""
        return TrafficRow(
            self.name, self.bytes_in, self.bytes_out, self.open_connections, self.connections_total
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields both roles show (each role's document adds its own)."""
        row: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "public": self.public,
            "connections": self.connections,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "compression": self.compression,
        }
        if self.carrier_bytes is not None:
            row["carrier_bytes"] = dict(self.carrier_bytes)
        if self.urls:
            row["urls"] = list(self.urls)
        if self.responses is not None:
            row["responses"] = dict(self.responses)
        if self.members is not None:
            row["members"] = self.members
        if self.group is not None:
            row["group"] = self.group
            row["health"] = self.health
        if self.private:
            row["private"] = True
            row["visitor_sessions"] = self.visitor_sessions
        if self.provider_online is not None:
            row["provider_online"] = self.provider_online
        return row


@dataclass(frozen=True, slots=True)
class TrafficRow:
    """Counters of one service name since the process started; they never go back.

    They outlive registrations (a service that went away keeps its totals), which is what
    Prometheus counters need.
    """

    name: str
    bytes_in: int
    bytes_out: int
    open_connections: int
    connections_total: int


@dataclass(frozen=True, slots=True)
class WebTrafficRow:
    """What the shared web ports did for one service name since the process started.

    Like `TrafficRow`, it outlives registrations and never goes back.
    """

    name: str
    #: Final responses by status class: "1xx" (101 only) .. "5xx".
    responses: Mapping[str, int]
    #: Requests or connections refused, by reason (`muxtunnel.vhost.counters`).
    refusals: Mapping[str, int]
    #: TLS connections passed through by SNI.
    tunnels: int = 0


@dataclass(frozen=True, slots=True)
class WebRow:
    """The shared HTTP and TLS ports of a server."""

    domain: str
    #: Bound addresses (None: that port is off).
    http: str | None
    https: str | None
    #: TLS of HTTP services ends on the server (it has a certificate).
    terminates_tls: bool
    #: Visitor connections accepted on either port.
    connections_total: int
    #: Refusals before any service was known (unknown host, bad request, per-source cap, ...).
    refusals: Mapping[str, int] = field(default_factory=dict)
    #: Connections that ended in an internal error (bugs, never visitor mistakes).
    internal_errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The row as the status document shows it."""
        return {
            "domain": self.domain,
            "http": self.http,
            "https": self.https,
            "terminates_tls": self.terminates_tls,
            "connections_total": self.connections_total,
            "refusals": dict(self.refusals),
            "internal_errors": self.internal_errors,
        }


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """A snapshot of `muxtunnel listen`."""

    role: ClassVar[Literal["server"]] = "server"
    version: str
    #: The control address, as bound.
    bind: str
    #: Fingerprint of the TLS certificate (None: plain TCP).
    tls: str | None
    uptime_s: float
    auth_failures: int
    #: Authenticated sessions only.
    sessions: tuple[SessionRow, ...] = ()
    #: Registered services, by name.
    services: tuple[ServiceRow, ...] = ()
    #: Open visitor connections, oldest first.
    connections: tuple[ConnectionRow, ...] = ()
    traffic: tuple[TrafficRow, ...] = ()
    #: The shared web ports (None: off), and their counters per service name.
    web: WebRow | None = None
    web_traffic: tuple[WebTrafficRow, ...] = ()
    #: Refusals so far, by reason (`log.Refusals`): every limit that said no, counted.
    refusals: Mapping[str, int] = field(default_factory=dict)
    #: Load-balancing groups, by name; rate limits of the service names that have them.
    groups: tuple[GroupRow, ...] = ()
    admissions: tuple[AdmissionRow, ...] = ()
    #: Resumable sessions: resumes, failures by reason, replay buffers.
    resume: ResumeRow = field(default_factory=ResumeRow)
    #: This node's place in a cluster, and the whole cluster (None: a single server).
    cluster: ClusterRow | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `GET /api/v1/status` (`cluster` only on a cluster node)."""
        extra = {"cluster": self.cluster.to_dict()} if self.cluster is not None else {}
        return {
            **extra,
            "role": self.role,
            "version": self.version,
            "bind": self.bind,
            "tls": self.tls,
            "uptime_s": round(self.uptime_s, 3),
            "auth_failures": self.auth_failures,
            "sessions": [row.to_dict() for row in self.sessions],
            "services": [
                {
                    **row.to_dict(),
                    "session": row.session,
                    "limits": dict(row.limits),
                    "udp_dropped": None if row.udp_dropped is None else dict(row.udp_dropped),
                }
                for row in self.services
            ],
            "connections": [row.to_dict() for row in self.connections],
            "web": self.web.to_dict() if self.web is not None else None,
            "refusals": dict(sorted(self.refusals.items())),
            "groups": [row.to_dict() for row in self.groups],
            "rate_limits": [row.to_dict() for row in self.admissions],
            "resume": self.resume.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """A snapshot of `muxtunnel up`."""

    role: ClassVar[Literal["client"]] = "client"
    version: str
    #: The server's control address.
    server: str
    #: Sessions to the server lost so far.
    reconnects: int
    #: The session to the server while it is up (none while connecting).
    sessions: tuple[SessionRow, ...] = ()
    #: Every configured service, in config order.
    services: tuple[ServiceRow, ...] = ()
    connections: tuple[ConnectionRow, ...] = ()
    traffic: tuple[TrafficRow, ...] = ()
    #: Refusals so far, by reason (`log.Refusals`).
    refusals: Mapping[str, int] = field(default_factory=dict)
    #: Resumable sessions: resumes, failures by reason, replay buffers.
    resume: ResumeRow = field(default_factory=ResumeRow)
    #: Each server the services are registered with, and its paths.
    servers: tuple[ServerRow, ...] = ()
    #: What runs: "up", or "visit" (its services are the private ones it serves locally).
    command: str = "up"

    @property
    def connected(self) -> bool:
        """A session to the server is up (the client's one "online" rule lives in `Client`)."""
        return bool(self.sessions)

    @property
    def rtt_s(self) -> float | None:
        """The session's latest keepalive round trip, if connected and measured."""
        return self.sessions[0].rtt_s if self.sessions else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of `GET /api/v1/status`."""
        return {
            "role": self.role,
            "command": self.command,
            "version": self.version,
            "server": self.server,
            "connected": self.connected,
            "rtt_ms": _ms(self.rtt_s),
            "reconnects": self.reconnects,
            "services": [{**row.to_dict(), "local": row.local} for row in self.services],
            "connections": [row.to_dict() for row in self.connections],
            "refusals": dict(sorted(self.refusals.items())),
            "resume": self.resume.to_dict(),
            "servers": [row.to_dict() for row in self.servers],
        }


Status = ServerStatus | ClientStatus
