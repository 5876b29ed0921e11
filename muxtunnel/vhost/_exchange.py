"""One request and its response, between a visitor connection and an upstream connection.

Invariants:
- Both sides are h11 state machines (`VisitorSide.conn` is h11's SERVER, `UpstreamConnection.conn`
  its CLIENT); bytes move only through them, so framing (chunked, Content-Length, HEAD, 1xx)
  is h11's and both sides stay in step. Bodies move one received chunk at a time: memory per
  exchange is bounded by `CHUNK_BYTES` plus h11's buffers, whatever the body size.
- A request with a body runs two tasks: visitor body -> service, service response -> visitor
  (a service may answer before the body ends, and 100-continue needs both). A bodiless
  request (most of them) runs the response side only, on the caller's task: no task group.
- The response clock (`response_timeout_s`, a 504) starts when the request has been sent
  whole; while the body uploads, a service that stops reading trips `send_timeout_s` instead.
- Every failure is one `ExchangeFailure` recorded once (the first wins); the caller decides
  what the visitor sees: an error page if no response byte reached it yet, else a reset.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import h11

from muxtunnel.vhost._deadline import Deadline
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.headers import response_headers
from muxtunnel.vhost.routes import Route, RouteTarget

__all__ = [
    "CHUNK_BYTES",
    "Exchange",
    "ExchangeFailure",
    "UpstreamBroken",
    "UpstreamConnection",
    "UpstreamSlow",
    "VisitorBroke",
    "VisitorGone",
    "VisitorSide",
]

#: Bytes asked per receive on either side: big enough that a large body costs few trips
#: through h11 and the loop, small enough that a connection holds little.
CHUNK_BYTES = 64 * 1024

IO_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class ExchangeFailure(Exception):
    """Why an exchange stopped; subclasses say whose fault it was."""


class VisitorGone(ExchangeFailure):
    """The visitor closed, reset, stalled or stopped reading."""


class VisitorBroke(ExchangeFailure):
    """The visitor's body broke HTTP/1.1 (400 if nothing was answered yet)."""


class UpstreamBroken(ExchangeFailure):
    """The service's stream failed or its response broke HTTP/1.1 (502)."""


class UpstreamSlow(ExchangeFailure):
    """The service did not answer, or stopped reading, in time (504)."""


class VisitorSide:
    """The visitor's stream and h11 state machine, with bounded sends and receives.

    Waits of the connection's own task are bounded by its lazy `deadline` (set by
    `HttpConnection`; expiry cancels the whole connection); the request-body task of an
    `Exchange` runs beside it and bounds its waits with scopes of its own.
    """

    __slots__ = ("config", "conn", "deadline", "stream")

    def __init__(self, stream: anyio.abc.ByteStream, config: VhostConfig) -> None:
        self.stream = stream
        self.config = config
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self.deadline: Deadline | None = None

    async def send(self, data: bytes) -> None:
        deadline = self.deadline
        try:
            if deadline is not None:
                deadline.set(self.config.send_timeout_s, "send_visitor")
                await self.stream.send(data)
            else:
                with anyio.fail_after(self.config.send_timeout_s):
                    await self.stream.send(data)
        except TimeoutError:
            raise VisitorGone("the visitor stopped reading") from None
        except IO_ERRORS as exc:
            raise VisitorGone(f"sending to the visitor failed: {exc!r}") from None

    async def receive(self) -> int:
        """Feed one chunk (or EOF: 0) to h11; bounded by whatever the caller set."""
        try:
            data = await self.stream.receive(CHUNK_BYTES)
        except anyio.EndOfStream:
            data = b""
        except IO_ERRORS as exc:
            raise VisitorGone(f"receiving from the visitor failed: {exc!r}") from None
        self.conn.receive_data(data)
        return len(data)

    async def next_body_event(self) -> h11.Data | h11.EndOfMessage:
        """The next piece of the request body; the visitor may pause `idle_timeout_s` at most."""
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise VisitorBroke(str(exc)) from None
            if event is h11.NEED_DATA:
                with anyio.move_on_after(self.config.idle_timeout_s):
                    await self.receive()
                    continue
                raise VisitorGone("the request body stalled")
            if isinstance(event, (h11.Data, h11.EndOfMessage)):
                return event
            raise VisitorGone(f"the visitor closed mid-request ({type(event).__name__})")


class UpstreamConnection:
    """A stream to one service, reused across requests of one visitor connection."""

    __slots__ = ("conn", "dead", "reused", "stream", "target")

    def __init__(
        self, stream: anyio.abc.ByteStream, target: RouteTarget, max_header_bytes: int
    ) -> None:
        self.stream = stream
        self.target = target
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self.reused = False
        #: Set when the service closed (or spoke) while idle between requests.
        self.dead = False

    @property
    def reusable(self) -> bool:
        return (
            not self.dead and self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE
        )


class Exchange:
    """Forward one request to `up` and its response back to the visitor."""

    def __init__(
        self,
        visitor: VisitorSide,
        up: UpstreamConnection,
        route: Route,
        request: h11.Request,
        *,
        request_complete: bool,
        chunked: bool,
        response_timeout_s: float,
    ) -> None:
        self.visitor = visitor
        self.up = up
        self.route = route
        self.counters = route.counters
        self.request = request
        self.request_complete = request_complete
        self.chunked = chunked
        self.response_timeout_s = response_timeout_s
        self.send_timeout_s = visitor.config.send_timeout_s
        self.deadline = visitor.deadline
        self.failure: ExchangeFailure | None = None
        #: Bytes received from the service (a reused stream that gave none may be retried).
        self.received_bytes = 0
        self.status: int | None = None  # final status sent to the visitor
        self.response_done = False
        self.switched = False
        self._trailers: list[tuple[bytes, bytes]] = []

    @property
    def response_started(self) -> bool:
        return self.status is not None

    async def run(self) -> None:
        """Run to the end of the response (or a failure, recorded in `failure`).

        A wait of this (the connection's) task that outlives its deadline cancels the whole
        connection: `HttpConnection` answers for it from `deadline.expired`.
        """
        try:
            head = self.up.conn.send(self.request)
            if self.request_complete:  # head and end in one send
                await self._send_up(head + self.up.conn.send(h11.EndOfMessage()), lazy=True)
                self._start_response_clock()
                await self._response()
                return
            await self._send_up(head, lazy=True)
        except ExchangeFailure as exc:
            self._fail(exc)
            return
        if self.deadline is not None:
            self.deadline.clear()  # no response clock while the body uploads
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._guard, self._request_body, tg.cancel_scope)
            await self._guard(self._response, tg.cancel_scope)
            if not self.request_complete:
                tg.cancel_scope.cancel()  # answered before the body ended: the visitor closes

    async def _guard(self, step: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
        try:
            await step()
        except ExchangeFailure as exc:
            self._fail(exc)
            scope.cancel()

    def _fail(self, exc: ExchangeFailure) -> None:
        if self.failure is None:
            self.failure = exc

    def _start_response_clock(self) -> None:
        if self.deadline is not None:
            self.deadline.set(self.response_timeout_s, "response")

    async def _send_up(self, data: bytes, *, lazy: bool = False) -> None:
        """Send to the service; `lazy`: on the connection's task, under its deadline."""
        if not data:
            return
        try:
            if lazy and self.deadline is not None:
                self.deadline.set(self.send_timeout_s, "send_up")
                await self.up.stream.send(data)
            else:
                with anyio.fail_after(self.send_timeout_s):
                    await self.up.stream.send(data)
        except TimeoutError:
            raise UpstreamSlow("the service stopped reading the request") from None
        except IO_ERRORS as exc:
            raise UpstreamBroken(f"sending to the service failed: {exc!r}") from None
        self.counters.bytes_in += len(data)

    async def _send_visitor(self, data: bytes) -> None:
        if not data:
            return
        await self.visitor.send(data)
        self.counters.bytes_out += len(data)

    async def _request_body(self) -> None:
        up_conn = self.up.conn
        while True:
            event = await self.visitor.next_body_event()
            if type(event) is h11.Data:
                await self._send_up(up_conn.send(event))
                continue
            trailers = event.headers if self.chunked else []  # type: ignore[union-attr]
            self.request_complete = True
            await self._send_up(up_conn.send(h11.EndOfMessage(headers=trailers)))
            self._start_response_clock()
            return

    def _up_event(self) -> object:
        """The next event h11 can parse from the service's bytes already received (or NEED_DATA)."""
        try:
            return self.up.conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamBroken(f"the service's response is not HTTP/1.1: {exc}") from None

    async def _receive_up(self) -> None:
        try:
            data = await self.up.stream.receive(CHUNK_BYTES)
        except anyio.EndOfStream:
            data = b""
        except IO_ERRORS as exc:
            raise UpstreamBroken(f"the service's stream failed: {exc!r}") from None
        self.received_bytes += len(data)
        self.up.conn.receive_data(data)

    async def _next_up_event(self) -> object:
        while (event := self._up_event()) is h11.NEED_DATA:
            await self._receive_up()
        return event

    async def _response(self) -> None:
        visitor_conn = self.visitor.conn
        while True:  # bounded by the response clock, once the request is sent whole
            event = await self._next_up_event()
            if type(event) is h11.Response:
                break
            if type(event) is h11.InformationalResponse:
                if event.status_code == 101:
                    await self._switch(event)
                    return
                if event.status_code != 100:  # 100: answered by us already, or not asked
                    await self._send_visitor(self._to_visitor(event))
                    if self.request_complete:
                        self._start_response_clock()  # the send above had its own deadline
                    elif self.deadline is not None:
                        self.deadline.clear()
                continue
            raise UpstreamBroken(f"the service closed before responding ({type(event).__name__})")
        assert type(event) is h11.Response
        raw = event.headers.raw_items()
        headers = response_headers(raw)
        if not self.request_complete:
            headers.append((b"Connection", b"close"))
        response = h11.Response(  # parsed by h11 already: skip its regexes (`_parsed`)
            status_code=event.status_code, headers=headers, reason=event.reason, _parsed=True
        )
        # Bytes for the visitor are gathered while h11 has events without waiting for the
        # service, and sent before any wait: a small response goes out in one send.
        pending = [self._to_visitor(response)]
        pending_bytes = len(pending[0])
        self.status = event.status_code
        self.counters.count_response(event.status_code)
        has_length = any(name.lower() == b"content-length" for name, _ in raw)
        while True:
            event = self._up_event()
            if event is h11.NEED_DATA:
                if pending:
                    await self._send_visitor(b"".join(pending))
                    pending.clear()
                    pending_bytes = 0
                if self.deadline is not None:
                    self.deadline.clear()  # a streaming body may pause as long as it likes
                await self._receive_up()
            elif type(event) is h11.Data:
                data = self._to_visitor(event)
                pending.append(data)
                pending_bytes += len(data)
                if pending_bytes >= CHUNK_BYTES:
                    await self._send_visitor(b"".join(pending))
                    pending.clear()
                    pending_bytes = 0
            elif type(event) is h11.EndOfMessage:
                # Only a chunked body can carry trailers to the visitor.
                chunked = not has_length and visitor_conn.their_http_version == b"1.1"
                trailers = list(event.headers.raw_items()) if chunked else []
                pending.append(self._to_visitor(h11.EndOfMessage(headers=trailers)))
                await self._send_visitor(b"".join(pending))
                self.response_done = True
                return
            else:
                raise UpstreamBroken(f"the service's response ended early ({type(event).__name__})")

    def _to_visitor(self, event: h11.Event) -> bytes:
        """The bytes of `event` for the visitor (h11 checks it fits the visitor's state)."""
        try:
            return self.visitor.conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            raise UpstreamBroken(f"cannot forward the service's response: {exc}") from None

    async def _switch(self, event: h11.InformationalResponse) -> None:
        # h11 (both sides) refuses a 101 that no request proposed: UpstreamBroken below.
        headers = response_headers(event.headers.raw_items(), upgrade=True)
        switch = h11.InformationalResponse(
            status_code=101, headers=headers, reason=event.reason, _parsed=True
        )
        await self._send_visitor(self._to_visitor(switch))
        self.status = 101
        self.counters.count_response(101)
        self.switched = True
