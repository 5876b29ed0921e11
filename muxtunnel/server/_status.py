"""The server's status snapshot: everything `status()` shows, read from live state at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio

from muxtunnel import __version__
from muxtunnel.cluster_status import ClusterRow
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ServerConfig
from muxtunnel.server._group_visitors import group_service_row
from muxtunnel.server._group_visitors import rows as group_rows
from muxtunnel.server._groups import Groups
from muxtunnel.server._private import PrivateBook
from muxtunnel.server._ratelimits import RateLimits
from muxtunnel.server._registry import Registry
from muxtunnel.server._resume import ResumableSessions
from muxtunnel.server._session import ClientSession
from muxtunnel.specs import format_host_port
from muxtunnel.status import ServerStatus, WebRow, WebTrafficRow
from muxtunnel.tls import ServerTlsContext

if TYPE_CHECKING:
    from muxtunnel.server._web import WebFront

__all__ = ["ServerParts", "server_status"]


class _Cluster(Protocol):
    def row(self) -> ClusterRow: ...


class ServerParts(Protocol):
    """What the snapshot reads of the server (a Protocol: `_server` imports this module)."""

    config: ServerConfig
    sessions: dict[int, ClientSession]
    registry: Registry
    traffic: dict[str, ServiceTraffic]
    limiters: dict[str, ServiceLimiter]
    groups: Groups
    rate_limits: RateLimits
    private: PrivateBook
    refusals: Refusals
    tls: ServerTlsContext | None
    web: WebFront | None
    port: int | None
    started: float
    auth_failures: int
    resumable: ResumableSessions

    @property
    def cluster(self) -> _Cluster | None: ...


def server_status(server: ServerParts) -> ServerStatus:
    """What `server` is doing now, as an immutable snapshot."""
    now = anyio.current_time()
    sessions = [row for s in server.sessions.values() if (row := s.row(now)) is not None]
    public_host = server.config.public_host
    web_rows = {row.name: row for row in _web_traffic(server.web)} if server.web else {}
    services = [
        service.row(
            public_host,
            server.traffic.get(name),
            server.limiters.get(name),
            web_rows[name].responses if name in web_rows and service.type == "http" else None,
            server.private.visitor_sessions(name),
        )
        for name, service in sorted(server.registry.by_name.items())
    ]
    groups = group_rows(server.groups.by_name, public_host, now)
    services += [
        group_service_row(group, public_host, server.traffic.get(name), server.limiters.get(name))
        for name, group in server.groups.by_name.items()
    ]
    services.sort(key=lambda row: row.name)
    connections = [row for t in server.traffic.values() for row in t.connection_rows(now)]
    connections.sort(key=lambda row: -row.age_s)
    traffic = [t.row(name) for name, t in sorted(server.traffic.items())]
    traffic += [row.traffic() for row in services if row.type == "udp"]
    return ServerStatus(
        version=__version__,
        bind=format_host_port(server.config.bind_host, server.port or server.config.bind_port),
        tls=server.tls.fingerprint if server.tls else None,
        uptime_s=now - server.started,
        auth_failures=server.auth_failures,
        sessions=tuple(sessions),
        services=tuple(services),
        connections=tuple(connections),
        traffic=tuple(traffic),
        web=_web_row(server.web) if server.web is not None else None,
        web_traffic=tuple(web_rows.values()),
        refusals=dict(server.refusals.counts),
        groups=tuple(groups),
        admissions=server.rate_limits.rows(),
        cluster=server.cluster.row() if server.cluster is not None else None,
        resume=server.resumable.row(client.session for client in server.sessions.values()),
    )


_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _web_row(web: WebFront) -> WebRow:
    """The web ports as a status row."""
    counters = web.engine.counters
    return WebRow(
        domain=web.front.domain,
        http=web.address("http"),
        https=web.address("https"),
        terminates_tls=web.tls is not None,
        connections_total=counters.connections,
        refusals=dict(counters.refusals),
        internal_errors=counters.internal_errors,
    )


def _web_traffic(web: WebFront) -> list[WebTrafficRow]:
    """Per service name, everything the engine counted (names outlive registrations)."""
    rows = []
    for name, counters in sorted(web.engine.counters.services.items()):
        responses = dict(zip(_CLASSES, counters.responses, strict=True))
        rows.append(WebTrafficRow(name, responses, dict(counters.refusals), counters.tunnels))
    return rows
