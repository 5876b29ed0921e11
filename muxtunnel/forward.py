"""The visitor plumbing both sides share: count, guard, meter, compress, pipe, log.

A visitor is one TCP connection through the tunnel: on the server, the visitor's socket and the
mux stream opened for it; on the client, that stream and the socket to the local service. Both
sides, for each visitor:

- count it in a `Visitors` tracker while it is in flight, so that a graceful stop waits for the
  count to reach zero on an event (no polling);
- run its handler behind a barrier (`guarded`): a bug costs this visitor only (logged, its
  connection aborted), never the session or the process;
- `forward` its bytes: metered as they flow (the admin API and metrics read the live counts,
  an idle timeout reads the time of the last byte and may cut it through `meter.scope`), the
  tunnel side compressed if agreed, piped both ways with half-close (by a `Relay`, the socket's
  own protocol, when neither compression nor a bandwidth limit is in the way; by a `Splice`
  when the "socket" is itself a mux stream of another session), and one
  "visitor closed" line with the byte counts: at debug level when both ways ended cleanly (a
  busy service sees thousands of visitors a second; the metrics count them), at info when the
  visitor failed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc
import structlog

from mux import MuxStream, take_over
from muxtunnel.compress import CompressedStream
from muxtunnel.limits import ConnectionMeter, MeteredStream, ServiceLimiter, ServiceTraffic
from muxtunnel.log import debug_enabled
from muxtunnel.proxy import PipeResult, pipe
from muxtunnel.relay import Observer, Relay
from muxtunnel.sockets import connect_protocol
from muxtunnel.splice import Splice
from muxtunnel.transport import abort, take_slot

__all__ = ["Visitors", "forward", "forward_to", "guarded", "relayable"]

log = structlog.get_logger("muxtunnel.forward")
#: Visitor handlers that raised, in this process (see `guarded`).
_handler_failures = 0


class Visitors:
    """Visitors in flight, counted; `drained()` waits until none is left.

    A tracker may have a parent (a service's inside its server's): a visitor counted in one is
    counted in its parents too, so a per-service limit and a whole-process drain read the same
    counts and nobody has to add them up.
    """

    __slots__ = ("_idle", "_parent", "count", "total")

    def __init__(self, parent: Visitors | None = None) -> None:
        self.count = 0
        self.total = 0
        self._parent = parent
        self._idle: anyio.Event | None = None  # made by the first waiter, set at zero

    @contextmanager
    def track(self) -> Iterator[None]:
        """Count one visitor for the duration of the `with` block."""
        self._enter()
        try:
            yield
        finally:
            self._leave()

    def _enter(self) -> None:
        self.count += 1
        self.total += 1
        if self._parent is not None:
            self._parent._enter()

    def _leave(self) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()
            self._idle = None
        if self._parent is not None:
            self._parent._leave()

    async def drained(self) -> None:
        """Return once no visitor is in flight (at once if none is)."""
        while self.count:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()


async def guarded(
    handler: Awaitable[None], connection: anyio.abc.ByteStream, **context: object
) -> None:
    """Await one visitor's handler; a bug in it costs this visitor only, never the process.

    The exception is logged with `context` (at counts 1, 2, 4, ...: a bug a visitor can trigger
    must not let it write the log), and `connection` (the visitor's socket, or its mux stream) is
    aborted, so that its peer sees a failure rather than a hang.
    """
    global _handler_failures
    try:
        await handler
    except Exception:
        # A bug, which a visitor may be able to trigger at will: tracebacks at counts 1, 2, 4...
        _handler_failures += 1
        if _handler_failures & (_handler_failures - 1) == 0:
            log.exception("visitor handler failed", count=_handler_failures, **context)
        await abort(connection)


async def forward(
    socket: anyio.abc.ByteStream,
    stream: anyio.abc.ByteStream,
    *,
    visitor_side: bool,
    service: str,
    peer: str,
    traffic: ServiceTraffic,
    compression_level: int | None = None,
    limiter: ServiceLimiter | None = None,
    preamble: bytes = b"",
    sent_early: int = 0,
    **context: object,
) -> PipeResult:
    """Pipe one visitor between `socket` and its mux `stream` until both ways have ended.

    `socket` is the visitor's own connection when `visitor_side` (the server), the local service's
    otherwise (the client), or a mux stream of another session (a private service's visitor on the
    server: the two streams are spliced); either way, bytes from the visitor count as `bytes_in` and
    the pipe's forward direction. `compression_level` (None: off) compresses the tunnel side;
    `limiter` throttles the socket side. `preamble` goes down the tunnel first, before the visitor's
    bytes (a PROXY protocol header). `sent_early` visitor bytes already went down the stream with
    its SYN (see `relayable`): they count as forwarded. `context` goes into both log lines.
    """
    started = time.monotonic()
    if debug_enabled():
        log.debug("visitor opened", **context, service=service, peer=peer)
    meter = traffic.open(service, peer)
    meter.bytes_in += sent_early
    if not visitor_side and isinstance(stream, MuxStream):
        _count_out_as_taken(meter, stream)
    try:
        tunnel: anyio.abc.ByteStream = stream
        if compression_level is not None:
            tunnel = compressed = CompressedStream(stream, compression_level)
            meter.carrier = lambda: (
                compressed.plain_sent + compressed.plain_received,
                compressed.wire_sent + compressed.wire_received,
            )
        if preamble:
            try:
                await tunnel.send(preamble)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                await abort(socket)
                await abort(stream)
                return PipeResult(error="the tunnel failed before the visitor's first byte")
        result: PipeResult | None = None
        with anyio.CancelScope() as meter.scope:  # an idle timeout may cancel it
            taken = None
            direct = relayable(compression_level, limiter) and isinstance(stream, MuxStream)
            if direct and isinstance(socket, MuxStream):  # a stream of another session
                assert isinstance(stream, MuxStream)
                ends = (socket, stream) if visitor_side else (stream, socket)
                result = await Splice(*ends, meter).run()
            else:
                if direct:
                    assert isinstance(stream, MuxStream)
                    relay = Relay(stream, meter, visitor_side=visitor_side)
                    taken = take_over(socket, relay)  # None: not an asyncio socket (trio)
                if taken is not None:
                    result = await relay.run(*taken)
                else:
                    result = await _pipe(socket, tunnel, meter, visitor_side, limiter)
        if result is None:  # cut from outside (both ends were aborted)
            error = "idle timeout" if meter.idle_closed else "cancelled"
            result = PipeResult(meter.bytes_in, meter.bytes_out, error)
        else:
            result.forward_bytes += sent_early
    finally:
        meter.scope = None
        traffic.close(meter)
    _closed(result, started, service, peer, context)
    return result


def _count_out_as_taken(meter: ConnectionMeter, stream: MuxStream) -> None:
    """On the client, bytes out are counted as read from the local service, which may be long
    before the visitor takes them: its rates and live totals follow the server's reader
    instead, as far as the stream's credit tells (`MuxStream.unconsumed_bytes`)."""
    meter.pending_out = lambda: stream.unconsumed_bytes


def relayable(compression_level: int | None, limiter: ServiceLimiter | None) -> bool:
    """Will `forward` relay the bytes as they come (no compression, no bandwidth limit)? Then
    the bytes a visitor sent first may ride its stream's SYN (`sent_early`)."""
    throttled = limiter is not None and (
        limiter.inbound is not None or limiter.outbound is not None
    )
    return compression_level is None and not throttled


async def forward_to(
    host: str,
    port: int,
    stream: MuxStream,
    *,
    service: str,
    peer: str,
    traffic: ServiceTraffic,
    connect_timeout_s: float,
    dial_slots: anyio.Semaphore | None = None,
    greeting: bytes = b"",
    observer: Observer | None = None,
    **context: object,
) -> PipeResult:
    """The client's `forward` without compression: dial the local service with a `Relay` as
    the socket's protocol from the start, holding one of `dial_slots` while it connects, and
    `greeting` on the stream first once connected; `observer` sees a copy of the bytes (the
    inspector's tap). `TransportError` if the service cannot be reached."""
    started = time.monotonic()
    meter = ConnectionMeter(service, peer)  # counted once connected: bytes may come first
    _count_out_as_taken(meter, stream)
    relay = Relay(stream, meter, visitor_side=False, greeting=greeting, observer=observer)
    if dial_slots is not None:
        await take_slot(dial_slots)
    try:
        transport = await connect_protocol(host, port, relay, timeout_s=connect_timeout_s)
    finally:
        if dial_slots is not None:
            dial_slots.release()
    traffic.add(meter)
    try:
        if debug_enabled():
            log.debug("visitor opened", **context, service=service, peer=peer)
        result = await relay.run(transport, b"", False)
    finally:
        traffic.close(meter)
    _closed(result, started, service, peer, context)
    return result


def _closed(
    result: PipeResult, started: float, service: str, peer: str, context: dict[str, object]
) -> None:
    if result.error is None and not debug_enabled():
        return
    (log.debug if result.error is None else log.info)(
        "visitor closed",
        **context,
        service=service,
        peer=peer,
        bytes_in=result.forward_bytes,
        bytes_out=result.backward_bytes,
        duration_s=round(time.monotonic() - started, 3),
        error=result.error,
    )


async def _pipe(
    socket: anyio.abc.ByteStream,
    tunnel: anyio.abc.ByteStream,
    meter: ConnectionMeter,
    visitor_side: bool,
    limiter: ServiceLimiter | None,
) -> PipeResult:
    """The general path: a task per direction, through the meter, limiter and compression."""
    metered = MeteredStream(
        socket,
        meter,
        receive_is_in=visitor_side,
        receive_bucket=limiter.inbound if limiter is not None else None,
        send_bucket=limiter.outbound if limiter is not None else None,
    )
    if visitor_side:
        return await pipe(metered, tunnel)
    return await pipe(tunnel, metered)
