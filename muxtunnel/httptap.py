"""A passive HTTP/1.1 tap: what `up`'s inspector shows of the requests through an http service.

`Tap` is the observer (`muxtunnel.relay.Observer`) of up's relay between a visitor's stream
and the local service's socket, or of that socket (`muxtunnel.relay.ObservedStream`) on the
general path. Bytes pass through unchanged and at once; the tap finds in a copy of each chunk
each message's head and the end of its body (its framing: Content-Length, chunked, or the
connection's end) in both directions, and puts each finished request/response pair into the
bounded `muxtunnel.captures.Captures` ring as a `captures.Raw`: whole heads as bytes, parsed
only if someone looks at them.

Most requests are never looked at, so per message the tap only finds the blank line, matches
the start line and searches the lowercased head for the framing headers (`muxtunnel.bodies`):
~8 µs of CPU per small exchange where parsing both ways with h11 cost ~115 µs. A head that
starts the bytes exactly as the connection's last plain head did (with its CRLF blank line:
a keep-alive client repeating a request, a server's answers within one Date second) ends at
the same place and is framed the same, so it is taken from what the tap remembers of that
head: ~2.3 µs per exchange when both heads repeat (`python -m bench.micro.httptap`). So is a
request with the same method and header lines after another target (`bodies.RepeatedRequest`:
a browser's next page, a poller's next query): ~3.2 µs where a new head costs ~5.

Invariants:
- the tap never alters, delays or fails the stream: it runs synchronously on bytes already
  moved, never awaits, and any error inside it (a start line that is not HTTP/1.x, framing it
  cannot follow, a bug) makes it stop tapping that connection (`Captures.abandoned`), nothing
  more;
- memory per connection is bounded: bodies keep their first `body_cap_bytes`, the rest is
  counted; a head longer than `MAX_HEAD_BYTES` stops the tap; requests waiting for their
  answers (pipelined) and answers waiting for their request hold at most `MAX_WAITING_BYTES`;
- requests and responses are framed as a server and a client would (RFC 9112 §6): a request
  body by Transfer-Encoding chunked or Content-Length, else none; a response body none for
  HEAD, 1xx, 204 and 304, else chunked, Content-Length, or to the connection's end;
- the ring keeps the last `captures.RING_EXCHANGES` exchanges; an upgraded connection
  (WebSocket, a CONNECT tunnel) is recorded up to its 101 (2xx) and not followed further; bytes
  a visitor sends after an upgrade request wait, unparsed, for the answer;
- a PROXY protocol header the server wrote first on the stream is passed over;
- a remembered head is only ever one whose framing does not depend on anything but its bytes
  and the request it answers: a request without a body or a switch, an answer with a fixed
  length (or none: 204, 304) to a request that is neither HEAD nor a switch.
"""

from __future__ import annotations

import re
import time
from collections import deque

from muxtunnel.bodies import (
    REQUEST_LINE,
    REQUEST_START,
    UNTIL_CLOSE,
    Chunked,
    RepeatedRequest,
    body_framing,
    find_head_end,
    keep,
    without_proxy_header,
)
from muxtunnel.captures import PENDING_BYTES, Captures, Pending

__all__ = ["MAX_HEAD_BYTES", "MAX_WAITING_BYTES", "Tap"]

#: A request or response head larger than this is not followed (the admin API's cap).
MAX_HEAD_BYTES = 16 * 1024
#: Bytes held while one side waits for the other: heads of pipelined requests not answered
#: yet, or response bytes that came before their request.
MAX_WAITING_BYTES = 256 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: [^\r\n]*)?")


class _TooMuch(Exception):
    """More to hold than `MAX_WAITING_BYTES`: the connection is given up at once."""


class Tap:
    """Frames one connection's bytes both ways; records each exchange once it ends."""

    def __init__(self, captures: Captures, service: str, peer: str) -> None:
        self._captures = captures
        self._cap = captures.body_cap_bytes
        self._service = service
        self._peer = peer
        #: Requests whose head was seen and whose response has not ended, oldest first.
        self._open: deque[Pending] = deque()
        self._open_bytes = 0  # what they hold (bounded by MAX_WAITING_BYTES)
        # The request side: an unfinished head (or bytes after an upgrade request), the
        # request whose body is coming and how it ends.
        self._request_bytes = b""
        self._request_searched = 0  # how much of an unfinished head has no blank line
        self._receiving: Pending | None = None
        self._request_left = 0
        self._request_chunks: Chunked | None = None
        self._switching: Pending | None = None  # an upgrade request waiting for its answer
        # The response side, alike.
        self._response_bytes = b""
        self._response_searched = 0
        self._answering: Pending | None = None
        self._response_left = 0
        self._response_chunks: Chunked | None = None
        self._first = True
        #: The last plain request and response heads (with their blank lines), and what they
        #: mean (see the module doc).
        self._repeat_request = RepeatedRequest()
        self._repeat_response = b""
        self._repeat_response_head = b""
        self._repeat_response_length = 0
        #: The request side met what it cannot follow: the open requests still get their
        #: answers, then the connection is given up.
        self._requests_broken = False
        self.active = True

    def feed_request(self, data: bytes) -> None:
        """Bytes the visitor sent to the service (b"": its end of stream). Never raises."""
        if self._first:  # the server may have written a PROXY protocol header first
            self._first = False
            data = without_proxy_header(data)
        if not data or not self.active or self._requests_broken:
            return
        try:
            self._requests(data)
        except _TooMuch:
            self._abandon()
            return
        except Exception:  # not HTTP/1.x as we know it, or a bug: stop, the bytes still flow
            self._requests_broken = True
            self._request_bytes = b""
            self._receiving = None
            if not self._open:
                self._abandon()
            return  # else the requests seen before still get their answers recorded
        if self._response_bytes and self._answering is None and self._open:
            self.feed_response(b"")  # an answer that came before its request

    def feed_response(self, data: bytes) -> None:
        """Bytes the service sent back (b"": its end of stream). Never raises."""
        if not self.active:
            return
        try:
            if data or self._response_bytes:
                self._responses(data)
            elif self._answering is not None and self._response_left == UNTIL_CLOSE:
                self._response_ended(self._answering)
        except Exception:
            self._abandon()

    #: As the observer of up's relay (`muxtunnel.relay.Observer`): its socket is the local
    #: service's, its stream the visitor's.
    from_stream = feed_request
    from_socket = feed_response

    def close(self) -> None:
        """The connection ended: requests left without a whole response are recorded so."""
        if self.active:
            receiving = self._receiving
            if receiving is not None and receiving.response_done:
                self._record(receiving, "closed before the request ended")
            for pending in self._open:
                ended = "response" if pending.request_done else "request"
                self._record(pending, f"closed before the {ended} ended")
            if self._requests_broken:
                self._captures.abandoned += 1
        self.active = False
        self._open.clear()

    # -- requests

    def _requests(self, data: bytes) -> None:
        # Where the blank line may start: a head that comes a byte at a time is searched once.
        searched, self._request_searched = self._request_searched, 0
        if self._request_bytes:  # an unfinished head, or what came after an upgrade request
            data = self._request_bytes + data
            self._request_bytes = b""
        while data and self.active:
            receiving = self._receiving
            if receiving is not None:  # its body
                data = self._request_body(receiving, data)
                continue
            if self._switching is not None:  # wait for the answer to the upgrade request
                if len(data) > MAX_WAITING_BYTES:
                    raise _TooMuch("too much after an upgrade request")
                self._request_bytes = data
                return
            repeat = self._repeat_request
            end = repeat.match(data)
            if end:
                self._request_ended(self._request_opened(repeat.head, repeat.head_only))
                data = data[end:]
                searched = 0
                continue
            if data[:1] in (b"\r", b"\n"):  # blank lines before a request (RFC 9112 §2.2)
                data = data.lstrip(b"\r\n")
                searched = 0
                continue
            found = find_head_end(data, searched)
            searched = 0
            if found is None:
                if len(data) > MAX_HEAD_BYTES:
                    raise ValueError("request head too long")
                if REQUEST_START.match(data[:32]) is None:
                    raise ValueError("not an HTTP request")
                self._request_bytes = data
                self._request_searched = max(0, len(data) - 3)
                return
            head = data[: found[0]]
            method = self._request_head(head)
            if method is not None and found[1] - found[0] == 4:  # a CRLF blank line
                repeat.remember(data[: found[1]], method)
            data = data[found[1] :]

    def _request_head(self, head: bytes) -> bytes | None:
        """Opens the request `head` starts; its method if a request with the same head would
        be framed and followed the same (no body, no protocol switch), else None."""
        line_end = head.find(b"\n")
        line = REQUEST_LINE.fullmatch(head[:line_end].rstrip(b"\r") if line_end >= 0 else head)
        if line is None:
            raise ValueError("not an HTTP/1.x request line")
        method = line[1]
        lower = head.lower()
        tunnel = method == b"CONNECT"
        switches = tunnel or lower.find(b"\nupgrade:") >= 0  # find: `in` tries an int first
        left, chunks = body_framing(head, lower)
        head_only = method == b"HEAD"
        pending = self._request_opened(head, head_only, switches, tunnel)
        if chunks is None and left <= 0:  # no body (a request's is never until close)
            self._request_ended(pending)
            return None if switches else method
        self._receiving = pending
        self._request_left = left
        self._request_chunks = chunks
        return None

    def _request_opened(
        self, head: bytes, head_only: bool, switches: bool = False, tunnel: bool = False
    ) -> Pending:
        """A request whose head is `head` is open (its body, if any, to come)."""
        pending = Pending(self._captures.next_id(), self._service, self._peer)
        pending.request_head = head
        pending.head_only = head_only
        pending.switches = switches
        pending.tunnel = tunnel
        self._open.append(pending)
        self._open_bytes += len(head) + PENDING_BYTES
        if self._open_bytes > MAX_WAITING_BYTES:
            raise _TooMuch("too many requests waiting for their answers")
        return pending

    def _request_body(self, pending: Pending, data: bytes) -> bytes:
        chunks = self._request_chunks
        if chunks is not None:
            size, rest = chunks.feed(data, pending.request_body, self._cap)
            pending.request_bytes += size
            if chunks.done:
                self._request_ended(pending)
            return rest
        take = min(self._request_left, len(data))
        keep(pending.request_body, self._cap, data, 0, take)
        pending.request_bytes += take
        self._request_left -= take
        if not self._request_left:
            self._request_ended(pending)
        return data[take:]

    def _request_ended(self, pending: Pending) -> None:
        self._receiving = None
        pending.request_done = True
        if pending.switches and not pending.response_done:
            self._switching = pending
        if pending.response_done:  # answered before its body ended
            self._record(pending)

    # -- responses

    def _responses(self, data: bytes) -> None:
        searched, self._response_searched = self._response_searched, 0
        if self._response_bytes:  # an unfinished head, or bytes before their request
            data = self._response_bytes + data
            self._response_bytes = b""
        while data and self.active:
            answering = self._answering
            if answering is not None:
                data = self._response_body(answering, data)
                continue
            if not self._open:  # bytes before their request: wait
                if len(data) > MAX_WAITING_BYTES:
                    raise _TooMuch("too many response bytes before a request")
                self._response_bytes = data
                return
            pending = self._open[0]
            repeat = self._repeat_response
            if repeat and data.startswith(repeat) and not (pending.head_only or pending.switches):
                pending.response_head = self._repeat_response_head
                self._response_framed(pending, self._repeat_response_length, None)
                data = data[len(repeat) :]
                searched = 0
                continue
            found = find_head_end(data, searched)
            searched = 0
            if found is None:
                if len(data) > MAX_HEAD_BYTES:
                    raise ValueError("response head too long")
                if not b"HTTP/1."[: len(data)].startswith(data[:7]):
                    raise ValueError("not an HTTP response")
                self._response_bytes = data
                self._response_searched = max(0, len(data) - 3)
                return
            head = data[: found[0]]
            length = self._response_head(pending, head)
            if length is not None and found[1] - found[0] == 4:  # a CRLF blank line
                self._repeat_response = data[: found[1]]
                self._repeat_response_head = head
                self._repeat_response_length = length
            data = data[found[1] :]

    def _response_head(self, pending: Pending, head: bytes) -> int | None:
        """Frames the response `head` starts; its body's length if a response with the same
        head would be framed the same for any request without a body of its own to answer
        (HEAD) or a switch to ask for, else None."""
        line_end = head.find(b"\n")
        line = _STATUS_LINE.fullmatch(head[:line_end].rstrip(b"\r") if line_end >= 0 else head)
        if line is None:
            raise ValueError("not an HTTP/1.x status line")
        status = int(line[1])
        if status < 200 and status != 101:
            return None  # informational: the response is still to come
        pending.response_head = head
        if status == 101 or (pending.tunnel and status < 300):
            # The connection is no longer HTTP: recorded as it is, then not followed.
            pending.t_end = time.monotonic()
            self._open.popleft()
            self._captures.add(pending)
            self.active = False
            return None
        if pending.head_only or status in (204, 304):
            left, chunks = 0, None
        else:
            left, chunks = body_framing(head, head.lower())
        self._response_framed(pending, left, chunks)
        plain = chunks is None and left != UNTIL_CLOSE and not pending.head_only
        return left if plain and not pending.switches else None

    def _response_framed(self, pending: Pending, left: int, chunks: Chunked | None) -> None:
        """`pending`'s response head was seen: its body is `left` bytes long, or `chunks`."""
        if pending is self._switching:  # refused: what the visitor sent since is HTTP again
            self._switching = None
        if chunks is None and left == 0:
            self._response_ended(pending)
        else:
            self._answering = pending
            self._response_left = left
            self._response_chunks = chunks
        if self._switching is None and self._request_bytes and self._receiving is None:
            self._requests(b"")  # what waited for the answer to an upgrade request

    def _response_body(self, pending: Pending, data: bytes) -> bytes:
        chunks = self._response_chunks
        if chunks is not None:
            size, rest = chunks.feed(data, pending.response_body, self._cap)
            pending.response_bytes += size
            if chunks.done:
                self._response_ended(pending)
            return rest
        if self._response_left == UNTIL_CLOSE:
            keep(pending.response_body, self._cap, data)
            pending.response_bytes += len(data)
            return b""
        left, size = self._response_left, len(data)
        take = left if left < size else size
        body = pending.response_body
        room = self._cap - len(body)
        if room > 0:  # as `keep`, inline: this runs for nearly every response
            body += data[: take if take < room else room] if take < size or room < size else data
        pending.response_bytes += take
        self._response_left = left - take
        if left == take:
            self._response_ended(pending)
            return data[take:] if take < size else b""
        return b""

    def _response_ended(self, pending: Pending) -> None:
        pending.t_end = time.monotonic()
        pending.response_done = True
        self._answering = None
        self._open.popleft()
        self._open_bytes -= len(pending.request_head) + PENDING_BYTES
        if pending.request_done:
            self._captures.add(pending)  # as `_record`, without an error
        if self._requests_broken and not self._open:
            self._abandon()

    def _record(self, pending: Pending, error: str | None = None) -> None:
        pending.error = error
        self._captures.add(pending)

    def _abandon(self) -> None:
        self.active = False
        self._open.clear()
        self._captures.abandoned += 1
