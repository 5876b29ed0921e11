"""Private services end to end: `up --private`, `muxtunnel visit`, and a real `listen` between.

What the issue asks of them: no public socket on the server; the visitor token lets a visitor
reach its one service and nothing else; a wrong or revoked token ends `visit` with exit 1 and
one line; the provider may come and go under a running `visit`; many connections through one
`visit`; UDP too. (ssh and scp through a private service: `test_private_ssh.py`.)
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import socket
import time

import pytest
from testenv import within_load

from .harness import (
    IO_TIMEOUT_S,
    Harness,
    Proc,
    TcpEchoServer,
    UdpEchoServer,
    echo_roundtrip,
    free_port,
    wait_until,
)
from .private import listening_sockets, start_visit, visitor_token

FATAL_EXIT_S = 10.0


def _one_error_line(proc: Proc) -> str:
    lines = proc.error_lines()
    assert len(lines) == 1, f"expected one 'muxtunnel: ' line\n{proc.describe()}"
    return lines[0]


def _reset_at_once(host: str, port: int) -> float:
    """Connect and send; the seconds until the connection is reset (fails on anything else)."""
    started = time.monotonic()
    try:  # the reset may even beat connect() on loopback
        with socket.create_connection((host, port), timeout=IO_TIMEOUT_S) as sock:
            sock.sendall(b"hello")
            data = sock.recv(10)
    except ConnectionResetError:
        return time.monotonic() - started
    raise AssertionError(f"expected a reset, got {data!r}")


def test_private_tcp_and_udp_bind_no_public_socket(
    harness: Harness, tcp_echo: TcpEchoServer, udp_echo: UdpEchoServer
) -> None:
    token = visitor_token()
    listen = harness.listen("--admin", f"127.0.0.1:{free_port()}", "--metrics",
                            f"127.0.0.1:{free_port()}")  # fmt: skip
    before = listening_sockets(listen.pid)
    up = harness.up(
        listen,
        tcp=[f"ssh={tcp_echo.port}"],
        udp=[f"dns={udp_echo.port}"],
        extra=["--private", "--visitor-token", token],
    )
    assert {a.name: (a.type, a.host) for a in up.announcements()} == {
        "ssh": ("tcp", "private"),
        "dns": ("udp", "private"),
    }
    visit = start_visit(harness, listen, "ssh", token)
    host, port = visit.address("ssh")
    payload = secrets.token_bytes(200_000)
    assert echo_roundtrip(host, port, payload) == payload
    assert visit.lines() == [f"ssh tcp {host}:{port} -> ssh@{listen.address}"]
    # Nothing was bound for either service: the server listens where it did before.
    assert listening_sockets(listen.pid) == before
    assert ("tcp", listen.port) in before and len(before) == 3  # control, admin, metrics
    assert not listen.events("service opened")[0]["public"].endswith(":0")


def test_udp_echo_through_a_private_udp_service(harness: Harness, udp_echo: UdpEchoServer) -> None:
    token = visitor_token()
    listen = harness.listen()
    harness.up(listen, udp=[f"dns={udp_echo.port}"], extra=["--private", "--visitor-token", token])
    visit = start_visit(harness, listen, "dns", token, udp=True)
    host, port = visit.address("dns")
    assert visit.lines() == [f"dns udp {host}:{port} -> dns@{listen.address}"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sizes = [0, 1, 512, 1400, 8000]
        for size in sizes:
            payload = secrets.token_bytes(size)
            sock.sendto(payload, (host, port))
            assert sock.recvfrom(65536)[0] == payload  # boundaries kept, 0 bytes too
    assert len(udp_echo.received) == len(sizes)


def test_a_wrong_visitor_token_is_refused_with_one_line(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen()
    token = visitor_token()
    up = harness.up(
        listen, tcp=[f"ssh={tcp_echo.port}"], extra=["--private", "--visitor-token", token]
    )
    for name, wrong in [("ssh", visitor_token()), ("ssh", harness.token), ("nope", token)]:
        visit = start_visit(harness, listen, name, wrong, wait=False)
        assert visit.wait_exit(FATAL_EXIT_S) == 1
        assert "refused the visitor token" in _one_error_line(visit)
        assert visit.stdout() == "" and visit.events("reconnecting") == []
        assert wrong not in visit.stderr() + listen.stderr()
    # The visitor token proves nothing else: it registers nothing.
    intruder = harness.up(listen, tcp=[f"ssh2={free_port()}"], token=token, wait=False)
    assert intruder.wait_exit(FATAL_EXIT_S) == 1
    assert "authentication failed" in _one_error_line(intruder)
    assert up.running()


def test_a_visitor_token_reaches_its_own_service_only(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen()
    a, b = visitor_token(), visitor_token()
    harness.up(listen, tcp=[f"a={tcp_echo.port}"], extra=["--private", "--visitor-token", a])
    harness.up(listen, tcp=[f"b={tcp_echo.port}"], extra=["--private", "--visitor-token", b])
    visit = start_visit(harness, listen, "b", a, wait=False)
    assert visit.wait_exit(FATAL_EXIT_S) == 1
    visit = start_visit(harness, listen, "a", a)
    assert echo_roundtrip(*visit.address("a"), b"mine") == b"mine"


REVOKE = """\
client:
  services:
    - name: ssh
      local: {port}
      public: false
      visitor_token: [{tokens}]
"""


def test_a_token_revoked_by_the_providers_reload_closes_its_visit(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    keep, revoke = visitor_token(), visitor_token()
    listen = harness.listen()
    config = harness.write("up.yaml", REVOKE.format(port=tcp_echo.port, tokens=f"{keep}, {revoke}"))
    up = harness.up(listen, config=config)
    up.wait_announced(1)
    kept = start_visit(harness, listen, "ssh", keep)
    revoked = start_visit(harness, listen, "ssh", revoke)
    with (
        socket.create_connection(kept.address("ssh"), timeout=IO_TIMEOUT_S) as stays,
        socket.create_connection(revoked.address("ssh"), timeout=IO_TIMEOUT_S) as cut,
    ):
        for sock in (stays, cut):
            sock.sendall(b"before")
            assert sock.recv(10) == b"before"
        config.write_text(REVOKE.format(port=tcp_echo.port, tokens=keep))
        assert revoked.wait_exit(FATAL_EXIT_S) == 1  # the file is watched: no signal needed
        assert "visitor token revoked" in _one_error_line(revoked)
        with pytest.raises(ConnectionResetError):
            cut.sendall(b"after")
            assert cut.recv(10) == b""
        stays.sendall(b"after")  # the other token's visit never noticed
        assert stays.recv(10) == b"after"
    assert up.events("visitor tokens changed") and len(up.announcements()) == 1
    again = start_visit(harness, listen, "ssh", revoke, wait=False)
    assert again.wait_exit(FATAL_EXIT_S) == 1  # for new visits at once


def test_a_token_revoked_by_the_servers_reload_closes_its_visit(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    operator = visitor_token()
    server_config = harness.write(
        "listen.yaml", f"server:\n  services:\n    - {{name: ssh, visitor_token: {operator}}}\n"
    )
    listen = harness.listen("--config", server_config)
    # The provider lists no token of its own: the operator's lets visitors in.
    client_config = harness.write(
        "up.yaml", f"client:\n  services: [{{name: ssh, local: {tcp_echo.port}, public: false}}]\n"
    )
    harness.up(listen, config=client_config).wait_announced(1)
    visit = start_visit(harness, listen, "ssh", operator)
    assert echo_roundtrip(*visit.address("ssh"), b"x") == b"x"
    server_config.write_text("server:\n  services: [{name: ssh}]\n")
    assert visit.wait_exit(FATAL_EXIT_S) == 1
    assert "the server's config no longer lists" in _one_error_line(visit)


def test_the_provider_goes_and_comes_back_under_a_running_visit(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    token = visitor_token()
    listen = harness.listen()
    args = {"tcp": [f"ssh={tcp_echo.port}"], "extra": ["--private", "--visitor-token", token]}
    started = time.monotonic()
    up = harness.up(listen, **args)
    up_start_s = time.monotonic() - started
    visit = start_visit(harness, listen, "ssh", token)
    address = visit.address("ssh")
    assert echo_roundtrip(*address, b"1") == b"1"
    up.stop()
    visit.wait_event("the provider is offline: connections are reset until it is back")
    # Reset at once (no stream, no round trip to the server), with a clear log line.
    assert _reset_at_once(*address) < within_load(0.5, up_start_s, factor=0.2)
    (line,) = visit.events("connection reset: the provider of the service is offline")
    assert line["service"] == "ssh" and line["level"] == "warning"
    harness.up(listen, **args)
    visit.wait_event("the provider is online")
    assert echo_roundtrip(*address, b"2") == b"2"  # no restart of visit
    assert visit.running() and visit.events("reconnecting") == []


FAST_RECONNECT = """\
visitor:
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
"""


def test_visit_reconnects_after_the_server_restarts(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    token = visitor_token()
    listen = harness.listen()
    config = harness.write("client.yaml", FAST_RECONNECT.replace("visitor", "client"))
    harness.up(listen, tcp=[f"ssh={tcp_echo.port}"], config=config,
               extra=["--private", "--visitor-token", token])  # fmt: skip
    visit = start_visit(
        harness, listen, "ssh", token, config=harness.write("v.yaml", FAST_RECONNECT)
    )
    address = visit.address("ssh")
    listen.kill()
    visit.wait_event("connection failed", timeout_s=15)
    assert _reset_at_once(*address) < 5.0  # not connected: reset at once too
    assert visit.events("connection reset: not connected to the server")
    harness.listen(port=listen.port)
    # The server knows the service's keys again once its provider registered again; until
    # then visit's attempts are refused and retried with backoff.
    wait_until(lambda: _echoes(address), 20.0, "visit to serve again after the restart")
    assert visit.running() and len(visit.lines()) == 1


def _echoes(address: tuple[str, int]) -> bool:
    try:
        return echo_roundtrip(*address, b"ping", timeout_s=2.0) == b"ping"
    except OSError:
        return False


def test_200_concurrent_connections_through_one_visit(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    token = visitor_token()
    listen = harness.listen()
    harness.up(listen, tcp=[f"ssh={tcp_echo.port}"], extra=["--private", "--visitor-token", token])
    visit = start_visit(harness, listen, "ssh", token)
    address = visit.address("ssh")
    payloads = [secrets.token_bytes(4096 + i) for i in range(200)]
    sockets = [socket.create_connection(address, timeout=IO_TIMEOUT_S) for _ in payloads]
    try:
        for sock, payload in zip(sockets, payloads, strict=True):
            sock.sendall(payload)

        def read_back(pair: tuple[socket.socket, bytes]) -> bool:
            sock, payload = pair
            data = b""
            while len(data) < len(payload):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data == payload

        # Every one is open at once: none answers before all have sent.
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(read_back, zip(sockets, payloads, strict=True)))
        assert all(results), f"{results.count(False)} of 200 lost or mangled"
    finally:
        for sock in sockets:
            sock.close()
    assert tcp_echo.connections == 200


def test_status_and_metrics_show_private_services_and_visitors(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    token = visitor_token()
    admin, metrics = free_port(), free_port()
    listen = harness.listen("--admin", f"127.0.0.1:{admin}", "--metrics", f"127.0.0.1:{metrics}")
    harness.up(listen, tcp=[f"ssh={tcp_echo.port}"], extra=["--private", "--visitor-token", token])
    visit_admin = free_port()
    visit = start_visit(
        harness, listen, "ssh", token, extra=["--admin", f"127.0.0.1:{visit_admin}"]
    )
    with socket.create_connection(visit.address("ssh"), timeout=IO_TIMEOUT_S) as open_one:
        open_one.sendall(b"x")
        assert open_one.recv(1) == b"x"
        status = json.loads(
            harness.run("status", "--admin", f"127.0.0.1:{admin}", "--json").stdout()
        )
        (service,) = status["services"]
        assert (service["name"], service["public"], service["private"]) == ("ssh", "private", True)
        assert service["visitor_sessions"] == 1 and service["connections"] == 1
        roles = sorted(row["role"] for row in status["sessions"])
        assert roles == ["client", "visitor"]
        (visitor,) = [row for row in status["sessions"] if row["role"] == "visitor"]
        assert visitor["services"] == ["ssh"]
        assert [row["service"] for row in status["connections"]] == ["ssh"]
        mine = json.loads(
            harness.run("status", "--admin", f"127.0.0.1:{visit_admin}", "--json").stdout()
        )
        (row,) = mine["services"]
        assert row["public"] == "{}:{}".format(*visit.address("ssh"))
        assert row["provider_online"] is True and row["connections"] == 1
        text = _get(f"127.0.0.1:{metrics}", "/metrics")
        assert 'muxtunnel_service_visitor_sessions{service="ssh"} 1.0' in text
        assert 'muxtunnel_service_open_connections{service="ssh"} 1.0' in text


def _get(address: str, path: str) -> str:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=IO_TIMEOUT_S) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["visit", "--server", "127.0.0.1:1", "--token", "visitor-token-0001"],
            "no private service",
        ),
        (["visit", "--server", "127.0.0.1:1", "ssh"], "no visitor token for ssh"),
        (["visit", "--server", "127.0.0.1:1", "--bind", "2222"], "--bind and --udp describe NAME"),
        (["up", "--server", "127.0.0.1:1", "--tcp", "22", "--private"], "needs a visitor token"),
        (
            [
                "up",
                "--server",
                "127.0.0.1:1",
                "--http",
                "a=80",
                "--tcp",
                "22",
                "--private",
                "--visitor-token",
                "visitor-token-0001",
            ],
            "--private is for --tcp and --udp",
        ),
        (["up", "--tcp", "22", "--visitor-token", "visitor-token-0001"], "for --private services"),
        (
            ["up", "--tcp", "22:2222", "--private", "--visitor-token", "visitor-token-0001"],
            "has no public port",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(harness: Harness, args: list[str], message: str) -> None:
    proc = harness.run(*args, "--log-format", "json", env=harness.env(MUXTUNNEL_TOKEN="t" * 20))
    assert proc.returncode == 2
    assert message in _one_error_line(proc)


def test_a_local_port_in_use_ends_visit(harness: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--server", "127.0.0.1:1", "--token", "visitor-token-0001", "ssh"]
        proc = harness.run("visit", *args, "--bind", f"127.0.0.1:{port}", "--log-format", "json")
    assert proc.returncode == 1
    assert str(port) in _one_error_line(proc)


TWO = """\
client:
  services:
    - {{name: a, local: {port}, public: false, visitor_token: [{a}]}}
    - {{name: b, local: {port}, public: false, visitor_token: [{b}]}}
"""


def test_one_revoked_service_of_several_leaves_visit_serving_the_others(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    a, b, spare = visitor_token(), visitor_token(), visitor_token()
    listen = harness.listen()
    config = harness.write("up.yaml", TWO.format(port=tcp_echo.port, a=a, b=b))
    harness.up(listen, config=config).wait_announced(2)
    visits = harness.write(
        "visit.yaml",
        f"visitor:\n  services:\n    - {{name: a, token: {a}}}\n    - {{name: b, token: {b}}}\n",
    )
    visit = start_visit(harness, listen, None, spare, config=visits)
    visit.wait_for(lambda: len(visit.bound()) == 2, 10, "both lines")
    config.write_text(TWO.format(port=tcp_echo.port, a=spare, b=b))
    visit.wait_event("visitor token revoked: connections are reset from now on")
    assert _reset_at_once(*visit.address("a")) < 5.0
    assert visit.events("connection reset: the server revoked the visitor token")
    assert echo_roundtrip(*visit.address("b"), b"still") == b"still"
    assert visit.running() and visit.error_lines() == []
    config.write_text(TWO.format(port=tcp_echo.port, a=spare, b=spare))
    assert visit.wait_exit(FATAL_EXIT_S) == 1
    assert "visitor token revoked for 'b'" in _one_error_line(visit)
