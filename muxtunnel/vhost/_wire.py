"""The fast path's HTTP/1.1 wire parsing: plain request heads, response heads, chunk framing.

Pure functions and one small state machine, no I/O. Each pass over a head is a regex of the
standard library (C): one `fullmatch` validates the whole header block, one `findall` splits it.

Invariants:
- `parse_request_head` accepts only what needs no judgement: an origin-form HTTP/1.1 request
  line, CRLF line ends, token names, values without control bytes, no Transfer-Encoding, at
  most one Content-Length (digits without a leading zero; several only when all are 0), no
  Upgrade, no Expect. Anything else returns
  None and the caller hands the bytes to h11, the strict parser, which decides (400, 431, a
  body, an upgrade). So the fast path never frames a request differently than h11 would.
- `retarget` accepts a request line exactly where `parse_request_head` would (one regex), so
  a head made of a known header block and another line is judged as a fresh parse would.
- A response head is refused (`ValueError`, a 502 to the caller) unless its framing is
  unambiguous (RFC 9112 §6.3): chunked as the only coding, or one Content-Length value.
- `ChunkScanner` only finds where a chunked body ends: the bytes pass through unchanged, so
  its state is a count and a phase, never the body.
"""

from __future__ import annotations

import re

from muxtunnel.bodies import find_head_end

__all__ = [
    "ChunkScanner",
    "FastRequest",
    "ResponseHead",
    "find_response_head",
    "parse_request_head",
    "parse_response_head",
    "retarget",
]

Header = tuple[bytes, bytes]

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
# A field value (RFC 9110 §5.5): no control byte but HTAB (so no CR, LF or NUL); obs-fold is
# not accepted. One character class, which the regex engine runs in a tight loop: a value
# pattern of nested groups cost ~15 us per response head. Trailing whitespace is stripped
# by the caller (`_strip`), leading whitespace is the pattern's.
_VALUE = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
_LINE = rb"(" + _TOKEN + rb"):[ \t]*(" + _VALUE + rb")"
# A header block with CRLF line ends only (a request's, and nearly every response's). A value
# holds no CR or LF, so a block this matches has no bare CR or LF. Possessive (`*+`, `++`):
# nothing here ever needs backtracking, and the regex engine skips saving its state for it
# (~15 % of the match).
_CRLF_HEADERS = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]++:" + _VALUE + rb"+\r\n)*+")
_REQUEST_HEADER = re.compile(_LINE + rb"\r\n")
_RESPONSE_HEADERS = re.compile(rb"(?:" + _TOKEN + rb":" + _VALUE + rb"\r?\n)*")
_RESPONSE_HEADER = re.compile(_LINE + rb"\r?\n")
# The target as h11 has it (RFC 9112 §3.2: visible ASCII), in origin form; its path (group 3)
# is the target up to its first `?` or `#` (what it routes by), found in the same pass.
_REQUEST_LINE = re.compile(
    rb"(" + _TOKEN + rb") ((/[\x21\x22\x24-\x3e\x40-\x7e]*+)[\x21-\x7e]*+) HTTP/1\.1"
)
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([ \t\x21-\x7e\x80-\xff]*))?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[ \t\x21-\x7e\x80-\xff]*)?\r\n")
#: A chunk-size line (with extensions) or a trailer line may be this long before we give up.
MAX_CHUNK_LINE_BYTES = 4096


class FastRequest:
    """A bodiless HTTP/1.1 request head the fast path can forward without h11."""

    __slots__ = ("authorization", "close", "connection_tokens", "headers", "host", "length",
                 "method", "path", "size", "target")  # fmt: skip

    def __init__(
        self,
        method: bytes,
        target: bytes,
        path: bytes,
        headers: list[Header],
        host: bytes,
        tokens: set[bytes],
        authorization: bytes | None,
        size: int,
        length: int = 0,
    ) -> None:
        self.method = method
        self.target = target
        #: The target up to its first `?` or `#`: what it routes by.
        self.path = path
        self.headers = headers
        self.host = host
        self.connection_tokens = tokens
        #: The visitor asked to close after this request.
        self.close = b"close" in tokens
        self.authorization = authorization
        self.size = size
        #: The body's Content-Length (0: none).
        self.length = length


def parse_request_head(head: bytes) -> FastRequest | None:
    """`head`: a request's bytes up to (without) its blank line; None: h11 must judge it."""
    line_end = head.find(b"\r\n")
    if line_end < 0:
        line_end = len(head)
    line = _REQUEST_LINE.fullmatch(head, 0, line_end)
    if line is None:
        return None
    block = head[line_end + 2 :] + b"\r\n" if line_end < len(head) else b""
    if _CRLF_HEADERS.fullmatch(block) is None:
        return None
    headers: list[Header] = _REQUEST_HEADER.findall(block)
    if block.find(b" \r") >= 0 or block.find(b"\t\r") >= 0:  # `find`: see `_relay._advance`
        headers = _strip(headers)
    host: bytes | None = None
    tokens: set[bytes] = set()
    authorization = None
    length: bytes | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"host":
            if host is not None:
                return None
            host = value
        elif lower == b"content-length":
            if length is not None and (value != length or value != b"0"):
                return None  # several: h11 judges them
            length = value
        elif lower in (b"transfer-encoding", b"upgrade", b"expect"):
            return None
        elif lower == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif lower == b"authorization":
            if authorization is not None:
                return None
            authorization = value
    if host is None:
        return None
    size = 0
    if length is not None and length != b"0":
        if not length.isdigit() or length[:1] == b"0" or len(length) > 18:
            return None
        size = int(length)
    method, target, path = line.groups()
    return FastRequest(
        method, target, path, headers, host, tokens, authorization, len(head) + 4, size
    )


def retarget(request: FastRequest, head: bytes, line_end: int) -> FastRequest | None:
    """`request` with the request line of `head`, whose bytes from `line_end` on are the
    header block `request` was parsed from (so `parse_request_head(head)` would find the same
    headers): None when its request line is refused or names another method."""
    line = _REQUEST_LINE.fullmatch(head, 0, line_end)
    if line is None:
        return None
    method, target, path = line.groups()
    if method != request.method:
        return None
    # Made by hand, not by `FastRequest(...)`: a class call with its `__init__` cost ~4k
    # instructions, more than the rest of a request whose headers repeat.
    copy: FastRequest = _new(FastRequest)
    copy.method = method
    copy.target = target
    copy.path = path
    copy.headers = request.headers
    copy.host = request.host
    copy.connection_tokens = request.connection_tokens
    copy.close = request.close
    copy.authorization = request.authorization
    copy.size = len(head) + 4
    copy.length = request.length
    return copy


_new = object.__new__


def _strip(headers: list[Header]) -> list[Header]:
    """Values without their trailing whitespace (RFC 9110 §5.5: not part of the value)."""
    return [(name, value.rstrip(b" \t")) for name, value in headers]


def find_response_head(data: bytes) -> tuple[int, int] | None:
    """(end of the head, start of the body) of a response head in `data`, if it is whole
    (a C search for CRLF heads, nearly all; the regex only for bare LF line ends: the regex
    alone cost ~2 us of a keep-alive request's ~50 in listen)."""
    return find_head_end(data)


class ResponseHead:
    """A service's response head: status, header lines for the visitor, how its body ends."""

    __slots__ = ("chunked", "keep_alive", "length", "lines", "reason", "status")

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        #: The header lines the visitor gets (`name: value` CRLF each), hop-by-hop ones left out.
        self.lines = b""
        #: The body is chunked (its framing passes through to the visitor unchanged).
        self.chunked = False
        #: Content-Length, or None: chunked, or delimited by the service closing.
        self.length: int | None = None
        #: The service keeps the connection open after this response.
        self.keep_alive = True


#: Names the response parser looks at or drops: hop-by-hop (RFC 9110 §7.6.1) and the length.
_FRAMING = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade",
     b"content-length"}
)  # fmt: skip
#: Connection options that name no header of their own.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive"})
#: A line of one of those names in a lowercased CRLF head (from the b"\n" before it): its
#: name and value (lowercased: what `_frame` makes of them is case-blind anyway).
_FRAMING_LINE = re.compile(rb"\n(" + b"|".join(sorted(_FRAMING)) + rb"):([^\r]*)\r")
#: A whole valid CRLF response head with a CRLF after it, in one pass: version, status,
#: reason, and where the header lines start.
_CRLF_RESPONSE = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: ([ \t\x21-\x7e\x80-\xff]*))?\r\n()" + _CRLF_HEADERS.pattern
)


def parse_response_head(head: bytes) -> ResponseHead:
    """Parse a response head (up to its blank line); `ValueError` when it is not HTTP/1.x
    or its framing is ambiguous.

    A CRLF head goes to the visitor as it came, less the lines of its hop-by-hop headers,
    found by one regex search of the lowercased head for b"\nname:" (splitting every header
    into pairs cost ~6 us of a typical head, a case-blind regex over it ~3, seven C searches,
    one per name, ~2.3 against the regex's ~1.6). A head with bare LF line ends, or whose
    Connection header names other headers, is split into pairs and written anew.
    """
    full = head + b"\r\n"
    match = _CRLF_RESPONSE.fullmatch(full)
    if match is not None:  # nearly every head: valid, CRLF line ends only
        out = ResponseHead()
        out.status = int(match[2])
        out.reason = match[3] or b""
        out.keep_alive = match[1] == b"1"
        if _pass_through(out, full, match.start(4)):
            return out
    line_end = head.find(b"\n")
    if line_end < 0:
        line_end = len(head)
    first = head[: line_end - 1] if head[line_end - 1 : line_end] == b"\r" else head[:line_end]
    line = _STATUS_LINE.fullmatch(first)
    if line is None:
        raise ValueError(f"not an HTTP/1.x status line: {first[:80]!r}")
    block = head[line_end + 1 :] + b"\r\n" if line_end < len(head) else b""
    out = ResponseHead()
    out.status = int(line[2])
    out.reason = line[3] or b""
    out.keep_alive = line[1] == b"1"
    if match is None and _CRLF_HEADERS.fullmatch(block) is not None:
        if _pass_through(out, b"\n" + block, 1):  # a status line that ends with a bare LF
            return out
    elif match is None and _RESPONSE_HEADERS.fullmatch(block) is None:
        raise ValueError("malformed response header line")
    raw: list[Header] = _strip(_RESPONSE_HEADER.findall(block))
    framing = [(name.lower(), value) for name, value in raw if name.lower() in _FRAMING]
    tokens: set[bytes] = set()
    for name, value in framing:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    _frame(out, framing)
    drop = (_FRAMING - {b"content-length"}) | (tokens - _CONNECTION_OPTIONS)
    if out.chunked:
        drop = drop | {b"content-length"}
    out.lines = b"".join(b"%b: %b\r\n" % (n, v) for n, v in raw if n.lower() not in drop)
    return out


def _pass_through(out: ResponseHead, text: bytes, start: int) -> bool:
    """Set `out`'s framing, and its `lines` to `text[start:]` (valid CRLF header lines, a
    b"\n" before them) less the hop-by-hop lines; False (no `lines`) when its Connection
    header names other headers, which must go as well."""
    lines: list[tuple[int, int, bytes]] = []
    framing: list[Header] = []
    for found in _FRAMING_LINE.finditer(text.lower(), start - 1):
        name, value = found.group(1, 2)
        lines.append((found.start() + 1, found.end() + 1, name))
        framing.append((name, value.strip(b" \t")))
    if not _frame(out, framing):
        return False
    pieces = []
    for line_start, line_end, name in lines:  # in the head's order
        if name != b"content-length" or out.chunked:
            pieces.append(text[start:line_start])
            start = line_end
    pieces.append(text[start:])
    out.lines = b"".join(pieces)
    return True


def _frame(out: ResponseHead, framing: list[Header]) -> bool:
    """Set `out`'s framing from its framing headers (lowercased names); False when its
    Connection header names other headers (which must go as well)."""
    codings: list[bytes] = []
    lengths: list[bytes] = []
    plain = True
    for name, value in framing:
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"connection":
            option = value.lower()
            if option not in _CONNECTION_OPTIONS:  # a list, or names: split it (rare)
                tokens = {t.strip() for t in option.split(b",")}
                plain = plain and tokens <= _CONNECTION_OPTIONS
                option = b"close" if b"close" in tokens else b""
            if option == b"close":
                out.keep_alive = False
    if codings:
        if codings != [b"chunked"]:
            raise ValueError(f"unsupported Transfer-Encoding: {b', '.join(codings)!r}")
        out.chunked = True  # RFC 9112 §6.3: chunked wins, the length goes
    elif lengths:
        value = lengths[0]
        if len(lengths) > 1 or not value.isdigit():  # several values: all must be one
            values = {v.strip() for value in lengths for v in value.split(b",")}
            if len(values) != 1 or not (value := values.pop()).isdigit():
                raise ValueError(f"invalid Content-Length: {lengths!r}")
        if len(value) > 18:
            raise ValueError(f"invalid Content-Length: {lengths!r}")
        out.length = int(value)
    return plain


class ChunkScanner:
    """Finds the end of a chunked body whose bytes pass through unchanged."""

    __slots__ = ("_data_left", "_phase", "done")

    def __init__(self) -> None:
        self._phase = "size"  # size | data | crlf | trailer
        self._data_left = 0
        self.done = False

    def scan(self, data: bytes, start: int = 0) -> int:
        """How far into `data` (from `start`) the body goes, as far as it can be told now;
        bytes after that wait for more. `done` when the body ended there. `ValueError`: not
        chunked framing."""
        pos = start
        end = len(data)
        while pos < end and not self.done:
            phase = self._phase
            if phase == "data":
                take = min(self._data_left, end - pos)
                pos += take
                self._data_left -= take
                if not self._data_left:
                    self._phase = "crlf"
                continue
            if phase == "crlf":
                if end - pos < 2:
                    return pos
                if data[pos : pos + 2] != b"\r\n":
                    raise ValueError("a chunk does not end with CRLF")
                pos += 2
                self._phase = "size"
                continue
            line_end = data.find(b"\r\n", pos, pos + MAX_CHUNK_LINE_BYTES)
            if line_end < 0:
                if end - pos >= MAX_CHUNK_LINE_BYTES:
                    raise ValueError("a chunk-size or trailer line is too long")
                return pos
            if phase == "size":
                match = _CHUNK_SIZE.fullmatch(data, pos, line_end + 2)
                if match is None:
                    raise ValueError("invalid chunk-size line")
                size = int(match[1], 16)
                self._phase = "data" if size else "trailer"
                self._data_left = size
            elif line_end == pos:  # the blank line after the trailers
                self.done = True
            elif _RESPONSE_HEADER.fullmatch(data, pos, line_end + 2) is None:
                raise ValueError("invalid trailer line")
            pos = line_end + 2
        return pos
