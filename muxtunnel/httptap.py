"""A passive HTTP/1.1 tap: what `up`'s inspector shows of the requests through an http service.

`TappedStream` wraps the client's socket to the local service. Bytes pass through it unchanged
and at once; a copy of each chunk goes to a `Tap`, which parses both directions with h11 (a
server-role connection for the requests, a client-role one for the responses) and puts each
finished request/response pair into the bounded `muxtunnel.captures.Captures` ring.

Invariants:
- the tap never alters, delays or fails the stream: it runs synchronously on bytes already
  moved, never awaits, and any error inside it (a protocol h11 does not understand, a bug) makes
  it stop tapping that connection (`Captures.abandoned`), nothing more;
- memory per connection is bounded: bodies keep their first `body_cap_bytes`; heads are capped
  by h11 (`MAX_HEAD_BYTES`); bytes h11 holds while one side waits for the other (pipelined
  requests) are capped by `MAX_WAITING_BYTES`, past which the connection is abandoned;
- the ring keeps the last `captures.RING_EXCHANGES` exchanges; an upgraded connection (WebSocket) is
  recorded up to its 101 and not followed further;
- a response body with a Content-Length, once cut at the cap, is counted to its end without
  parsing (`Tap._skip`): a large download costs the tap next to nothing;
- a PROXY protocol header the server wrote first on the stream is passed over.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import h11

from muxtunnel.captures import Captures, Exchange, Headers
from muxtunnel.transport import abort

__all__ = ["MAX_HEAD_BYTES", "MAX_WAITING_BYTES", "Tap", "TappedStream"]

#: A request or response head larger than this is not followed (the admin API's cap).
MAX_HEAD_BYTES = 16 * 1024
#: Bytes a parser may hold unparsed while its side waits for the other's message to end.
MAX_WAITING_BYTES = 256 * 1024

_ENDED = {True: "response", False: "request"}
#: What the response parser must know of a request: whether it proposed an upgrade.
_UPGRADE_HEADERS = ("connection", "upgrade")


def _headers(items: Any) -> Headers:
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in items)


@dataclass(slots=True)
class _Body:
    cap: int
    kept: bytearray = field(default_factory=bytearray)
    size: int = 0

    @property
    def full(self) -> bool:
        return len(self.kept) >= self.cap

    def add(self, data: bytes) -> None:
        self.size += len(data)
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]


def _length(headers: Any) -> int | None:
    """A message's Content-Length (h11 checked it), or None: chunked, or none."""
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return None


#: PROXY protocol v2's signature (HAProxy's spec, section 2.2; `muxtunnel.vhost.proxy_protocol`).
_PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"


def _without_proxy_header(data: bytes) -> bytes:
    """`data` past a PROXY protocol header it starts with (one the server wrote first, in one
    piece); a header cut in two is left for h11 to refuse."""
    if data.startswith(b"PROXY ") and (end := data.find(b"\r\n", 0, 108)) != -1:
        return data[end + 2 :]  # v1: one line of at most 107 bytes (section 2.1)
    if data.startswith(_PROXY_V2) and len(data) >= 16:
        return data[16 + int.from_bytes(data[14:16], "big") :]
    return data


def _parser(role: type[h11.SERVER] | type[h11.CLIENT]) -> h11.Connection:
    return h11.Connection(role, max_incomplete_event_size=MAX_HEAD_BYTES)


def _fresh(role: type[h11.SERVER] | type[h11.CLIENT], old: h11.Connection) -> h11.Connection:
    """A new parser with the bytes `old` had not parsed yet."""
    parser = _parser(role)
    data, closed = old.trailing_data
    if data:
        parser.receive_data(data)
    if closed:
        parser.receive_data(b"")
    return parser


#: What the response parser is told of a plain request of a common method (built once).
_PLAIN_REQUESTS = {
    method: h11.Request(method=method, target="/", headers=[("host", "-")])
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
}


class Tap:
    """Parses one connection's bytes both ways; records each exchange once it ends."""

    def __init__(self, captures: Captures, service: str, peer: str) -> None:
        self._captures = captures
        self._service = service
        self._peer = peer
        self._requests = _parser(h11.SERVER)
        self._responses = _parser(h11.CLIENT)
        #: Requests whose head was seen and whose response has not ended, oldest first.
        self._open: deque[dict[str, Any]] = deque()
        #: The request whose body is coming in; an exchange answered before its request ended.
        self._receiving: dict[str, Any] | None = None
        self._answered: dict[str, Any] | None = None
        #: Bytes of the response body being skipped (counted, not parsed: see `_skip`).
        self._skip_bytes = 0
        self._first = True
        self.active = True

    def feed_request(self, data: bytes) -> None:
        """Bytes the visitor sent to the service (b"": its end of stream). Never raises."""
        if self._first:  # the server may have written a PROXY protocol header first
            self._first = False
            rest = _without_proxy_header(data)
            if data and not rest:
                return  # b"" would tell h11 the stream ended
            data = rest
        if self.active:
            self._safely(self._requests.receive_data, data)
            self._safely(self._drain_requests)
            self._safely(self._drain_responses)  # an answer that came before its request

    def feed_response(self, data: bytes) -> None:
        """Bytes the service sent back (b"": its end of stream). Never raises."""
        if self._skip_bytes and data and self.active:
            data = self._skip(data)
            if not data:
                return
        if self.active:
            self._safely(self._responses.receive_data, data)
            self._safely(self._drain_responses)

    def _skip(self, data: bytes) -> bytes:
        """Count the bytes of a long body (cut already) without parsing them: what follows it."""
        taken = min(len(data), self._skip_bytes)
        self._skip_bytes -= taken
        pending = self._open[0]
        pending["response_body"].size += taken
        if not self._skip_bytes:
            self._safely(self._response_ended, pending)
        return data[taken:]

    #: As the observer of up's relay (`muxtunnel.relay.Observer`): its socket is the local
    #: service's, its stream the visitor's.
    from_stream = feed_request
    from_socket = feed_response

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
        while self.active:
            parser = self._requests  # `_cycle` may start a fresh one
            event = parser.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return
            if event is h11.PAUSED:  # a pipelined request waits for the answer to this one
                self._check_waiting(parser)
                return
            self._on_request_event(event)

    def _drain_responses(self) -> None:
        while self.active:
            parser = self._responses  # `_cycle` may start a fresh one
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
            self._cycle()  # if it was answered already

    def _announce(self, pending: dict[str, Any]) -> None:
        """Tell the response parser which request it answers (HEAD has no body, ...)."""
        upgrade = [(k, v) for k, v in pending["headers"] if k.lower() in _UPGRADE_HEADERS]
        request = _PLAIN_REQUESTS.get(pending["method"]) if not upgrade else None
        if request is None:
            request = h11.Request(
                method=pending["method"], target="/", headers=[("host", "-"), *upgrade]
            )
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
                           response=_headers(event.headers), length=_length(event.headers),
                           response_body=_Body(self._captures.body_cap_bytes))  # fmt: skip
        elif isinstance(event, h11.Data):
            body: _Body = pending["response_body"]
            body.add(event.data)
            if body.full and pending["length"] is not None:
                # The rest only needs counting: h11 holds none of it (it handed out all it
                # had, up to the length), so the parser can sit out until the body's end.
                self._skip_bytes = pending["length"] - body.size
        elif isinstance(event, h11.EndOfMessage):
            self._response_ended(pending)

    def _response_ended(self, pending: dict[str, Any]) -> None:
        pending["t_end"] = time.monotonic()
        self._answered = self._open.popleft()
        self._cycle()

    def _cycle(self) -> None:
        """Once both messages of an exchange have ended (an early answer waits for the end of
        its request's body), record it and start both parsers afresh on what follows.

        Fresh parsers (with the bytes the old ones held) cost less than telling each one the
        other side's message, and a passive tap has no keep-alive rules to enforce.
        """
        if self._answered is None or self._requests.their_state is not h11.DONE:
            return
        self._record(self._answered)
        self._answered = None
        self._requests = _fresh(h11.SERVER, self._requests)
        self._responses = _fresh(h11.CLIENT, self._responses)
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
