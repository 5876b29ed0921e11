"""The anyio adapter: runs a `Connection` over any `anyio.abc.ByteStream`.

Shape (after h11's trio example): one reader task feeds carrier bytes to the core and hands the
events to streams; one writer task writes whatever has to wait for the carrier; a keepalive task
pings; a sweeper resets streams stuck half-open. Protocol decisions live in the core; this module
only moves bytes, keeps time and wakes tasks.

The carrier is driven one of two ways. `_TransportCarrier` is the fast path for anyio's
asyncio/uvloop socket streams: it takes over the transport as its protocol, reads ahead a
bounded amount and writes batches with `writelines`, and a write that cannot block happens
right away in the task that queued the frames. `_StreamCarrier` serves any other `ByteStream`
(TLS, memory, trio) through `receive`/`send`, all writes from the writer task.

What must stay true:

1. The reader never waits on a stream: it appends to the stream's buffer (bounded by its receive
   window) and wakes the reader of that stream. It only stops reading when the core asks it to
   (`reading_paused`: too many replies the peer solicited are still unwritten).
2. Writes never interleave and keep the core's order: frames are taken from the core and handed
   to the carrier in one step (synchronously on the fast path, under a lock otherwise). Only the
   writer task (or a final flush) waits for the carrier; a write that makes no progress for
   `write_timeout_s` kills the session.
3. The first carrier error ends the session and is remembered: every stream operation after it
   raises `SessionClosed`. Bytes already received are still readable first; a stream the peer had
   not finished ends in an error, never in a clean EOF.
4. Foreign exceptions (OSError and anyio's stream errors from the carrier) are translated here,
   once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

from mux._anyio_seam import socket_internals
from mux._config import MuxConfig
from mux._connection import Buffer, Connection
from mux._const import GoAwayCode
from mux._errors import LocalProtocolError, RemoteProtocolError
from mux._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
)

#: The core's clock: window tuning compares intervals of a fraction of a millisecond, and uvloop's
#: loop clock (`anyio.current_time()`) only ticks in whole milliseconds.
_now = time.monotonic
#: Round trips remembered for the core's window tuning, which gets the shortest of them: a ping
#: that queued behind bulk data measures the queue, and growing windows for it grows the queue.
_RTT_SAMPLES = 5

_CARRIER_ERRORS = (
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class _StreamCarrier:
    """Any `ByteStream` as the carrier (TLS, memory, trio sockets): buffers joined per write."""

    def __init__(self, stream: anyio.abc.ByteStream, read_size: int) -> None:
        self._stream = stream
        self._read_size = read_size
        self._lock = anyio.Lock()

    async def receive(self) -> Buffer:
        return await self._stream.receive(self._read_size)

    async def write(self, take: Callable[[], list[Buffer]], timeout_s: float) -> None:
        """Write the frames `take()` returns. A final flush (close, protocol error) may race
        the writer task, so frames are taken and sent under one lock: whole, and in order."""
        async with self._lock:
            buffers = take()
            if buffers:
                payload = buffers[0] if len(buffers) == 1 else b"".join(buffers)
                with anyio.fail_after(timeout_s):
                    await self._stream.send(bytes(payload))

    def write_nowait(self, take: Callable[[], list[Buffer]]) -> bool:
        """Never: a stream's `send` may wait, so only the writer task writes."""
        return False

    async def flush(self) -> None:
        """Nothing to do: `send` returns once the stream has taken the bytes."""

    async def aclose(self) -> None:
        await self._stream.aclose()


class _TransportCarrier(asyncio.Protocol):
    """Fast path: a carrier that is anyio's asyncio/uvloop socket stream, driven as a protocol.

    anyio's stream costs a loop round trip per read and per write, and its zero write-buffer
    limit stops the writer until the kernel has taken every byte. Here the transport keeps
    reading until `_MAX_QUEUED` bytes wait for the reader task; writes are gathered
    (`writelines`: one writev under uvloop, no join) and only wait when the transport holds
    more than `_WRITE_HIGH` bytes. Everything else still goes through the anyio stream: closing,
    socket options, the caller's view of it.
    """

    #: Bytes read from the socket and not yet parsed beyond which reading pauses. Small: what the
    #: loop reads in one turn it must also parse before any task runs, so a deep read-ahead
    #: only lengthens the turns every other stream waits for (1 MiB -> 256 KiB: echo p99
    #: beside a 9 Gbit/s stream 7.6 -> 5.9 ms, throughput the same).
    _MAX_QUEUED = 256 * 1024
    #: Bytes the transport may hold unsent before `write` waits for it to drain to a quarter.
    _WRITE_HIGH = 256 * 1024

    @classmethod
    def attach(cls, stream: anyio.abc.ByteStream) -> _TransportCarrier | None:
        """Take over `stream`'s transport, or None if `stream` is not anyio's asyncio socket."""
        internals = socket_internals(stream)
        if internals is None:
            return None
        transport = internals.transport
        carrier = cls(stream, transport)
        # Bytes anyio's protocol has read but nobody has received yet come first.
        unread = internals.unread
        carrier._chunks.extend(unread)
        carrier._queued = sum(len(chunk) for chunk in unread)
        unread.clear()
        carrier._eof = internals.at_eof
        transport.set_protocol(carrier)
        transport.set_write_buffer_limits(cls._WRITE_HIGH, cls._WRITE_HIGH // 4)
        transport.resume_reading()  # anyio pauses reading between receives
        return carrier

    def __init__(self, stream: anyio.abc.ByteStream, transport: asyncio.Transport) -> None:
        self._stream = stream
        self._transport = transport
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._eof = False
        self._lost: BaseException | None = None  # set once the connection is gone
        self._read_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._room = asyncio.Event()  # set while the transport takes more (or has failed)
        self._room.set()

    # -- called by the session's tasks

    async def receive(self) -> Buffer:
        while not self._chunks:
            if self._eof:
                raise anyio.EndOfStream
            if self._lost is not None:
                raise anyio.BrokenResourceError from self._lost
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = self._chunks.popleft()
        self._queued -= len(data)
        if self._read_paused and self._queued < self._MAX_QUEUED // 2:
            self._read_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, take: Callable[[], list[Buffer]], timeout_s: float) -> None:
        """Write the frames `take()` returns. No lock needed (anyio's costs a loop trip per
        batch): taking frames and handing them to the transport is one synchronous step, so
        the batches of racing writers stay whole and in order; only the wait for room yields."""
        if self._lost is not None or self._transport.is_closing():
            raise anyio.BrokenResourceError from self._lost
        buffers = take()
        if buffers:
            self._transport.writelines(buffers)
        if not self._room.is_set():
            with anyio.fail_after(timeout_s):
                await self._room.wait()
            if self._lost is not None:
                raise anyio.BrokenResourceError from self._lost

    def write_nowait(self, take: Callable[[], list[Buffer]]) -> bool:
        """Write the frames `take()` returns if that cannot wait (the transport has room)."""
        if not self._room.is_set() or self._lost is not None or self._transport.is_closing():
            return False
        buffers = take()
        if buffers:
            self._transport.writelines(buffers)
        return True

    async def flush(self) -> None:
        """Wait until the transport has handed every byte to the kernel (closing discards them)."""
        self._transport.set_write_buffer_limits(0, 0)  # pauses us unless the buffer is empty
        await self._room.wait()

    async def aclose(self) -> None:
        await self._stream.aclose()

    # -- asyncio.Protocol, called by the event loop

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._queued += len(data)
        if self._queued >= self._MAX_QUEUED and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake_reader()
        return True  # keep the transport: the session decides when to close it

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or anyio.BrokenResourceError("the carrier was closed")
        self._wake_reader()
        self._room.set()

    def pause_writing(self) -> None:
        if self._lost is None:
            self._room.clear()

    def resume_writing(self) -> None:
        self._room.set()

    def _wake_reader(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.set_result(None)


class SessionClosed(anyio.BrokenResourceError):
    """The session is over (carrier closed or broken, protocol error, keepalive timeout)."""


class StreamResetError(anyio.BrokenResourceError):
    """The stream was reset (by the peer, by us, or by a timeout)."""


class Session:
    """A multiplexed session over one carrier. Use as `async with Session(...) as session:`."""

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        *,
        client: bool,
        config: MuxConfig | None = None,
    ) -> None:
        self.config = config or MuxConfig()
        self.conn = Connection(client=client, config=self.config)
        self._transport = transport
        self._carrier: _StreamCarrier | _TransportCarrier = _StreamCarrier(
            transport, self.config.read_size_bytes
        )
        self._streams: dict[int, MuxStream] = {}
        self._accept_queue: deque[MuxStream] = deque()
        self._accept_wakeup = anyio.Event()
        self._open_wakeup = anyio.Event()
        self._writer_wakeup: anyio.Event | None = None
        self._drained = anyio.Event()
        self._pings: dict[int, anyio.Event] = {}
        self._ping_ids = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._tasks_scope: anyio.CancelScope | None = None
        self._error: SessionClosed | None = None
        self._closed_event = anyio.Event()
        #: Latest measured round trip time in seconds (None until the first pong).
        self.rtt_s: float | None = None
        self._rtt_samples: deque[float] = deque(maxlen=_RTT_SAMPLES)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._carrier = _TransportCarrier.attach(self._transport) or self._carrier
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        await self._tg.start(self._run_tasks, name="mux session")
        return self

    async def _run_tasks(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # The session's tasks live in a group of their own, so that ending the session cancels
        # them and never the code inside the caller's `async with`: that code learns of the end
        # from `SessionClosed` on its next stream operation.
        async with anyio.create_task_group() as tasks:
            self._tasks_scope = tasks.cancel_scope
            tasks.start_soon(self._reader, name="mux reader")
            tasks.start_soon(self._writer, name="mux writer")
            tasks.start_soon(self._sweeper, name="mux sweeper")
            if self.config.enable_keepalive:
                tasks.start_soon(self._keepalive, name="mux keepalive")
            task_status.started()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        # The session's own tasks never raise; the caller's exception (if any) propagates as it
        # is instead of being wrapped in the task group's exception group.
        await self._tg.__aexit__(None, None, None)
        return None

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def close_reason(self) -> str | None:
        return None if self._error is None else str(self._error)

    async def wait_closed(self) -> None:
        """Return once the session is over, for whatever reason."""
        await self._closed_event.wait()

    async def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL) -> None:
        """Refuse new streams from now on; streams already open carry on."""
        if self._error is None:
            self.conn.go_away(code)
            self._wake_writer()
            await anyio.lowlevel.checkpoint()

    async def drain(self, timeout_s: float | None = None) -> bool:
        """GoAway, then wait until every stream has finished. False if the time ran out."""
        await self.go_away()
        limit = self.config.go_away_drain_s if timeout_s is None else timeout_s
        with anyio.move_on_after(limit):
            while self._streams and self._error is None:
                await anyio.sleep(0.02)
            return True
        return False

    async def aclose(self) -> None:
        """Send GoAway and what is queued (within the write timeout), then close the carrier."""
        if self._error is not None:
            return
        with anyio.CancelScope(shield=True):
            self.conn.go_away(GoAwayCode.NORMAL)
            await self._flush_quietly()
            await self._fail("session closed locally")

    # ------------------------------------------------------------------ streams

    async def open_stream(self, initial_data: bytes = b"") -> MuxStream:
        """Open a stream; `initial_data` rides in its first frame (no extra round trip)."""
        while True:
            self._raise_if_closed()
            if self.conn.can_open_stream:
                return self.open_stream_nowait(initial_data)
            await self._open_wakeup.wait()

    def open_stream_nowait(self, initial_data: bytes = b"") -> MuxStream:
        """Open a stream now or raise `SessionClosed`/`WouldBlock` (backlog of un-ACKed SYNs full).

        For callers that must not wait (a datagram that cannot open its flow now is dropped).
        """
        self._raise_if_closed()
        if not self.conn.can_open_stream:
            raise anyio.WouldBlock
        try:
            stream_id = self.conn.open_stream(initial_data)
        except LocalProtocolError as exc:
            raise SessionClosed(str(exc)) from exc
        stream = MuxStream(self, stream_id, anyio.current_time())
        self._streams[stream_id] = stream
        self._wake_writer()
        return stream

    async def accept_stream(self) -> MuxStream:
        """Wait for the next stream the peer opens. Raises `SessionClosed` when the session ends."""
        while not self._accept_queue:
            self._raise_if_closed()
            await self._accept_wakeup.wait()
        stream = self._accept_queue.popleft()
        self.conn.accept_stream(stream.stream_id)
        self._wake_writer()
        return stream

    async def ping(self) -> float:
        """Round trip time to the peer, in seconds."""
        self._raise_if_closed()
        if self.conn.terminated is not None:  # a protocol error; _fail is on its way
            raise SessionClosed("the session ended with a protocol error")
        opaque = next(self._ping_ids) & 0xFFFFFFFF
        done = self._pings[opaque] = anyio.Event()
        started = _now()
        self.conn.ping(opaque)
        self._wake_writer()
        try:
            await done.wait()
        finally:
            self._pings.pop(opaque, None)
        self._raise_if_closed()
        rtt = _now() - started
        self.rtt_s = rtt
        self._rtt_samples.append(rtt)
        self.conn.rtt_s = min(self._rtt_samples)
        return rtt

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------ tasks

    async def _reader(self) -> None:
        conn = self.conn
        receive = self._carrier.receive
        try:
            while True:
                data = await receive()
                self._dispatch(conn.receive_data(data, _now()))
                while conn.reading_paused:
                    self._drained = anyio.Event()
                    self._wake_writer()
                    await self._drained.wait()
                    self._dispatch(conn.receive_data(b"", _now()))
                if conn.has_data_to_send():
                    self._wake_writer()
        except RemoteProtocolError as exc:
            await self._flush_quietly()
            await self._fail(f"protocol error by the peer: {exc}")
        except anyio.EndOfStream:
            await self._fail("the peer closed the connection")
        except _CARRIER_ERRORS as exc:
            await self._fail(f"connection lost: {exc!r}")

    async def _writer(self) -> None:
        try:
            while True:
                if not self.conn.has_data_to_send():
                    self._drained.set()
                    self._writer_wakeup = anyio.Event()
                    await self._writer_wakeup.wait()
                    self._writer_wakeup = None
                await self._write_batch()
        except TimeoutError:
            await self._fail(f"write stalled for {self.config.write_timeout_s} s")
        except _CARRIER_ERRORS as exc:
            await self._fail(f"connection lost while writing: {exc!r}")

    async def _write_batch(self) -> None:
        await self._carrier.write(self._take_batch, self.config.write_timeout_s)

    def _take_batch(self) -> list[Buffer]:
        """The next frames for the carrier; wakes the senders whose buffers now have room."""
        buffers = self.conn.data_to_send()
        for stream_id in self.conn.take_writable():
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream._wake_sender()
        self._drained.set()
        return buffers

    async def _flush_quietly(self) -> None:
        """Write what is queued (the GoAway last of all), briefly; the session ends anyway."""
        with anyio.move_on_after(min(1.0, self.config.write_timeout_s), shield=True):
            try:
                while self.conn.has_data_to_send():
                    await self._write_batch()
                await self._carrier.flush()
            except (TimeoutError, *_CARRIER_ERRORS):
                pass

    async def _keepalive(self) -> None:
        interval = self.config.keepalive_interval_s
        first = True
        while self._error is None:
            if not first:
                await anyio.sleep(interval)
            first = False
            try:
                with anyio.fail_after(self.config.keepalive_timeout_s):
                    await self.ping()
            except TimeoutError:
                await self._fail(f"keepalive timeout ({self.config.keepalive_timeout_s} s)")
            except SessionClosed:
                return

    async def _sweeper(self) -> None:
        """Reset streams whose SYN went unanswered or that stayed half-closed too long."""
        open_limit = self.config.stream_open_timeout_s
        half_limit = self.config.half_closed_timeout_s
        period = min(max(min(open_limit, half_limit) / 10, 0.05), 5.0)
        while self._error is None:
            await anyio.sleep(period)
            now = anyio.current_time()
            for stream in list(self._streams.values()):
                if stream._acked_at is None and now - stream._opened_at > open_limit:
                    stream._abort("the peer did not acknowledge the stream in time")
                elif (
                    stream._half_closed_at is not None
                    and now - stream._half_closed_at > half_limit
                ):
                    stream._abort("the stream stayed half-closed too long")

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, events: list[Event]) -> None:
        streams = self._streams
        for event in events:
            if type(event) is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
            elif isinstance(event, StreamOpened):
                stream = MuxStream(self, event.stream_id, anyio.current_time(), acked=True)
                streams[event.stream_id] = stream
                self._accept_queue.append(stream)
                self._notify_accept()
            elif isinstance(event, StreamEnded):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_eof()
            elif isinstance(event, StreamReset):
                stream = streams.pop(event.stream_id, None)
                if stream is not None:
                    stream._on_reset("the peer reset the stream")
                    if stream in self._accept_queue:  # never accepted: nobody will read it
                        self._accept_queue.remove(stream)
                        stream._buffer.clear()
                self._notify_open()
            elif isinstance(event, StreamAcked):
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._acked_at = anyio.current_time()
                self._notify_open()
            elif isinstance(event, PongReceived):
                waiter = self._pings.get(event.opaque)
                if waiter is not None:
                    waiter.set()
            elif isinstance(event, GoAwayReceived):
                self._notify_open()

    # Many tasks may wait to open or accept: each wait is on the current event, and a
    # notification sets it and puts a fresh one in place, so no waiter is ever left behind.
    def _notify_open(self) -> None:
        self._open_wakeup.set()
        self._open_wakeup = anyio.Event()

    def _notify_accept(self) -> None:
        self._accept_wakeup.set()
        self._accept_wakeup = anyio.Event()

    def _wake_writer(self) -> None:
        """Frames were queued in the core: write them now if that cannot block, else wake the
        writer. Writing from the task that queued them saves a task switch per bulk chunk and
        a loop turn for a small message; the writer task still does every write that has to
        wait for room (and what one batch left over)."""
        if self._carrier.write_nowait(self._take_batch) and not self.conn.has_data_to_send():
            return
        if self._writer_wakeup is not None:
            self._writer_wakeup.set()

    def _forget(self, stream: MuxStream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
        self._notify_open()

    def _raise_if_closed(self) -> None:
        if self._error is not None:
            raise self._error

    async def _fail(self, reason: str) -> None:
        """End the session once: remember why, close the carrier, wake every waiter."""
        if self._error is not None:
            return
        self._error = SessionClosed(reason)
        for stream in list(self._streams.values()):
            stream._on_session_closed()
        self._streams.clear()
        self._notify_accept()
        self._notify_open()
        self._drained.set()
        self._wake_writer()
        for waiter in self._pings.values():
            waiter.set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
            try:
                await self._carrier.aclose()
            except _CARRIER_ERRORS:
                pass
        self._closed_event.set()
        if self._tasks_scope is not None:
            self._tasks_scope.cancel()


class MuxStream(anyio.abc.ByteStream):
    """One stream of a session: an `anyio.abc.ByteStream` with `reset()`."""

    def __init__(
        self, session: Session, stream_id: int, opened_at: float, *, acked: bool = False
    ) -> None:
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
        conn.stream_read(self.stream_id, len(data), _now())
        if conn.has_data_to_send():
            self.session._wake_writer()
        return data

    async def send(self, item: bytes) -> None:
        self._check_sendable()
        conn = self._conn
        if self._half_closed_at is not None:  # still busy one way: not a stuck stream
            self._half_closed_at = anyio.current_time()
        try:
            conn.send_data(self.stream_id, item)
        except LocalProtocolError as exc:
            raise self._error or StreamResetError(str(exc)) from exc
        self.session._wake_writer()
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
        self._check_sendable()
        self._eof_sent = True
        try:
            self._conn.send_eof(self.stream_id)
        except LocalProtocolError as exc:
            raise self._error or StreamResetError(str(exc)) from exc
        self.session._wake_writer()
        self._on_half_close()
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
        self._buffer.append(data)
        self._buffered += len(data)
        if self._half_closed_at is not None:  # still busy one way: not a stuck stream
            self._half_closed_at = anyio.current_time()
        if self._rx_wakeup is not None:
            self._rx_wakeup.set()
            self._rx_wakeup = None

    def _on_eof(self) -> None:
        self._eof_received = True
        self._on_half_close()
        self._wake_all()

    def _on_half_close(self) -> None:
        if self._eof_sent and self._eof_received:
            self._half_closed_at = None
            self.session._forget(self)
        elif self._half_closed_at is None:
            self._half_closed_at = anyio.current_time()

    def _on_reset(self, reason: str) -> None:
        if self._error is None:
            self._error = StreamResetError(reason)
        self.session._forget(self)
        self._wake_all()

    def _on_session_closed(self) -> None:
        if self._error is None:
            self._error = self.session._error
        self._wake_all()

    def _abort(self, reason: str) -> None:
        self._conn.reset_stream(self.stream_id)
        self.session._wake_writer()
        self._on_reset(reason)

    def _wake_sender(self) -> None:
        if self._tx_wakeup is not None:
            self._tx_wakeup.set()
            self._tx_wakeup = None

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


__all__ = ["MuxStream", "Session", "SessionClosed", "StreamResetError"]
