"""Where an HTTP/1.x message body ends, from bytes that pass by: what a passive tap needs.

`muxtunnel.httptap` frames each message it sees with these: the framing headers of a head
(found by searches of the lowercased head, not by splitting it into pairs), a body's first
bytes kept up to a cap, and a chunked body decoded as it comes (RFC 9112 §7.1), its chunk
lines bounded by `MAX_CHUNK_LINE_BYTES`; a PROXY protocol header the server wrote first on a
stream, passed over; and what a connection's last plain request head tells of the next
(`RepeatedRequest`). Every malformed input raises `ValueError`.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_CHUNK_LINE_BYTES",
    "REQUEST_LINE",
    "REQUEST_START",
    "UNTIL_CLOSE",
    "Chunked",
    "RepeatedRequest",
    "body_framing",
    "find_head_end",
    "header_value",
    "keep",
    "without_proxy_header",
]

#: A chunk-size or trailer line may be this long (as `muxtunnel.vhost`'s scanner).
MAX_CHUNK_LINE_BYTES = 4096
#: The length of a body that ends with the connection.
UNTIL_CLOSE = -1

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
#: A request line without its line end (RFC 9112 §3); group 1: the method.
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") [\x21-\x7e]+ HTTP/1\.[0-9]")
#: What a request's first bytes may be before its line is whole: a method, then a space.
REQUEST_START = re.compile(_TOKEN + rb"(?: |$)")
#: A request line longer than this is not compared with the last (`RepeatedRequest`): it takes
#: the whole search and parse, as any head.
REPEAT_LINE_BYTES = 8 * 1024

#: PROXY protocol v2's signature (HAProxy's spec, section 2.2; `muxtunnel.vhost.proxy_protocol`).
_PROXY_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
_CHUNK_SIZE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?")


#: What marks a framing header's line in a lowercased head.
_TRANSFER_ENCODING = b"\ntransfer-encoding:"
_CONTENT_LENGTH = b"\ncontent-length:"
#: A line feed, then a blank line (CRLF or bare LF): where a head ends, less its CR if any.
_BLANK_LINE = re.compile(rb"\n\r?\n")


def find_head_end(data: bytes, start: int = 0) -> tuple[int, int] | None:
    """(end of the head, start of the body) of the head `data` starts with, if it is whole;
    the blank line is searched from `start` (what came before it was searched already).
    One regex search led by a literal line feed (bare LF line ends count, RFC 9112 §2.2):
    ~0.3 us for a 300-byte head, where three C searches took ~0.6-0.9."""
    found = _BLANK_LINE.search(data, start)
    if found is None:
        return None
    at = found.start()
    return (at - 1 if at and data[at - 1] == 13 else at), found.end()  # 13: CR


def header_value(head: bytes, lower: bytes, needle: bytes) -> bytes | None:
    """The value of the first header whose line `needle` (b"\\nname:", lowercase) marks in
    `head` (`lower`: it lowercased)."""
    at = lower.find(needle)
    if at < 0:
        return None
    start = at + len(needle)
    end = head.find(b"\n", start)
    return head[start : end if end >= 0 else len(head)].strip(b" \t\r")


def body_framing(head: bytes, lower: bytes) -> tuple[int, Chunked | None]:
    """(Content-Length, or `UNTIL_CLOSE`; a chunked decoder) of a message head."""
    codings = header_value(head, lower, _TRANSFER_ENCODING)
    if codings is not None:
        if codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
            return 0, Chunked()
        return UNTIL_CLOSE, None
    length = header_value(head, lower, _CONTENT_LENGTH)
    if length is None:
        return UNTIL_CLOSE, None
    if not length.isdigit() or len(length) > 18:
        raise ValueError(f"invalid Content-Length {length[:40]!r}")
    return int(length), None


def keep(kept: bytearray, cap: int, data: bytes, start: int = 0, end: int | None = None) -> None:
    """Add to `kept` what it has room for of `data[start:end]`, up to `cap` bytes in all
    (nothing is sliced once it is full: a long body past the cap is only counted)."""
    room = cap - len(kept)
    if room > 0:
        stop = start + room if end is None else min(end, start + room)
        kept += data[start:stop]


class Chunked:
    """Decodes a chunked body as it comes: data to `_keep`, its end found (RFC 9112 §7.1)."""

    __slots__ = ("_left", "_line", "_phase", "done")

    def __init__(self) -> None:
        self._phase = 0  # 0: a size line, 1: data, 2: the CRLF after it, 3: trailers
        self._left = 0
        self._line = b""  # an unfinished line
        self.done = False

    def feed(self, data: bytes, kept: bytearray, cap: int) -> tuple[int, bytes]:
        """(body bytes taken from `data`, what follows the body once it ended)."""
        if self._line:
            data = self._line + data
            self._line = b""
        pos, end, size = 0, len(data), 0
        while pos < end:
            if self._phase == 1:
                take = min(self._left, end - pos)
                keep(kept, cap, data, pos, pos + take)
                size += take
                pos += take
                self._left -= take
                if not self._left:
                    self._phase = 2
                continue
            newline = data.find(b"\n", pos, pos + MAX_CHUNK_LINE_BYTES)
            if newline < 0:
                if end - pos >= MAX_CHUNK_LINE_BYTES:
                    raise ValueError("a chunk-size or trailer line is too long")
                self._line = data[pos:]
                break
            line = data[pos:newline]
            pos = newline + 1
            if self._phase == 0:
                match = _CHUNK_SIZE.fullmatch(line)
                if match is None:
                    raise ValueError("invalid chunk-size line")
                self._left = int(match[1], 16)
                self._phase = 1 if self._left else 3
            elif self._phase == 2:
                if line not in (b"", b"\r"):
                    raise ValueError("a chunk does not end with CRLF")
                self._phase = 0
            elif line in (b"", b"\r"):  # the blank line after the trailers
                self.done = True
                return size, data[pos:]
        return size, b""


def without_proxy_header(data: bytes) -> bytes:
    """`data` past a PROXY protocol header it starts with (one the server wrote first, in one
    piece); a header cut in two is left for the request parser to refuse."""
    if data.startswith(b"PROXY ") and (end := data.find(b"\r\n", 0, 108)) != -1:
        return data[end + 2 :]  # v1: one line of at most 107 bytes (section 2.1)
    if data.startswith(_PROXY_V2) and len(data) >= 16:
        return data[16 + int.from_bytes(data[14:16], "big") :]
    return data


class RepeatedRequest:
    """What a passive tap remembers of its connection's last request head framed as bodiless
    and not switching protocols: a keep-alive client sends its headers again and again, often
    its whole head, else all but its request target (a browser's next page, a poller's next
    query).

    A head whose bytes from the request line's CRLF through its CRLF blank line equal the
    remembered one's (`rest`), and whose method is the same, is framed as that one was: every
    header the framing reads (`body_framing`'s, `Upgrade`) is found at a line feed, so it lies
    in `rest`, and the method alone decides HEAD and CONNECT (never remembered: it switches).
    """

    __slots__ = ("head", "head_only", "method", "rest", "whole")

    def __init__(self) -> None:
        #: The head and its blank line (b"": nothing remembered); the head without it.
        self.whole = b""
        self.head = b""
        self.rest = b""
        self.method = b""
        self.head_only = False

    def remember(self, whole: bytes, method: bytes) -> None:
        """`whole`: a request head and its CRLF blank line, framed as bodiless and not
        switching; `method`: its method. (A request line ended by a bare LF is remembered
        whole only: no other line matches `REQUEST_LINE` up to the first CRLF after it.)"""
        line_end = whole.find(b"\r\n")
        self.whole, self.head, self.rest = whole, whole[:-4], whole[line_end:]
        self.method, self.head_only = method, method == b"HEAD"

    def match(self, data: bytes) -> int:
        """The length of the head and blank line `data` starts with when it is framed as the
        remembered one (which it then becomes: `head`), else 0."""
        whole = self.whole
        if not whole:
            return 0
        if data.startswith(whole):
            return len(whole)
        line_end = data.find(b"\r\n", 0, REPEAT_LINE_BYTES)
        if line_end < 0 or not data.startswith(self.rest, line_end):
            return 0
        line = REQUEST_LINE.fullmatch(data, 0, line_end)
        if line is None or line[1] != self.method:
            return 0
        end = line_end + len(self.rest)
        self.whole, self.head = data[:end], data[: end - 4]
        return end
