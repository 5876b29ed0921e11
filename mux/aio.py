"""The anyio adapter: runs a `Connection` over any `anyio.abc.ByteStream` as a `Session`.

Shape (after h11's trio example): one reader task feeds carrier bytes to the core and hands the
events to streams; one writer task writes whatever has to wait for the carrier; a keepalive task
pings; a sweeper resets streams stuck half-open. Protocol decisions live in the core; this module
only moves bytes, keeps time and wakes tasks. The carrier (`_carrier.py`: the asyncio/uvloop
transport fast path, or any `ByteStream`), the streams (`_stream.py`: `MuxStream`) and what
a resumable session does more (`_resumable.py`: `Resumable`, a base of `Session`) are modules
of their own; `MuxStream`, `SessionClosed` and `StreamResetError` are re-exported here.

What this module may import: anyio's public API, asyncio (the fast path's end-of-turn write),
the core, `mux._carrier`, `mux._stream` and `mux._resumable` (never anyio's internals: only
`mux._anyio_seam` reads those, for the carrier).

What must stay true:

1. The reader never waits on a stream: it appends to the stream's buffer (bounded by its receive
   window) and wakes the reader of that stream. It only stops reading when the core asks it to
   (`reading_paused`: too many replies the peer solicited are still unwritten).
2. Writes never interleave and keep the core's order: frames are taken from the core and handed
   to the carrier in one step (see `_carrier.py`). Only the writer task (or a final flush) waits
   for the carrier; a write that makes no progress for `write_timeout_s` kills the session.
3. The first carrier error ends the session and is remembered: every stream operation after it
   raises `SessionClosed`. Bytes already received are still readable first; a stream the peer had
   not finished ends in an error, never in a clean EOF.
4. Foreign exceptions (`CARRIER_ERRORS`: OSError and anyio's stream errors from the carrier) are
   translated here, once, into the end of the session.
5. A resumable session (`resumable=True`, then `enable_resume()` once both sides agreed) does
   not end when its carrier fails or stalls: it suspends (`_resumable.py`) until the application
   hands it a new carrier (`resume`) or `resume_timeout_s` passes. Only the reader, writer and
   keepalive of one carrier run at a time, and a task of a lost carrier never feeds the core
   again (the reader checks that its carrier is still the session's). A carrier the peer closed
   in order (EOF: its process ended or closed the session, whose kernel says FIN) ends the
   session even then: a break (reset, error, silence) suspends; a peer that left does not come
   back, and holding its streams for `resume_timeout_s` would only stall its visitors.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Self

import anyio
import anyio.abc
import anyio.lowlevel

from mux._carrier import (
    CARRIER_ERRORS,
    Carrier,
    ReceiveBuffer,
    StreamCarrier,
    TransportCarrier,
    tune_carrier_socket,
)
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
from mux._resumable import Resumable, Suspension
from mux._stream import MuxStream, SessionClosed, StreamResetError
from mux._stream import clock as _now

#: Round trips remembered for the core's window tuning, which gets the shortest of them: a ping
#: that queued behind bulk data measures the queue, and growing windows for it grows the queue.
_RTT_SAMPLES = 5
#: After a protocol error's GoAway, how long input is still read (and dropped) before the
#: carrier closes. Closing a TCP socket with unread input sends RST, and an RST makes the peer's
#: kernel drop what it had not read yet: the GoAway that says why (nginx's lingering close, for
#: the same reason, with 5 s; the GoAway only needs one round trip).
_LINGER_S = 0.5


class Session(Resumable):
    """A multiplexed session over one carrier. Use as `async with Session(...) as session:`.

    `resumable=True` keeps what it sends from the first byte on, so that the session can go on
    over another carrier once both sides agreed (`enable_resume` and the rest of `Resumable`).
    `prefix`: bytes already read from `transport` (by whoever looked at its first bytes),
    parsed first.
    """

    def __init__(
        self,
        transport: anyio.abc.ByteStream,
        *,
        client: bool,
        config: MuxConfig | None = None,
        resumable: bool = False,
        prefix: bytes = b"",
    ) -> None:
        self.config = config or MuxConfig()
        self.conn = Connection(client=client, config=self.config, resumable=resumable)
        self._transport = transport
        self._prefix = prefix
        self._carrier: Carrier = StreamCarrier(transport, self.config.read_size_bytes, prefix)
        self._streams: dict[int, MuxStream] = {}
        self._accept_queue: deque[MuxStream] = deque()
        # Made by the first waiter, set and dropped by the next notification: a stream opened,
        # acked or ended costs no event when nobody waits (most of the time).
        self._accept_wakeup: anyio.Event | None = None
        self._open_wakeup: anyio.Event | None = None
        #: The clock of stream timestamps and the sweeper: anyio's (the loop's), read straight
        #: from the asyncio loop once it runs (`anyio.current_time()` looks the backend up).
        self._time: Callable[[], float] = anyio.current_time
        self._writer_wakeup: anyio.Event | None = None
        #: The fast path's loop: frames queued during a turn are written by one callback at
        #: its end (`_wake_writer`); None for other carriers, whose writer task writes them.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_pending = False
        self._receive_buffer: ReceiveBuffer | None = None
        self._drained = anyio.Event()
        self._pings: dict[int, anyio.Event] = {}
        self._ping_ids = itertools.count(1)
        self._tg: anyio.abc.TaskGroup | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._tasks_scope: anyio.CancelScope | None = None
        self._carrier_scope: anyio.CancelScope | None = None
        self._suspension = Suspension()
        self._error: SessionClosed | None = None
        self._closed_event = anyio.Event()
        #: Latest measured round trip time in seconds (None until the first pong).
        self.rtt_s: float | None = None
        self._rtt_samples: deque[float] = deque(maxlen=_RTT_SAMPLES)

    # ------------------------------------------------------------------ lifecycle

    def _install(self, transport: anyio.abc.ByteStream, prefix: bytes) -> None:
        """Make `transport` the carrier: the fast path when it is an asyncio/uvloop socket
        stream (its reads parsed in the loop's callback, its writes at the end of each turn),
        else the generic one (already built for the first carrier). `prefix`: bytes already
        read from it, parsed first."""
        tune_carrier_socket(transport, self.config)
        self._receive_buffer = ReceiveBuffer.of(transport, self.config)
        carrier = TransportCarrier.attach(transport, prefix)
        if carrier is not None:
            carrier.on_room = self._on_room
            carrier.inline = self._receive_inline
            self._carrier = carrier
            self._loop = asyncio.get_running_loop()
            self._time = self._loop.time

    async def __aenter__(self) -> Self:
        self._install(self._transport, self._prefix)
        self._prefix = b""
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            await self._tg.start(self._run_tasks, name="mux session")
        except BaseException as exc:
            # Cancelled while starting (the caller's scope ended): leave the group entered
            # above, or anyio's cancel scope stack stays broken for the caller, and close the
            # carrier, which no `__aexit__` will.
            self._tg.cancel_scope.cancel()
            try:
                with anyio.CancelScope(shield=True):
                    await self._carrier.aclose()
            finally:
                await self._tg.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _run_tasks(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        # The session's tasks live in a group of their own, so that ending the session cancels
        # them and never the code inside the caller's `async with`: that code learns of the end
        # from `SessionClosed` on its next stream operation.
        async with anyio.create_task_group() as tasks:
            self._tasks_scope = tasks.cancel_scope
            self._tasks = tasks
            tasks.start_soon(self._sweeper, name="mux sweeper")
            await tasks.start(self._run_carrier, name="mux carrier")
            task_status.started()

    async def _run_carrier(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The reader, writer and keepalive of the carrier; of each new one after a resume."""
        starting = True
        while True:
            async with anyio.create_task_group() as tasks:
                self._carrier_scope = tasks.cancel_scope
                tasks.start_soon(self._reader, name="mux reader")
                tasks.start_soon(self._writer, name="mux writer")
                if self.config.enable_keepalive:
                    tasks.start_soon(self._keepalive, name="mux keepalive")
                if starting:
                    task_status.started()
                    starting = False
            # Only a suspension ends those tasks and leaves the session running (rule 5).
            if not await self._wait_for_carrier():
                return

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
            if self._open_wakeup is None:
                self._open_wakeup = anyio.Event()
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
        stream = MuxStream(self, stream_id, self._time())
        self._streams[stream_id] = stream
        self._wake_writer()
        return stream

    async def accept_stream(self) -> MuxStream:
        """Wait for the next stream the peer opens. Raises `SessionClosed` when the session ends."""
        while not self._accept_queue:
            self._raise_if_closed()
            if self._accept_wakeup is None:
                self._accept_wakeup = anyio.Event()
            await self._accept_wakeup.wait()
        stream = self._accept_queue.popleft()
        self.conn.accept_stream(stream.stream_id)
        self._wake_writer()
        return stream

    def refuse_streams(self) -> None:
        """Take no more streams from the peer: each new one is refused with RST at once, and
        counted against its reset budget, so a peer that keeps opening them loses the session
        (`Connection.refuse_streams`). Streams waiting to be accepted are refused too."""
        if self._error is not None:
            return
        waiting = list(self._accept_queue)
        self._accept_queue.clear()
        self.conn.refuse_streams(_now())
        for stream in waiting:
            self._streams.pop(stream.stream_id, None)
            stream._on_reset("refused: the session takes no more streams")
            stream._buffer.clear()
        self._wake_writer()

    def allow_streams(self) -> None:
        """Take streams from the peer again after `refuse_streams`: later ones wait to be
        accepted, within the accept backlog, as before (`Connection.allow_streams`)."""
        if self._error is None:
            self.conn.allow_streams()

    @property
    def refused_streams(self) -> int:
        """Streams the peer opened that were refused with RST (limits, GoAway, refusal)."""
        return self.conn.refused_streams

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
        carrier = self._carrier
        receive = carrier.receive
        receive_buffer = self._receive_buffer
        try:
            await self._parse_held_back()  # input held back before a resume
            while True:
                data = await receive()
                if self._carrier is not carrier:  # detached meanwhile: not ours to count
                    return
                now = _now()
                self._dispatch(conn.receive_data(data, now))
                if receive_buffer is not None:
                    receive_buffer.update(now, conn.rtt_s)
                if conn.reading_paused:
                    await self._parse_held_back()
                if conn.has_data_to_send():
                    self._wake_writer()
        except RemoteProtocolError as exc:
            await self._flush_quietly()
            await self._linger()
            await self._fail(f"protocol error by the peer: {exc}")
        except anyio.EndOfStream:  # a FIN: the peer's process closed it (rule 5: not a break)
            await self._fail("the peer closed the connection")
        except CARRIER_ERRORS as exc:
            await self._lost(f"connection lost: {exc!r}")

    async def _parse_held_back(self) -> None:
        """Parse what the core held back (`reading_paused`) as its replies get written."""
        conn = self.conn
        while conn.reading_paused:
            self._drained = anyio.Event()
            self._wake_writer()
            await self._drained.wait()
            self._dispatch(conn.receive_data(b"", _now()))

    def _receive_inline(self, data: Buffer) -> None:
        """The reader's work for one carrier read, done in the loop's callback (fast path).

        Whatever the reader task must do itself (wait for the replies the peer solicited to
        be written, end the session on an error) goes back to it through the carrier.
        """
        assert isinstance(self._carrier, TransportCarrier)
        conn = self.conn
        try:
            now = _now()
            self._dispatch(conn.receive_data(data, now))
            if self._receive_buffer is not None:
                self._receive_buffer.update(now, conn.rtt_s)
        except Exception as exc:  # the reader task raises it, as if it had read the bytes
            self._carrier.wake_reader(exc)
            return
        if conn.reading_paused:
            self._carrier.wake_reader()
        elif conn.has_data_to_send():
            self._wake_writer()

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
            await self._lost(f"write stalled for {self.config.write_timeout_s} s")
        except CARRIER_ERRORS as exc:
            await self._lost(f"connection lost while writing: {exc!r}")

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
            except (TimeoutError, *CARRIER_ERRORS):
                pass

    async def _linger(self) -> None:
        """Read and drop what the peer still sends, until its EOF or `_LINGER_S` (see there)."""
        with anyio.move_on_after(_LINGER_S, shield=True):
            try:
                while await self._carrier.receive():
                    pass
            except (anyio.EndOfStream, *CARRIER_ERRORS):
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
                await self._lost(f"keepalive timeout ({self.config.keepalive_timeout_s} s)")
                return
            except SessionClosed:
                return

    async def _sweeper(self) -> None:
        """Reset streams whose SYN went unanswered or that stayed half-closed too long."""
        open_limit = self.config.stream_open_timeout_s
        half_limit = self.config.half_closed_timeout_s
        period = min(max(min(open_limit, half_limit) / 10, 0.05), 5.0)
        while self._error is None:
            await anyio.sleep(period)
            now = self._time()
            for stream in list(self._streams.values()):
                if stream._acked_at is None and now - stream._opened_at > open_limit:
                    stream._abort("the peer did not acknowledge the stream in time")
                elif (
                    stream._half_closed_at is not None and now - stream._half_closed_at > half_limit
                ):
                    stream._abort("the stream stayed half-closed too long")

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self, events: list[Event]) -> None:
        streams = self._streams
        received = self._receive_buffer.received if self._receive_buffer is not None else None
        for event in events:
            if type(event) is DataReceived:
                stream_id = event.stream_id
                if received is not None:
                    received[stream_id] = received.get(stream_id, 0) + len(event.data)
                stream = streams.get(stream_id)
                if stream is not None:
                    stream._on_data(event.data)
            elif isinstance(event, StreamOpened):
                stream = MuxStream(self, event.stream_id, self._time(), acked=True)
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
                    stream._acked_at = self._time()
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
        if self._open_wakeup is not None:
            self._open_wakeup.set()
            self._open_wakeup = None

    def _notify_accept(self) -> None:
        if self._accept_wakeup is not None:
            self._accept_wakeup.set()
            self._accept_wakeup = None

    def _wake_writer(self, now: bool = False) -> None:
        """Frames were queued in the core: get them written at the end of this loop turn.

        One callback per turn writes what every stream queued meanwhile in one batch (one
        writev for the small messages of fifty visitors, not fifty), without a task switch;
        the writer task still does every write that has to wait for room (and what one batch
        left over). Bulk writes (`now`) and carriers that cannot write without waiting go at
        once.
        """
        if now or self._loop is None:
            self._flush()
            return
        if self._flush_pending:
            return
        self._flush_pending = True
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False  # a pending callback finds nothing, or what came since
        if self._carrier.write_nowait(self._take_batch) and not self.conn.has_data_to_send():
            return
        if self._writer_wakeup is not None:
            self._writer_wakeup.set()

    def _on_room(self) -> None:
        """The carrier takes more again: write what waits now, from the loop's callback."""
        if self._error is None and self.conn.has_data_to_send():
            self._flush()

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
        self._suspension.lost.set()  # whoever waits for a suspension learns of the end
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
            except CARRIER_ERRORS:
                pass
        self._closed_event.set()
        if self._tasks_scope is not None:
            self._tasks_scope.cancel()


__all__ = ["MuxStream", "Session", "SessionClosed", "StreamResetError"]
