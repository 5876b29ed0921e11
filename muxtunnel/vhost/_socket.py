"""A visitor's socket taken over from anyio: read by callbacks, or lent to a task as a stream.

`VisitorSocket` is the asyncio protocol of the visitor's transport (`mux.take_over`). While a
`handler` is set (the callback path, `_relay`) every event goes to it as it happens; while none
is, bytes collect in `unread` and `LentStream` (an `anyio.abc.ByteStream`) serves the h11 task
path from them. Either way one owner reads at a time, so no byte is lost or reordered when the
connection switches between the two.

Invariants: reading is paused while `unread` holds `_UNREAD_MARK_BYTES` or more (TCP
backpressure, as anyio's stream gives); `writing_paused` mirrors the transport's write buffer
against its mark (`_WRITE_MARK_BYTES`); `error` is set once the transport is gone.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, cast

import anyio
import anyio.abc

from muxtunnel.sockets import abort_transport

__all__ = ["LentStream", "SocketHandler", "VisitorSocket"]

#: Unread visitor bytes past which reading pauses (a request head is capped far below).
_UNREAD_MARK_BYTES = 256 * 1024
#: The transport's write buffer mark: a few responses' worth (bounded memory per visitor,
#: writes without a wait for the usual small response).
_WRITE_MARK_BYTES = 64 * 1024


class SocketHandler(Protocol):
    """Takes the visitor socket's events while it runs the connection by callbacks."""

    def visitor_data(self, data: bytes) -> None: ...

    def visitor_eof(self) -> None: ...

    def visitor_lost(self) -> None: ...

    def visitor_writable(self, writable: bool) -> None: ...


class VisitorSocket(asyncio.Protocol):
    """The visitor transport's protocol (see the module doc)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.handler: SocketHandler | None = None
        self.unread = bytearray()
        self.eof = False
        self.error: str | None = None
        self.writing_paused = False
        self.reading_paused = True  # as the transport says, once it is ours
        self._readable: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not `asyncio.Transport` subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(_WRITE_MARK_BYTES)
        self.reading_paused = not self.transport.is_reading()

    # -- reading

    def set_reading(self, on: bool) -> None:
        """Resume or pause reading the socket (no-op once it is gone)."""
        transport = self.transport
        if on != self.reading_paused or transport is None or transport.is_closing():
            return
        self.reading_paused = not on
        if on:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        handler = self.handler
        if handler is not None:
            handler.visitor_data(data)
            return
        self.unread += data
        if len(self.unread) >= _UNREAD_MARK_BYTES:
            self.set_reading(False)
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        if self.handler is not None:
            self.handler.visitor_eof()
        self._wake_reader()
        return True  # keep the socket open for the response

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = repr(exc) if exc is not None else "the connection closed"
        self._wake_reader()
        self._wake_writer()
        if self.handler is not None:
            self.handler.visitor_lost()

    def _wake_reader(self) -> None:
        waiter, self._readable = self._readable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.handler is not None:
            self.handler.visitor_writable(False)

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()
        if self.handler is not None:
            self.handler.visitor_writable(True)

    def _wake_writer(self) -> None:
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def write(self, data: bytes) -> None:
        """Write now (the transport buffers past its mark; `writing_paused` says so)."""
        if self.transport is not None and self.error is None:
            self.transport.write(data)

    # -- for `LentStream`

    async def readable(self) -> None:
        """Wait until bytes, the EOF or a failure came."""
        self.set_reading(True)
        waiter = self._readable = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._readable = None

    async def drained(self) -> None:
        """Wait until the transport's write buffer fell below its mark (or it failed)."""
        waiter = self._drained = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._drained = None


class LentStream(anyio.abc.ByteStream):
    """The visitor's socket as a byte stream for the task path, over its `VisitorSocket`."""

    def __init__(self, socket: VisitorSocket) -> None:
        self.socket = socket
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        socket = self.socket
        while not socket.unread:
            if self._closed:
                raise anyio.ClosedResourceError
            if socket.eof:
                raise anyio.EndOfStream
            if socket.error is not None:
                raise anyio.BrokenResourceError(socket.error)
            await socket.readable()
        data = bytes(socket.unread[:max_bytes])
        del socket.unread[:max_bytes]
        if len(socket.unread) < _UNREAD_MARK_BYTES and not socket.eof:
            socket.set_reading(True)
        return data

    async def send(self, item: bytes) -> None:
        socket = self.socket
        if self._closed:
            raise anyio.ClosedResourceError
        if socket.error is not None or socket.transport is None:
            raise anyio.BrokenResourceError(socket.error)
        socket.transport.write(item)
        while socket.writing_paused and socket.error is None:
            await socket.drained()
        if socket.error is not None:
            raise anyio.BrokenResourceError(socket.error)

    async def send_eof(self) -> None:
        transport = self.socket.transport
        if transport is not None and self.socket.error is None and transport.can_write_eof():
            transport.write_eof()

    def reset(self) -> None:
        """Close so the visitor sees a failure (RST)."""
        self._closed = True
        if self.socket.transport is not None:
            abort_transport(self.socket.transport)

    async def aclose(self) -> None:
        self._closed = True
        if self.socket.transport is not None:
            self.socket.transport.close()  # after what is still unsent
