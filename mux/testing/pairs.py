"""Two ends wired back to back, for tests: two cores (`ConnectionPair`), two byte streams in
memory (`memory_stream_pair`, a carrier whose buffers are bounded and so can stall) or over
loopback TCP (`tcp_stream_pair`), and two `Session`s over either (`session_pair`).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

import anyio
import anyio.abc
import anyio.lowlevel

from mux._config import MuxConfig
from mux._connection import Connection
from mux._events import DataReceived, Event, StreamOpened
from mux.aio import Session
from mux.testing.frames import merge_events

__all__ = [
    "ConnectionPair",
    "MemoryByteStream",
    "memory_stream_pair",
    "random_chunks",
    "session_pair",
    "tcp_stream_pair",
]


def random_chunks(data: bytes, rng: random.Random, max_chunk: int) -> list[bytes]:
    """`data` cut at random points into pieces of 1..max_chunk bytes."""
    pieces = []
    pos = 0
    while pos < len(data):
        size = rng.randint(1, max_chunk)
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


class ConnectionPair:
    """A client and a server core wired back to back (h11's ConnectionPair idea).

    `pump()` moves bytes both ways until neither side has anything to say, cutting them into
    random chunks when `max_chunk` is set, and returns each side's events. With `auto_accept` the
    pair accepts inbound streams as they arrive; with `auto_read` it consumes every delivered byte
    at once (returning credit), as a fast application would.
    """

    def __init__(
        self,
        config: MuxConfig | None = None,
        *,
        client_config: MuxConfig | None = None,
        server_config: MuxConfig | None = None,
        max_chunk: int | None = None,
        seed: int = 0,
        auto_accept: bool = False,
        auto_read: bool = False,
    ) -> None:
        self.client = Connection(client=True, config=client_config or config)
        self.server = Connection(client=False, config=server_config or config)
        self.max_chunk = max_chunk
        self.rng = random.Random(seed)
        self.auto_accept = auto_accept
        self.auto_read = auto_read
        self.now = 0.0
        #: Bytes each side has written in total (index by the sending core).
        self.bytes_sent = {id(self.client): 0, id(self.server): 0}

    def peer(self, conn: Connection) -> Connection:
        return self.server if conn is self.client else self.client

    def step(self, sender: Connection, max_bytes: int | None = None) -> tuple[list[Event], ...]:
        """One `data_to_send` of `sender` written into its peer: (sender's, receiver's) events.

        The sender's events come from parsing it had held back (`reading_paused`) until its
        replies were written, which this call just did.
        """
        receiver = self.peer(sender)
        data = b"".join(bytes(b) for b in sender.data_to_send(max_bytes))
        sender_events: list[Event] = []
        if sender.reading_paused:
            sender_events = sender.receive_data(b"", self.now)
            self._react(sender, sender_events)
        receiver_events: list[Event] = []
        if data:
            self.bytes_sent[id(sender)] += len(data)
            pieces = [data] if not self.max_chunk else random_chunks(data, self.rng, self.max_chunk)
            for piece in pieces:
                receiver_events += receiver.receive_data(piece, self.now)
            self._react(receiver, receiver_events)
        return merge_events(sender_events), merge_events(receiver_events)

    def quiet(self) -> bool:
        """Neither side has bytes to write or input held back."""
        return not any(c.has_data_to_send() or c.reading_paused for c in (self.client, self.server))

    def pump(self, max_rounds: int = 10_000) -> tuple[list[Event], list[Event]]:
        """Exchange bytes until both sides are quiet: (client's events, server's events)."""
        client_events: list[Event] = []
        server_events: list[Event] = []
        for _ in range(max_rounds):
            mine, theirs = self.step(self.client)
            client_events += mine
            server_events += theirs
            mine, theirs = self.step(self.server)
            server_events += mine
            client_events += theirs
            if self.quiet():
                return merge_events(client_events), merge_events(server_events)
        raise AssertionError(f"the connections were still talking after {max_rounds} rounds")

    def _react(self, conn: Connection, events: list[Event]) -> None:
        if conn.terminated is not None:
            return
        for event in events:
            if self.auto_accept and isinstance(event, StreamOpened):
                conn.accept_stream(event.stream_id)
            elif self.auto_read and isinstance(event, DataReceived):
                conn.stream_read(event.stream_id, len(event.data), self.now)


class _Pipe:
    """One direction of a memory carrier: a bounded byte buffer."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.buffer = bytearray()
        self.eof = False  # the writer half-closed
        self.broken = False  # either end aborted: every operation fails
        self.reader_gone = False  # the reading end was closed: writes fail
        self.changed = anyio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of `memory_stream_pair`: behaves like a socket whose buffers hold `capacity`.

    `send` returns once its bytes fit in the buffer, so a peer that stops reading stalls the
    writer, as a full TCP window does. Concurrent sends raise `anyio.BusyResourceError`, as
    anyio's socket streams do.
    """

    def __init__(self, incoming: _Pipe, outgoing: _Pipe) -> None:
        self._in = incoming
        self._out = outgoing
        self._closed = False
        self._send_guard = anyio.ResourceGuard("writing to")
        self._receive_guard = anyio.ResourceGuard("reading from")
        #: Bytes written through this end so far.
        self.bytes_sent = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        with self._receive_guard:
            await anyio.lowlevel.checkpoint()
            while True:
                if self._closed:
                    raise anyio.ClosedResourceError
                if self._in.buffer:  # like TCP, bytes that arrived before a reset stay readable
                    data = bytes(self._in.buffer[:max_bytes])
                    del self._in.buffer[:max_bytes]
                    self._in.notify()
                    return data
                if self._in.broken:
                    raise anyio.BrokenResourceError("the peer reset the connection")
                if self._in.eof:
                    raise anyio.EndOfStream
                await self._in.changed.wait()

    async def send(self, item: bytes) -> None:
        with self._send_guard:
            await anyio.lowlevel.checkpoint()
            view = memoryview(bytes(item))
            while view:
                self._check_writable()
                room = self._out.capacity - len(self._out.buffer)
                if room > 0:
                    self._out.buffer += view[:room]
                    self.bytes_sent += min(room, len(view))
                    view = view[room:]
                    self._out.notify()
                else:
                    await self._out.changed.wait()

    def _check_writable(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._out.eof:
            raise anyio.ClosedResourceError  # we half-closed
        if self._out.broken or self._out.reader_gone:
            raise anyio.BrokenResourceError("the peer closed the connection")

    async def send_eof(self) -> None:
        if not self._closed:
            self._out.eof = True
            self._out.notify()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close both ways: FIN, or a reset if received bytes are left unread (as TCP does)."""
        if self._in.buffer:
            self.abort()
        elif not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.reader_gone = True
            self._out.notify()
            self._in.notify()
        await anyio.lowlevel.checkpoint()

    def abort(self) -> None:
        """Reset the connection, like closing a socket with SO_LINGER 0.

        Our end fails at once; the peer may still read what had reached it, then fails too.
        """
        self._closed = True
        self._in.buffer.clear()
        for pipe in (self._in, self._out):
            pipe.broken = True
            pipe.notify()


def memory_stream_pair(capacity: int = 256 * 1024) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected in-memory byte streams; each direction buffers at most `capacity` bytes."""
    a_to_b, b_to_a = _Pipe(capacity), _Pipe(capacity)
    return MemoryByteStream(b_to_a, a_to_b), MemoryByteStream(a_to_b, b_to_a)


@asynccontextmanager
async def tcp_stream_pair() -> AsyncIterator[tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]]:
    """Two ends of a real TCP connection on 127.0.0.1 (closed on exit)."""
    multi = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with multi:
        listener = cast(anyio.abc.SocketListener, multi.listeners[0])
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            accepted: list[anyio.abc.SocketStream] = []

            async def accept() -> None:
                accepted.append(await listener.accept())

            tg.start_soon(accept)
            client = await anyio.connect_tcp("127.0.0.1", port)
        server = accepted[0]
    async with client, server:
        yield client, server


@asynccontextmanager
async def session_pair(
    carrier: str = "memory",
    config: MuxConfig | None = None,
    *,
    client_config: MuxConfig | None = None,
    server_config: MuxConfig | None = None,
    capacity: int = 256 * 1024,
    resumable: bool = False,
) -> AsyncIterator[tuple[Session, Session]]:
    """A client and a server `Session` over a "memory" or a "tcp" carrier (`resumable`: both
    keep what they send until the other's receipts, as after a resume agreement)."""
    left_config, right_config = client_config or config, server_config or config
    async with AsyncExitStack() as stack:
        left: anyio.abc.ByteStream
        right: anyio.abc.ByteStream
        if carrier == "memory":
            left, right = memory_stream_pair(capacity)
        elif carrier == "tcp":
            left, right = await stack.enter_async_context(tcp_stream_pair())
        else:
            raise ValueError(f"unknown carrier {carrier!r}")
        client = await stack.enter_async_context(
            Session(left, client=True, config=left_config, resumable=resumable)
        )
        server = await stack.enter_async_context(
            Session(right, client=False, config=right_config, resumable=resumable)
        )
        if resumable:
            client.enable_resume()
            server.enable_resume()
        yield client, server
