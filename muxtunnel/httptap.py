"""A passive HTTP/1.1 tap: what `up`'s inspector shows of the requests through an http service.

`TappedStream` wraps the client's socket to the local service. Bytes pass through it unchanged
and at once; a copy of each chunk goes to a `Tap`, which parses both directions with h11 (a
server-role connection for the requests, a client-role one for the responses) and puts each
finished request/response pair into the bounded `Captures` ring.

Invariants:
- the tap never alters, delays or fails the stream: it runs synchronously on bytes already
  moved, never awaits, and any error inside it (a protocol h11 does not understand, a bug) makes
  it stop tapping that connection (`Captures.abandoned`), nothing more;
- memory per connection is bounded: bodies keep their first `body_cap_bytes`; heads are capped
  by h11 (`MAX_HEAD_BYTES`); bytes h11 holds while one side waits for the other (pipelined
  requests) are capped by `MAX_WAITING_BYTES`, past which the connection is abandoned;
- the ring keeps the last `RING_EXCHANGES` exchanges; an upgraded connection (WebSocket) is
  recorded up to its 101 and not followed further.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import h11

from muxtunnel.transport import abort

__all__ = ["BODY_CAP_BYTES", "RING_EXCHANGES", "Captures", "Exchange", "Tap", "TappedStream"]

#: Exchanges kept; with the body cap, at most 100 * 2 * 16 KiB = 3.2 MiB of bodies.
RING_EXCHANGES = 100
#: Bytes kept of each request and response body (ngrok's inspector keeps more; a page shows
#: this much, and replay needs the whole body: a longer one cannot be replayed).
BODY_CAP_BYTES = 16 * 1024
#: A request or response head larger than this is not followed (the admin API's cap).
MAX_HEAD_BYTES = 16 * 1024
#: Bytes a parser may hold unparsed while its side waits for the other's message to end.
MAX_WAITING_BYTES = 256 * 1024

Headers = tuple[tuple[str, str], ...]
_ENDED = {True: "response", False: "request"}
#: What the response parser must know of a request: whether it proposed an upgrade.
_UPGRADE_HEADERS = ("connection", "upgrade")


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and its response (None while none came)."""

    id: int
    service: str
    peer: str
    #: When the request head was seen (seconds since the epoch).
    started: float
    method: str
    target: str
    request_headers: Headers
    request_body: bytes
    #: The body's full size (`request_body` holds at most the cap).
    request_bytes: int
    status: int | None = None
    reason: str = ""
    response_headers: Headers = ()
    response_body: bytes = b""
    response_bytes: int = 0
    #: From the request head to the response's end.
    duration_s: float | None = None
    #: Why the exchange is incomplete ("closed before the response", ...), if it is.
    error: str | None = None
    #: The exchange this one replayed.
    replay_of: int | None = None

    @property
    def replayable(self) -> bool:
        """Its whole request is known (the body was not cut)."""
        return self.request_bytes == len(self.request_body)

    def summary(self) -> dict[str, Any]:
        """The fields of the list of requests."""
        return {
            "id": self.id,
            "service": self.service,
            "started": round(self.started, 3),
            "method": self.method,
            "target": self.target,
            "status": self.status,
            "duration_ms": None if self.duration_s is None else round(self.duration_s * 1000, 2),
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "error": self.error,
            "replay_of": self.replay_of,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything: heads and (cut) bodies, bodies as text with undecodable bytes replaced."""
        return {
            **self.summary(),
            "peer": self.peer,
            "reason": self.reason,
            "request_headers": [list(pair) for pair in self.request_headers],
            "request_body": self.request_body.decode("utf-8", "replace"),
            "response_headers": [list(pair) for pair in self.response_headers],
            "response_body": self.response_body.decode("utf-8", "replace"),
            "replayable": self.replayable,
        }


class Captures:
    """The bounded ring of recent exchanges, newest last, and the tap's own counters."""

    def __init__(
        self, size: int = RING_EXCHANGES, *, body_cap_bytes: int = BODY_CAP_BYTES
    ) -> None:
        self.body_cap_bytes = body_cap_bytes
        self._ring: deque[Exchange] = deque(maxlen=size)
        self._ids = itertools.count(1)
        #: Exchanges recorded, and connections the tap stopped following (not HTTP/1.1, ...).
        self.recorded = 0
        self.abandoned = 0

    def next_id(self) -> int:
        """A new exchange id."""
        return next(self._ids)

    def add(self, exchange: Exchange) -> None:
        """Keep `exchange`; the oldest goes when the ring is full."""
        self._ring.append(exchange)
        self.recorded += 1

    def exchanges(self) -> list[Exchange]:
        """The ring, oldest first."""
        return list(self._ring)

    def get(self, exchange_id: int) -> Exchange | None:
        """The exchange with this id, if the ring still has it."""
        return next((e for e in self._ring if e.id == exchange_id), None)

    def tap(self, service: str, peer: str) -> Tap:
        """A tap for one connection of `service`."""
        return Tap(self, service, peer)


def _headers(items: Any) -> Headers:
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in items)


@dataclass(slots=True)
class _Body:
    cap: int
    kept: bytearray = field(default_factory=bytearray)
    size: int = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]


class Tap:
    """Parses one connection's bytes both ways; records each exchange once it ends."""

    def __init__(self, captures: Captures, service: str, peer: str) -> None:
        self._captures = captures
        self._service = service
        self._peer = peer
        self._requests = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._responses = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        #: Requests whose head was seen and whose response has not ended, oldest first.
        self._open: deque[dict[str, Any]] = deque()
        #: The request whose body is coming in; an exchange answered before its request ended.
        self._receiving: dict[str, Any] | None = None
        self._answered: dict[str, Any] | None = None
        self.active = True

    def feed_request(self, data: bytes) -> None:
        """Bytes the visitor sent to the service (b"": its end of stream). Never raises."""
        if self.active:
            self._safely(self._requests.receive_data, data)
            self._safely(self._drain_requests)
            self._safely(self._drain_responses)  # an answer that came before its request

    def feed_response(self, data: bytes) -> None:
        """Bytes the service sent back (b"": its end of stream). Never raises."""
        if self.active:
            self._safely(self._responses.receive_data, data)
            self._safely(self._drain_responses)

    def _safely(self, step: Callable[..., None], *args: Any) -> None:
        if not self.active:
            return
        try:
            step(*args)
        except Exception:  # not HTTP/1.1 as h11 knows it, or a bug: stop, the bytes still flow
            self._abandon()

    def close(self) -> None:
        """The connection ended: requests left without a whole response are recorded so."""
        if self.active:
            if self._answered is not None:
                self._record(self._answered, error="closed before the request ended")
            for pending in self._open:
                ended = "request_done" in pending
                self._record(pending, error=f"closed before the {_ENDED[ended]} ended")
        self.active = False
        self._open.clear()

    def _drain_requests(self) -> None:
        parser = self._requests
        while self.active:
            event = parser.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:  # a pipelined request waits for the answer to this one
                self._check_waiting(parser)
                return
            self._on_request_event(event)

    def _drain_responses(self) -> None:
        parser = self._responses
        while self.active:
            if parser.our_state is h11.IDLE:
                if not self._open:  # bytes before their request (or a stray close): wait
                    self._check_waiting(parser)
                    return
                self._announce(self._open[0])
            event = parser.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                return
            self._on_response_event(event)

    def _check_waiting(self, parser: h11.Connection) -> None:
        if len(parser.trailing_data[0]) > MAX_WAITING_BYTES:
            self._abandon()

    def _on_request_event(self, event: Any) -> None:
        if isinstance(event, h11.Request):
            self._receiving = {
                "id": self._captures.next_id(), "started": time.time(), "t0": time.monotonic(),
                "method": event.method.decode("latin-1"), "target": event.target.decode("latin-1"),
                "headers": _headers(event.headers), "body": _Body(self._captures.body_cap_bytes),
            }  # fmt: skip
            self._open.append(self._receiving)
        elif isinstance(event, h11.Data) and self._receiving is not None:
            self._receiving["body"].add(event.data)
        elif isinstance(event, h11.EndOfMessage):
            if self._receiving is not None:
                self._receiving["request_done"] = True
                self._receiving = None
            if self._requests.our_state is h11.DONE:  # answered already
                self._cycle()

    def _announce(self, pending: dict[str, Any]) -> None:
        """Tell the response parser which request it answers (HEAD has no body, ...)."""
        upgrade = [(k, v) for k, v in pending["headers"] if k.lower() in _UPGRADE_HEADERS]
        request = h11.Request(
            method=pending["method"], target=pending["target"] or "/",
            headers=[("host", "-"), *upgrade],
        )  # fmt: skip
        self._responses.send(request)
        self._responses.send(h11.EndOfMessage())

    def _on_response_event(self, event: Any) -> None:
        pending = self._open[0]
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:  # an upgrade: recorded, then no longer HTTP
                pending.update(status=101, reason=event.reason, response=_headers(event.headers),
                               t_end=time.monotonic())  # fmt: skip
                self._record(self._open.popleft())
                self.active = False
        elif isinstance(event, h11.Response):
            pending.update(status=event.status_code, reason=event.reason,
                           response=_headers(event.headers),
                           response_body=_Body(self._captures.body_cap_bytes))  # fmt: skip
        elif isinstance(event, h11.Data):
            pending["response_body"].add(event.data)
        elif isinstance(event, h11.EndOfMessage):
            pending["t_end"] = time.monotonic()
            self._answered = self._open.popleft()
            self._next_cycle(pending)

    def _next_cycle(self, pending: dict[str, Any]) -> None:
        """The response ended: tell the request parser, and go on to the next exchange."""
        answer = h11.Response(status_code=pending["status"], headers=[("content-length", "0")])
        self._requests.send(answer)
        self._requests.send(h11.EndOfMessage())
        self._cycle()

    def _cycle(self) -> None:
        """Both parsers start on the next exchange of this keep-alive connection, once both
        messages have ended (an early answer waits for the end of its request's body)."""
        if self._requests.their_state is not h11.DONE:
            return  # `_on_request_event` calls again at the request's end
        if self._answered is not None:
            self._record(self._answered)
            self._answered = None
        if h11.MUST_CLOSE in (self._requests.our_state, self._responses.our_state):
            self.active = False
            return
        self._requests.start_next_cycle()
        self._responses.start_next_cycle()
        self._drain_requests()  # a pipelined request, waiting

    def _record(self, pending: dict[str, Any], error: str | None = None) -> None:
        body: _Body = pending["body"]
        response: _Body | None = pending.get("response_body")
        self._captures.add(Exchange(
            id=pending["id"], service=self._service, peer=self._peer,
            started=pending["started"], method=pending["method"], target=pending["target"],
            request_headers=pending["headers"], request_body=bytes(body.kept),
            request_bytes=body.size, status=pending.get("status"),
            reason=pending.get("reason", b"").decode("latin-1"),
            response_headers=pending.get("response", ()),
            response_body=bytes(response.kept) if response else b"",
            response_bytes=response.size if response else 0,
            duration_s=pending["t_end"] - pending["t0"] if "t_end" in pending else None,
            error=error,
        ))  # fmt: skip

    def _abandon(self) -> None:
        self.active = False
        self._open.clear()
        self._captures.abandoned += 1


class TappedStream(anyio.abc.ByteStream):
    """`inner` (the socket to the local service), with a copy of every byte for `tap`."""

    def __init__(self, inner: anyio.abc.ByteStream, tap: Tap) -> None:
        self.inner = inner
        self.tap = tap
        self._aborting = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self.inner.receive(max_bytes)
        except anyio.EndOfStream:
            self.tap.feed_response(b"")
            raise
        self.tap.feed_response(data)
        return data

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)
        self.tap.feed_request(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()
        self.tap.feed_request(b"")

    async def aclose(self) -> None:
        self.tap.close()
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
