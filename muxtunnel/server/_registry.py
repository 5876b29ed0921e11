"""The services registered on a server: by name and by (type, port), with their live counters.

A public port belongs to the service (name, and the token it proved) that holds it. When the
service's session ends, the port stays reserved for it for `port_reservation_s`: its client
reconnects and asks for the same port, and nobody else may take it meanwhile (an explicit
Unregister, or the server closing the service, gives the port up at once).

A member of a load-balancing group is an `ActiveService` of its session too (its `member` says
how the group reaches it), but not in `Registry.by_name`: its group (`GroupService`, kept by
`_groups.Groups`) holds the public name, the port and the visitors.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio
import structlog

from mux import MuxStream, Session
from muxtunnel.balance.group import Group
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.log import log_doubling
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, WEB_TYPES, ServerConfig, ServiceType
from muxtunnel.quota import Quota, Share
from muxtunnel.specs import format_host_port
from muxtunnel.status import ServiceRow
from muxtunnel.udp import UdpCounters

__all__ = [
    "ActiveService", "ClusterError", "GroupService", "MemberHandle", "RegistrationError",
    "Registry", "Reservation", "admit_web_visitor",
]  # fmt: skip

log = structlog.get_logger("muxtunnel.server")


class ClusterError(Exception):
    """A cluster node cannot take its place (bad settings, its node id in use); the message is
    meant for the user."""


class RegistrationError(Exception):
    """A registration is refused; `code` is the control protocol's error code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class ActiveService:
    """A registered service: its public socket's scopes and live counters."""

    name: str
    type: ServiceType
    port: int
    session_id: int
    #: Its TCP visitors in flight (counted in the server's tracker too).
    in_flight: Visitors
    #: The key its client proved it holds: a reservation of its port is for this key only.
    key: bytes = b""
    #: Its share of the session's streams (one per TCP visitor or UDP flow).
    streams: Share = field(default_factory=lambda: Quota(1 << 30).share("-"))
    #: Its share of the session's compression memory (bytes).
    compression_memory: Share = field(default_factory=lambda: Quota(1 << 40).share("-"))
    #: Visitors in flight per source address (`sources.address_key`).
    sources: Counter[str] = field(default_factory=Counter)
    #: Set when the port is given up on purpose (Unregister, closed by the server): no
    #: reservation is kept for it.
    released: bool = False
    #: Cancelled: the service and all its visitors stop.
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Cancelled: the public socket closes, open visitor connections carry on.
    listener_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    udp: UdpCounters = field(default_factory=UdpCounters)
    started: float = field(default_factory=anyio.current_time)
    #: Agreed at registration: visitor streams are compressed with this (None: not at all).
    compression: str | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    #: The client takes visitor streams uncompressed when their header says so.
    compression_fallback: bool = False
    #: Set once the public socket is closed and the service's tasks are over.
    ended: anyio.Event = field(default_factory=anyio.Event)
    #: http/https: where visitors reach it (no public socket of its own).
    urls: tuple[str, ...] = ()
    #: tcp: a PROXY protocol header ("v1"/"v2") starts every visitor stream.
    proxy_protocol: str | None = None
    #: Its client's session ended (a web service's names then wait out a grace for it).
    session_lost: bool = False
    #: A load-balancing group's member: how its group reaches it (None: not a member).
    member: MemberHandle | None = None
    #: No public port: visitors come through `muxtunnel visit` (`_visit`), with one of its
    #: provider's `visitor_keys` or the server policy's (`_private.PrivateBook`).
    private: bool = False
    visitor_keys: frozenset[bytes] = frozenset()
    #: Private: the provider's session (visitor streams are opened on it), and the scopes of
    #: the visitors spliced to it, cut when the service ends.
    provider: Session | None = None
    splices: set[anyio.CancelScope] = field(default_factory=set)

    @property
    def holds_port(self) -> bool:
        """A port of its own: tcp and udp services, except private ones."""
        return self.type not in WEB_TYPES and not self.private

    @property
    def visitors(self) -> int:
        """TCP visitors in flight."""
        return self.in_flight.count

    def row(
        self,
        public_host: str,
        traffic: ServiceTraffic | None,
        limiter: ServiceLimiter | None,
        responses: Mapping[str, int] | None = None,
        visitor_sessions: int = 0,
    ) -> ServiceRow:
        """The service as a status row (`traffic`, `limiter`, `responses` are its name's)."""
        udp = self.udp
        if self.type == "udp":  # counted by the forwarder, per registration
            bytes_in, bytes_out, total = udp.bytes_in, udp.bytes_out, udp.flows_opened
        else:
            bytes_in = traffic.bytes_in if traffic is not None else 0
            bytes_out = traffic.bytes_out if traffic is not None else 0
            total = self.in_flight.total
        public = format_host_port(public_host, self.port)
        if self.type in WEB_TYPES:
            public = self.urls[0] if self.urls else public
        elif self.private:
            public = "private"
        return ServiceRow(
            name=self.name,
            type=self.type,
            public=public,
            open_connections=0 if self.type == "udp" else self.visitors,
            connections_total=total,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            compression=self.compression,
            carrier_bytes=traffic.carrier_bytes() if traffic is not None else None,
            udp_dropped=udp.dropped() if self.type == "udp" else None,
            session=self.session_id,
            limits=limiter.describe() if limiter is not None else {},
            urls=self.urls,
            responses=responses,
            private=self.private,
            visitor_sessions=visitor_sessions,
        )


@dataclass(eq=False)
class MemberHandle:
    """A group member as its group sees it: the session to open visitor streams on, and the
    registration they are for."""

    session: Session
    service: ActiveService
    #: Its id in the group: `CLIENT-NAME/SERVICE`, stable across reconnects (hashed keys
    #: come back to it), `#2`... added when another process already holds that id.
    member_id: str
    group: str
    #: The random id of its client process (`Register.instance`).
    instance: bytes
    #: What the member's last health check saw, as its client reported it.
    detail: str = ""
    #: Visitor streams open on it, reset when it leaves the group.
    streams: set[MuxStream] = field(default_factory=set)


@dataclass(eq=False)
class GroupService:
    """One live group: its public socket (or web routes), members, visitors and counters."""

    name: str
    type: ServiceType
    port: int
    group: Group[MemberHandle]
    #: Public key of the group token (None: the group has none); `configured`: from the config.
    key: bytes | None
    configured: bool
    in_flight: Visitors
    udp: UdpCounters = field(default_factory=UdpCounters)
    #: Cancelled: the public socket closes and every visitor of the group is cut.
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Cancelled: the public socket closes, visitors already in carry on.
    listener_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    started: float = field(default_factory=anyio.current_time)
    ended: anyio.Event = field(default_factory=anyio.Event)
    urls: tuple[str, ...] = ()
    #: Visitors in flight per source address (`sources.address_key`).
    sources: Counter[str] = field(default_factory=Counter)
    retries_total: int = 0
    failed_total: int = 0

    def visitor_failed(self, why: str) -> None:
        """A visitor no member could take: counted, and logged at doubling counts."""
        self.failed_total += 1
        log_doubling(log, "group visitor failed", self.failed_total, group=self.name, why=why)


def admit_web_visitor(
    service: ActiveService, config: ServerConfig, limiter: ServiceLimiter
) -> str | None:
    """Why a web service's new visitor gets no stream to its client (None: it took one of the
    service's share of streams, to give back with `service.streams.give_back()`)."""
    limit = config.max_visitors_per_service
    if limiter.max_connections is not None:
        limit = min(limit, limiter.max_connections)
    if service.visitors >= limit:
        return f"service {service.name!r} has {limit} connections open"
    if not service.streams.take():
        return f"service {service.name!r} has its share of its session's streams"
    return None


@dataclass(frozen=True, slots=True)
class Reservation:
    """A port kept for the service that held it until `until` (`anyio.current_time()`)."""

    name: str
    key: bytes
    until: float

    def belongs_to(self, name: str, key: bytes) -> bool:
        """Is this the same service, proven with the same token?"""
        return name == self.name and hmac.compare_digest(key, self.key)


class Registry:
    """Live services of all sessions, by name and by (type, port): tcp and udp services hold
    a port of their own (and keep it reserved a while after their session), web services share
    the server's web ports."""

    def __init__(self) -> None:
        self.by_name: dict[str, ActiveService] = {}
        self.ports: set[tuple[str, int]] = set()
        #: Ports of services whose session ended, kept for them (at most one per port).
        self.reserved: dict[tuple[str, int], Reservation] = {}
        #: Names that left the registry, and when: per-name state is kept a while for them.
        self.retired: dict[str, float] = {}

    def add(self, service: ActiveService) -> None:
        """Register `service` (its name and port must be free: the caller checked)."""
        self.by_name[service.name] = service
        if service.holds_port:
            self.ports.add((service.type, service.port))
            self.reserved.pop((service.type, service.port), None)
        self.retired.pop(service.name, None)

    def remove(self, service: ActiveService, reserve_s: float = 0.0) -> None:
        """Unregister `service`, and cancel it (its public socket and its visitors).

        Unless it was `released`, its port is reserved for it for `reserve_s` seconds.
        """
        if self.by_name.get(service.name) is service:
            now = anyio.current_time()
            del self.by_name[service.name]
            self.retired[service.name] = now
            if service.holds_port:
                self.ports.discard((service.type, service.port))
                if reserve_s > 0 and not service.released:
                    self.reserved[(service.type, service.port)] = Reservation(
                        service.name, service.key, now + reserve_s
                    )
        service.streams.leave()
        service.compression_memory.leave()
        service.scope.cancel()

    def reservation(self, type: str, port: int) -> Reservation | None:
        """The reservation in force on `(type, port)`, if any (expired ones are dropped)."""
        found = self.reserved.get((type, port))
        if found is not None and found.until <= anyio.current_time():
            del self.reserved[(type, port)]
            return None
        return found

    def expire(self) -> None:
        """Drop the reservations that have run out (bounded anyway: one per port)."""
        now = anyio.current_time()
        for where in [where for where, r in self.reserved.items() if r.until <= now]:
            del self.reserved[where]
