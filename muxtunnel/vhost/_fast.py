"""The fast path of one bodiless request: bytes out, the response relayed by its framing only.

Most keep-alive traffic is GET/HEAD: a head without a body. For those the request is written
from the parsed head (`_wire.parse_request_head`) and the response is not parsed beyond its
head: its body passes through by Content-Length, by chunk framing (`ChunkScanner`, the bytes
unchanged), or until the service closes (re-framed as chunked for the visitor, whose
connection so stays alive). h11 stays the parser of everything else (`http.py` falls back to
it), and of every response the proxy writes itself.

Invariants, as `Exchange`'s: one failure recorded (the first); an error page only while no
response byte reached the visitor (`response_started`), else the caller resets it; the
response clock (`response_timeout_s`) runs from the request's send to the response head; the
kept upstream is reused only after a whole HTTP/1.1 keep-alive response with nothing after it.
"""

from __future__ import annotations

import anyio

from mux import write_now
from muxtunnel.vhost._exchange import (
    CHUNK_BYTES,
    IO_ERRORS,
    ExchangeFailure,
    UpstreamBroken,
    UpstreamConnection,
    UpstreamSlow,
    VisitorSide,
)
from muxtunnel.vhost._wire import (
    ChunkScanner,
    ResponseHead,
    find_response_head,
    parse_response_head,
)
from muxtunnel.vhost.routes import Route

__all__ = ["LAST_HEAD_BYTES", "FastExchange", "LastHead", "take_response_head"]


class FastExchange:
    """Send one bodiless request to `up` and relay its response to the visitor."""

    __slots__ = ("counters", "deadline", "failure", "head_only", "keep_upstream",
                 "max_head_bytes", "received_bytes", "request", "response_timeout_s", "status",
                 "up", "visitor", "visitor_close")  # fmt: skip

    def __init__(
        self,
        visitor: VisitorSide,
        up: UpstreamConnection,
        route: Route,
        request: bytes,
        *,
        head_only: bool,
        visitor_close: bool,
        response_timeout_s: float,
        max_head_bytes: int,
    ) -> None:
        self.visitor = visitor
        self.up = up
        self.counters = route.counters
        self.request = request
        self.head_only = head_only
        self.visitor_close = visitor_close
        self.response_timeout_s = response_timeout_s
        self.max_head_bytes = max_head_bytes
        self.deadline = visitor.deadline
        self.failure: ExchangeFailure | None = None
        self.received_bytes = 0
        self.status: int | None = None
        self.keep_upstream = False

    @property
    def response_started(self) -> bool:
        return self.status is not None

    async def run(self) -> None:
        """Run to the end of the response (or a failure, recorded in `failure`)."""
        try:
            await self._send_up(self.request)
            if self.deadline is not None:
                self.deadline.set(self.response_timeout_s, "response")
            await self._response()
        except ExchangeFailure as exc:
            self.failure = exc

    async def _send_up(self, data: bytes) -> None:
        deadline = self.deadline
        try:
            if deadline is not None:
                deadline.set(self.visitor.config.send_timeout_s, "send_up")
                await self.up.stream.send(data)
            else:
                with anyio.fail_after(self.visitor.config.send_timeout_s):
                    await self.up.stream.send(data)
        except TimeoutError:
            raise UpstreamSlow("the service stopped reading the request") from None
        except IO_ERRORS as exc:
            raise UpstreamBroken(f"sending to the service failed: {exc!r}") from None
        self.counters.bytes_in += len(data)

    async def _receive_up(self) -> bytes:
        """The service's next bytes; b"" at its end."""
        try:
            data = await self.up.stream.receive(CHUNK_BYTES)
        except anyio.EndOfStream:
            return b""
        except IO_ERRORS as exc:
            raise UpstreamBroken(f"the service's stream failed: {exc!r}") from None
        self.received_bytes += len(data)
        return data

    async def _send_visitor(self, data: bytes) -> None:
        # Room in the socket's buffer: written now, without anyio's yield after the write
        # (the next step reads, and waits there). Else a send that waits, bounded as usual.
        if not write_now(self.visitor.stream, data):
            await self.visitor.send(data)
        self.counters.bytes_out += len(data)

    async def _read_head(self, data: bytes) -> tuple[ResponseHead, bytes]:
        """The next response head (after `data` already received) and the bytes after it."""
        while (taken := take_response_head(data, self.max_head_bytes)) is None:
            more = await self._receive_up()
            if not more:
                raise UpstreamBroken("the service closed before responding")
            data += more
        return taken

    async def _response(self) -> None:
        data = b""
        while True:
            head, data = await self._read_head(data)
            if head.status >= 200:
                break
            if head.status == 101:
                raise UpstreamBroken("the service switched protocols unasked")
            if head.status != 100:  # 100: nobody asked (no Expect), h11 drops it as well
                await self._send_visitor(_head_bytes(head, b""))
                if self.deadline is not None:
                    self.deadline.set(self.response_timeout_s, "response")
        extra = b""
        bodiless = self.head_only or head.status in (204, 304)
        close_delimited = not head.chunked and head.length is None
        if head.chunked or (close_delimited and head.status not in (204, 304)):
            # As h11 frames a body of unknown length for an HTTP/1.1 visitor (a HEAD's
            # headers are the GET's: RFC 9110 §9.3.2).
            extra = b"Transfer-Encoding: chunked\r\n"
        if self.visitor_close:
            extra += b"Connection: close\r\n"
        out = _head_bytes(head, extra)
        self.status = head.status
        self.counters.count_response(head.status)
        if bodiless:
            self.keep_upstream = head.keep_alive and not data
            await self._send_visitor(out)
            return
        if head.length is not None:
            await self._relay_length(out, data, head.length)
            self.keep_upstream = head.keep_alive and not self.up.dead
        elif head.chunked:
            await self._relay_chunked(out, data)
            self.keep_upstream = head.keep_alive and not self.up.dead
        else:
            await self._relay_until_close(out, data)

    def _clear_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.clear()  # a streaming body may pause as long as it likes

    async def _relay_length(self, out: bytes, data: bytes, length: int) -> None:
        while True:
            if len(data) >= length:
                if len(data) > length:
                    self.up.dead = True  # bytes after the response: not HTTP any more
                    data = data[:length]
                await self._send_visitor(out + data)
                return
            length -= len(data)
            if out or data:
                await self._send_visitor(out + data)
                out = b""
            self._clear_deadline()
            data = await self._receive_up()
            if not data:
                raise UpstreamBroken("the service closed in the middle of the body")

    async def _relay_chunked(self, out: bytes, data: bytes) -> None:
        scanner = ChunkScanner()
        while True:
            try:
                used = scanner.scan(data)
            except ValueError as exc:
                raise UpstreamBroken(f"the service's chunked body is broken: {exc}") from None
            if scanner.done:
                if used < len(data):
                    self.up.dead = True
                await self._send_visitor(out + data[:used])
                return
            if out or used:
                await self._send_visitor(out + data[:used])
                out = b""
            data = data[used:]
            self._clear_deadline()
            more = await self._receive_up()
            if not more:
                raise UpstreamBroken("the service closed in the middle of the body")
            data += more

    async def _relay_until_close(self, out: bytes, data: bytes) -> None:
        while True:
            if data:
                out += b"%x\r\n%b\r\n" % (len(data), data)
            if out:
                await self._send_visitor(out)
                out = b""
            self._clear_deadline()
            data = await self._receive_up()
            if not data:
                await self._send_visitor(b"0\r\n\r\n")
                return


def _head_bytes(head: ResponseHead, extra: bytes) -> bytes:
    return b"HTTP/1.1 %d %b\r\n%b%b\r\n" % (head.status, head.reason, head.lines, extra)


#: A response head up to this size is remembered (`LastHead`): most are well below it
#: (nginx's ~250 bytes), and an idle connection must not keep a large one (up to 64 KiB).
LAST_HEAD_BYTES = 4 * 1024


class LastHead:
    """The last CRLF response head one connection's service sent, parsed, and what the
    visitor got of it: a keep-alive service sends the same head again and again (nginx's
    change in their Date line, once a second). One per connection, always taken with the
    same `max_head_bytes`.

    `raw` (the head up to its first CRLF CRLF, that included) parsed once, so bytes that
    start with `raw` hold the same head ending at the same place: `parse_response_head` is a
    function of those bytes alone. ~51k -> ~1k instructions for nginx's 612-byte page.
    """

    __slots__ = ("extra", "head", "out", "raw")

    def __init__(self) -> None:
        self.raw = b""
        self.head = ResponseHead()
        #: `_head_bytes(head, extra)`, once made (b"": not yet).
        self.extra = b""
        self.out = b""

    def head_bytes(self, head: ResponseHead, extra: bytes) -> bytes:
        """`_head_bytes(head, extra)`, made again only for another head or `extra`."""
        if head is not self.head or extra != self.extra or not self.out:
            out = _head_bytes(head, extra)
            if head is not self.head:
                return out
            self.extra, self.out = extra, out
        return self.out


def take_response_head(
    data: bytes, max_head_bytes: int, last: LastHead | None = None
) -> tuple[ResponseHead, bytes] | None:
    """The response head `data` starts with and the bytes after it; None while it is not all
    there. A head past `max_head_bytes` or not HTTP/1.1 breaks the upstream. `last`: the
    connection's last head, reused when `data` starts with it, replaced by a new one."""
    if last is not None:
        raw = last.raw
        if raw and data.startswith(raw):
            return last.head, data[len(raw) :]
    end = data.find(b"\r\n\r\n")
    if 0 <= end <= max_head_bytes:
        # Nearly every head. One that parses up to its first CRLF CRLF has no empty line, so
        # no blank line of bare LFs ended it before: the two searches `find_response_head`
        # makes to be sure of that (~1 us) are moot. A head that does not parse so is found
        # and parsed as before (and refused as before if it is broken).
        try:
            head = parse_response_head(data[:end])
        except ValueError:
            pass
        else:
            if last is not None and end <= LAST_HEAD_BYTES:
                last.raw, last.head, last.out = data[: end + 4], head, b""
            return head, data[end + 4 :]
    found = find_response_head(data)
    if found is None:
        if len(data) > max_head_bytes:
            raise UpstreamBroken("the service's response head is too large")
        return None
    end, body_start = found
    if end > max_head_bytes:
        raise UpstreamBroken("the service's response head is too large")
    try:
        head = parse_response_head(data[:end])
    except ValueError as exc:
        raise UpstreamBroken(f"the service's response is not HTTP/1.1: {exc}") from None
    return head, data[body_start:]
