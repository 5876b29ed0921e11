"""Responses relayed by their framing only, bytes in, bytes out: the callback path's half.

One `ResponseRelay` per connection relays its responses in turn (`start` for each).
`ResponseRelay.feed` takes the service's bytes as they come and writes the visitor's at once:
the head (parsed by `_wire.parse_response_head`, rewritten as `_fast` rewrites it), then the
body by its Content-Length, its chunk framing (`ChunkScanner`, bytes unchanged), or until the
service closes (`eof`; re-framed as chunked, so the visitor's connection stays alive). A
head equal to the service's last one, byte for byte, is not parsed again (`_fast.LastHead`).
No clock, no I/O of its own: `_relay.CallbackPath` drives it and owns the deadlines.

Invariants: nothing of one response outlives the next `start` but the connection's
`LastHead` (a function of a head's bytes alone); `status` is set once the final head was
written (from then on a failure must reset the visitor); `feed` and `eof` return True once,
when the response ended whole; `trailing` says bytes came after it (the stream is not HTTP
any more); malformed input raises `UpstreamBroken`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from muxtunnel.vhost._exchange import UpstreamBroken
from muxtunnel.vhost._fast import LastHead, _head_bytes, take_response_head
from muxtunnel.vhost._wire import ChunkScanner
from muxtunnel.vhost.counters import ServiceCounters

__all__ = ["ResponseRelay"]


class _Body(enum.Enum):
    HEAD = 0
    LENGTH = 1
    CHUNKED = 2
    UNTIL_CLOSE = 3


class ResponseRelay:
    """Relays a connection's responses, one at a time (`start`), from the service's bytes to
    `write` (see the module doc)."""

    __slots__ = ("_body", "_left", "_pending", "_scanner", "counters", "head_only", "keep_alive",
                 "last", "max_head_bytes", "status", "trailing", "visitor_close",
                 "write")  # fmt: skip

    def __init__(self, write: Callable[[bytes], None], max_head_bytes: int) -> None:
        self.write = write
        self.max_head_bytes = max_head_bytes
        #: The service's last response head (`take_response_head`): it repeats its heads.
        self.last = LastHead()
        self.counters = ServiceCounters()
        self.head_only = False
        self.visitor_close = False
        self.status: int | None = None
        #: The service keeps its connection open after this response.
        self.keep_alive = False
        #: Bytes came after the response's end.
        self.trailing = False
        self._body = _Body.HEAD
        self._pending = b""  # the head so far, or a chunked body's unscanned tail
        self._left = 0
        self._scanner: ChunkScanner | None = None

    def start(self, counters: ServiceCounters, head_only: bool, visitor_close: bool) -> None:
        """Relay the next response (of a request `head_only`, whose visitor asked to close
        after it or not): one relay serves all the responses of a connection in turn (making
        one per response cost ~1 us of a keep-alive request)."""
        self.counters = counters
        self.head_only = head_only
        self.visitor_close = visitor_close
        self.status = None
        self.keep_alive = False
        self.trailing = False
        self._body = _Body.HEAD
        self._pending = b""
        self._left = 0
        self._scanner = None

    def feed(self, data: bytes) -> bool:
        """Relay the service's next bytes; True once the response has ended."""
        body = self._body
        if body is _Body.HEAD:
            return self._head(self._pending + data)
        if body is _Body.LENGTH:
            return self._relay_length(b"", data)
        if body is _Body.CHUNKED:
            return self._relay_chunked(b"", self._pending + data)
        if data:
            self.write(b"%x\r\n%b\r\n" % (len(data), data))
        return False

    def eof(self) -> bool:
        """The service closed: True if that ended the response (a body until the close)."""
        if self._body is _Body.UNTIL_CLOSE:
            self.write(b"0\r\n\r\n")
            return True
        if self._body is _Body.HEAD:
            raise UpstreamBroken("the service closed before responding")
        raise UpstreamBroken("the service closed in the middle of the body")

    def _head(self, data: bytes) -> bool:
        while True:
            taken = take_response_head(data, self.max_head_bytes, self.last)
            if taken is None:
                self._pending = data
                return False
            head, data = taken
            if head.status >= 200:
                break
            if head.status == 101:
                raise UpstreamBroken("the service switched protocols unasked")
            if head.status != 100:  # 100: nobody asked (no Expect), h11 drops it as well
                self.write(_head_bytes(head, b""))
        self._pending = b""
        extra = b""
        bodiless = self.head_only or head.status in (204, 304)
        close_delimited = not head.chunked and head.length is None
        if head.chunked or (close_delimited and head.status not in (204, 304)):
            extra = b"Transfer-Encoding: chunked\r\n"  # as `_fast` (and h11) frame it
        if self.visitor_close:
            extra += b"Connection: close\r\n"
        out = self.last.head_bytes(head, extra)
        self.status = head.status
        self.counters.count_response(head.status)
        self.keep_alive = head.keep_alive
        if bodiless:
            self.trailing = bool(data)
            self.write(out)
            return True
        if head.length is not None:
            self._body = _Body.LENGTH
            self._left = head.length
            return self._relay_length(out, data)
        if head.chunked:
            self._body = _Body.CHUNKED
            self._scanner = ChunkScanner()
            return self._relay_chunked(out, data)
        self._body = _Body.UNTIL_CLOSE
        self.keep_alive = False
        if data:
            out += b"%x\r\n%b\r\n" % (len(data), data)
        self.write(out)
        return False

    def _relay_length(self, out: bytes, data: bytes) -> bool:
        left = self._left
        if len(data) > left:
            self.trailing = True
            data = data[:left]
        self._left = left - len(data)
        if out or data:
            self.write(out + data)
        return not self._left

    def _relay_chunked(self, out: bytes, data: bytes) -> bool:
        scanner = self._scanner
        assert scanner is not None
        try:
            used = scanner.scan(data)
        except ValueError as exc:
            raise UpstreamBroken(f"the service's chunked body is broken: {exc}") from None
        if out or used:
            self.write(out + data[:used])
        if scanner.done:
            self.trailing = used < len(data)
            self._pending = b""
            return True
        self._pending = data[used:]
        return False
