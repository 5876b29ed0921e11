"""The services registered on a server: by name and by (type, port), with their live counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio

from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, WEB_TYPES, ServiceType
from muxtunnel.specs import format_host_port
from muxtunnel.status import ServiceRow
from muxtunnel.udp import UdpCounters

__all__ = ["ActiveService", "RegistrationError", "Registry"]


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
    #: Cancelled: the service and all its visitors stop.
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Cancelled: the public socket closes, open visitor connections carry on.
    listener_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    udp: UdpCounters = field(default_factory=UdpCounters)
    started: float = field(default_factory=anyio.current_time)
    #: Agreed at registration: visitor streams are compressed with this (None: not at all).
    compression: str | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    #: Set once the public socket is closed and the service's tasks are over.
    ended: anyio.Event = field(default_factory=anyio.Event)
    #: http/https: where visitors reach it (no public socket of its own).
    urls: tuple[str, ...] = ()
    #: tcp: a PROXY protocol header ("v1"/"v2") starts every visitor stream.
    proxy_protocol: str | None = None
    #: Its client's session ended (a web service's names then wait out a grace for it).
    session_lost: bool = False

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
        return ServiceRow(
            name=self.name,
            type=self.type,
            public=public,
            open_connections=0 if self.type == "udp" else self.visitors,
            connections_total=total,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            compression=self.compression,
            udp_dropped=udp.dropped() if self.type == "udp" else None,
            session=self.session_id,
            limits=limiter.describe() if limiter is not None else {},
            urls=self.urls,
            responses=responses,
        )


class Registry:
    """Live services of all sessions, by name and by (type, port): tcp and udp services hold
    a port of their own, web services share the server's web ports."""

    def __init__(self) -> None:
        self.by_name: dict[str, ActiveService] = {}
        self.ports: set[tuple[str, int]] = set()

    def add(self, service: ActiveService) -> None:
        """Register `service` (its name and port must be free: the caller checked)."""
        self.by_name[service.name] = service
        if service.type not in WEB_TYPES:
            self.ports.add((service.type, service.port))

    def remove(self, service: ActiveService) -> None:
        """Unregister `service`, and cancel it (its public socket and its visitors)."""
        if self.by_name.get(service.name) is service:
            del self.by_name[service.name]
            if service.type not in WEB_TYPES:
                self.ports.discard((service.type, service.port))
        service.scope.cancel()
