"""UDP over mux streams: one stream per visitor address, datagrams framed by a 2-byte length.

Datagrams are never truncated and never queued without bound: an oversize datagram, one that
finds its flow's send buffer full, or one whose socket's write buffer is full is dropped and
counted. A flow idle for `idle_s` expires; past `max_flows`, or when the service has its share
of the session's streams (`streams`, see `quota`), the least recently active flow is evicted.
Both end the flow's stream with RST.

The sockets are `transport.UdpEndpoint`s: each datagram is framed and queued from the loop's
callback, with no task switch per datagram, which is what lets a Python process keep up with a
fast UDP sender. The way back is the same: a flow's stream hands its bytes to a
`DatagramSink` (a `mux.StreamConsumer`) from the session's reader, which sends each datagram
as soon as its last byte is there, and returns the stream's credit at once (every datagram
was sent or dropped).
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from mux import MuxStream, Session, StreamConsumer
from muxtunnel.control import VisitorHeader, encode_visitor_header
from muxtunnel.log import Refusals
from muxtunnel.quota import Share
from muxtunnel.transport import Address, TransportError, UdpEndpoint, open_udp

#: Largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes).
MAX_DATAGRAM_BYTES = 65507
_LENGTH = struct.Struct(">H")
_FAILURES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


def frame(datagram: bytes) -> bytes:
    return _LENGTH.pack(len(datagram)) + datagram


class DatagramReader:
    """Turns the bytes of a flow's stream back into the datagrams that were framed into it."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes | memoryview) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        datagrams = []
        offset = 0
        while len(buffer) - offset >= 2:
            (size,) = _LENGTH.unpack_from(buffer, offset)
            if len(buffer) - offset - 2 < size:
                break
            datagrams.append(bytes(buffer[offset + 2 : offset + 2 + size]))
            offset += 2 + size
        del buffer[:offset]
        return datagrams


@dataclass(slots=True)
class UdpCounters:
    datagrams_in: int = 0
    datagrams_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped_oversize: int = 0
    dropped_backpressure: int = 0
    flows_opened: int = 0
    flows_expired: int = 0
    flows_evicted: int = 0

    def dropped(self) -> dict[str, int]:
        return {"oversize": self.dropped_oversize, "backpressure": self.dropped_backpressure}


def queue_datagram(stream: MuxStream, datagram: bytes, counters: UdpCounters) -> None:
    """Send one datagram on a flow's stream, or drop and count it; never waits."""
    if len(datagram) > MAX_DATAGRAM_BYTES:
        counters.dropped_oversize += 1
        return
    try:
        queued = stream.send_nowait(frame(datagram))
    except _FAILURES:
        return  # the flow is ending; its reader cleans up
    if queued:
        counters.datagrams_in += 1
        counters.bytes_in += len(datagram)
    else:
        counters.dropped_backpressure += 1


class DatagramSink(StreamConsumer):
    """A flow's stream as a consumer: each datagram framed into it is sent as it completes."""

    __slots__ = ("_counters", "_on_end", "_reader", "_send", "_stream", "last_active")

    def __init__(
        self,
        stream: MuxStream,
        send: Callable[[bytes], bool],
        counters: UdpCounters,
        on_end: Callable[[], None],
    ) -> None:
        self._stream = stream
        self._send = send
        self._counters = counters
        self._on_end = on_end
        self._reader = DatagramReader()
        #: `time.monotonic()` of the last datagram either way (the flow's idle clock).
        self.last_active = time.monotonic()

    def stream_data(self, data: memoryview) -> None:
        counters = self._counters
        for datagram in self._reader.feed(data):
            if self._send(datagram):
                counters.datagrams_out += 1
                counters.bytes_out += len(datagram)
            else:
                counters.dropped_backpressure += 1
        self._stream.consumed(len(data))  # sent or dropped: nothing waits here
        self.last_active = time.monotonic()

    def stream_eof(self) -> None:
        self._on_end()

    def stream_failed(self, error: anyio.BrokenResourceError) -> None:
        self._on_end()

    def stream_writable(self) -> None:
        pass  # datagrams that find the send buffer full are dropped, never waited for


@dataclass(slots=True, eq=False)
class _Flow:
    stream: MuxStream
    sink: DatagramSink


class UdpForwarder:
    """Server side of one UDP service: the public socket and its flows to the client."""

    def __init__(
        self,
        session: Session,
        service: str,
        *,
        idle_s: float,
        max_flows: int,
        counters: UdpCounters | None = None,
        streams: Share | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.session = session
        self.service = service
        self.idle_s = idle_s
        self.max_flows = max_flows
        self.counters = counters or UdpCounters()
        #: Its share of the session's streams: one per flow (None: no share to keep to).
        self.streams = streams
        self.refusals = refusals
        self.flows: OrderedDict[Address, _Flow] = OrderedDict()
        self._serving = False
        self._endpoint: UdpEndpoint | None = None

    async def bind(self, host: str, port: int) -> None:
        """Bind the public socket; datagrams are dropped until `run` starts."""
        self._endpoint = await open_udp(self._on_datagram, local=(host, port))

    @property
    def port(self) -> int:
        assert self._endpoint is not None
        return self._endpoint.port

    async def run(self) -> None:
        assert self._endpoint is not None
        try:
            async with anyio.create_task_group() as tg:
                self._serving = True
                tg.start_soon(self._expire)
                await self._endpoint.wait_closed()
                tg.cancel_scope.cancel()
        finally:
            self._serving = False
            self._endpoint.close()
            flows = list(self.flows.values())
            self.flows.clear()  # first: each reset reaches its sink, which looks itself up
            for flow in flows:
                self._end(flow)

    def _on_datagram(self, datagram: bytes, address: Address) -> None:
        flow = self.flows.get(address)
        if flow is not None:
            flow.sink.last_active = time.monotonic()
            self.flows.move_to_end(address)
            queue_datagram(flow.stream, datagram, self.counters)
            return
        if not self._serving:
            return  # not serving yet, or any more
        if len(datagram) > MAX_DATAGRAM_BYTES:
            self.counters.dropped_oversize += 1
            return
        while len(self.flows) >= self.max_flows:
            self._evict_oldest()
        streams = self.streams
        while streams is not None and not streams.take():
            if not self.flows:  # others hold the session's streams: nothing of ours to give
                self.counters.dropped_backpressure += 1
                if self.refusals is not None:
                    self.refusals.refuse(
                        "stream_quota",
                        "udp flow refused: its service has its share of the session's streams",
                        service=self.service,
                    )
                return
            self._evict_oldest()
        header = encode_visitor_header(VisitorHeader(self.service, "udp", *address))
        try:
            stream = self.session.open_stream_nowait(header + frame(datagram))
        except (anyio.WouldBlock, anyio.BrokenResourceError) as exc:
            if streams is not None:
                streams.give_back()
            if isinstance(exc, anyio.WouldBlock):  # the client has not ACKed its backlog yet
                self.counters.dropped_backpressure += 1
                if self.refusals is not None:
                    self.refusals.refuse(
                        "udp_flow_backlog",
                        "udp flow refused: the client has not taken the last ones yet",
                        service=self.service,
                    )
            return
        self.counters.flows_opened += 1
        self.counters.datagrams_in += 1
        self.counters.bytes_in += len(datagram)
        endpoint = self._endpoint
        assert endpoint is not None

        def send(reply: bytes) -> bool:
            return endpoint.send(reply, address)

        def on_end() -> None:  # the client ended the flow's stream (or the session ended)
            if self.flows.get(address) is new:
                del self.flows[address]
                self._end(new)

        new = self.flows[address] = _Flow(stream, DatagramSink(stream, send, self.counters, on_end))
        stream.attach(new.sink)

    async def _expire(self) -> None:
        while True:
            await anyio.sleep(min(self.idle_s / 4, 5.0))
            deadline = time.monotonic() - self.idle_s
            for address, flow in list(self.flows.items()):
                if flow.sink.last_active < deadline:
                    del self.flows[address]
                    self.counters.flows_expired += 1
                    self._end(flow)

    def _evict_oldest(self) -> None:
        _, oldest = self.flows.popitem(last=False)
        self.counters.flows_evicted += 1
        self._end(oldest)
        if self.refusals is not None:
            self.refusals.refuse(
                "udp_flow_evicted",
                "udp flow evicted to make room for a new one",
                service=self.service,
            )

    def _end(self, flow: _Flow) -> None:
        """A flow left `flows`: reset its stream (its sink hears of it), give its stream back."""
        flow.stream.reset()
        if self.streams is not None:
            self.streams.give_back()


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
    sink = DatagramSink(stream, endpoint.send, counters, ended.set)

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
