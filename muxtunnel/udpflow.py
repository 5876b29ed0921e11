"""The ends of a UDP flow's stream that are not a public socket: the client's connected socket
towards its local service (`serve_flow`) and the server's splice of a visitor's flow onto a
provider's (`relay_flow`). The framing, counters and the server's public side are in `udp`.
"""

from __future__ import annotations

import contextlib
import time

import anyio

from mux import MuxStream
from muxtunnel.datagrams import open_udp
from muxtunnel.transport import Address, TransportError
from muxtunnel.udp import (
    MAX_DATAGRAM_BYTES,
    DatagramReader,
    DatagramSink,
    UdpCounters,
    frame,
    queue_datagram,
)

_FAILURES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


async def serve_flow(
    stream: MuxStream,
    target: Address,
    counters: UdpCounters,
    *,
    idle_s: float | None = None,
    dial_slots: anyio.Semaphore | None = None,
) -> None:
    """Client side of one flow: a connected UDP socket towards the local service.

    The server owns the flow's lifetime (idle expiry, eviction) and ends the stream, which ends
    this socket; `idle_s` lets the client end an idle flow sooner, on its own terms. The socket
    is opened holding one of `dial_slots` (its service's: see the client's visitors).
    """
    ended = anyio.Event()
    sink: DatagramSink | None = None

    def from_target(datagram: bytes, _: Address) -> None:
        if sink is not None:
            sink.last_active = time.monotonic()
        queue_datagram(stream, datagram, counters)

    try:
        async with dial_slots if dial_slots is not None else contextlib.nullcontext():
            endpoint = await open_udp(from_target, remote=target)
    except TransportError:
        stream.reset()
        return
    sink = DatagramSink(stream, endpoint.send_many, counters, ended.set)

    async def expire() -> None:
        assert idle_s is not None and sink is not None
        while (idle := time.monotonic() - sink.last_active) < idle_s:
            await anyio.sleep(max(idle_s - idle, 0.01))
        stream.reset()

    try:
        stream.attach(sink)
        async with anyio.create_task_group() as tg:
            if idle_s is not None:
                tg.start_soon(expire)
            await ended.wait()
            tg.cancel_scope.cancel()
    finally:
        endpoint.close()
        stream.reset()


async def relay_flow(
    visitor: MuxStream, target: MuxStream, counters: UdpCounters, *, idle_s: float
) -> None:
    """Relay one UDP flow between two mux streams (a private service's: `visit`'s stream and
    the provider's), datagram by datagram, both ways, until either ends or it is idle `idle_s`.

    Datagrams are parsed out of one stream and framed again into the other (the server, not
    the visitor, frames what reaches the provider), counted, and dropped (never queued) when
    the other stream's send buffer is full, as at a public UDP port. Both streams are reset at
    the end: a flow has no half-close.
    """
    last_active = anyio.current_time()

    async def copy(source: MuxStream, sink: MuxStream, inbound: bool) -> None:
        nonlocal last_active
        reader = DatagramReader()
        try:
            while True:
                data = await source.receive()
                last_active = anyio.current_time()
                for datagram in reader.feed(data):
                    if len(datagram) > MAX_DATAGRAM_BYTES:
                        counters.dropped_oversize += 1
                    elif not sink.send_nowait(frame(datagram)):
                        counters.dropped_backpressure += 1
                    elif inbound:
                        counters.datagrams_in += 1
                        counters.bytes_in += len(datagram)
                    else:
                        counters.datagrams_out += 1
                        counters.bytes_out += len(datagram)
        except (anyio.EndOfStream, *_FAILURES):
            pass
        tg.cancel_scope.cancel()

    async def expire() -> None:
        while (idle := anyio.current_time() - last_active) < idle_s:
            await anyio.sleep(max(idle_s - idle, 0.01))
        counters.flows_expired += 1
        tg.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(copy, visitor, target, True)
            tg.start_soon(copy, target, visitor, False)
            tg.start_soon(expire)
    finally:
        visitor.reset()
        target.reset()
