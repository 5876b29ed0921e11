"""A keep-alive connection's repeated heads: a request head equal to the last one reuses its
route and rewrite (`FastPath._last`), one with the last one's headers under another request
line its parsed headers (and under the same route its rewritten header block), a response
head equal to the last one its parse (`_fast.LastHead`). Whatever repeats, what each side
sees is what a fresh parse would give, and nothing of one request carries over to a
different one, another host, or a changed table.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.vhost import _fastpath
from muxtunnel.vhost._fast import LAST_HEAD_BYTES, LastHead, take_response_head
from muxtunnel.vhost._fastpath import REMEMBER_HEAD_BYTES, FastPath
from muxtunnel.vhost._response import ResponseRelay
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.counters import ServiceCounters
from muxtunnel.vhost.headers import ForwardedFor
from muxtunnel.vhost.routes import (
    BasicAuth,
    RouteOptions,
    RouteTable,
    RouteTarget,
    basic_auth_token,
)

from .helpers import TIMEOUT_S, Proxy, read_responses
from .recording import recording

# ---------------------------------------------------------------------- response heads

HEADS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nX-A: 1\r\n\r\n",  # the first's prefix, longer
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",  # bare LF: never remembered
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n",
]


def fields(head: Any) -> tuple[object, ...]:
    return (head.status, head.reason, head.lines, head.chunked, head.length, head.keep_alive)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(HEADS), st.sampled_from([b"", b"hello", b"\r\n"]))))
def test_a_remembered_response_head_takes_as_a_fresh_parse(
    sequence: list[tuple[bytes, bytes]],
) -> None:
    """Any run of heads (repeated, prefixes of each other, bare LF) with bytes after them:
    with the connection's `LastHead` each takes exactly what a fresh parse takes."""
    last = LastHead()
    for head, after in sequence:
        data = head + after
        fresh = take_response_head(data, 64 * 1024)
        taken = take_response_head(data, 64 * 1024, last)
        assert (fresh is None) == (taken is None)
        if fresh is not None and taken is not None:
            assert fields(taken[0]) == fields(fresh[0])
            assert taken[1] == fresh[1] == after
        for cut in (1, len(head) - 1):  # a head in pieces is not taken before it is whole
            assert take_response_head(data[:cut], 64 * 1024, last) is None


def test_the_same_head_again_is_the_same_parse_and_a_changed_one_is_parsed_anew() -> None:
    last = LastHead()
    first = take_response_head(HEADS[0] + b"hello", 64 * 1024, last)
    again = take_response_head(HEADS[0] + b"world", 64 * 1024, last)
    assert first is not None and again is not None
    assert again[0] is first[0] and again[1] == b"world"
    longer = take_response_head(HEADS[1] + b"x" * 50, 64 * 1024, last)
    assert longer is not None and longer[0].length == 50 and longer[0] is not first[0]


def test_a_large_response_head_is_not_kept() -> None:
    """An idle connection keeps no head past `LAST_HEAD_BYTES` (it still takes it whole)."""
    last = LastHead()
    small = take_response_head(HEADS[0], 64 * 1024, last)
    assert small is not None and last.raw == HEADS[0]
    pad = b"X-Pad: " + b"p" * LAST_HEAD_BYTES + b"\r\n"
    large = HEADS[0].replace(b"X-A: 1\r\n", pad)
    for _ in range(2):
        taken = take_response_head(large + b"hello", 64 * 1024, last)
        assert taken is not None and taken[1] == b"hello" and taken[0] is not small[0]
        assert last.raw == HEADS[0]  # the small one stays (valid as ever), the large is not kept


def relayed(responses: list[tuple[bytes, bool]], *, again: bool) -> list[bytes]:
    """What the visitor gets of each (response, the visitor asked to close): by one relay (as a
    connection has), which remembers the last head, or (`again` False) by a fresh relay each."""
    out = []
    written: list[bytes] = []
    relay = ResponseRelay(written.append, 64 * 1024)
    for data, close in responses:
        if not again:
            relay = ResponseRelay(written.append, 64 * 1024)
        relay.start(ServiceCounters(), False, close)
        assert relay.feed(data)
        out.append(b"".join(written))
        written.clear()
    return out


def test_a_remembered_head_is_written_as_each_request_asks() -> None:
    """The visitor head made of a remembered response head follows the request in flight:
    `Connection: close` only when that visitor asked for it."""
    closes = [False, True, True, False, False, True]
    responses = [(HEADS[0] + b"%5d" % i, close) for i, close in enumerate(closes)]
    replies = relayed(responses, again=True)
    assert replies == relayed(responses, again=False)
    for i, (reply, close) in enumerate(zip(replies, closes, strict=True)):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n"
        assert reply == head + (b"Connection: close\r\n" if close else b"") + b"\r\n%5d" % i


# ---------------------------------------------------------------------- request heads


class _Heads:
    def __init__(self) -> None:
        self.buffer: bytes | None = b""

    def take(self, size: int) -> bytes:
        assert self.buffer is not None
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken


class _Engine:
    def __init__(self) -> None:
        self.http_routes = RouteTable()


class _Conn:
    def __init__(self) -> None:
        self.engine = _Engine()
        self.config = VhostConfig()
        self.heads = _Heads()
        self.forwarded = ForwardedFor("192.0.2.7", 4000)
        self.proto = b"http"
        self.relayed = False


def forward(fast: FastPath, conn: _Conn, data: bytes) -> tuple[bytes, str] | None:
    """What the fast path sends the service for `data` (a whole request), and to which service."""
    conn.heads.buffer = data
    found = fast.route(data[: data.index(b"\r\n\r\n")])
    if found is None:
        return None
    request, route, host = found
    sent, _ = fast.build(request, route, host)
    assert conn.heads.buffer == b""
    return sent, route.target.service


def test_a_repeated_request_head_is_rewritten_as_a_fresh_one_until_the_table_changes() -> None:
    conn = _Conn()
    routes = conn.engine.http_routes
    routes.add(RouteTarget("a", "owner"), ["a.example.com"])
    routes.add(RouteTarget("b", "owner"), ["b.example.com"])
    fast = FastPath(conn)  # type: ignore[arg-type]
    to_a = b"GET /x HTTP/1.1\r\nHost: a.example.com\r\nX-Seq: 1\r\n\r\n"
    to_b = to_a.replace(b"a.example.com", b"b.example.com")

    def fresh(data: bytes) -> tuple[bytes, str] | None:
        return forward(FastPath(conn), conn, data)  # type: ignore[arg-type]

    first = forward(fast, conn, to_a)
    assert first is not None and first[1] == "a"
    assert forward(fast, conn, to_a) == first == fresh(to_a)
    other = forward(fast, conn, to_b)  # another host, back to back: its own route and headers
    assert other is not None and other[1] == "b" and other == fresh(to_b)
    assert b"a.example.com" not in other[0]
    assert forward(fast, conn, to_a) == first
    changed = to_a.replace(b"X-Seq: 1", b"X-Seq: 2")  # one byte apart: its own rewrite
    assert forward(fast, conn, changed) == fresh(changed) != first
    # The table changes: the same head now goes where the table says, with its options.
    routes.remove("owner", "a")
    assert forward(fast, conn, to_a) is None
    options = RouteOptions(set_headers=(("X-Route", "c"),))
    routes.add(RouteTarget("c", "owner", options), ["a.example.com"])
    moved = forward(fast, conn, to_a)
    assert moved is not None and moved[1] == "c" and b"\r\nX-Route: c\r\n" in moved[0]
    assert moved == fresh(to_a)


def test_a_large_request_head_is_not_kept() -> None:
    """A connection keeps no head past `REMEMBER_HEAD_BYTES`; it is forwarded as ever."""
    conn = _Conn()
    conn.engine.http_routes.add(RouteTarget("a", "owner"), ["a.example.com"])
    fast = FastPath(conn)  # type: ignore[arg-type]
    pad = b"X-Pad: " + b"p" * REMEMBER_HEAD_BYTES + b"\r\n"
    large = b"GET /x HTTP/1.1\r\nHost: a.example.com\r\n" + pad + b"\r\n"
    for _ in range(2):
        sent = forward(fast, conn, large)
        assert sent is not None and sent[1] == "a" and pad in sent[0]
        assert fast._last is None


def test_a_repeated_head_with_a_body_is_built_anew() -> None:
    """Only bodiless heads are remembered: each body goes with its own head."""
    conn = _Conn()
    conn.engine.http_routes.add(RouteTarget("a", "owner"), ["a.example.com"])
    fast = FastPath(conn)  # type: ignore[arg-type]
    head = b"POST /x HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n\r\n"
    for body in (b"hello", b"world"):
        sent = forward(fast, conn, head + body)
        assert sent is not None and sent[0].endswith(b"\r\n\r\n" + body)


# ---------------------------------------------------------------------- end to end


def test_repeated_requests_on_one_connection_follow_hosts_and_table_changes(
    proxy: Proxy,
) -> None:
    """One visitor connection repeats the same head to two hosts and across route changes;
    the services answer with repeated heads: each side sees exactly its own bytes."""

    def answer(name: bytes) -> Any:
        seen = [0]

        def script(head: bytes) -> tuple[bytes, bool]:
            seen[0] += 1
            body = b"%b-%d" % (name, seen[0])
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-S: %b\r\n\r\n%b" % (
                len(body), name, body,
            ), False  # fmt: skip

        return script

    to_a = b"GET /x HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
    to_b = b"GET /x HTTP/1.1\r\nHost: b.example.com\r\n\r\n"
    with (
        recording(answer(b"a")) as a,
        recording(answer(b"b")) as b,
        recording(answer(b"c")) as c,
        socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock,
    ):
        proxy.add_http("a", ["a.example.com"], a.address)
        proxy.add_http("b", ["b.example.com"], b.address)

        def ask(data: bytes) -> tuple[int, bytes, dict[str, str]]:
            sock.sendall(data)
            (reply,) = read_responses(sock, 1)
            return reply.status, reply.body, reply.headers

        assert ask(to_a)[:2] == (200, b"a-1")
        assert ask(to_a)[:2] == (200, b"a-2")
        assert ask(to_b)[:2] == (200, b"b-1")
        assert ask(to_b)[:2] == (200, b"b-2")
        assert ask(to_a)[:2] == (200, b"a-3")
        # a's host moves to service c (the same head, now another route and headers)
        proxy.portal.call(lambda: proxy.engine.http_routes.remove("client-1", "a"))
        proxy.add_http(
            "c", ["a.example.com"], c.address,
            options=RouteOptions(set_headers=(("X-Route", "c"),)),
        )  # fmt: skip
        assert ask(to_a)[:2] == (200, b"c-1")
        assert ask(to_a)[:2] == (200, b"c-2")
        proxy.portal.call(lambda: proxy.engine.http_routes.remove("client-1", "c"))
        assert ask(to_a)[0] == 404
        closing = to_b.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        assert ask(to_b) == (200, b"b-3", {"content-length": "3", "x-s": "b"})
        assert ask(closing) == (
            200, b"b-4", {"content-length": "3", "x-s": "b", "connection": "close"}
        )  # fmt: skip
        assert sock.recv(1) == b""  # and the connection closes after it
    assert [r.split(b"\r\n", 2)[1] for r in a.requests] == [b"Host: a.example.com"] * 3
    assert len(set(a.requests)) == 1  # the same head, rewritten the same each time
    assert all(b"X-Forwarded-Host: b.example.com\r\n" in r for r in b.requests)
    assert all(b"a.example.com" not in r for r in b.requests)
    assert len(c.requests) == 2 and all(b"\r\nX-Route: c\r\n" in r for r in c.requests)


# ---------------------------------------------------------------------- another request line

_AUTH = b"Authorization: " + basic_auth_token("u", "p") + b"\r\n"


def _paths_conn() -> _Conn:
    """One host, routes by path: `/` and `/docs` (one target, two routes), `/api` (header
    rules, another target), `/private` (basic auth)."""
    conn = _Conn()
    routes = conn.engine.http_routes
    routes.add(RouteTarget("web", "owner"), ["a.example.com"], ["/", "/docs"])
    api = RouteOptions(
        host_rewrite="api.internal", set_headers=(("X-Api", "1"),), remove_headers=("X-Drop",)
    )
    routes.add(RouteTarget("api", "owner", api), ["a.example.com"], ["/api"])
    private = RouteOptions(basic_auth=BasicAuth("u", "p"))
    routes.add(RouteTarget("private", "owner", private), ["a.example.com"], ["/private"])
    return conn


def _request(line: bytes, *extra: bytes) -> bytes:
    return (
        line
        + b"\r\nHost: a.example.com\r\nX-Drop: 1\r\nAccept: */*\r\n"
        + b"".join(extra)
        + b"\r\n"
    )


def _in_turn(conn: _Conn, requests: list[bytes]) -> list[tuple[bytes, str] | None]:
    """Each request on one `FastPath` (as one connection sends them back to back), checked
    against what a fresh `FastPath` sends for it."""
    fast = FastPath(conn)  # type: ignore[arg-type]
    sent = []
    for data in requests:
        got = forward(fast, conn, data)
        assert got == forward(FastPath(conn), conn, data), data  # type: ignore[arg-type]
        sent.append(got)
    return sent


def test_another_target_on_the_same_route_reuses_the_headers_and_their_rewrite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Query only, or another path to the same route: the head is not parsed again past its
    request line, nor rewritten again; the service gets what a fresh connection sends."""
    conn = _paths_conn()
    parsed: list[bytes] = []
    rewritten: list[object] = []
    real_parse, real_rewrite = _fastpath.parse_request_head, _fastpath.request_headers
    monkeypatch.setattr(
        _fastpath, "parse_request_head", lambda head: parsed.append(head) or real_parse(head)
    )
    monkeypatch.setattr(
        _fastpath, "request_headers", lambda *a, **k: rewritten.append(a) or real_rewrite(*a, **k)
    )
    fast = FastPath(conn)  # type: ignore[arg-type]
    lines = [b"GET /x?page=1", b"GET /x?page=2", b"GET /y#top", b"GET /docs/a", b"GET /docs/b?q"]
    for i, line in enumerate(lines):
        data = _request(line + b" HTTP/1.1")
        sent = forward(fast, conn, data)
        assert sent is not None and sent[1] == "web"
        assert sent[0].startswith(line + b" HTTP/1.1\r\n")  # as sent, fragment and all
        assert (len(parsed), len(rewritten)) == (1, 1 if i < 3 else 2), line
    assert _in_turn(conn, [_request(line + b" HTTP/1.1") for line in lines])


def test_another_route_method_or_refused_line_is_judged_as_on_a_fresh_connection() -> None:
    """Between requests with the same headers: another route of the host (its own header
    rules, its own credentials), another method, a request line the fast parser refuses
    (h11 judges it: absolute form, `*`, bytes outside the target's), a target too long."""
    conn = _paths_conn()
    big = b"/x?" + b"q" * conn.config.max_header_bytes
    lines = [
        b"GET /x", b"GET /api/v1", b"GET /api/v2?x=1", b"GET /x", b"GET /private/a",
        b"GET /api/v1", b"HEAD /api/v1", b"POST /api/v1", b"DELETE /x", b"CONNECT /x",
        b"GET http://a.example.com/x", b"GET /x", b"GET *", b"GET /x\x7f", b"GET /\xff",
        b"GET /x", b"GET " + big, b"GET /x", b"GET /x  ", b"GET /x HTTP/1.0\r\nX-More: 1",
        b"GET /y HTTP/1.1\r\nX-More: 1",
    ]  # fmt: skip
    sent = _in_turn(conn, [_request(line + b" HTTP/1.1") for line in lines])
    services = [s[1] if s is not None else None for s in sent]
    assert services == [
        "web", "api", "api", "web", None, "api", "api", "api", "web", None, None,
        "web", None, None, None, "web", None, "web", None, None, "web",
    ]  # fmt: skip
    more = sent[-1]  # a header line more before the same header block: its own headers
    assert more is not None and b"\r\nX-More: 1 HTTP/1.1\r\n" in more[0]
    head_api = sent[6]
    assert head_api is not None and head_api[0].startswith(b"HEAD /api/v1 HTTP/1.1\r\n")
    assert b"Host: api.internal\r\n" in head_api[0] and b"X-Drop" not in head_api[0]
    assert b"X-Drop: 1\r\n" in sent[3][0]  # type: ignore[index]
    # With credentials, the private route is reached, and they go no further than it.
    authorised = [
        _request(line + b" HTTP/1.1", _AUTH)
        for line in (b"GET /x", b"GET /private/a", b"GET /private/b", b"GET /x", b"GET /private/c")
    ]
    sent = _in_turn(conn, authorised)
    assert [s[1] if s else None for s in sent] == ["web", "private", "private", "web", "private"]
    assert b"Authorization" in sent[0][0] and b"Authorization" not in sent[2][0]  # type: ignore[index]
    wrong = _request(b"GET /private/d HTTP/1.1", b"Authorization: Basic dTp4\r\n")
    assert _in_turn(conn, [authorised[1], wrong, authorised[2]])[1] is None


def test_another_target_after_the_route_was_removed_and_added_again() -> None:
    """The table changed between two requests that differ only in their target (the same
    path or another): the second goes where the table says now, with the new route's rules."""
    conn = _paths_conn()
    routes = conn.engine.http_routes
    fast = FastPath(conn)  # type: ignore[arg-type]

    def sent(target: bytes) -> bytes:
        data = _request(b"GET " + target + b" HTTP/1.1")
        got = forward(fast, conn, data)
        assert got is not None and got == forward(FastPath(conn), conn, data)  # type: ignore[arg-type]
        return got[0]

    assert b"X-Api: 1\r\n" in sent(b"/api/1?a")
    routes.remove("owner", "api")
    assert b"X-Api" not in sent(b"/api/1?b")  # the same path: now the web route's
    options = RouteOptions(set_headers=(("X-Api", "2"),))
    routes.add(RouteTarget("api", "owner", options), ["a.example.com"], ["/api"])
    assert b"X-Api: 2\r\n" in sent(b"/api/1?c") and b"X-Drop" in sent(b"/api/1?d")
    assert b"X-Api: 2\r\n" in sent(b"/api/2")
    routes.remove("owner", "api")
    routes.add(RouteTarget("api", "owner", options), ["a.example.com"], ["/api"])
    assert b"X-Api: 2\r\n" in sent(b"/api/2?e")  # new route objects, the same rules
    routes.remove("owner", "api")
    routes.add(RouteTarget("api", "owner"), ["a.example.com"], ["/api"])
    assert b"X-Api" not in sent(b"/api/2?f")


def test_a_long_target_under_the_last_headers_is_not_kept() -> None:
    """Another request line that makes the head longer than `REMEMBER_HEAD_BYTES` is
    forwarded as ever, and the connection keeps the last head it may keep."""
    conn = _paths_conn()
    fast = FastPath(conn)  # type: ignore[arg-type]
    short = _request(b"GET /x HTTP/1.1")
    assert forward(fast, conn, short) is not None and fast._last is not None
    long = _request(b"GET /x?" + b"q" * REMEMBER_HEAD_BYTES + b" HTTP/1.1")
    for _ in range(2):
        sent = forward(fast, conn, long)
        assert sent == forward(FastPath(conn), conn, long)  # type: ignore[arg-type]
        assert fast._last is not None and fast._last[0] == short[:-4]


_LINES = st.sampled_from(
    [b"GET /", b"GET /x?a=1", b"GET /x?a=2", b"GET /docs/1", b"GET /api/1", b"GET /api/1?b",
     b"GET /private/1", b"GET /private/2?c", b"HEAD /x", b"POST /api/2", b"GET *",
     b"GET http://a.example.com/api", b"GET /%61pi/x", b"GET /docs/../api/y", b"GET /x y"]
)  # fmt: skip
_EXTRAS = st.sampled_from([b"", _AUTH, b"Connection: close\r\n", b"Content-Length: 0\r\n"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_LINES, _EXTRAS, st.integers(0, 9)), max_size=12))
def test_any_run_of_request_lines_is_forwarded_as_on_a_fresh_connection(
    steps: list[tuple[bytes, bytes, int]],
) -> None:
    """Any run of request lines, most with the same headers, some with other headers, with
    the `/api` route now and then removed and added again: each request goes as a fresh
    connection would send it."""
    conn = _paths_conn()
    routes = conn.engine.http_routes
    fast = FastPath(conn)  # type: ignore[arg-type]
    for line, extra, change in steps:
        if change == 0:
            routes.remove("owner", "api")
            options = RouteOptions(set_headers=(("X-Api", str(routes.generation)),))
            routes.add(RouteTarget("api", "owner", options), ["a.example.com"], ["/api"])
        data = _request(line + b" HTTP/1.1", extra)
        assert forward(fast, conn, data) == forward(FastPath(conn), conn, data)  # type: ignore[arg-type]


def test_another_request_line_on_one_connection_reaches_the_service_as_on_a_fresh_one(
    proxy: Proxy,
) -> None:
    """One visitor connection sends the same headers under another request line each time
    (a query, another path of the route, a path of another route of the host, a line h11
    judges, another method): each service gets each request as from a fresh connection."""

    def empty(head: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False

    lines = [
        b"GET /x?page=1", b"GET /x?page=2", b"GET /docs/a", b"GET /api/v1", b"GET /api/v1?x",
        b"HEAD /api/v1", b"GET http://a.example.com/api/v2", b"GET /api/v3", b"GET /x#top",
    ]  # fmt: skip
    requests = [_request(line + b" HTTP/1.1") for line in lines]
    api_options = RouteOptions(set_headers=(("X-Api", "1"),), remove_headers=("X-Drop",))
    with recording(empty) as web, recording(empty) as api:
        proxy.add_http("web", ["a.example.com"], web.address, locations=["/", "/docs"])
        proxy.add_http(
            "api", ["a.example.com"], api.address, locations=["/api"], options=api_options
        )
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            for data in requests:
                sock.sendall(data)
                assert read_responses(sock, 1)[0].status == 200
        kept = web.requests[:], api.requests[:]
        for data in requests:
            with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as s:
                s.sendall(data)
                assert read_responses(s, 1)[0].status == 200
        fresh = web.requests[len(kept[0]) :], api.requests[len(kept[1]) :]

    def unported(sent: list[bytes]) -> list[bytes]:  # each connection its own visitor port
        return [re.sub(rb'for="127\.0\.0\.1:[0-9]+"', b'for="127.0.0.1"', r) for r in sent]

    assert [len(k) for k in kept] == [4, 5]
    assert unported(kept[0]) == unported(fresh[0]) and unported(kept[1]) == unported(fresh[1])
    assert all(b"X-Api: 1\r\n" in r and b"X-Drop" not in r for r in kept[1])
    assert all(b"X-Api" not in r and b"X-Drop: 1\r\n" in r for r in kept[0])
