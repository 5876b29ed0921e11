"""Plain keep-alive requests relayed by callbacks: no task switch per request.

Once a visitor connection holds an upstream it may reuse (`UpstreamSlot.current`, a raw mux
stream: no compression, no bandwidth limit), its task lends the visitor's socket
(`_socket.VisitorSocket`) and the upstream stream to a `CallbackPath` and waits. Then:

- the visitor's bytes collect in `Heads.buffer` as the loop reads them; a whole head that
  `FastPath.route` accepts, for the kept upstream's target, is rewritten (`FastPath.build`)
  and written to the stream in the same callback;
- the stream's bytes (`mux.StreamConsumer`) are framed by the response head only (its
  Content-Length, its chunks, or the service's close, re-framed as chunked as `_fast` does)
  and written to the visitor's transport in the same callback; credit goes back to the
  service only once the transport is below its mark (as `relay.Relay` does), so a visitor
  that reads slowly stalls the service, not our memory;
- the next request is taken when the response has ended (pipelined ones wait in order).

Whatever else comes (a head it does not take, another target, a kept upstream gone, an
error, a visitor's close) ends the lending with an `Outcome`, the bytes not yet taken left in
`Heads.buffer`: the task carries on exactly where the callbacks stopped (`FastPath.cycle`,
h11, an error page by `fast_failed`, a reset). Timeouts stay the connection's `Deadline`
(idle, head, response, send_visitor): when one passes, the task's scope is cancelled, the
lending ends, and `HttpConnection._expired` answers from `current` as for the task's own waits.

Invariants: at most one request in flight; a reused stream that closes or fails before any
response byte has its request put back (`Heads.put_back`) for the task to send on a fresh one
(the retry-once rule); once a response byte reached the visitor, a failure resets both.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

import anyio

from mux import MuxStream
from muxtunnel.limits import ConnectionMeter, MeteredStream
from muxtunnel.vhost._exchange import ExchangeFailure, UpstreamBroken, UpstreamConnection
from muxtunnel.vhost._fast import _head_bytes
from muxtunnel.vhost._socket import VisitorSocket
from muxtunnel.vhost._wire import ChunkScanner, find_response_head, parse_response_head
from muxtunnel.vhost.routes import Route

if TYPE_CHECKING:
    from muxtunnel.vhost._fastpath import ConnectionView, FastPath

__all__ = ["CallbackPath", "Outcome", "raw_stream"]

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


class _Body(enum.Enum):
    HEAD = 0
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3


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
        self._up: UpstreamConnection | None = None
        self._stream: MuxStream | None = None
        self._meter: ConnectionMeter | None = None
        #: Close the kept upstream with a reset when the task takes it back dead.
        self.abortive = False
        self._withheld = 0  # stream bytes written to the visitor, credit not yet given back
        self._head_timed = False  # the head being read has its deadline
        # -- the request in flight (`busy`), also what `HttpConnection._expired` reads
        self.busy = False
        self.status: int | None = None
        self.received_bytes = 0
        self.response_timeout_s = 0.0
        self._head_only = False
        self._visitor_close = False
        self._body = _Body.HEAD
        self._pending = b""  # the response head so far, or a chunked body's unscanned tail
        self._left = 0
        self._scanner: ChunkScanner | None = None
        self._keep_alive = False

    @property
    def response_started(self) -> bool:
        return self.status is not None

    async def serve(self, up: UpstreamConnection) -> Outcome:
        """Relay requests on `up` by callbacks until one needs the task (`Outcome`)."""
        raw = raw_stream(up)
        assert raw is not None
        self._up, (self._stream, self._meter) = up, raw
        done: asyncio.Future[Outcome] = self._loop.create_future()
        self._done = done
        self.failure = None
        self.busy = False
        self.abortive = False
        self._head_timed = False
        socket = self.socket
        heads = self.conn.heads
        if socket.unread:  # read while lent to the task, not received by it
            heads.buffer += bytes(socket.unread)  # type: ignore[operator]
            socket.unread.clear()
        socket.handler = self
        try:
            self._stream.attach(self)
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
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            heads.received = len(buffer)
            if not buffer:
                conn.deadline.set(config.idle_timeout_s, "idle")
            if self.socket.eof:
                self._finish(Outcome.NEXT if buffer else Outcome.END)
            elif (
                len(buffer) > config.max_header_bytes
                or b"\n\n" in buffer
                or b"\n\r\n" in buffer
                or buffer.startswith(b"\r\n")
            ):
                self._finish(Outcome.NEXT)  # h11 says what is wrong with it
            elif buffer and not self._head_timed:
                self._head_timed = True
                conn.deadline.set(config.head_timeout_s, "head")
            return
        up = self._up
        found = self.fast.route(buffer[:end])
        if found is None or up.dead:
            self._finish(Outcome.NEXT)
            return
        request, route, host = found
        if route.target != up.target or route.target.options.per_request:
            self._finish(Outcome.NEXT)
            return
        data, timeout_s = self.fast.build(request, route, host)
        self.route = route
        self.busy = True
        self.status = None
        self.received_bytes = 0
        self.response_timeout_s = timeout_s
        self._head_only = request.method == b"HEAD"
        self._visitor_close = request.close
        self._body = _Body.HEAD
        self._pending = b""
        self._head_timed = False
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
        self.busy = False
        self._finish(Outcome.NEXT)

    def _complete(self) -> None:
        """The response ended whole."""
        conn = self.conn
        assert self._up is not None and self.route is not None
        conn.heads.done()
        conn.current = None
        self.busy = False
        if not self._keep_alive or self.route.target.options.per_request:
            self._up.dead = True  # the task closes it
        if self._visitor_close:
            self._finish(Outcome.LINGER)
            return
        if self._up.dead:
            self._finish(Outcome.NEXT)
            return
        self._advance()

    # ------------------------------------------------------------------ the visitor's socket

    def visitor_data(self, data: bytes) -> None:
        heads = self.conn.heads
        heads.buffer += data  # type: ignore[operator]
        if self.busy or not self._lent:
            if len(heads.buffer) > self.conn.config.max_header_bytes:
                self.socket.set_reading(False)  # taken up again when the task reads
            return
        self._advance()

    def visitor_eof(self) -> None:
        if not self.busy and self._lent:
            self._advance()

    def visitor_lost(self) -> None:
        self._finish(Outcome.GONE)

    def visitor_writable(self, writable: bool) -> None:
        deadline = self.conn.deadline
        if not writable:
            if self.busy:
                deadline.set(self.conn.config.send_timeout_s, "send_visitor")
            return
        if self.busy and self.response_started:
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

    @property
    def _lent(self) -> bool:
        """The connection is ours (no outcome yet): the task waits."""
        done = self._done
        return done is not None and not done.done()

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
        if not self.busy or not self._lent:
            self._up.dead = True  # bytes nobody asked for: not HTTP any more
            self.abortive = True
            return
        self.received_bytes += size
        try:
            self._response(bytes(data))
        except ExchangeFailure as exc:
            self._fail(exc)

    def stream_eof(self) -> None:
        assert self._up is not None
        self._up.dead = True
        if not self.busy or not self._lent:
            return
        if self._body is _Body.UNTIL_CLOSE:
            self._to_visitor(b"0\r\n\r\n")
            self._keep_alive = False
            self._complete()
        elif self.received_bytes == 0:
            self._retry()  # the service closed its idle keep-alive stream just now
        elif self._body is _Body.HEAD:
            self._fail(UpstreamBroken("the service closed before responding"))
        else:
            self._fail(UpstreamBroken("the service closed in the middle of the body"))

    def stream_failed(self, error: anyio.BrokenResourceError) -> None:
        assert self._up is not None
        self._up.dead = True
        self.abortive = True
        if not self.busy or not self._lent:
            return
        if self.received_bytes == 0:
            self._retry()
        else:
            self._fail(UpstreamBroken(f"the service's stream failed: {error!r}"))

    def stream_writable(self) -> None:
        pass  # a request is written whole (bounded by `FAST_BODY_BYTES`)

    # ------------------------------------------------------------------ the response

    def _response(self, data: bytes) -> None:
        body = self._body
        if body is _Body.HEAD:
            self._head(self._pending + data)
            return
        if body is _Body.LENGTH:
            self._relay_length(b"", data)
        elif body is _Body.CHUNKED:
            self._relay_chunked(b"", self._pending + data)
        elif data:
            self._to_visitor(b"%x\r\n%b\r\n" % (len(data), data))

    def _head(self, data: bytes) -> None:
        """Parse response heads from `data`; once the final one is whole, send it with what
        of the body came along (else keep `data` for later)."""
        conn = self.conn
        while True:
            max_bytes = conn.config.max_response_header_bytes
            found = find_response_head(data)
            if found is None:
                if len(data) > max_bytes:
                    raise UpstreamBroken("the service's response head is too large")
                self._pending = data
                return
            end, body_start = found
            if end > max_bytes:
                raise UpstreamBroken("the service's response head is too large")
            try:
                head = parse_response_head(data[:end])
            except ValueError as exc:
                raise UpstreamBroken(f"the service's response is not HTTP/1.1: {exc}") from None
            data = data[body_start:]
            if head.status >= 200:
                break
            if head.status == 101:
                raise UpstreamBroken("the service switched protocols unasked")
            if head.status != 100:  # 100: nobody asked (no Expect), h11 drops it as well
                self._to_visitor(_head_bytes(head, b""))
        self._pending = b""
        extra = b""
        bodiless = self._head_only or head.status in (204, 304)
        close_delimited = not head.chunked and head.length is None
        if head.chunked or (close_delimited and head.status not in (204, 304)):
            extra = b"Transfer-Encoding: chunked\r\n"  # as `_fast` (and h11) frame it
        if self._visitor_close:
            extra += b"Connection: close\r\n"
        out = _head_bytes(head, extra)
        self.status = head.status
        assert self.route is not None
        self.route.counters.count_response(head.status)
        conn.deadline.clear()  # a streaming body may pause as long as it likes
        self._keep_alive = head.keep_alive
        if bodiless:
            self._keep_alive = head.keep_alive and not data
            self._to_visitor(out)
            self._complete()
        elif head.length is not None:
            self._body = _Body.LENGTH
            self._left = head.length
            self._relay_length(out, data)
        elif head.chunked:
            self._body = _Body.CHUNKED
            self._scanner = ChunkScanner()
            self._relay_chunked(out, data)
        else:
            self._body = _Body.UNTIL_CLOSE
            self._keep_alive = False
            if data:
                out += b"%x\r\n%b\r\n" % (len(data), data)
            self._to_visitor(out)

    def _relay_length(self, out: bytes, data: bytes) -> None:
        left = self._left
        if len(data) > left:
            assert self._up is not None
            self._up.dead = True  # bytes after the response: not HTTP any more
            data = data[:left]
        self._left = left - len(data)
        if out or data:
            self._to_visitor(out + data)
        if not self._left:
            self._complete()

    def _relay_chunked(self, out: bytes, data: bytes) -> None:
        scanner = self._scanner
        assert scanner is not None
        try:
            used = scanner.scan(data)
        except ValueError as exc:
            raise UpstreamBroken(f"the service's chunked body is broken: {exc}") from None
        if out or used:
            self._to_visitor(out + data[:used])
        if scanner.done:
            if used < len(data):
                assert self._up is not None
                self._up.dead = True
            self._pending = b""
            self._complete()
        else:
            self._pending = data[used:]
