"""The fast path's parsers (`vhost._wire`): what they take, what they leave to h11, framing."""

from __future__ import annotations

import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.vhost._fast import take_response_head
from muxtunnel.vhost._wire import (
    ChunkScanner,
    find_response_head,
    parse_request_head,
    parse_response_head,
    retarget,
)


def head_of(data: bytes) -> bytes:
    end = data.find(b"\r\n\r\n")
    assert end >= 0
    return data[:end]


def test_a_plain_get_is_taken_with_its_headers_as_sent() -> None:
    data = (
        b"GET /a?b=c HTTP/1.1\r\nHost: App.Example.com:8080\r\nAccept:  */* \r\n"
        b"Connection: keep-alive, X-Hop\r\nAuthorization: Basic eDp5\r\n\r\n"
    )
    request = parse_request_head(head_of(data))
    assert request is not None
    assert (request.method, request.target) == (b"GET", b"/a?b=c")
    assert request.host == b"App.Example.com:8080"
    assert request.headers[1] == (b"Accept", b"*/*")  # surrounding whitespace is not the value
    assert request.connection_tokens >= {b"keep-alive", b"x-hop"}
    assert request.authorization == b"Basic eDp5"
    assert not request.close
    assert request.size == len(data)
    closing = parse_request_head(
        head_of(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n")
    )
    assert closing is not None and closing.close
    post = parse_request_head(head_of(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"))
    assert post is not None and post.length == 12


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 05\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n",  # h11 judges odd lengths
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two hosts: 400 from h11's path
        b"GET / HTTP/1.1\r\n\r\n",  # no host
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",  # HTTP/1.0: h11 frames its response
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",  # whitespace before the colon: smuggling
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nNo-Colon\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",  # h11 takes no obs-text in a target
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
    ],
)
def test_anything_but_a_plain_bodiless_request_is_left_to_h11(data: bytes) -> None:
    assert parse_request_head(head_of(data)) is None


@given(
    st.binary(max_size=200),
    st.binary(max_size=20) | st.from_regex(rb"[!-~]{0,20}", fullmatch=True),
    st.binary(max_size=8) | st.from_regex(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]{1,10}", fullmatch=True),
)
@settings(max_examples=300, deadline=None)
def test_what_the_fast_parser_takes_h11_takes_as_a_bodiless_request(
    noise: bytes, target: bytes, name: bytes
) -> None:
    data = (
        b"GET /" + target + b" HTTP/1.1\r\nHost: a\r\nX-Noise: " + noise + b"\r\n"
        + name + b": v\r\n\r\n"
    )  # fmt: skip
    end = data.find(b"\r\n\r\n")
    request = parse_request_head(data[:end])
    if request is None:
        return
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data[: end + 4])
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    assert request.headers == list(event.headers.raw_items())
    assert type(conn.next_event()) is h11.EndOfMessage


_LINE_BYTES = st.sampled_from([b"/", b"?", b"#", b"a", b"%", b" ", b"\t", b"\x7f", b"\xff", b":"])


@given(
    st.sampled_from([b"GET", b"HEAD", b"G=T", b""]),
    st.tuples(
        st.sampled_from([b"/", b"", b"*", b"http://a"]), st.lists(_LINE_BYTES, max_size=8)
    ).map(lambda parts: parts[0] + b"".join(parts[1])),
    st.sampled_from([b" HTTP/1.1", b" HTTP/1.0", b"HTTP/1.1", b" HTTP/1.1 "]),
)
@settings(max_examples=300, deadline=None)
def test_another_request_line_over_known_headers_is_taken_as_a_fresh_parse_takes_it(
    method: bytes, target: bytes, version: bytes
) -> None:
    """`retarget` of a known request (same method) takes a line exactly where
    `parse_request_head` takes it, with the same fields, path (before `?`/`#`) included."""
    block = b"\r\nHost: a\r\nConnection: close\r\nAuthorization: Basic eDp5"
    known = parse_request_head(b"GET /k HTTP/1.1" + block)
    assert known is not None
    head = method + b" " + target + version + block
    fresh = parse_request_head(head)
    again = retarget(known, head, len(head) - len(block))
    if method != b"GET":
        assert again is None
        return
    assert (again is None) == (fresh is None)
    if again is not None and fresh is not None:
        fields = ("method", "target", "path", "headers", "host", "connection_tokens", "close",
                  "authorization", "size", "length")  # fmt: skip
        assert [getattr(again, f) for f in fields] == [getattr(fresh, f) for f in fields]
        assert again.path == again.target.partition(b"?")[0].partition(b"#")[0]


def test_response_framing_follows_rfc_9112() -> None:
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nConnection: X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nX-Kept: yes"
    )
    assert (head.status, head.reason, head.length, head.chunked) == (200, b"OK", 12, False)
    assert head.keep_alive
    assert head.lines == b"Content-Length: 12\r\nX-Kept: yes\r\n"  # as sent, hop-by-hop out
    chunked = parse_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
    )
    assert chunked.chunked and chunked.length is None
    assert chunked.lines == b""  # chunked wins: the length and the coding are not forwarded
    old = parse_response_head(b"HTTP/1.0 200 OK\nContent-Length: 1, 1 \nconnection: keep-alive")
    assert old.length == 1 and not old.keep_alive  # HTTP/1.0: never reused
    assert old.lines == b"Content-Length: 1, 1\r\n"  # bare LF lines are written anew
    named = parse_response_head(
        b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nx-kept:  yes \r\n"
        b"TE: trailers\r\nUpgrade: h2c\r\nProxy-Connection: keep-alive"
    )
    assert named.lines == b"x-kept: yes\r\n" and not named.keep_alive
    spaced = parse_response_head(b"HTTP/1.1 200 OK\r\ncontent-LENGTH:   7  \r\nKeep-Alive: 5")
    assert (spaced.length, spaced.lines) == (7, b"content-LENGTH:   7  \r\n")
    assert not parse_response_head(b"HTTP/1.1 204 No Content\r\nConnection: close").keep_alive
    until_close = parse_response_head(b"HTTP/1.1 200 OK")
    assert until_close.length is None and not until_close.chunked and until_close.reason == b"OK"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1e3",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked, identity",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip",
        b"HTTP/2 200\r\n",
        b"SSH-2.0-OpenSSH",
        b"HTTP/1.1 200 OK\r\nBad Header: x",
        b"HTTP/1.1 200 OK\r\nX: folded\r\n more",
    ],
)
def test_responses_whose_framing_is_ambiguous_are_refused(head: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response_head(head)


@pytest.mark.parametrize("status_end", [b"\r\n", b"\n"])
def test_crlf_header_lines_pass_through_as_they_came_less_hop_by_hop(status_end: bytes) -> None:
    head = parse_response_head(
        b"HTTP/1.1 200 OK" + status_end + b"Server:  x \r\nCONNECTION: Keep-Alive\r\n"
        b"content-LENGTH: 7\r\nKeep-Alive: timeout=5\r\nX-A:\tb\r\nTE: trailers"
    )
    assert (head.status, head.reason, head.length, head.keep_alive) == (200, b"OK", 7, True)
    assert head.lines == b"Server:  x \r\ncontent-LENGTH: 7\r\nX-A:\tb\r\n"


def test_a_response_head_ends_at_its_blank_line() -> None:
    assert find_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody") == (21, 25)
    assert find_response_head(b"HTTP/1.1 200 OK\nA: b\n\nbody") == (20, 22)
    assert find_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n") is None


@given(
    st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=4, max_size=4),
    st.sampled_from([b"", b"\r\n\r\n", b"ab\r\n\r\ncd", b"\n\n\r\n\r\n", b"X-B: c\r\n\r\n"]),
)
def test_a_response_head_is_taken_up_to_its_own_blank_line(ends: list[bytes], body: bytes) -> None:
    """However its lines end, a head ends at its own blank line, not at a CRLF CRLF in the
    body after a blank line of bare LFs (`take_response_head` tries the CRLF CRLF first)."""
    data = b"HTTP/1.1 200 OK%bContent-Length: %d%bX-A: b%b%b%b" % (
        ends[0], len(body), ends[1], ends[2], ends[3], body
    )  # fmt: skip
    end, body_start = find_response_head(data) or (-1, -1)
    assert data[body_start:] == body
    head, rest = take_response_head(data, 64 * 1024)
    assert rest == body and head.length == len(body)
    written = parse_response_head(data[:end])
    assert (head.status, head.lines, head.keep_alive) == (
        written.status, written.lines, written.keep_alive
    )  # fmt: skip


BODY = b"5;ext=1\r\nhello\r\n10\r\n" + b"x" * 16 + b"\r\n0\r\nX-Trailer: t\r\n\r\n"


@given(st.lists(st.integers(min_value=0, max_value=len(BODY)), max_size=8))
def test_chunk_framing_ends_where_it_ends_however_it_is_cut(cuts: list[int]) -> None:
    stream = BODY + b"GET /next"
    points = sorted({0, *cuts, len(stream)})
    scanner = ChunkScanner()
    passed = b""
    pending = b""
    for start, stop in itertools.pairwise(points):
        pending += stream[start:stop]
        used = scanner.scan(pending)
        passed += pending[:used]
        pending = pending[used:]
        if scanner.done:
            break
    assert scanner.done
    assert passed == BODY  # the framing passes through unchanged, and no byte after it


@pytest.mark.parametrize(
    "body",
    [b"zz\r\n", b"5\r\nhelloXY", b"-1\r\n", b"1" * 17 + b"\r\n", b"0\r\nBad Trailer\r\n\r\n"],
)
def test_broken_chunk_framing_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        ChunkScanner().scan(body)


def test_an_endless_chunk_size_line_is_refused() -> None:
    scanner = ChunkScanner()
    assert scanner.scan(b"1;" + b"e" * 100) == 0  # not whole yet
    with pytest.raises(ValueError):
        scanner.scan(b"1;" + b"e" * 5000)


_NAMES = st.sampled_from(
    [b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection", b"CONNECTION",
     b"Keep-Alive", b"TE", b"Upgrade", b"Proxy-Connection", b"X-Hop", b"Server", b"ETag"]
)  # fmt: skip
_VALUES = st.sampled_from([b"12", b"12, 12", b"chunked", b"close", b"keep-alive", b"X-Hop", b"a b"])


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8))
def test_a_head_passed_through_frames_as_one_written_anew(
    headers: list[tuple[bytes, bytes]],
) -> None:
    lines = b"".join(b"%b: %b\r\n" % pair for pair in headers)
    crlf = b"HTTP/1.1 200 OK\r\n" + lines[:-2]  # passed through, hop-by-hop lines cut out
    bare_lf = crlf.replace(b"\r\n", b"\n")  # split into pairs, written anew
    try:
        passed = parse_response_head(crlf)
    except ValueError:
        with pytest.raises(ValueError):
            parse_response_head(bare_lf)
        return
    written = parse_response_head(bare_lf)
    assert (passed.length, passed.chunked, passed.keep_alive, passed.lines) == (
        written.length, written.chunked, written.keep_alive, written.lines
    )  # fmt: skip
