"""Groups of UDP and HTTP services: a member per UDP flow, a member per HTTP request (by the
group's policy, with `hash_header:NAME` for HTTP), 429 with Retry-After for rate-limited
requests, and a request whose member's service died retried on another member."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import socket
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from e2e.harness import Harness, Listen, Up, free_port

HOST = "web.example.com"


class NamedUdpEcho:
    """Answers each datagram with `NAME:` and the datagram."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                data, address = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                self.sock.sendto(self.name + b":" + data, address)

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def udp_flow(host: str, port: int, payload: bytes, timeout_s: float = 5.0) -> bytes | None:
    """One datagram from a fresh source port: the answer, or None if none came."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(payload, (host, port))
        try:
            return sock.recvfrom(65536)[0]
        except TimeoutError:
            return None


def test_udp_flows_go_round_robin_and_refused_flows_are_not_created(harness: Harness) -> None:
    config = harness.write(
        "server.yaml", "server:\n  services:\n    - {name: dns, rate_limit: {new_per_s: 0.5, "
        "burst: 30}}\n",
    )  # fmt: skip
    listen = harness.listen("--config", config)
    echoes = [NamedUdpEcho(f"m{i}") for i in range(3)]
    try:
        ups = [
            harness.up(listen, udp=[f"m{i}={echo.port}"], extra=["--group", "dns"])
            for i, echo in enumerate(echoes)
        ]
        host, port = ups[0].public("m0")
        answers = Counter()
        for n in range(30):
            reply = udp_flow(host, port, b"q%d" % n)
            assert reply is not None and reply.endswith(b":q%d" % n), reply
            answers[reply.partition(b":")[0]] += 1
        assert answers == {b"m0": 10, b"m1": 10, b"m2": 10}
        # The burst of 30 flows is spent: a new flow gets no answer (it is never created).
        assert udp_flow(host, port, b"late", timeout_s=1.0) is None
    finally:
        for echo in echoes:
            echo.close()


def http_server(name: str) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = name.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def web_group(
    harness: Harness,
) -> Iterator[tuple[Listen, list[Up], int, list[http.server.ThreadingHTTPServer]]]:
    http_port = free_port()
    config = harness.write(
        "server.yaml",
        "server:\n  services:\n"
        "    - {name: web}\n"
        "    - {name: sticky, lb: 'hash_header:X-User'}\n"
        "    - {name: limited, rate_limit: {new_per_s: 1, burst: 2}}\n",
    )
    listen = harness.listen(
        "--config", config, "--http-bind", f"127.0.0.1:{http_port}", "--domain", "example.com"
    )
    servers = [http_server(f"m{i}") for i in range(3)]
    ups = []
    for i, server in enumerate(servers):
        port = server.server_address[1]
        member = harness.write(
            f"member{i}.yaml",
            "client:\n  services:\n"
            f"    - {{name: web-{i}, type: http, local: {port}, group: web}}\n"
            f"    - {{name: sticky-{i}, type: http, local: {port}, group: sticky}}\n"
            f"    - {{name: limited-{i}, type: http, local: {port}, group: limited}}\n",
        )
        up: Up = harness.up(listen, config=member, wait=False)
        up.wait_announced(3)
        ups.append(up)
    try:
        yield listen, ups, http_port, servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def get(conn: http.client.HTTPConnection, host: str, **headers: str) -> tuple[int, bytes, str]:
    conn.request("GET", "/", headers={"Host": host, **headers})
    response = conn.getresponse()
    return response.status, response.read(), response.getheader("Retry-After") or ""


def test_each_request_of_a_keep_alive_connection_picks_its_member(web_group: tuple) -> None:
    _, ups, http_port, _ = web_group
    assert ups[0].services()["web-0"].url == f"http://{HOST}:{http_port}"
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=20)
    bodies = Counter(get(conn, HOST)[1] for _ in range(30))
    assert bodies == {b"m0": 10, b"m1": 10, b"m2": 10}
    sticky = {f"user{n}": {get(conn, "sticky.example.com", **{"X-User": f"user{n}"})[1]
                           for _ in range(4)} for n in range(12)}  # fmt: skip
    assert all(len(members) == 1 for members in sticky.values()), sticky
    assert len({next(iter(m)) for m in sticky.values()}) > 1  # the users spread


def test_rate_limited_requests_get_429_with_retry_after(web_group: tuple) -> None:
    _, _, http_port, _ = web_group
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=20)
    answers = [get(conn, "limited.example.com") for _ in range(4)]
    assert [status for status, _, _ in answers[:2]] == [200, 200]
    assert answers[3][0] == 429 and int(answers[3][2]) >= 1, answers
    assert get(conn, HOST)[0] == 200  # the same connection carries on to another service


def test_a_request_whose_member_died_is_retried_on_another(web_group: tuple) -> None:
    _, _, http_port, servers = web_group
    servers[1].shutdown()
    servers[1].server_close()
    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=20)
    answers = [get(conn, HOST) for _ in range(12)]
    assert {status for status, _, _ in answers} == {200}, answers
    assert b"m1" not in {body for _, body, _ in answers}
