"""Per-service limits and live traffic meters.

- `TokenBucket`: bytes per second with a short burst; `consume` may run into debt and then
  sleeps it off, so a large read costs its full time and the long-run rate is exact.
- `ServiceLimiter`: what the server enforces for one service name (bandwidth each direction,
  concurrent connections). It outlives registrations and is updated in place on reload, so a
  changed limit reaches connections that are already running.
- `ConnectionMeter` / `ServiceTraffic`: bytes of each live connection, counted as they flow (the
  admin API and the metrics read them mid-transfer), and per-service totals that never go back.
- `MeteredStream`: the `ByteStream` wrapper around a visitor (server) or target (client) socket
  that counts, and throttles when given buckets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from muxtunnel.model import ServicePolicy
from muxtunnel.status import ConnectionRow, TrafficRow
from muxtunnel.transport import abort

__all__ = [
    "ConnectionMeter",
    "MeteredStream",
    "ServiceLimiter",
    "ServiceTraffic",
    "TokenBucket",
]

#: Burst of a bandwidth limit, as seconds of its rate: short enough that a 3 s average stays
#: within a few percent of the limit, long enough to absorb the jitter of the event loop.
BURST_S = 0.05
#: Smallest burst, so that tiny limits still let a whole small read through at once.
MIN_BURST_BYTES = 4 * 1024


class TokenBucket:
    """`rate` bytes per second; starts full with `BURST_S` worth of bytes."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        self.rate = 1.0
        self.burst = float(MIN_BURST_BYTES)
        self.set_rate(rate_bytes_per_s)
        self._tokens = self.burst
        self._updated = anyio.current_time()

    def set_rate(self, rate_bytes_per_s: float) -> None:
        if rate_bytes_per_s <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate_bytes_per_s)
        self.burst = max(float(MIN_BURST_BYTES), self.rate * BURST_S)

    @property
    def chunk_bytes(self) -> int:
        """A read size that keeps one read's debt within about one burst."""
        return int(self.burst)

    async def consume(self, size: int) -> None:
        """Take `size` bytes' worth; sleeps while the bucket is in debt."""
        now = anyio.current_time()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= size
        if self._tokens < 0:
            await anyio.sleep(-self._tokens / self.rate)


class ServiceLimiter:
    """Limits the server enforces on one service name, whoever registers it."""

    def __init__(self, policy: ServicePolicy | None = None) -> None:
        self.inbound: TokenBucket | None = None  # visitor -> service
        self.outbound: TokenBucket | None = None  # service -> visitor
        self.max_connections: int | None = None
        #: Its visitors' idle timeout (None: the server's; 0: none).
        self.idle_timeout_s: float | None = None
        self.update(policy)

    def update(self, policy: ServicePolicy | None) -> None:
        rate = policy.bandwidth_bytes_per_s if policy else None
        self.max_connections = policy.max_connections if policy else None
        self.idle_timeout_s = policy.idle_timeout_s if policy else None
        if rate is None:
            self.inbound = self.outbound = None
        elif self.inbound is None or self.outbound is None:
            self.inbound, self.outbound = TokenBucket(rate), TokenBucket(rate)
        else:
            self.inbound.set_rate(rate)
            self.outbound.set_rate(rate)

    def connections_allowed(self, server_cap: int) -> int:
        """Visitor connections the service may have open: the lower of the server's cap
        (`max_visitors_per_service`) and its own `max_connections`."""
        if self.max_connections is None:
            return server_cap
        return min(server_cap, self.max_connections)

    def describe(self) -> dict[str, int | None]:
        """The limits in force, as the status document shows them."""
        return {
            "bandwidth_bytes_per_s": int(self.inbound.rate) if self.inbound else None,
            "max_connections": self.max_connections,
        }


@dataclass(eq=False, slots=True)
class ConnectionMeter:
    """One live visitor connection. `bytes_in` flows towards the service, `bytes_out` back."""

    service: str
    peer: str
    started: float = field(default_factory=anyio.current_time)
    started_wall: float = field(default_factory=time.time)
    bytes_in: int = 0
    bytes_out: int = 0
    #: When the last byte went either way (`anyio.current_time()`): what idle timeouts read.
    last_active: float = field(default_factory=anyio.current_time)
    #: Cancelling it ends the connection (both ends aborted); set while it is forwarded.
    scope: anyio.CancelScope | None = None
    #: It was ended for having been idle.
    idle_closed: bool = False
    #: On the client, where `bytes_out` is counted as the local service's bytes are read: how
    #: many of them the visitor's side has not taken yet (still in the tunnel's buffers).
    pending_out: Callable[[], int] | None = None
    #: With compression: the tunnel side's bytes both ways, (as the visitor's, compressed).
    carrier: Callable[[], tuple[int, int]] | None = None

    @property
    def moved_out(self) -> int:
        """`bytes_out` that reached the visitor's side: what totals and rates of live
        connections show, so a download's rate follows the visitor, not our buffers."""
        pending = self.pending_out
        return self.bytes_out if pending is None else max(0, self.bytes_out - pending())


class ServiceTraffic:
    """Byte totals of one service name: closed connections plus the live ones, read any time."""

    def __init__(self) -> None:
        self.closed_in = 0
        self.closed_out = 0
        self.connections_total = 0
        self.live: set[ConnectionMeter] = set()
        #: Compressed connections' tunnel bytes both ways: as the visitor's, and compressed.
        self.closed_plain = self.closed_compressed = 0

    def open(self, service: str, peer: str) -> ConnectionMeter:
        return self.add(ConnectionMeter(service, peer))

    def add(self, meter: ConnectionMeter) -> ConnectionMeter:
        """Count a connection whose meter was made before it was known to succeed."""
        self.live.add(meter)
        self.connections_total += 1
        return meter

    def close(self, meter: ConnectionMeter) -> None:
        if meter in self.live:
            self.live.discard(meter)
            self.closed_in += meter.bytes_in
            self.closed_out += meter.bytes_out
            if meter.carrier is not None:
                plain, compressed = meter.carrier()
                self.closed_plain += plain
                self.closed_compressed += compressed

    @property
    def bytes_in(self) -> int:
        return self.closed_in + sum(meter.bytes_in for meter in self.live)

    @property
    def bytes_out(self) -> int:
        return self.closed_out + sum(meter.moved_out for meter in self.live)

    def carrier_bytes(self) -> dict[str, int] | None:
        """Bytes of compressed connections on the tunnel, both ways, before and after
        compression (None: no connection was compressed)."""
        plain, compressed = self.closed_plain, self.closed_compressed
        live = [meter.carrier() for meter in self.live if meter.carrier is not None]
        if not live and not compressed:
            return None
        for more_plain, more_compressed in live:
            plain += more_plain
            compressed += more_compressed
        return {"plain": plain, "compressed": compressed}

    def row(self, name: str) -> TrafficRow:
        """The service's counters as a status row."""
        return TrafficRow(
            name, self.bytes_in, self.bytes_out, len(self.live), self.connections_total
        )

    def connection_rows(self, now: float) -> list[ConnectionRow]:
        """The live connections as status rows (unsorted)."""
        return [
            ConnectionRow(m.service, m.peer, now - m.started, m.bytes_in, m.moved_out)
            for m in self.live
        ]


class MeteredStream(anyio.abc.ByteStream):
    """Counts (and, with buckets, throttles) the bytes of one socket as they pass.

    `receive_is_in`: True when bytes received from `inner` flow towards the service (the
    server's visitor socket), False when they flow back (the client's target socket).
    `receive_bucket` / `send_bucket` throttle each direction.
    """

    def __init__(
        self,
        inner: anyio.abc.ByteStream,
        meter: ConnectionMeter,
        *,
        receive_is_in: bool,
        receive_bucket: TokenBucket | None = None,
        send_bucket: TokenBucket | None = None,
    ) -> None:
        self.inner = inner
        self.meter = meter
        self.receive_is_in = receive_is_in
        self.receive_bucket = receive_bucket
        self.send_bucket = send_bucket
        self._aborting = False
        #: The idle clock: anyio's `current_time` is the loop's `time` on asyncio (uvloop too),
        #: read here without anyio's backend lookup (~2.5 us a call, two calls an exchange).
        try:
            self._now: Callable[[], float] = asyncio.get_running_loop().time
        except RuntimeError:  # another backend
            self._now = anyio.current_time

    async def receive(self, max_bytes: int = 65536) -> bytes:
        bucket = self.receive_bucket
        if bucket is not None:
            max_bytes = max(1, min(max_bytes, bucket.chunk_bytes))
        data = await self.inner.receive(max_bytes)
        meter = self.meter
        meter.last_active = self._now()
        if self.receive_is_in:
            meter.bytes_in += len(data)
        else:
            meter.bytes_out += len(data)
        if bucket is not None:
            await bucket.consume(len(data))
        return data

    async def send(self, item: bytes) -> None:
        bucket = self.send_bucket
        if bucket is None:
            await self.inner.send(item)
            self._count_sent(len(item))
            return
        view = memoryview(item)
        step = bucket.chunk_bytes
        for offset in range(0, len(view), step):
            piece = view[offset : offset + step]
            await bucket.consume(len(piece))
            await self.inner.send(bytes(piece))
            self._count_sent(len(piece))

    def _count_sent(self, size: int) -> None:
        self.meter.last_active = self._now()
        if self.receive_is_in:
            self.meter.bytes_out += size
        else:
            self.meter.bytes_in += size

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        if self._aborting:
            await abort(self.inner)
        else:
            await self.inner.aclose()

    def reset(self) -> None:
        """Make the coming `aclose` abortive (`transport.abort`: RST for a socket)."""
        self._aborting = True

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes
