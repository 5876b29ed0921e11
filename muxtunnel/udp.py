"""UDP over mux streams: one stream per visitor address, datagrams framed by a 2-byte length.

Datagrams are never truncated and never queued without bound: an oversize datagram, one that
finds its flow's send buffer full, or one whose socket's write buffer is full is dropped and
counted. A flow idle for `idle_s` expires; past `max_flows`, or when the service has its share
of the session's streams (`streams`, see `quota`), the least recently active flow is evicted.
Both end the flow's stream with RST.

The sockets are `datagrams.UdpEndpoint`s: each datagram is framed and queued from the loop's
callback, with no task switch per datagram, which is what lets a Python process keep up with a
fast UDP sender. The way back is the same: a flow's stream hands its bytes to a
`DatagramSink` (a `mux.StreamConsumer`) from the session's reader, which sends each datagram
as soon as its last byte is there, and returns the stream's credit at once (every datagram
was sent or dropped).
"""

from __future__ import annotations

import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc

from mux import MuxStream, Session, StreamConsumer
from muxtunnel.control import VisitorHeader, encode_visitor_header
from muxtunnel.datagrams import UdpEndpoint, open_udp
from muxtunnel.log import Refusals
from muxtunnel.quota import Share
from muxtunnel.transport import Address

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


#: Called once when a flow ends (a subclass's bookkeeping for it).
OnEnd = Callable[[], None]


class DatagramSink(StreamConsumer):
    """A flow's stream as a consumer: each datagram framed into it is sent as it completes.

    `send` takes the datagrams one delivery completed, in order, and returns how many it sent
    (the rest were dropped).
    """

    __slots__ = ("_counters", "_on_end", "_reader", "_send", "_stream", "last_active")

    def __init__(
        self,
        stream: MuxStream,
        send: Callable[[list[bytes]], int],
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
        datagrams = self._reader.feed(data)
        if datagrams:
            # All at once: `send` may hand runs of equal-sized ones to one system call.
            sent = self._send(datagrams)
            counters = self._counters
            counters.datagrams_out += sent
            counters.bytes_out += sum(map(len, datagrams[:sent]))
            counters.dropped_backpressure += len(datagrams) - sent
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
    on_end: OnEnd | None = None


class UdpForwarder:
    """Server side of one UDP service: the public socket and its flows to the client.

    `_open_flow` opens a new flow's stream on `session`; a subclass may decide otherwise (which
    member of a group, whether the flow may be created at all) and then passes no session.
    """

    def __init__(
        self,
        session: Session | None,
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

    def close(self) -> None:
        """Close the public socket of a forwarder that will not `run` after all."""
        if self._endpoint is not None:
            self._endpoint.close()

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
        opened = self._open_flow(address, datagram)
        if opened is None:
            if streams is not None:
                streams.give_back()
            return
        stream, on_end = opened
        self.counters.flows_opened += 1
        self.counters.datagrams_in += 1
        self.counters.bytes_in += len(datagram)
        endpoint = self._endpoint
        assert endpoint is not None

        def send(replies: list[bytes]) -> int:
            return endpoint.send_many(replies, address)

        def ended() -> None:  # the client ended the flow's stream (or the session ended)
            if self.flows.get(address) is new:
                del self.flows[address]
                self._end(new)

        sink = DatagramSink(stream, send, self.counters, ended)
        new = self.flows[address] = _Flow(stream, sink, on_end)
        stream.attach(sink)

    def _open_flow(
        self, address: Address, datagram: bytes
    ) -> tuple[MuxStream, OnEnd | None] | None:
        """The stream of a new flow, with its first datagram; None if it cannot open now."""
        assert self.session is not None
        header = encode_visitor_header(VisitorHeader(self.service, "udp", *address))
        try:
            return self.session.open_stream_nowait(header + frame(datagram)), None
        except anyio.WouldBlock:  # the client has not ACKed its backlog yet
            self.backlog_full()
        except anyio.BrokenResourceError:
            pass
        return None

    def backlog_full(self) -> None:
        """A new flow's stream could not open: the client has not taken the last ones yet."""
        self.counters.dropped_backpressure += 1
        if self.refusals is not None:
            self.refusals.refuse(
                "udp_flow_backlog",
                "udp flow refused: the client has not taken the last ones yet",
                service=self.service,
            )

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
        on_end, flow.on_end = flow.on_end, None
        if on_end is not None:
            on_end()
