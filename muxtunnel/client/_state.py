"""What the client knows of each service, how its failures are told apart, its timeouts."""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import structlog

from mux import MuxStream
from muxtunnel.limits import ServiceTraffic
from muxtunnel.model import ServiceSpec
from muxtunnel.status import ServiceRow
from muxtunnel.udp import UdpCounters

if TYPE_CHECKING:  # loaded only by a client with health checks
    from muxtunnel.balance.probe import HealthMonitor

__all__ = [
    "CONTROL_TIMEOUT_S",
    "HEADER_TIMEOUT_S",
    "Announce",
    "FatalError",
    "RetryableError",
    "ServerGone",
    "ServiceState",
    "backoff_s",
]

log = structlog.get_logger("muxtunnel.client")

#: How long the server may take to answer a control request (and a TLS handshake to finish).
CONTROL_TIMEOUT_S = 10.0
#: How long the server may take to send a visitor stream's header after opening it.
HEADER_TIMEOUT_S = 10.0


class FatalError(Exception):
    """A failure to report to the user and exit on; the message is one readable line."""


class RetryableError(Exception):
    """A failure worth another attempt after the backoff."""


class ServerGone(RetryableError):
    """The server's address refuses connections: its process is not there (a session it held
    is lost with it, so resuming is pointless; registering afresh is worth retrying)."""


def backoff_s(attempt: int, low_s: float, high_s: float) -> float:
    """Exponential backoff with jitter: about low·2^attempt, capped at high, never in lock step."""
    ceiling = min(high_s, low_s * (2 ** min(attempt, 30)))
    return max(low_s, random.uniform(ceiling / 2, ceiling))


@dataclass(slots=True)
class ServiceState:
    """What the client knows about a service while it runs."""

    spec: ServiceSpec
    #: The public address the server gave it, while registered.
    public: str | None = None
    #: The port the server picked, asked for again after a reconnect so that visitors keep it.
    remote_port: int = 0
    udp: UdpCounters = field(default_factory=UdpCounters)
    #: Its UDP flows, least recently opened first (the first to go past `udp_max_flows`).
    flows: OrderedDict[int, MuxStream] = field(default_factory=OrderedDict)
    #: Agreed with the server at registration (None: visitor bytes travel as they are), and
    #: the level both sides compress with (the server's cap applies to ours too).
    compression: str | None = None
    compression_level: int = 0
    #: http/https: every URL the server routes to it (`public` is the first).
    urls: tuple[str, ...] = ()
    #: A group member: its id in the group (from the server), its health check and the scope
    #: that runs it, and what the check last saw.
    member: str | None = None
    monitor: HealthMonitor | None = None
    check_scope: anyio.CancelScope | None = None
    health_detail: str = ""

    @property
    def healthy(self) -> bool | None:
        """What its health check says now (None: no check, or no answer yet)."""
        return self.monitor.healthy if self.monitor is not None else None

    def health(self) -> str | None:
        """The health check's verdict for status rows (None: the service has no check)."""
        if self.monitor is None:
            return None
        healthy = self.monitor.healthy
        if healthy is None:
            return "unknown"
        verdict = "healthy" if healthy else "unhealthy"
        return f"{verdict}: {self.health_detail}" if self.health_detail else verdict

    def agree_compression(self, compression: str | None, level: int | None) -> None:
        """What the server agreed to (`Registered`); says so when it refused or lowered ours."""
        spec = self.spec
        self.compression = compression if spec.compression else None
        # An older server says no level: ours, as it was then.
        self.compression_level = level or spec.compression_level
        if spec.compression and self.compression is None:
            log.warning(
                "compression refused",
                service=spec.name,
                asked=spec.compression,
                hint="the server's policy for this service turns it off: bytes travel as they are",
            )
        elif spec.compression and self.compression_level < spec.compression_level:
            log.info(
                "compression level lowered",
                service=spec.name,
                asked=spec.compression_level,
                capped_to=self.compression_level,
                hint="the server caps it (server.compression_level_max)",
            )

    def row(self, traffic: ServiceTraffic | None) -> ServiceRow:
        """The service as a status row (`traffic`: its TCP meters, if any visitor came)."""
        spec, udp = self.spec, self.udp
        dropped = None
        if spec.type == "udp":
            # The client's UDP counters see datagrams from the local service as `in` (they
            # go into the stream) and those to it as `out`: the other way round of a row's.
            open_, total = len(self.flows), udp.flows_opened
            bytes_in, bytes_out = udp.bytes_out, udp.bytes_in
            dropped = udp.dropped()
        elif traffic is None:
            open_ = total = bytes_in = bytes_out = 0
        else:
            open_, total = len(traffic.live), traffic.connections_total
            bytes_in, bytes_out = traffic.bytes_in, traffic.bytes_out
        return ServiceRow(
            name=spec.name,
            type=spec.type,
            public=self.public,
            open_connections=open_,
            connections_total=total,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            compression=self.compression,
            carrier_bytes=traffic.carrier_bytes() if traffic is not None else None,
            udp_dropped=dropped,
            local=spec.local,
            urls=self.urls if self.public else (),
            group=spec.group.name if spec.group is not None else None,
            health=self.health(),
        )


#: Called once a service is registered (the command line prints its public address).
Announce = Callable[[ServiceState], None]
