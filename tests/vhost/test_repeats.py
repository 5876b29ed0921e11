"""A keep-alive connection's repeated heads: a request head equal to the last one reuses its
route and rewrite (`FastPath._last`), a response head equal to the last one its parse
(`_fast.LastHead`). Whatever repeats, what each side sees is what a fresh parse would give,
and nothing of one request carries over to a different one, another host, or a changed table.
"""

from __future__ import annotations

import socket
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.vhost._fast import LAST_HEAD_BYTES, LastHead, take_response_head
from muxtunnel.vhost._fastpath import REMEMBER_HEAD_BYTES, FastPath
from muxtunnel.vhost._response import ResponseRelay
from muxtunnel.vhost.config import VhostConfig
from muxtunnel.vhost.counters import ServiceCounters
from muxtunnel.vhost.headers import ForwardedFor
from muxtunnel.vhost.routes import RouteOptions, RouteTable, RouteTarget

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

