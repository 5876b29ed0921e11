"""What visitors get when something is wrong: 404, 502, 504, 400, 431, 405, 417, 408, resets."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from muxtunnel.vhost import RouteOptions, VhostConfig

from .helpers import (
    TIMEOUT_S,
    Proxy,
    address_of,
    backend,
    raw_exchange,
    read_responses,
    request,
    running_proxy,
)


def test_unknown_host_gets_a_404_page_naming_it(proxy: Proxy) -> None:
    reply = request(proxy.http_port, "Nobody.Example.com")
    assert reply.status == 404
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert b"nobody.example.com" in reply.body
    with backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app), locations=["/api"])
        # Known host, no location for the path: the page names host and path, escaped.
        reply = request(proxy.http_port, "app.example.com", "/<b>hi</b>")
        assert reply.status == 404
        assert b"app.example.com/&lt;b&gt;hi&lt;/b&gt;" in reply.body
        assert b"<b>" not in reply.body
    assert proxy.snapshot().refusals["unknown_host"] == 2


def test_service_unreachable_is_a_502(proxy: Proxy) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        closed_port = placeholder.getsockname()[1]  # bound, never listening: refused
        proxy.add_http("gone", ["gone.example.com"], ("127.0.0.1", closed_port))
        proxy.add_http("offline", ["offline.example.com"], None)  # no address: client offline
        assert request(proxy.http_port, "gone.example.com").status == 502
        reply = request(proxy.http_port, "offline.example.com")
        assert reply.status == 502
        assert b"not reachable" in reply.body
    snap = proxy.snapshot()
    assert snap.services["gone"].refusals["upstream_unavailable"] == 1
    assert snap.services["offline"].responses_5xx == 1


@contextmanager
def misbehaving_backend(reply: bytes, *, reset: bool) -> Iterator[tuple[str, int]]:
    """Accepts, reads a request, writes `reply`, then resets (or closes) the connection."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(TIMEOUT_S)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            conn.sendall(reply)
            if reset:
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        host, port = server.getsockname()[:2]
        yield host, port
    finally:
        server.close()
        thread.join(TIMEOUT_S)


def test_service_reset_before_answering_is_a_502(proxy: Proxy) -> None:
    with misbehaving_backend(b"", reset=True) as address:
        proxy.add_http("flaky", ["flaky.example.com"], address)
        assert request(proxy.http_port, "flaky.example.com").status == 502


def test_garbage_from_the_service_is_a_502(proxy: Proxy) -> None:
    with misbehaving_backend(b"SSH-2.0-OpenSSH\r\n\r\n", reset=False) as address:
        proxy.add_http("ssh", ["ssh.example.com"], address)
        assert request(proxy.http_port, "ssh.example.com").status == 502


def test_service_dying_mid_response_resets_the_visitor(proxy: Proxy) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10
    with misbehaving_backend(head, reset=True) as address:
        proxy.add_http("dying", ["dying.example.com"], address)
        conn = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=TIMEOUT_S)
        conn.request("GET", "/", headers={"Host": "dying.example.com"})
        response = conn.getresponse()
        assert response.status == 200
        # The visitor must not take 10 bytes for a whole 100-byte body.
        with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
            response.read()
        conn.close()


def test_slow_service_is_a_504_after_its_timeout(proxy: Proxy) -> None:
    with backend("slow") as slow:
        options = RouteOptions(response_timeout_s=0.3)
        proxy.add_http("slow", ["slow.example.com"], address_of(slow), options=options)
        started = time.monotonic()
        reply = request(proxy.http_port, "slow.example.com", "/slow/3")
        assert reply.status == 504
        assert time.monotonic() - started < 2.5
        assert request(proxy.http_port, "slow.example.com", "/slow/0.05").status == 200
        assert proxy.snapshot().services["slow"].refusals["upstream_timeout"] == 1


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: bad host!\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
         400),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET relative HTTP/1.1\r\nHost: a.example.com\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: a.example.com\r\n" + b"X-H: 1\r\n" * 150 + b"\r\n", 431),
    ],
    ids=["garbage", "no-host", "bad-host", "two-hosts", "two-lengths", "bad-te", "relative",
         "big-header", "many-headers"],
)  # fmt: skip
def test_broken_requests_get_an_error_and_a_close(proxy: Proxy, raw: bytes, status: int) -> None:
    with backend("a") as a:
        proxy.add_http("a", ["a.example.com"], address_of(a))
        answer = raw_exchange(proxy.http_port, raw)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:80]
        assert b"connection: close" in answer.lower()
        assert a.requests == 0


def test_refused_methods_and_expectations_keep_the_connection(proxy: Proxy) -> None:
    with backend("a") as a:
        proxy.add_http("a", ["a.example.com"], address_of(a))
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(
                b"CONNECT a.example.com:443 HTTP/1.1\r\nHost: a.example.com:443\r\n\r\n"
                b"GET / HTTP/1.1\r\nHost: a.example.com\r\nExpect: magic\r\n\r\n"
                b"GET /fine HTTP/1.1\r\nHost: a.example.com\r\n\r\n"
            )
            statuses = [response.status for response in read_responses(sock, 3)]
        assert statuses == [405, 417, 200]
        assert a.requests == 1


def test_absolute_form_target_routes_by_its_authority(proxy: Proxy) -> None:
    with backend("a") as a:
        proxy.add_http("a", ["a.example.com"], address_of(a))
        raw = b"GET http://a.example.com/x?y=1 HTTP/1.1\r\nHost: other.example.com\r\n\r\n"
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(raw)
            (response,) = read_responses(sock, 1)
        assert response.status == 200
        assert b'"path": "/x?y=1"' in response.body
        assert b'["Host", "a.example.com"]' in response.body


def test_slowloris_head_is_cut_at_the_deadline_and_others_are_served() -> None:
    config = VhostConfig(head_timeout_s=0.5)
    with running_proxy(config) as proxy, backend("a") as a:
        proxy.add_http("a", ["a.example.com"], address_of(a))
        slow = [
            socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S)
            for _ in range(20)
        ]
        try:
            for sock in slow:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: a.exa")
            # An honest visitor is served at once meanwhile.
            started = time.monotonic()
            assert request(proxy.http_port, "a.example.com").status == 200
            assert time.monotonic() - started < 0.4
            for sock in slow:
                sock.sendall(b"m")  # dribbling does not extend the deadline
            answers = []
            for sock in slow:
                answers.append(sock.recv(65536))
            assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
        finally:
            for sock in slow:
                sock.close()
        assert proxy.snapshot().refusals["head_timeout"] == 20


def test_idle_connection_is_closed_without_an_answer() -> None:
    with running_proxy(VhostConfig(head_timeout_s=0.3)) as proxy:
        started = time.monotonic()
        assert raw_exchange(proxy.http_port, b"") == b""
        assert time.monotonic() - started < 2.0


def _wait_for_connections(proxy: Proxy, count: int) -> None:
    """Until the engine serves `count` visitor connections (bounded by TIMEOUT_S)."""
    deadline = time.monotonic() + TIMEOUT_S
    live = lambda: proxy.portal.call(lambda: len(proxy.engine.limiter))  # noqa: E731
    while live() != count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert live() == count


def test_visitor_that_stops_reading_is_cut_off() -> None:
    with running_proxy(VhostConfig(send_timeout_s=0.5)) as proxy, backend("big") as big:
        proxy.add_http("big", ["big.example.com"], address_of(big))
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET /bytes/268435456 HTTP/1.1\r\nHost: big.example.com\r\n\r\n")
            _wait_for_connections(proxy, 1)
            _wait_for_connections(proxy, 0)  # never reading: the proxy gives up on us
            elapsed = time.monotonic() - started
            with pytest.raises(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
        assert 0.4 < elapsed < 5.0


def test_stalled_request_body_is_cut_off() -> None:
    with running_proxy(VhostConfig(idle_timeout_s=0.5)) as proxy, backend("app") as app:
        proxy.add_http("app", ["app.example.com"], address_of(app))
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 100\r\n\r\n")
            sock.sendall(b"x" * 10)  # ... and nothing more
            started = time.monotonic()
            with pytest.raises(ConnectionResetError):
                sock.recv(65536)  # reset, not a clean end: the body never arrived whole
            assert time.monotonic() - started < 5.0
        assert app.requests == 0 or app.requests == 1  # it may have started reading; never done


@contextmanager
def deaf_backend() -> Iterator[tuple[str, int]]:
    """Accepts connections and never reads from them."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        host, port = server.getsockname()[:2]
        yield host, port
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
        server.close()
        for conn in held:
            conn.close()


def test_service_that_stops_reading_the_body_is_a_504() -> None:
    with running_proxy(VhostConfig(send_timeout_s=0.5)) as proxy, deaf_backend() as address:
        proxy.add_http("deaf", ["deaf.example.com"], address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            total = 256 * 1024 * 1024
            head = f"PUT / HTTP/1.1\r\nHost: deaf.example.com\r\nContent-Length: {total}\r\n"
            sock.sendall(head.encode() + b"\r\n")

            def upload() -> None:
                try:
                    block = b"u" * 65536
                    for _ in range(total // len(block)):
                        sock.sendall(block)
                except OSError:
                    pass  # the proxy answered and closed: expected

            uploader = threading.Thread(target=upload, daemon=True)
            uploader.start()
            answer = sock.recv(65536)
            uploader.join(TIMEOUT_S)
        assert answer.startswith(b"HTTP/1.1 504 "), answer[:80]
        assert proxy.snapshot().services["deaf"].refusals["upstream_timeout"] == 1
