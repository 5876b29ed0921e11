"""What a person reads when something goes wrong: each message says what is wrong and which
flag fixes it, once, with addresses written the same way everywhere."""

from __future__ import annotations

import signal
import socket

import pytest

from .harness import Harness, TcpEchoServer, free_port
from .terminal import TerminalProc


def _error_line(proc: object) -> str:
    lines = proc.error_lines()  # type: ignore[attr-defined]
    assert len(lines) == 1, proc.describe()  # type: ignore[attr-defined]
    return str(lines[0])


@pytest.mark.parametrize(
    ("flag", "spec", "wanted"),
    [
        ("--tcp", "web=localhost:notaport", "--tcp web=localhost:notaport"),
        ("--udp", "dns=1:2:3:4", "--udp dns=1:2:3:4"),
        ("--http", "site=", "--http site="),
    ],
)
def test_a_bad_service_flag_names_the_flag_and_its_syntax(
    harness: Harness, flag: str, spec: str, wanted: str
) -> None:
    proc = harness.run("up", "--token", harness.token, flag, spec)
    assert proc.returncode == 2, proc.describe()
    line = _error_line(proc)
    assert line.startswith(f"muxtunnel: {wanted}: "), line
    assert f"(syntax: {flag} [NAME=]" in line, line


def test_a_duplicate_service_name_names_both_flags(harness: Harness) -> None:
    proc = harness.run("up", "--token", harness.token, "--tcp", "a=3000", "--udp", "a=3001")
    assert proc.returncode == 2, proc.describe()
    line = _error_line(proc)
    assert "--udp a=3001" in line and "taken by --tcp a=3000" in line, line
    assert "command line:0" not in line and "(--udp NAME=3001)" in line, line


@pytest.mark.parametrize("endpoint", ["--metrics", "--admin"])
def test_a_busy_metrics_or_admin_port_names_its_flag(harness: Harness, endpoint: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        listen = harness.listen(endpoint, f"127.0.0.1:{busy}", wait=False)
        assert listen.wait_exit(15) == 1
    line = _error_line(listen)
    assert f"({endpoint})" in line and str(busy) in line and "in use" in line, line
    assert listen.events("listening") == [], "it said it was listening: " + listen.stderr()


def test_a_wrong_admin_token_is_called_wrong_not_missing(harness: Harness) -> None:
    admin = free_port()
    harness.listen("--admin", f"127.0.0.1:{admin}", "--admin-token", "right-admin-token-0123")
    wrong = harness.run(
        "status", "--admin", f"127.0.0.1:{admin}", "--admin-token", "wrong-admin-token-0123"
    )
    assert wrong.returncode == 1
    assert "refused the admin token" in _error_line(wrong)
    missing = harness.run("status", "--admin", f"127.0.0.1:{admin}")
    assert missing.returncode == 1
    assert "wants a bearer token" in _error_line(missing)


def test_a_server_shutdown_is_called_one(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}"])
    listen.send_signal(signal.SIGTERM)
    assert listen.wait_exit(10) == 0
    (closed,) = listen.events("session closed")
    assert closed["reason"] == "server shutting down", closed
    up.wait_event("session ended", timeout_s=10)
    (ended,) = up.events("session ended")
    assert "server went away" in ended["reason"], ended


def test_ipv6_addresses_are_bracketed(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    listen = harness.listen(host="::1", allow_ports=None)
    assert listen.events("listening")[0]["bind"] == f"[::1]:{listen.port}"
    up = harness.up(listen, tcp=[f"echo=[::1]:{tcp_echo.port}"])
    assert up.stdout().rstrip().endswith(f"-> [::1]:{tcp_echo.port}"), up.stdout()
    (opened,) = listen.events("session opened")
    assert opened["peer"].startswith("[::1]:"), opened


def test_a_fatal_error_shows_once_on_a_terminal(harness: Harness) -> None:
    term = TerminalProc(["listen", "--bind", "127.0.0.1:0", "--token", harness.token],
                        harness.env())  # fmt: skip
    try:
        assert term.process.wait(15) == 2
    finally:
        term.close()
    shown = [line for line in term.raw().splitlines() if "port must be between" in line]
    assert len(shown) == 1, term.raw()
    assert shown[0].startswith("muxtunnel: "), shown


def test_insecure_tls_logs_a_warning(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}"], extra=["--insecure"])
    (warning,) = up.events("tls does not verify the server")
    assert warning["level"] == "warning" and "--server-fingerprint" in warning["hint"], warning
    plain = harness.up(listen, tcp=[f"other={tcp_echo.port}"])
    assert plain.events("tls does not verify the server") == []
