"""Plain bodiless requests through the fast path: responses relayed by their framing only,
upstreams kept or dropped by it, and h11 taking over mid-connection where it must."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from muxtunnel.vhost import _fastpath, _relay

from .helpers import TIMEOUT_S, MuxUpstream, Proxy, address_of, backend, read_responses, request
from .recording import RecordingBackend, recording

#: path -> (response bytes, close after sending)
Script = Callable[[str], tuple[bytes, bool]]


@contextmanager
def scripted(script: Script) -> Iterator[RecordingBackend]:
    """A raw HTTP/1.1 service answering each request by its path."""
    with recording(lambda head: script(head.split(b" ")[1].decode())) as server:
        yield server


def exchange(port: int, data: bytes, count: int) -> list[bytes]:
    """Send `data` on one connection; the raw bytes of `count` responses' heads and bodies."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        return [
            f"{r.status} {sorted(r.headers.items())}".encode() + b" " + r.body
            for r in read_responses(sock, count)
        ]


def get(path: str, host: str = "fast.example.com", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


@pytest.fixture
def fast_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many exchanges ran on the fast path, by a task or by callbacks (`_relay`, whose
    responses each `ResponseRelay.start`), so a test knows which path it exercised."""
    count = [0]
    real = _fastpath.FastExchange

    class Counted(real):  # type: ignore[misc, valid-type]
        async def run(self) -> None:
            count[0] += 1
            await super().run()

    start = _relay.ResponseRelay.start

    def counted(self: _relay.ResponseRelay, *args: Any) -> None:
        count[0] += 1
        start(self, *args)

    monkeypatch.setattr(_fastpath, "FastExchange", Counted)
    monkeypatch.setattr(_relay.ResponseRelay, "start", counted)
    return count


def test_close_delimited_response_is_chunked_and_the_visitor_stays(
    proxy: Proxy, fast_count: list[int]
) -> None:
    def script(path: str) -> tuple[bytes, bool]:
        if path == "/old":
            return b"HTTP/1.1 200 OK\r\nX-Kind: old\r\n\r\nuntil the end", True
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False

    with scripted(script) as service:
        proxy.add_http("fast", ["fast.example.com"], service.address)
        replies = exchange(proxy.http_port, get("/old") + get("/next"), 2)
    assert replies[0].startswith(b"200 ") and b"('transfer-encoding', 'chunked')" in replies[0]
    assert replies[0].endswith(b" until the end")
    assert replies[1].endswith(b" ok")
    assert service.connections == 2  # the close-delimited one could not be reused
    assert fast_count[0] == 2


def test_informational_bodiless_and_head_responses(proxy: Proxy, fast_count: list[int]) -> None:
    def script(path: str) -> tuple[bytes, bool]:
        if path == "/hints":
            return (
                b"HTTP/1.1 100 Continue\r\n\r\n"  # nobody asked: dropped, as h11 does
                b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
            ), False
        if path == "/empty":
            return b"HTTP/1.1 204 No Content\r\n\r\n", False
        return b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", False

    with scripted(script) as service:
        proxy.add_http("fast", ["fast.example.com"], service.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(get("/hints") + get("/empty") + get("/cached"))
            hints, final, empty, cached = read_responses(sock, 4)
        assert (hints.status, hints.headers["link"]) == (103, "</a.css>; rel=preload")
        assert (final.status, final.body) == (200, b"body")
        assert (empty.status, empty.body, cached.status) == (204, b"", 304)
        assert "transfer-encoding" not in empty.headers and cached.headers["etag"] == "x"
        assert service.connections == 1
    head_reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    with scripted(lambda path: (head_reply, False)) as service:  # a HEAD: the GET's headers
        proxy.add_http("head", ["head.example.com"], service.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: head.example.com\r\n\r\n")
            received = b""
            while not received.endswith(b"\r\n\r\n"):
                received += sock.recv(65536)
            assert received == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(b"HEAD / HTTP/1.1\r\nHost: head.example.com\r\n\r\n")
            assert sock.recv(65536) == received  # no body was expected of either
        assert service.connections == 1
    assert fast_count[0] == 5


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"y" * 70_000 + b"\r\n\r\n",
    ],
)
def test_a_response_the_proxy_cannot_frame_is_a_502(proxy: Proxy, reply: bytes) -> None:
    with scripted(lambda path: (reply, True)) as service:
        proxy.add_http("fast", ["fast.example.com"], service.address)
        assert request(proxy.http_port, "fast.example.com").status == 502
    assert proxy.snapshot().services["fast"].refusals["upstream_unavailable"] == 1


def test_broken_chunk_framing_mid_body_resets_the_visitor(proxy: Proxy) -> None:
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
    with scripted(lambda path: (reply, False)) as service:
        proxy.add_http("fast", ["fast.example.com"], service.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(get("/"))
            with pytest.raises(ConnectionResetError):  # never a clean end of a cut body
                while sock.recv(65536):
                    pass
                raise AssertionError("closed without a reset")


def test_bytes_after_a_response_retire_the_upstream(proxy: Proxy) -> None:
    def script(path: str) -> tuple[bytes, bool]:
        if path == "/extra":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK", False
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False

    with scripted(script) as service:
        proxy.add_http("fast", ["fast.example.com"], service.address)
        replies = exchange(proxy.http_port, get("/extra") + get("/a") + get("/b"), 3)
    assert [r[-2:] for r in replies] == [b"ok"] * 3
    assert service.connections == 2  # a new one after the junk, then kept


def test_h11_takes_over_mid_connection_and_keeps_the_order(
    proxy: Proxy, fast_count: list[int]
) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        host = "app.example.com"
        pipelined = (
            get("/one", host)
            + get("/two", "nobody.example.com")  # a 404 of h11's: from here on h11 reads
            + f"POST /three HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc".encode()
            + get("/four", host)
        )
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(pipelined)
            one, two, three, four = read_responses(sock, 4)
        assert (one.status, two.status, three.status, four.status) == (200, 404, 200, 200)
        assert [json.loads(r.body)["path"] for r in (one, three, four)] == [
            "/one",
            "/three",
            "/four",
        ]
        assert json.loads(three.body)["body_bytes"] == 3
    assert fast_count[0] == 1


def test_fast_path_refusals_and_failures_keep_the_connection(
    proxy: Proxy, fast_count: list[int]
) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        host, port = placeholder.getsockname()  # bound, never listening: refused
        proxy.add_http("gone", ["gone.example.com"], (host, port))
        with backend("app") as app:
            proxy.add_http("app", ["app.example.com"], address_of(app))
            with socket.create_connection(
                ("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S
            ) as sock:
                sock.sendall(get("/", "gone.example.com") + get("/", "app.example.com"))
                gone, app_reply = read_responses(sock, 2)
    assert (gone.status, app_reply.status) == (502, 200)
    # The dial failed before any exchange (h11 wrote the 502); the next request went fast.
    # Over a mux session the stream opens, and fails (reset) in the exchange instead.
    assert fast_count[0] == (2 if isinstance(proxy.upstream, MuxUpstream) else 1)
    assert proxy.snapshot().services["gone"].refusals["upstream_unavailable"] == 1


def test_visitor_connection_close_is_honoured(proxy: Proxy) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(get("/", "app.example.com", "Connection: close\r\n"))
            (reply,) = read_responses(sock, 1)
            assert reply.headers["connection"] == "close"
            assert sock.recv(100) == b""


def test_an_idle_pause_keeps_a_live_upstream(proxy: Proxy) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=TIMEOUT_S)
        try:
            first = request(proxy.http_port, "app.example.com", connection=conn)
            time.sleep(0.3)  # past the 100 ms after which the kept upstream is watched
            second = request(proxy.http_port, "app.example.com", connection=conn)
        finally:
            conn.close()
        assert first.json()["client_port"] == second.json()["client_port"]


def test_a_body_with_a_content_length_rides_the_fast_path(
    proxy: Proxy, fast_count: list[int]
) -> None:
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        host = "app.example.com"
        post = f"POST /two HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello".encode()
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(get("/one", host) + post + get("/three", host))
            one, two, three = read_responses(sock, 3)
            assert fast_count[0] == 3
            # A body still coming when its head is read goes to h11, which streams it.
            sock.sendall(post[:-2])
            time.sleep(0.2)
            sock.sendall(post[-2:] + get("/four", host))
            late, four = read_responses(sock, 2)
        assert [r.status for r in (one, two, three, late, four)] == [200] * 5
        assert [json.loads(r.body)["path"] for r in (one, two, three, late, four)] == [
            "/one", "/two", "/three", "/two", "/four",
        ]  # fmt: skip
        assert json.loads(two.body)["body_bytes"] == 5 == json.loads(late.body)["body_bytes"]
    assert fast_count[0] == 3
