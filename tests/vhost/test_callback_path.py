"""Plain keep-alive requests relayed by callbacks (`vhost._relay`), once a visitor connection
keeps an upstream mux stream: the bytes each side sees, flow control, the hand-back to the
task's paths mid-connection, and failures either side.

Every test runs with services reached over a mux session (`proxy[mux]`: the callback path)
and dialled directly (`proxy[direct]`: the task's paths), which must behave the same.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from typing import Any

import pytest

from muxtunnel.vhost import VhostConfig, _relay

from .helpers import TIMEOUT_S, MuxUpstream, Proxy, read_responses, running_proxy
from .recording import Script, recording


@pytest.fixture
def relayed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests the callback path relayed (each response `ResponseRelay.start`s)."""
    count = [0]
    start = _relay.ResponseRelay.start

    def counted(self: _relay.ResponseRelay, *args: Any) -> None:
        count[0] += 1
        start(self, *args)

    monkeypatch.setattr(_relay.ResponseRelay, "start", counted)
    return count


def muxed(proxy: Proxy) -> bool:
    return isinstance(proxy.upstream, MuxUpstream)


def path_of(head: bytes) -> bytes:
    return head.split(b" ", 2)[1]


def ok(body: bytes, *extra: bytes) -> bytes:
    lines = b"".join(line + b"\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), lines, body)


def test_keep_alive_sequence_across_two_services_is_byte_exact(
    proxy: Proxy, relayed: list[int]
) -> None:
    """Each service sees its requests (rewritten heads, bodies unchanged) in order, on one
    upstream each way; the visitor gets each response byte for byte, in order."""

    def script(name: bytes) -> Script:
        def answer(head: bytes) -> tuple[bytes, bool]:
            reply = ok(name + b":" + path_of(head), b"X-Service: " + name)
            if head.startswith(b"HEAD "):
                reply = reply[: reply.index(b"\r\n\r\n") + 4]  # the GET's head, no body
            return reply, False

        return answer

    requests = [
        (b"a", b"GET /1 HTTP/1.1\r\nHost: a.example.com\r\nAccept: */*\r\n\r\n"),
        (b"a", b"POST /2 HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\n\r\nhello"),
        (b"b", b"GET /3?q=1 HTTP/1.1\r\nHost: b.example.com\r\n\r\n"),
        (b"b", b"GET /4 HTTP/1.1\r\nHost: B.Example.Com:80\r\nX-Custom: kept\r\n\r\n"),
        (b"a", b"HEAD /5 HTTP/1.1\r\nHost: a.example.com\r\n\r\n"),
        (b"a", b"GET /6 HTTP/1.1\r\nHost: a.example.com\r\n\r\n"),
    ]
    with recording(script(b"a")) as a, recording(script(b"b")) as b:
        proxy.add_http("a", ["a.example.com"], a.address)
        proxy.add_http("b", ["b.example.com"], b.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            received = b""
            for name, data in requests:
                sock.sendall(data)
                reply = ok(name + b":" + path_of(data), b"X-Service: " + name)
                if data.startswith(b"HEAD"):
                    reply = reply[: reply.index(b"\r\n\r\n") + 4]
                while len(received) < len(reply):
                    received += sock.recv(65536)
                assert received == reply
                received = b""
        for backend, name in ((a, b"a"), (b, b"b")):
            sent = [data for n, data in requests if n == name]
            assert len(backend.requests) == len(sent)
            for seen, original in zip(backend.requests, sent, strict=True):
                head, _, body = original.partition(b"\r\n\r\n")
                assert seen.split(b"\r\n", 1)[0] == head.split(b"\r\n", 1)[0]
                assert seen.endswith(b"\r\n\r\n" + body)
                assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in seen
                for line in head.split(b"\r\n")[1:]:
                    if not line.lower().startswith(b"host:"):
                        assert b"\r\n" + line + b"\r\n" in seen
        assert (a.connections, b.connections) == (2, 1)  # a, b, a: an upstream per switch
    if muxed(proxy):
        assert relayed[0] == 3  # /2, /4, /6: each follows a request to the same service


def test_a_response_larger_than_the_transport_mark_arrives_whole(
    proxy: Proxy, relayed: list[int]
) -> None:
    """4 MiB to a visitor that waits before reading: credit is held back while its transport
    is above its mark, nothing is lost, and the connection carries on."""
    size = 4 * 1024 * 1024
    big = bytes(range(256)) * (size // 256)
    with recording(lambda head: (ok(big if b"/big" in head else b"small"), False)) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            assert read_responses(sock, 1)[0].body == b"small"
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            time.sleep(0.3)  # the visitor's buffers fill, the proxy's transport goes above its mark
            sock.sendall(b"GET /after HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            big_reply, after = read_responses(sock, 2)
        assert big_reply.body == big and after.body == b"small"
        assert service.connections == 1
    if muxed(proxy):
        assert relayed[0] == 2


def test_requests_the_callbacks_do_not_take_fall_back_mid_connection(
    proxy: Proxy, relayed: list[int]
) -> None:
    """A chunked upload, an Expect, a refusal and a pipelined burst between plain requests:
    each answered in order on one connection, by whichever path takes it."""
    with recording(lambda head: (ok(path_of(head)), False)) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        host = b"Host: app.example.com\r\n"
        burst = (
            b"GET /1 HTTP/1.1\r\n" + host + b"\r\n"
            b"GET /2 HTTP/1.1\r\n" + host + b"\r\n"
            b"POST /3 HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
            b"GET /4 HTTP/1.1\r\nHost: nowhere.example.com\r\n\r\n"
            b"GET /5 HTTP/1.1\r\n" + host + b"\r\n"
            b"PUT /6 HTTP/1.1\r\n" + host + b"Content-Length: 2\r\n\r\nok"
            b"GET /7 HTTP/1.1\r\n" + host + b"\r\n"
        )
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(burst)
            replies = read_responses(sock, 7)
            sock.sendall(b"GET /8 HTTP/1.1\r\n" + host + b"\r\n")
            replies += read_responses(sock, 1)
        assert [r.status for r in replies] == [200, 200, 200, 404, 200, 200, 200, 200]
        assert [r.body for r in replies if r.status == 200] == [
            b"/1", b"/2", b"/3", b"/5", b"/6", b"/7", b"/8"
        ]  # fmt: skip
        assert service.requests[2].endswith(b"3\r\nabc\r\n0\r\n\r\n")
        assert service.requests[4].endswith(b"\r\n\r\nok")
    if muxed(proxy):
        assert relayed[0] >= 1  # /2 at least (h11 reads every head once /3 needed it)


def test_callbacks_hand_back_to_the_fast_path_and_return(proxy: Proxy, relayed: list[int]) -> None:
    """A request for another service (a new upstream: the task opens it) between plain ones:
    the callbacks take over again after it."""
    with (
        recording(lambda head: (ok(b"a" + path_of(head)), False)) as a,
        recording(lambda head: (ok(b"b" + path_of(head)), False)) as b,
    ):
        proxy.add_http("a", ["a.example.com"], a.address)
        proxy.add_http("b", ["b.example.com"], b.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            bodies = []
            for host, path in (("a", 1), ("a", 2), ("b", 3), ("b", 4), ("b", 5), ("a", 6)):
                sock.sendall(f"GET /{path} HTTP/1.1\r\nHost: {host}.example.com\r\n\r\n".encode())
                bodies.append(read_responses(sock, 1)[0].body)
        assert bodies == [b"a/1", b"a/2", b"b/3", b"b/4", b"b/5", b"a/6"]
    if muxed(proxy):
        assert relayed[0] == 3  # /2, /4, /5


def test_visitor_that_closes_mid_response_resets_the_service_side(
    proxy: Proxy, relayed: list[int]
) -> None:
    """The visitor resets while a large body is on its way: the service's connection is cut
    (it does not push the rest into a void), and the proxy serves the next visitor."""
    big = b"x" * (64 * 1024 * 1024)
    with recording(lambda head: (ok(big if b"/big" in head else b"small"), False)) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        sock = socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S)
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        assert read_responses(sock, 1)[0].body == b"small"
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        assert service.send_failed.wait(TIMEOUT_S)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as other:
            other.sendall(b"GET /next HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            assert read_responses(other, 1)[0].body == b"small"
    assert relayed[0] == (1 if muxed(proxy) else 0)  # /big


def test_service_reset_mid_response_is_a_reset_for_the_visitor(
    proxy: Proxy, relayed: list[int]
) -> None:
    """The service sends part of a body, then resets: the visitor sees the failure, never a
    clean end of a cut body."""

    def script(head: bytes) -> tuple[bytes, bool]:
        if b"/cut" in head:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial", True
        return ok(b"small"), False

    with recording(script) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            assert read_responses(sock, 1)[0].body == b"small"
            sock.sendall(b"GET /cut HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
            received = b""
            with pytest.raises(ConnectionResetError):
                while data := sock.recv(65536):
                    received += data
                raise AssertionError(f"closed cleanly after {received!r}")
            assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert relayed[0] == (1 if muxed(proxy) else 0)  # /cut


def test_service_that_closed_its_idle_connection_is_not_a_failure(
    proxy: Proxy, relayed: list[int]
) -> None:
    """A keep-alive response, then the service closes: the next request reaches it on a new
    upstream (the kept one is seen closing, or retried once), never a 502."""
    with recording(lambda head: (ok(path_of(head)), True)) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            for path in (b"/1", b"/2", b"/3"):
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
                assert read_responses(sock, 1)[0].body == path
        assert service.connections == 3


def test_response_deadline_on_the_callback_path_is_a_504(relayed: list[int]) -> None:
    """The response clock runs on the callback path too (the connection's timer)."""

    def script(head: bytes) -> tuple[bytes, bool]:
        if b"/slow" in head:
            time.sleep(1.0)
        return ok(path_of(head)), False

    with running_proxy(VhostConfig(response_timeout_s=0.3), muxed=True) as proxy:
        with recording(script) as service:
            proxy.add_http("app", ["app.example.com"], service.address)
            with socket.create_connection(
                ("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S
            ) as sock:
                sock.sendall(b"GET /1 HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
                assert read_responses(sock, 1)[0].body == b"/1"
                started = time.monotonic()
                sock.sendall(b"GET /slow HTTP/1.1\r\nHost: app.example.com\r\n\r\n")
                assert read_responses(sock, 1)[0].status == 504
                assert time.monotonic() - started < 0.9
        assert proxy.snapshot().services["app"].refusals["upstream_timeout"] == 1
    assert relayed[0] == 1  # /slow


def test_upgrade_after_relayed_requests_is_a_pipe(proxy: Proxy, relayed: list[int]) -> None:
    """An Upgrade on a connection the callbacks served: the task takes it (h11, then a byte
    pipe over the lent socket), bytes both ways, and the visitor's half-close."""

    def script(head: bytes) -> tuple[bytes, bool]:
        if b"\r\nUpgrade: echo" in head:
            return (
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n",
                False,
            )
        return ok(path_of(head)), False

    with recording(script) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        host = b"Host: app.example.com\r\n"
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            for path in (b"/1", b"/2"):
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\n" + host + b"\r\n")
                assert read_responses(sock, 1)[0].body == path
            sock.sendall(
                b"GET /ws HTTP/1.1\r\n" + host + b"Upgrade: echo\r\nConnection: upgrade\r\n\r\n"
            )
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 101 ")
            sock.sendall(b"ping through the pipe")
            echoed = received.partition(b"\r\n\r\n")[2]
            while len(echoed) < len(b"ping through the pipe"):
                echoed += sock.recv(65536)
            assert echoed == b"ping through the pipe"
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(65536) == b""  # the echo ended after our half-close
    if muxed(proxy):
        assert relayed[0] == 1  # /2


def _mangle(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out) + 1)
        op = rng.randrange(5)
        if op == 0 and at < len(out):
            out[at] = rng.randrange(256)
        elif op == 1:
            del out[at : at + rng.randint(1, 8)]
        elif op == 2:
            out[at:at] = rng.choice([b"\r\n", b"\n", b":", b" ", b"\r\n\r\n", b"\x00"])
        elif op == 3:
            out[at:at] = rng.choice([b"Content-Length: 9\r\n", b"Transfer-Encoding: chunked\r\n"])
        else:
            del out[at:]
    return bytes(out)


def test_mangled_requests_after_relayed_ones_never_break_the_proxy(proxy: Proxy) -> None:
    """Random damage to the requests that follow relayed ones, each on a connection the
    callbacks hold: every one is answered or closed, nothing escapes the connection, and
    others are served (a seeded, bounded run: the same cases each time)."""
    rng = random.Random(1207)
    plain = b"GET /x HTTP/1.1\r\nHost: app.example.com\r\n\r\n"
    with_body = b"POST /y HTTP/1.1\r\nHost: app.example.com\r\nContent-Length: 3\r\n\r\nabc"
    with recording(lambda head: (ok(b"fine"), False)) as service:
        proxy.add_http("app", ["app.example.com"], service.address)
        for _ in range(24):
            with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=2.0) as sock:
                sock.sendall(plain + plain)
                assert [r.body for r in read_responses(sock, 2)] == [b"fine", b"fine"]
                sock.sendall(_mangle(rng, rng.choice([plain, with_body])) + plain)
                sock.shutdown(socket.SHUT_WR)
                deadline = time.monotonic() + TIMEOUT_S
                try:
                    while sock.recv(65536) and time.monotonic() < deadline:
                        pass
                except ConnectionResetError:
                    pass  # a reset is an answer too (never a hang)
        with socket.create_connection(("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S) as sock:
            sock.sendall(plain)
            assert read_responses(sock, 1)[0].body == b"fine"
    assert proxy.snapshot().internal_errors == 0


def test_a_head_in_pieces_on_the_callback_path_is_due_within_the_head_timeout(
    relayed: list[int],
) -> None:
    """The head clock runs on the callback path too: a slowloris after relayed requests gets
    408 at the deadline; a visitor idle between requests is closed quietly at its own."""
    config = VhostConfig(head_timeout_s=0.3, idle_timeout_s=0.6)
    with running_proxy(config, muxed=True) as proxy:
        with recording(lambda head: (ok(path_of(head)), False)) as service:
            proxy.add_http("app", ["app.example.com"], service.address)
            host = b"Host: app.example.com\r\n"
            with socket.create_connection(
                ("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S
            ) as sock:
                for path in (b"/1", b"/2"):
                    sock.sendall(b"GET " + path + b" HTTP/1.1\r\n" + host + b"\r\n")
                    assert read_responses(sock, 1)[0].body == path
                started = time.monotonic()
                sock.sendall(b"GET /3 HTTP/1.1\r\nHost: app.ex")
                assert read_responses(sock, 1)[0].status == 408
                assert 0.25 < time.monotonic() - started < 2.0
            with socket.create_connection(
                ("127.0.0.1", proxy.http_port), timeout=TIMEOUT_S
            ) as sock:
                for path in (b"/1", b"/2"):
                    sock.sendall(b"GET " + path + b" HTTP/1.1\r\n" + host + b"\r\n")
                    assert read_responses(sock, 1)[0].body == path
                started = time.monotonic()
                assert sock.recv(65536) == b""  # closed, without a page
                assert 0.5 < time.monotonic() - started < 3.0
    assert relayed[0] == 2  # each /2
