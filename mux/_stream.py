"""One stream of a session, as an `anyio.abc.ByteStream`; and the errors its users see.

What this module owns: a stream's receive buffer (bytes the core delivered, not yet read), its
wakeups, and its view of its own end (EOF sent or received, closed, reset, session gone). The
protocol state of the stream lives in the core (`Connection`); this side only moves bytes and
wakes tasks.

What it may import: anyio's public API and the core (`mux._connection`, `mux._config`,
`mux._errors`). Never `mux.aio`: a stream reaches its session only through `StreamOwner`, the
five things it needs of it.

What must stay true:

1. The session never waits on a stream: it appends to `_buffer` (bounded by the stream's
   receive window in the core) and wakes the stream's reader.
2. Credit goes back to the peer only for bytes a caller has received (`stream_read`).
3. Once a stream has failed (reset, session gone) every operation raises that error, except
   that bytes already buffered are still handed out first; a stream whose peer had not sent
   its FIN never ends in a clean EOF.
4. The session's table forgets a stream (`StreamOwner._forget`) exactly when the stream is done
   both ways or failed.
5. A stream with a `StreamConsumer` attached (`attach`) hands every byte, its EOF and its
   failure to the consumer as they arrive, in order, from the session's reader: no task wakes
   up. Credit then goes back only as the consumer reports bytes handed on (`consumed`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel

from mux._config import MuxConfig
from mux._connection import Buffer, Connection
from mux._errors import LocalProtocolError

__all__ = [
    "MuxStream",
    "SessionClosed",
    "StreamConsumer",
    "StreamOwner",
    "StreamResetError",
    "clock",
]

#: The core's clock: window tuning compares intervals of a fraction of a millisecond, and uvloop's
#: loop clock (`self.session._time()`) only ticks in whole milliseconds.
clock = time.monotonic
#: A write at least this large is bulk: it goes to the carrier at once, not at the end of the
#: loop turn with the small ones (deferring 256 KiB reads made a bulk MiB cost 30 % more CPU:
#: the stream's buffer filled between flushes and its socket paused and resumed reading).
_BULK_WRITE_BYTES = 16 * 1024


class SessionClosed(anyio.BrokenResourceError):
    """The session is over (carrier closed or broken, protocol error, keepalive timeout)."""


class StreamResetError(anyio.BrokenResourceError):
    """The stream was reset (by the peer, by us, or by a timeout)."""


class StreamOwner(Protocol):
    """What a stream needs of its session (`mux.aio.Session` is the one implementation)."""

    conn: Connection
    config: MuxConfig
    #: Why the session ended; None while it runs.
    _error: SessionClosed | None
    #: The session's clock (anyio's, the event loop's) for the half-closed timestamps.
    _time: Callable[[], float]

    def _wake_writer(self, now: bool = False) -> None:
        """Frames were queued in the core: get them written (`now`: without waiting for the
        end of the loop turn, as for bulk bytes)."""
        ...

    def _forget(self, stream: MuxStream) -> None:
        """The stream is done: drop it from the session's table."""
        ...


class StreamConsumer(Protocol):
    """What takes a stream's bytes as they arrive, instead of a task calling `receive()`.

    Called from the session's reader, so each method must be quick and must never wait: a
    socket's protocol that writes the bytes on (and pauses its reads while `write` says the
    stream's send buffer is full) is the intended consumer.
    """

    def stream_data(self, data: memoryview) -> None:
        """Bytes arrived; call `MuxStream.consumed` once they are handed on."""
        ...

    def stream_eof(self) -> None:
        """The peer half-closed the stream: no more bytes will come."""
        ...

    def stream_failed(self, error: anyio.BrokenResourceError) -> None:
        """The stream was reset or its session ended; nothing more comes either way."""
        ...

    def stream_writable(self) -> None:
        """The stream's send buffer fell below its mark again after `write` returned False."""
        ...


class MuxStream(anyio.abc.ByteStream):
    """One stream of a session: an `anyio.abc.ByteStream` with `reset()`."""

    def __init__(
        self, session: StreamOwner, stream_id: int, opened_at: float, *, acked: bool = False
    ) -> None:
        #: The session the stream belongs to.
        self.session = session
        self.stream_id = stream_id
        self._conn = session.conn
        self._buffer: deque[memoryview] = deque()
        self._buffered = 0
        self._rx_wakeup: anyio.Event | None = None
        self._tx_wakeup: anyio.Event | None = None
        self._eof_received = False
        self._eof_sent = False
        self._closed = False
        self._error: anyio.BrokenResourceError | None = None
        self._opened_at = opened_at
        self._acked_at: float | None = opened_at if acked else None
        #: While half-closed: when the stream last carried data (the sweeper resets it when idle).
        self._half_closed_at: float | None = None
        self._consumer: StreamConsumer | None = None

    # ------------------------------------------------------------------ ByteStream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        while not self._buffer:
            if self._eof_received:
                raise anyio.EndOfStream
            if self._error is not None:
                raise self._error
            if self._closed:
                raise anyio.ClosedResourceError
            self._rx_wakeup = anyio.Event()
            await self._rx_wakeup.wait()
        buffer = self._buffer
        first = buffer[0]
        if len(first) >= max_bytes:
            data = bytes(first[:max_bytes])
            if len(first) > max_bytes:
                buffer[0] = first[max_bytes:]
            else:
                buffer.popleft()
        else:
            parts = [buffer.popleft()]
            size = len(first)
            while buffer and size + len(buffer[0]) <= max_bytes:
                chunk = buffer.popleft()
                parts.append(chunk)
                size += len(chunk)
            data = b"".join(parts)
        self._buffered -= len(data)
        conn = self._conn
        conn.stream_read(self.stream_id, len(data), clock())
        if conn.has_data_to_send():
            self.session._wake_writer()
        return data

    @property
    def unconsumed_bytes(self) -> int:
        """Bytes sent on this stream that the peer's reader has not read yet, to within about
        half its window (`Connection.unconsumed`): how far a sender's count runs ahead of it."""
        return self._conn.unconsumed(self.stream_id)

    async def send(self, item: bytes) -> None:
        self._check_sendable()
        conn = self._conn
        if self._half_closed_at is not None:  # still busy one way: not a stuck stream
            self._half_closed_at = self.session._time()
        try:
            conn.send_data(self.stream_id, item)
        except LocalProtocolError as exc:
            raise self._error or StreamResetError(str(exc)) from exc
        self.session._wake_writer(len(item) >= _BULK_WRITE_BYTES)
        mark = self.session.config.stream_send_buffer_bytes
        while conn.send_buffered(self.stream_id) >= mark:
            self._tx_wakeup = anyio.Event()
            await self._tx_wakeup.wait()
            self._check_sendable()

    def send_nowait(self, item: bytes) -> bool:
        """Queue `item` only if the stream's send buffer has room; False (nothing queued) if not.

        For traffic that must be dropped rather than delayed (datagrams): it never waits.
        """
        self._check_sendable()
        if self._conn.send_buffered(self.stream_id) >= self.session.config.stream_send_buffer_bytes:
            return False
        try:
            self._conn.send_data(self.stream_id, item)
        except LocalProtocolError as exc:
            raise self._error or StreamResetError(str(exc)) from exc
        self.session._wake_writer()
        return True

    async def send_eof(self) -> None:
        if self._eof_sent:
            return
        self.write_eof()
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """Close both ways: FIN; or RST if bytes the peer sent are left unread (like TCP)."""
        if self._closed:
            return
        self._closed = True
        if self._error is None:
            if self._buffer:
                self.reset()
            elif not self._eof_sent:
                self._eof_sent = True
                try:
                    self._conn.send_eof(self.stream_id)
                except LocalProtocolError:
                    pass
                self.session._wake_writer()
                self._on_half_close()
        self._wake_all()
        await anyio.lowlevel.checkpoint()

    def reset(self) -> None:
        """Abort the stream both ways (RST). Bytes not yet sent are dropped."""
        if self._error is not None:
            return
        self._conn.reset_stream(self.stream_id)
        self.session._wake_writer()
        self._on_reset("the stream was reset locally")

    # ------------------------------------------------------------------ callbacks instead of tasks

    def attach(self, consumer: StreamConsumer) -> None:
        """Hand every byte, the EOF and any failure to `consumer` from now on, as they arrive.

        Bytes already buffered go first, at once. After this, `receive()` must not be used.
        """
        self._consumer = consumer
        buffer = self._buffer
        while buffer:
            data = buffer.popleft()
            self._buffered -= len(data)
            consumer.stream_data(data)
        if self._eof_received:
            consumer.stream_eof()
        elif self._error is not None:
            consumer.stream_failed(self._error)

    def detach(self) -> None:
        """Stop handing bytes to the consumer: later ones wait for `receive()` again (a
        consumer that lends the stream back to a task; it owes credit only for what it took)."""
        self._consumer = None

    def consumed(self, amount: int) -> None:
        """The consumer has handed on `amount` bytes: the peer may send that much more."""
        conn = self._conn
        conn.stream_read(self.stream_id, amount, clock())
        if conn.has_data_to_send():
            self.session._wake_writer()

    def write(self, data: Buffer, *, more: bool = False) -> bool:
        """Queue `data` without waiting. False once the send buffer has reached its mark: the
        caller stops producing until `StreamConsumer.stream_writable` (the bytes are queued).
        A view is queued as it is, not copied: it must not change until it has left.

        `more`: more bytes follow in this loop turn (the frames of one carrier read, handed
        on by a splice), so even bulk bytes wait for the turn's end and leave in one batch.
        """
        self._check_sendable()
        conn = self._conn
        if self._half_closed_at is not None:  # still busy one way: not a stuck stream
            self._half_closed_at = self.session._time()
        try:
            conn.send_data(self.stream_id, data)
        except LocalProtocolError as exc:
            raise self._error or StreamResetError(str(exc)) from exc
        self.session._wake_writer(not more and len(data) >= _BULK_WRITE_BYTES)
        return conn.send_buffered(self.stream_id) < self.session.config.stream_send_buffer_bytes

    def write_eof(self) -> None:
        """`send_eof` without waiting: FIN once the bytes queued before it have left."""
        if self._eof_sent:
            return
        self._check_sendable()
        self._eof_sent = True
        try:
            self._conn.send_eof(self.stream_id)
        except LocalProtocolError as exc:
            raise self._error or StreamResetError(str(exc)) from exc
        self.session._wake_writer()
        self._on_half_close()

    # ------------------------------------------------------------------ info

    @property
    def is_reset(self) -> bool:
        return isinstance(self._error, StreamResetError)

    # ------------------------------------------------------------------ called by the session

    def _on_data(self, data: memoryview) -> None:
        if self._closed:  # nobody will read it: refuse it, as TCP does
            self.reset()
            return
        if len(data) * 4 < len(data.obj):  # type: ignore[arg-type]
            # A small slice would pin the whole carrier read it came from (up to 256 KiB) for
            # as long as it stays unread: keep a copy instead. Large slices stay zero-copy.
            data = memoryview(bytes(data))
        if self._consumer is not None:
            if self._half_closed_at is not None:
                self._half_closed_at = self.session._time()
            self._consumer.stream_data(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._half_closed_at is not None:  # still busy one way: not a stuck stream
            self._half_closed_at = self.session._time()
        if self._rx_wakeup is not None:
            self._rx_wakeup.set()
            self._rx_wakeup = None

    def _on_eof(self) -> None:
        self._eof_received = True
        self._on_half_close()
        self._wake_all()
        if self._consumer is not None:
            self._consumer.stream_eof()

    def _on_half_close(self) -> None:
        if self._eof_sent and self._eof_received:
            self._half_closed_at = None
            self.session._forget(self)
        elif self._half_closed_at is None:
            self._half_closed_at = self.session._time()

    def _on_reset(self, reason: str) -> None:
        if self._error is None:
            self._error = StreamResetError(reason)
        self.session._forget(self)
        self._wake_all()
        self._fail_consumer()

    def _on_session_closed(self) -> None:
        if self._error is None:
            self._error = self.session._error
        self._wake_all()
        self._fail_consumer()

    def _fail_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None and self._error is not None:
            consumer.stream_failed(self._error)

    def _abort(self, reason: str) -> None:
        self._conn.reset_stream(self.stream_id)
        self.session._wake_writer()
        self._on_reset(reason)

    def _wake_sender(self) -> None:
        if self._tx_wakeup is not None:
            self._tx_wakeup.set()
            self._tx_wakeup = None
        if self._consumer is not None:
            self._consumer.stream_writable()

    def _wake_all(self) -> None:
        if self._rx_wakeup is not None:
            self._rx_wakeup.set()
            self._rx_wakeup = None
        self._wake_sender()

    def _check_sendable(self) -> None:
        if self._closed:  # our own close comes first, whatever happened since
            raise anyio.ClosedResourceError
        if self._error is not None:
            raise self._error
        if self._eof_sent:
            raise anyio.ClosedResourceError

    def __repr__(self) -> str:
        return f"<MuxStream {self.stream_id}>"
