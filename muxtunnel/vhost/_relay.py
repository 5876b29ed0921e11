"""Plain keep-alive requests relayed by callbacks: no task switch per request.

Once a visitor connection holds an upstream it may reuse (`UpstreamSlot.current`, a raw mux
stream: no compression, no bandwidth limit), its task lends the visitor's socket (taken over
from anyio: `_socket.VisitorSocket`) and the upstream stream to a `CallbackPath` and waits:

- the visitor's bytes collect in `Heads.buffer` as the loop reads them; a whole head that
  `FastPath.route` accepts, for the kept upstream's target, is rewritten (`FastPath.build`)
  and written to the stream in the same callback (a head equal to the last: as it was);
- the stream's bytes (`mux.StreamConsumer`) go through the connection's `ResponseRelay`
  (framing only; a head equal to the last is not parsed again) to the visitor's transport in
  the same callback; credit goes back to the service only while the transport is below its
  mark (as `relay.Relay` does), so a slow visitor stalls the service, not our memory;
- the next request is taken once the response has ended (pipelined ones wait, in order).

Anything else (a head it does not take, another target, a kept upstream gone, an error, the
visitor's close) ends the lending with an `Outcome`, the bytes not yet taken left in
`Heads.buffer`, and `run` carries on where the callbacks stopped: `FastPath.cycle` and h11 take
the next request, `fast_failed` answers a failure (502), a reset, a lingering close. Timeouts
stay the connection's `Deadline` (idle, head, response, send_visitor): when one passes, the
task's scope is cancelled, the lending ends, and `HttpConnection._expired` answers from
`current` as for the task's own waits.

Invariants: at most one request in flight; a reused stream that closes or fails before any
response byte has its request put back (`Heads.put_back`) for the task to send on a fresh one
(the retry-once rule); once a response byte reached the visitor, a failure resets both.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

import anyio

from mux import MuxStream, take_over
from muxtunnel.limits import ConnectionMeter, MeteredStream
from muxtunnel.vhost._exchange import (
    ExchangeFailure,
    UpstreamBroken,
    UpstreamConnection,
    VisitorGone,
)
from muxtunnel.vhost._response import ResponseRelay
from muxtunnel.vhost._socket import LentStream, VisitorSocket
from muxtunnel.vhost.routes import Route
from muxtunnel.vhost.streams import linger_close

if TYPE_CHECKING:
    from muxtunnel.vhost._fastpath import ConnectionView, FastPath

__all__ = ["CallbackPath", "Outcome", "lend", "raw_stream"]

_FAILURES = (anyio.BrokenResourceError, anyio.ClosedResourceError)


class Outcome(enum.Enum):
    """Why the callbacks gave the connection back to its task."""

    NEXT = "next"  # the task takes the next request (in `Heads.buffer`, or still to come)
    END = "end"  # the visitor closed between requests
    LINGER = "linger"  # a request asked to close and was answered: close gracefully
    FAILED = "failed"  # `failure` before any response byte: the task answers it (502)
    GONE = "gone"  # the visitor must see a failure (reset), or is gone


def raw_stream(up: UpstreamConnection) -> tuple[MuxStream, ConnectionMeter | None] | None:
    """The mux stream under `up` and the meter its wrapper counts into, if its bytes may pass
    by callbacks (no compression, no throttling); else None."""
    stream = up.stream
    if isinstance(stream, MuxStream):
        return stream, None
    if (
        isinstance(stream, MeteredStream)
        and isinstance(stream.inner, MuxStream)
        and stream.receive_bucket is None
        and stream.send_bucket is None
        and not stream.receive_is_in
    ):
        return stream.inner, stream.meter
    return None


def lend(conn: ConnectionView, fast: FastPath) -> CallbackPath | None:
    """A callback path for `conn` (its visitor socket taken over from anyio, the task's
    stream a `LentStream` from now on), or None if it is no asyncio socket (TLS ended here,
    a stream another node handed over)."""
    socket = VisitorSocket()
    taken = take_over(conn.side.stream, socket)
    if taken is None:
        return None
    transport, unread, at_eof = taken
    socket.connection_made(transport)
    socket.unread += unread
    socket.eof = at_eof
    conn.side.stream = LentStream(socket)
    return CallbackPath(conn, fast, socket)


class CallbackPath:
    """Runs a visitor connection's plain requests by callbacks (see the module doc)."""

    def __init__(self, conn: ConnectionView, fast: FastPath, socket: VisitorSocket) -> None:
        self.conn = conn
        self.fast = fast
        self.socket = socket
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[Outcome] | None = None
        self.failure: ExchangeFailure | None = None
        self.route: Route | None = None
        #: Close the kept upstream with a reset when the task takes it back dead.
        self.abortive = False
        self._up: UpstreamConnection | None = None
        self._stream: MuxStream | None = None
        self._meter: ConnectionMeter | None = None
        self._withheld = 0  # stream bytes written to the visitor, credit not yet given back
        self._head_timed = False  # the head being read has its deadline
        #: The response in flight (None: no request in flight).
        self._response: ResponseRelay | None = None
        #: Relays each response in turn (and keeps the service's last head, parsed).
        self._relay = ResponseRelay(self._to_visitor, conn.config.max_response_header_bytes)
        #: What `HttpConnection._expired` reads of the request in flight.
        self.received_bytes = 0
        self.response_timeout_s = 0.0

    @property
    def response_started(self) -> bool:
        return self._response is not None and self._response.status is not None

    async def run(self) -> bool:
        """Relay requests by callbacks, then settle what stopped them; False: the connection
        ended (else the task takes the next request)."""
        conn = self.conn
        slot = conn.slot
        assert slot.current is not None
        outcome = await self._serve(slot.current)
        if outcome is Outcome.NEXT or outcome is Outcome.LINGER:
            up = slot.current
            if up is not None and up.dead:
                await slot.drop(abortive=self.abortive)
            if outcome is Outcome.NEXT:
                return True
            conn.deadline.clear()  # lingering is bounded by its own timeout
            await linger_close(
                conn.side.stream, timeout_s=conn.config.linger_s, max_bytes=conn.config.linger_bytes
            )
            return False
        if outcome is Outcome.END:
            return False
        failure = self.failure
        if outcome is Outcome.FAILED and failure is not None and self.route is not None:
            return await conn.fast_failed(failure, self, self.route)
        raise VisitorGone(str(failure) if failure is not None else "the visitor went")

    async def _serve(self, up: UpstreamConnection) -> Outcome:
        raw = raw_stream(up)
        assert raw is not None
        self._up, (self._stream, self._meter) = up, raw
        done: asyncio.Future[Outcome] = self._loop.create_future()
        self._done = done
        self.failure = None
        self._response = None
        self.abortive = False
        self._head_timed = False
        socket = self.socket
        if socket.unread:  # read while lent to the task, not received by it
            self.conn.heads.buffer += bytes(socket.unread)  # type: ignore[operator]
            socket.unread.clear()
        socket.handler = self
        try:
            self._stream.attach(self)
            if up.dead:  # it closed (or spoke) since the task's last exchange
                self._finish(Outcome.NEXT)
            if not done.done():
                self._advance()
            if not done.done():
                socket.set_reading(True)
            return await done
        finally:
            socket.handler = None
            self._stream.detach()
            credit, self._withheld = self._withheld, 0
            if credit and not self._stream.is_reset:
                try:
                    self._stream.consumed(credit)
                except _FAILURES:
                    pass
            self._done = None

    @property
    def _lent(self) -> bool:
        """The connection is ours (no outcome yet): the task waits."""
        done = self._done
        return done is not None and not done.done()

    def _finish(self, outcome: Outcome) -> None:
        done = self._done
        if done is not None and not done.done():
            done.set_result(outcome)

    def _fail(self, failure: ExchangeFailure) -> None:
        """The request in flight failed: an error page, or a reset once answering started."""
        if self.failure is None:
            self.failure = failure
        self._finish(Outcome.GONE if self.response_started else Outcome.FAILED)

    # ------------------------------------------------------------------ requests

    def _advance(self) -> None:
        """Take the next request from the buffer, if it is whole and ours to take."""
        conn = self.conn
        heads = conn.heads
        buffer = heads.buffer
        assert buffer is not None and self._up is not None and self._stream is not None
        config = conn.config
        if not buffer:  # nearly always, after a response: no searches (~1k instructions each)
            heads.received = 0
            conn.deadline.set(config.idle_timeout_s, "idle")
            if self.socket.eof or self.socket.error is not None:
                self._finish(Outcome.END)
            return
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            heads.received = len(buffer)
            if self.socket.eof or self.socket.error is not None:
                self._finish(Outcome.NEXT)
            elif (  # `find`: `bytes in bytes` tries an int first (a TypeError raised, cleared)
                len(buffer) > config.max_header_bytes
                or buffer.find(b"\n\n") >= 0
                or buffer.find(b"\n\r\n") >= 0
                or buffer.startswith(b"\r\n")
            ):
                self._finish(Outcome.NEXT)  # h11 says what is wrong with it
            elif not self._head_timed:
                self._head_timed = True
                conn.deadline.set(config.head_timeout_s, "head")
            return
        up = self._up
        found = self.fast.route(buffer[:end])
        if found is None or up.dead:
            self._finish(Outcome.NEXT)
            return
        request, route, host = found
        target = route.target  # nearly always the very object: `is` before a dataclass's ==
        if (target is not up.target and target != up.target) or target.options.per_request:
            self._finish(Outcome.NEXT)
            return
        data, timeout_s = self.fast.build(request, route, host)
        self.route = route
        self.received_bytes = 0
        self.response_timeout_s = timeout_s
        self._head_timed = False
        self._response = response = self._relay
        response.start(route.counters, request.method == b"HEAD", request.close)
        conn.current = (route, self)
        try:
            self._stream.write(data)
        except _FAILURES:
            self._retry()
            return
        route.counters.bytes_in += len(data)
        if self._meter is not None:
            self._meter.bytes_in += len(data)
            self._meter.last_active = self._loop.time()
        conn.deadline.set(timeout_s, "response")

    def _retry(self) -> None:
        """The reused stream failed before any response byte: the task sends the request
        again on a fresh one (`FastPath.cycle`)."""
        assert self._up is not None
        self._up.dead = True
        self.abortive = True
        self.conn.heads.put_back()
        self.conn.current = None
        self._response = None
        self._finish(Outcome.NEXT)

    def _complete(self) -> None:
        """The response in flight ended whole."""
        conn = self.conn
        response = self._response
        assert self._up is not None and self.route is not None and response is not None
        conn.heads.done()
        conn.current = None
        self._response = None
        if response.trailing:
            self._up.dead = True  # bytes after the response: not HTTP any more
        if not response.keep_alive or self.route.target.options.per_request:
            self._up.dead = True  # the task closes it
        if response.visitor_close:
            self._finish(Outcome.LINGER)
        elif self._up.dead:
            self._finish(Outcome.NEXT)
        else:
            self._advance()

    # ------------------------------------------------------------------ the visitor's socket

    def visitor_data(self, data: bytes) -> None:
        heads = self.conn.heads
        heads.buffer += data  # type: ignore[operator]
        if self._response is not None or self._done is None or self._done.done():  # `_lent`
            if len(heads.buffer) > self.conn.config.max_header_bytes:
                self.socket.set_reading(False)  # taken up again when the task reads
            return
        self._advance()

    def visitor_eof(self) -> None:
        if self._response is None and self._lent:
            self._advance()

    def visitor_lost(self) -> None:
        self._finish(Outcome.GONE)

    def visitor_writable(self, writable: bool) -> None:
        deadline = self.conn.deadline
        if not writable:
            if self._response is not None:
                deadline.set(self.conn.config.send_timeout_s, "send_visitor")
            return
        if self.response_started:
            deadline.clear()  # a streaming body may pause as long as it likes
        credit, self._withheld = self._withheld, 0
        if credit and self._stream is not None:
            try:
                self._stream.consumed(credit)
            except _FAILURES:
                pass

    def _to_visitor(self, data: bytes) -> None:
        self.socket.write(data)
        assert self.route is not None
        self.route.counters.bytes_out += len(data)

    # ------------------------------------------------------------------ the stream (consumer)

    def stream_data(self, data: memoryview) -> None:
        size = len(data)
        stream = self._stream
        assert stream is not None and self._up is not None
        meter = self._meter
        if meter is not None:
            meter.bytes_out += size
            meter.last_active = self._loop.time()
        if self.socket.writing_paused:
            self._withheld += size
        else:
            stream.consumed(size)
        response = self._response
        if response is None or self._done is None or self._done.done():  # not `_lent`
            self._up.dead = True  # bytes nobody asked for: not HTTP any more
            self.abortive = True
            self._finish(Outcome.NEXT)  # the task closes it now, not at the next request
            return
        self.received_bytes += size
        started = response.status is not None
        try:
            ended = response.feed(bytes(data))
        except ExchangeFailure as exc:
            self._fail(exc)
            return
        if not started and response.status is not None:
            self.conn.deadline.clear()  # a streaming body may pause as long as it likes
        if ended:
            self._complete()

    def stream_eof(self) -> None:
        assert self._up is not None
        self._up.dead = True
        response = self._response
        if response is None or not self._lent:
            self._finish(Outcome.NEXT)  # closed while idle: the task closes it now
            return
        if self.received_bytes == 0:
            self._retry()  # the service closed its idle keep-alive stream just now
            return
        try:
            ended = response.eof()
        except ExchangeFailure as exc:
            self._fail(exc)
            return
        if ended:
            self._complete()

    def stream_failed(self, error: anyio.BrokenResourceError) -> None:
        assert self._up is not None
        self._up.dead = True
        self.abortive = True
        if self._response is None or not self._lent:
            self._finish(Outcome.NEXT)
            return
        if self.received_bytes == 0:
            self._retry()
        else:
            self._fail(UpstreamBroken(f"the service's stream failed: {error!r}"))

    def stream_writable(self) -> None:
        pass  # a request is written whole (bounded by `FAST_BODY_BYTES`)
