"""What the inspector shows: recorded HTTP exchanges, in a bounded ring.

`muxtunnel.httptap` records them from the bytes of `up`'s http visitors; the inspector
(`muxtunnel.web.inspector`) reads the ring and adds the replays it makes. An exchange is a frozen
record: heads as text, bodies cut at the ring's cap but counted whole.

The tap records a `Raw` exchange (heads as the bytes that came): most are never looked at, so
they are parsed into `Exchange`s only when the ring is read, once each.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BODY_CAP_BYTES",
    "PENDING_BYTES",
    "RING_EXCHANGES",
    "Captures",
    "Exchange",
    "Headers",
    "Pending",
    "Raw",
]

#: Exchanges kept; with the body cap, at most 100 * 2 * 16 KiB = 3.2 MiB of bodies.
RING_EXCHANGES = 100
#: Bytes kept of each request and response body (ngrok's inspector keeps more; a page shows
#: this much, and replay needs the whole body: a longer one cannot be replayed).
BODY_CAP_BYTES = 16 * 1024

Headers = tuple[tuple[str, str], ...]


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
        """Everything: heads and (cut) bodies; a body that is not text (an image, gzip) is
        None, its size still in `*_bytes`."""
        return {
            **self.summary(),
            "peer": self.peer,
            "reason": self.reason,
            "request_headers": [list(pair) for pair in self.request_headers],
            "request_body": _text(self.request_body),
            "response_headers": [list(pair) for pair in self.response_headers],
            "response_body": _text(self.response_body),
            "replayable": self.replayable,
        }


def _text(body: bytes) -> str | None:
    """`body` as UTF-8 text (a character the cap cut through is dropped), or None if it is not."""
    try:
        return body.decode()
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # only the last character is incomplete
            return body[: exc.start].decode(errors="replace")
        return None


#: A header line of a head the tap took whole (it judged only the start line and the framing):
#: lenient, as the inspector shows what came rather than judging it again.
_HEADER_LINE = re.compile(rb"([^:\r\n]+):[ \t]*([^\r\n]*?)[ \t]*\r?\n")


def _parse_head(head: bytes) -> tuple[list[bytes], Headers]:
    """The start line's three parts and the header pairs (names lowercased) of `head`."""
    line_end = head.find(b"\n")
    if line_end < 0:
        line_end = len(head)
    start = head[:line_end].rstrip(b"\r").split(b" ", 2)
    block = head[line_end + 1 :] + b"\r\n"
    headers = tuple(
        (name.decode("latin-1").lower(), value.decode("latin-1"))
        for name, value in _HEADER_LINE.findall(block)
    )
    return start, headers


class Raw:
    """An exchange as the tap records it: whole heads as bytes (up to their blank line),
    bodies cut at the cap; `exchange()` parses it into what the inspector shows."""

    __slots__ = ("error", "id", "peer", "request_body", "request_bytes", "request_head",
                 "response_body", "response_bytes", "response_head", "service", "started", "t0",
                 "t_end")  # fmt: skip

    def __init__(self, id: int, service: str, peer: str, started: float, t0: float) -> None:
        self.id = id
        self.service = service
        self.peer = peer
        #: When the request head was seen: the wall clock (shown) and the monotonic one.
        self.started = started
        self.t0 = t0
        #: When the response ended (monotonic), if it did.
        self.t_end: float | None = None
        self.error: str | None = None
        self.request_head = b""
        self.request_body = bytearray()
        self.request_bytes = 0
        self.response_head: bytes | None = None
        self.response_body = bytearray()
        self.response_bytes = 0

    def exchange(self) -> Exchange:
        """The parsed, frozen record."""
        start, request_headers = _parse_head(self.request_head)
        status: int | None = None
        reason = ""
        response_headers: Headers = ()
        if self.response_head is not None:
            line, response_headers = _parse_head(self.response_head)
            status = int(line[1])
            reason = line[2].decode("latin-1") if len(line) > 2 else ""
        return Exchange(
            id=self.id, service=self.service, peer=self.peer, started=self.started,
            method=start[0].decode("latin-1"), target=start[1].decode("latin-1"),
            request_headers=request_headers, request_body=bytes(self.request_body),
            request_bytes=self.request_bytes, status=status, reason=reason,
            response_headers=response_headers, response_body=bytes(self.response_body),
            response_bytes=self.response_bytes,
            duration_s=None if self.t_end is None else self.t_end - self.t0, error=self.error,
        )  # fmt: skip


#: What an open request holds beside its head: the sizes of a `Pending`, its two bytearrays
#: and floats and the head's bytes object (`sys.getsizeof` on CPython 3.11: 176 + 2 * 56 + ...).
PENDING_BYTES = 384


class Pending(Raw):
    """An exchange being recorded (`muxtunnel.httptap`), and what its tap must know of it."""

    __slots__ = ("head_only", "request_done", "response_done", "switches", "tunnel")

    def __init__(self, id: int, service: str, peer: str) -> None:
        Raw.__init__(self, id, service, peer, time.time(), time.monotonic())
        #: Its response has no body (HEAD); it may switch protocols (Upgrade, CONNECT); CONNECT.
        self.head_only = False
        self.switches = False
        self.tunnel = False
        self.request_done = False
        self.response_done = False


class Captures:
    """The bounded ring of recent exchanges, newest last, and the tap's own counters."""

    def __init__(self, size: int = RING_EXCHANGES, *, body_cap_bytes: int = BODY_CAP_BYTES) -> None:
        self.body_cap_bytes = body_cap_bytes
        self._ring: deque[Exchange | Raw] = deque(maxlen=size)
        self._ids = itertools.count(1)
        #: Exchanges recorded, and connections the tap stopped following (not HTTP/1.1, ...).
        self.recorded = 0
        self.abandoned = 0

    def next_id(self) -> int:
        """A new exchange id."""
        return next(self._ids)

    def add(self, exchange: Exchange | Raw) -> None:
        """Keep `exchange`; the oldest goes when the ring is full."""
        self._ring.append(exchange)
        self.recorded += 1

    def exchanges(self) -> list[Exchange]:
        """The ring, oldest first (raw records parsed now, and kept parsed)."""
        ring = self._ring
        for i in range(len(ring)):
            item = ring[i]
            if isinstance(item, Raw):
                ring[i] = item.exchange()
        return list(ring)  # type: ignore[arg-type]  # all parsed just now

    def get(self, exchange_id: int) -> Exchange | None:
        """The exchange with this id, if the ring still has it."""
        return next((e for e in self.exchanges() if e.id == exchange_id), None)
