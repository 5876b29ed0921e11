"""One visitor's bytes between its socket and its mux stream, moved by callbacks, not tasks.

`proxy.pipe` copies with a task per direction: each chunk wakes a task on the way in and
another on the way out. A `Relay` is the socket's asyncio protocol and the stream's consumer
(`mux.StreamConsumer`) at once: bytes the loop reads from the socket are queued on the stream
in the same callback, and bytes the session's reader hands to the stream are written to the
socket in the same callback. A 64-byte request crosses a tunnel end without a task switch.

It keeps `pipe`'s promises:

1. Both directions run until their source ends; an EOF is passed on as a half-close (FIN on
   the stream, `write_eof` on the socket) and the other direction carries on.
2. A failure either side (reset stream, ended session, socket error) aborts both: the socket
   with RST, the stream with RST. Nobody sees a clean EOF after bytes were lost.
3. Memory stays bounded by backpressure both ways: the socket stops reading while the
   stream's send buffer is at its mark (`MuxStream.write` says so, `stream_writable` lifts
   it); credit for the stream's bytes goes back to the peer only once the socket has taken
   them (the transport's write buffer limit is zero, so `pause_writing` says when it has not),
   so the socket's unsent bytes never exceed the stream's receive window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import anyio
import anyio.abc

from mux import MuxStream
from muxtunnel.limits import ConnectionMeter
from muxtunnel.proxy import PipeResult
from muxtunnel.sockets import abort_transport
from muxtunnel.transport import abort

__all__ = ["Observer", "Relay"]

_FAILURES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


def _describe(error: BaseException | str) -> str:
    if isinstance(error, str):
        return error
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class Observer(Protocol):
    """Sees a copy of each chunk once it was passed on (b"": that way's end); never raises,
    never blocks (`muxtunnel.httptap.Tap`, the inspector's)."""

    def from_socket(self, data: bytes) -> None:
        """Bytes the socket gave, now on the stream."""

    def from_stream(self, data: bytes) -> None:
        """Bytes the stream gave, now written to the socket."""

    def close(self) -> None:
        """The relay ended."""


class Relay(asyncio.Protocol):
    """Relays one socket and one mux stream both ways; `run` returns once both have ended."""

    def __init__(
        self,
        stream: MuxStream,
        meter: ConnectionMeter,
        *,
        visitor_side: bool,
        greeting: bytes = b"",
        observer: Observer | None = None,
    ) -> None:
        self.stream = stream
        self._observer = observer
        #: Written to the stream once the socket is connected, before any byte of the socket's
        #: (a group member's dial confirmation: the server waits for it before it relays).
        self._greeting = greeting
        self.meter = meter
        #: True when the socket is the visitor's (the server): its bytes flow towards the service.
        self.visitor_side = visitor_side
        self.result = PipeResult()
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = loop.create_future()
        self._time = loop.time
        self._finished = False
        self._socket_ended = False  # the socket's EOF went on to the stream
        self._stream_ended = False  # the stream's EOF went on to the socket
        self._reading_paused = False
        self._writing_paused = False
        self._uncredited = 0  # bytes written to the socket that the kernel has not taken yet

    async def run(self, transport: asyncio.Transport, unread: bytes, at_eof: bool) -> PipeResult:
        """Relay until both ways have ended or one failed; a cancelled caller aborts both.

        `transport` is the socket's (already ours if we connected it, `mux.take_over`'s if we
        took it over); `unread` and `at_eof` are what its previous protocol had read.
        """
        if self._transport is None:
            self.connection_made(transport)
        self.stream.attach(self)
        if unread:
            self.data_received(unread)
        if at_eof:
            self.eof_received()
        elif not self._finished and not self._reading_paused:
            transport.resume_reading()
        try:
            await self._done
        finally:
            if not self._finished:
                self._fail("cancelled")
            if self._observer is not None:
                self._observer.close()
        return self.result

    # -- the socket (asyncio.Protocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not `asyncio.Transport` subclasses, but behave as one.
        stream_transport = cast(asyncio.Transport, transport)
        self._transport = stream_transport
        stream_transport.set_write_buffer_limits(0)  # pause_writing while anything is unsent
        if self._greeting:
            greeting, self._greeting = self._greeting, b""
            try:
                self.stream.write(greeting)
            except _FAILURES as exc:  # the visitor went meanwhile: the service must see it fail
                self._fail(exc)

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        self._count(len(data), from_socket=True)
        try:
            room = self.stream.write(data)
        except _FAILURES as exc:
            self._fail(exc)
            return
        if self._observer is not None:
            self._observer.from_socket(data)
        if not room and not self._reading_paused:
            self._reading_paused = True
            assert self._transport is not None
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        if not self._finished and not self._socket_ended:
            try:
                self.stream.write_eof()
            except _FAILURES as exc:
                self._fail(exc)
                return True
            self._socket_ended = True
            if self._observer is not None:
                self._observer.from_socket(b"")
            self._finish_if_done()
        return True  # keep the socket open for what the stream still sends

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        credit, self._uncredited = self._uncredited, 0
        if credit and not self._finished:
            self.stream.consumed(credit)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._finished:
            self._fail(exc or "the connection closed before both ways ended")

    # -- the stream (mux.StreamConsumer)

    def stream_data(self, data: memoryview) -> None:
        if self._finished:
            return
        assert self._transport is not None
        size = len(data)
        self._count(size, from_socket=False)
        self._transport.write(data)
        if self._observer is not None:
            self._observer.from_stream(bytes(data))
        if self._writing_paused:
            self._uncredited += size
        else:
            self.stream.consumed(size)

    def stream_eof(self) -> None:
        if self._finished or self._stream_ended:
            return
        assert self._transport is not None
        self._stream_ended = True
        self._transport.write_eof()
        if self._observer is not None:
            self._observer.from_stream(b"")
        self._finish_if_done()

    def stream_failed(self, error: anyio.BrokenResourceError) -> None:
        self._fail(error)

    def stream_writable(self) -> None:
        if self._reading_paused and not self._finished:
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    # -- both

    def _count(self, size: int, *, from_socket: bool) -> None:
        self.meter.last_active = self._time()  # the visitor's idle clock (anyio's: the loop's)
        if from_socket == self.visitor_side:  # towards the service
            self.result.forward_bytes += size
            self.meter.bytes_in += size
        else:
            self.result.backward_bytes += size
            self.meter.bytes_out += size

    def _finish_if_done(self) -> None:
        if self._socket_ended and self._stream_ended:
            self._finished = True
            assert self._transport is not None
            self._transport.close()  # after what is still unsent
            if not self._done.done():
                self._done.set_result(None)

    def _fail(self, error: BaseException | str) -> None:
        if self._finished:
            return
        self._finished = True
        self.result.error = _describe(error)
        self.stream.reset()
        if self._transport is not None:
            abort_transport(self._transport)
        if not self._done.done():
            self._done.set_result(None)


class ObservedStream(anyio.abc.ByteStream):
    """`inner` (a socket to a local service) with a copy of every byte for `observer`: what
    the general path (a compressed stream, relayed by tasks) gives an `Observer`."""

    def __init__(self, inner: anyio.abc.ByteStream, observer: Observer) -> None:
        self.inner = inner
        self.observer = observer
        self._aborting = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self.inner.receive(max_bytes)
        except anyio.EndOfStream:
            self.observer.from_socket(b"")
            raise
        self.observer.from_socket(data)
        return data

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)
        self.observer.from_stream(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()
        self.observer.from_stream(b"")

    async def aclose(self) -> None:
        self.observer.close()
        if self._aborting:
            await abort(self.inner)
        else:
            await self.inner.aclose()

    def reset(self) -> None:
        """Make the coming `aclose` abortive (as `MeteredStream.reset`)."""
        self._aborting = True

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes
