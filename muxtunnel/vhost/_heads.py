"""Reading request heads of one visitor connection: our own buffer first, h11 once needed.

A connection starts on the fast path: its bytes collect in `buffer` and a head that
`_wire.parse_request_head` accepts (a plain bodiless HTTP/1.1 request) never meets h11. The
first head it does not accept, or any the proxy must refuse, is handed to h11 with everything
buffered after it (`to_h11`), and h11 reads every head from then on: one parser owns the
bytes at a time, so pipelined requests stay in order.

Deadlines (the connection's lazy `Deadline`): the first head is due within `head_timeout_s`
of the accept; later ones after at most `idle_timeout_s` of keep-alive idleness, then within
`head_timeout_s` of their first byte. While the visitor idles (past `_WATCH_AFTER_S`) the kept
upstream is watched, so a service that closes an idle connection is noticed then.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import h11

from muxtunnel.vhost._deadline import Deadline
from muxtunnel.vhost._exchange import CHUNK_BYTES, IO_ERRORS, VisitorGone, VisitorSide
from muxtunnel.vhost._request import Refusal
from muxtunnel.vhost._slot import UpstreamSlot

__all__ = ["Heads"]

#: Idle time of a keep-alive visitor after which its kept upstream is watched for closing.
_WATCH_AFTER_S = 0.1


class Heads:
    """The request heads of one visitor connection, and how many bytes of the current one came."""

    __slots__ = ("_eof", "_pending", "buffer", "config", "deadline", "received", "side", "slot")

    def __init__(self, side: VisitorSide, slot: UpstreamSlot, deadline: Deadline) -> None:
        self.side = side
        self.slot = slot
        self.deadline = deadline
        self.config = side.config
        #: The visitor's unparsed bytes while on the fast path; None once h11 reads them.
        self.buffer: bytes | None = b""
        self._eof = False
        #: The head of the fast request in flight, until h11 has seen it (`sync_h11`).
        self._pending = b""
        #: Bytes of the head being read (a 408 only for a head that had started).
        self.received = 0

    # ------------------------------------------------------------------ fast path

    async def read_fast(self, first: bool) -> int | None:
        """The length of the next whole head in `buffer` (without its blank line); -1 when
        the visitor closed between requests; None when h11 took over (`to_h11`)."""
        buffer = self.buffer
        assert buffer is not None
        config = self.config
        timed = first
        if first:
            self.deadline.set(config.head_timeout_s, "head")
        self.received = len(buffer)
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                return end
            if (
                self._eof
                or len(buffer) > config.max_header_bytes
                or buffer.find(b"\n\n") >= 0  # not `in`: see `_relay._advance`
                or buffer.find(b"\n\r\n") >= 0
                or buffer.startswith(b"\r\n")
            ):
                if not timed and buffer:  # h11 reads the rest within head_timeout_s
                    self.deadline.set(config.head_timeout_s, "head")
                self.to_h11()  # h11 says what is wrong with it (or skips the empty line)
                return None
            if not timed and not buffer:
                if not await self._receive_idle(self._receive):
                    return -1  # the visitor closed between requests
            else:
                if not timed:  # a head in pieces: the rest is due within head_timeout_s
                    self.deadline.set(config.head_timeout_s, "head")
                    timed = True
                await self._receive()
            buffer = self.buffer
            assert buffer is not None
            self.received = len(buffer)

    async def _receive(self) -> int:
        try:
            data = await self.side.stream.receive(CHUNK_BYTES)
        except anyio.EndOfStream:
            self._eof = True
            return 0
        except IO_ERRORS as exc:
            raise VisitorGone(f"receiving from the visitor failed: {exc!r}") from None
        self.buffer += data  # type: ignore[operator]
        return len(data)

    def take(self, size: int) -> bytes:
        """Consume the first `size` bytes (a request the fast path forwards: head and body)."""
        buffer = self.buffer
        assert buffer is not None
        self._pending, self.buffer = buffer[:size], buffer[size:]
        return self._pending

    def done(self) -> None:
        """The fast request in flight was answered without h11."""
        self._pending = b""

    def put_back(self) -> None:
        """The fast request in flight goes back to the front of the buffer (a retry)."""
        assert self.buffer is not None
        self.buffer, self._pending = self._pending + self.buffer, b""

    def sync_h11(self) -> None:
        """Let h11 read the fast request in flight, so it can answer it (an error page)."""
        if not self._pending:
            return
        conn = self.side.conn
        conn.receive_data(self._pending)
        self._pending = b""
        # The Request (the fast parser accepted it, h11 does too), its body (all there), its end.
        while type(conn.next_event()) is not h11.EndOfMessage:
            pass

    def to_h11(self) -> None:
        """From here on h11 reads the heads, starting with what is buffered."""
        conn = self.side.conn
        if self.buffer:
            conn.receive_data(self.buffer)
        if self._eof:
            conn.receive_data(b"")
        self.buffer = None

    # ------------------------------------------------------------------ h11

    async def read_h11(self, first: bool) -> h11.Request | Refusal | None:
        """The next request head through h11; a `Refusal` for one that breaks HTTP/1.1; None
        when the visitor closed. Bytes h11 already holds (`to_h11`) count as received."""
        conn = self.side.conn
        config = self.config
        resumed = self.received > 0  # the fast path read part of this head
        timed = first or resumed
        if first and not resumed:
            self.deadline.set(config.head_timeout_s, "head")
        received = self.received
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                reason = "headers_too_large" if status == 431 else "bad_request"
                return Refusal(status, reason, f"Malformed request: {exc}")
            if isinstance(event, h11.Request):
                self.received = 0
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed (or PAUSED, which a finished cycle cannot give)
            if not timed and not received:
                size = await self._receive_idle(self.side.receive)
                if not size:
                    return None  # the visitor closed between requests
            else:
                if not timed:  # a head in pieces: the rest is due within head_timeout_s
                    self.deadline.set(config.head_timeout_s, "head")
                    timed = True
                size = await self.side.receive()
            self.received = received = received + size

    async def _receive_idle(self, receive: Callable[[], Awaitable[int]]) -> int:
        """Wait for the next request's first bytes; watch a kept upstream meanwhile.

        The watch (a task reading the upstream) starts only once the visitor has been idle
        for `_WATCH_AFTER_S`: a service closes an idle keep-alive connection after seconds,
        not milliseconds, and a bodiless request that meets a just-closed one is retried.
        """
        self.deadline.set(self.config.idle_timeout_s, "idle")
        return await self.slot.while_watching(receive, _WATCH_AFTER_S)
