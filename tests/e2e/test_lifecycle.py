"""Start-up, failure and shutdown of real `listen` and `up` processes.

The contract: exit 0 after SIGINT/SIGTERM, 2 for usage and config errors, 1 for fatal runtime
errors; each failure is one readable line on stderr starting `muxtunnel: `. Failures no retry
can fix (wrong token, port not allowed or in use at the first registration, a name another
client serves) end `up` at once; an unreachable server is retried with backoff.
"""

from __future__ import annotations

import signal
import socket
import time
from typing import Any

import pytest
from testenv import within_load

from .harness import (
    Harness,
    Listen,
    Proc,
    TcpEchoServer,
    Up,
    echo_works,
    free_port,
    recv_all,
    tcp_connects,
    wait_until,
)

#: How long a process may take to give up on a fatal error (start-up included).
FATAL_EXIT_S = 10.0


def timed_up(harness: Harness, listen: Listen, **kwargs: Any) -> tuple[Up, float]:
    """`harness.up(listen, ...)` and the seconds it took to start and register: the baseline
    the time bounds below stretch with (see `testenv.within_load`)."""
    started = time.monotonic()
    up = harness.up(listen, **kwargs)
    return up, time.monotonic() - started

FAST_RECONNECT = """\
client:
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
  mux:
    keepalive_interval_s: 0.5
    keepalive_timeout_s: 1.0
"""


def _one_error_line(proc: Proc) -> str:
    lines = proc.error_lines()
    assert len(lines) == 1, f"expected one 'muxtunnel: ' line\n{proc.describe()}"
    return lines[0]


# --- reconnect ---


def test_up_comes_back_after_the_server_is_killed_and_restarted(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    config = harness.write("client.yaml", FAST_RECONNECT)
    listen = harness.listen()
    remote = free_port()
    spec = [f"echo={tcp_echo.port}:{remote}"]
    up, up_start_s = timed_up(harness, listen, tcp=spec, config=config)
    assert echo_works("127.0.0.1", remote)

    listen.kill()  # SIGKILL: no GoAway, no goodbye
    up.wait_event("session ended", timeout_s=10)
    assert not echo_works("127.0.0.1", remote, timeout_s=1)

    restarted = harness.listen(port=listen.port)
    back = time.monotonic()
    up.wait_registered(2, timeout_s=5)  # registered again...
    assert up.services()["echo"].port == remote  # ...on the same remote port
    assert len(up.announcements()) == 1, "the same address was printed again: " + up.stdout()
    # 0.5 s of backoff and one registration: 3 s on a quiet machine, stretched by load.
    serve_s = within_load(3.0, up_start_s)
    wait_until(lambda: echo_works("127.0.0.1", remote, 1), serve_s - (time.monotonic() - back),
               f"the remote port to serve again within {serve_s:.1f} s of the restart")  # fmt: skip
    assert up.running() and restarted.running()


def test_up_keeps_a_port_the_server_picked_across_a_restart(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    config = harness.write("client.yaml", FAST_RECONNECT)
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}"], config=config)
    picked = up.services()["echo"].port
    listen.kill()
    harness.listen(port=listen.port)
    up.wait_registered(2, timeout_s=5)
    assert up.services()["echo"].port == picked
    assert echo_works("127.0.0.1", picked)


def test_unreachable_server_is_retried_until_it_appears(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    config = harness.write("client.yaml", FAST_RECONNECT)
    control, remote = free_port(), free_port()
    up = harness.up(
        f"127.0.0.1:{control}", tcp=[f"echo={tcp_echo.port}:{remote}"], config=config, wait=False
    )
    up.wait_event("connection failed", timeout_s=10, count=3)
    retries = up.events("reconnecting")
    assert [r["attempt"] for r in retries[:3]] == [1, 2, 3]
    assert all(0 < r["in_s"] <= 0.5 for r in retries)
    assert up.running() and up.error_lines() == []

    harness.listen(port=control)
    up.wait_announced(1, timeout_s=5)
    assert echo_works("127.0.0.1", remote)


# --- refusals ---


def test_wrong_token_is_final(harness: Harness) -> None:
    started = time.monotonic()
    listen = harness.listen()
    listen_start_s = time.monotonic() - started  # a Python process starting up, right now
    up = harness.up(listen, tcp=[f"svc={free_port()}"], token="not-the-token-01234567", wait=False)
    assert up.wait_exit(FATAL_EXIT_S) == 1
    # One start-up and one refused attempt; a retry would add a backoff and another attempt.
    assert time.monotonic() - up.started < within_load(3.0, listen_start_s), "took too long"
    line = _one_error_line(up)
    assert "authentication failed" in line
    assert up.events("reconnecting") == [] and up.stdout() == ""
    assert listen.token not in up.stderr() + listen.stderr()


def test_port_not_allowed(harness: Harness) -> None:
    listen = harness.listen(allow_ports="40000-40010,40100")
    remote = free_port()
    up = harness.up(listen, tcp=[f"svc={free_port()}:{remote}"], wait=False)
    assert up.wait_exit(FATAL_EXIT_S) == 1
    line = _one_error_line(up)
    assert f"port {remote}" in line and "40000-40010,40100" in line, line
    assert up.events("reconnecting") == []


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_port_in_use(harness: Harness, kind: str) -> None:
    remote = free_port()
    squatter = socket.socket(
        socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    )
    with squatter:
        squatter.bind(("127.0.0.1", remote))
        if kind == "tcp":
            squatter.listen()
        listen = harness.listen()
        spec = [f"svc={free_port()}:{remote}"]
        up = harness.up(
            listen, tcp=spec if kind == "tcp" else (), udp=spec if kind == "udp" else (), wait=False
        )
        assert up.wait_exit(FATAL_EXIT_S) == 1
    line = _one_error_line(up)
    assert str(remote) in line and "in use" in line, line
    assert up.events("reconnecting") == []
    assert listen.running()


def test_second_client_cannot_take_a_live_service_name(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen()
    first_port = free_port()
    first = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{first_port}"])
    second = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{free_port()}"], wait=False)
    assert second.wait_exit(FATAL_EXIT_S) == 1
    line = _one_error_line(second)
    assert "'echo'" in line and "another client" in line, line
    assert first.running() and echo_works("127.0.0.1", first_port)

    # Once the first client is gone, the name is free again.
    assert first.stop() == 0
    listen.wait_event("session closed", timeout_s=5, count=2)  # the second's, then the first's
    third = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{first_port}"])
    assert echo_works(*third.public("echo"))


# --- usage and config errors ---

CONFIG_ERRORS = {
    "unknown-key": (
        "{role}:\n  token: t0ken-from-file\n  reconect_max_s: 3\n",
        3,
        "{role}.reconect_max_s",
    ),
    "unknown-mux-key": (
        "{role}:\n  mux:\n    keepalive_intervl_s: 1\n",
        3,
        "{role}.mux.keepalive_intervl_s",
    ),
    # Where the '[' left open is, not the end of the file where the parser noticed it.
    "malformed-yaml": ("{role}:\n  token: t0ken-from-file\n  allow: [1, 2\n", 3, None),
}


@pytest.mark.parametrize("role", ["listen", "up"])
@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors_name_file_line_and_key(harness: Harness, role: str, case: str) -> None:
    text, line_no, key = CONFIG_ERRORS[case]
    section = "server" if role == "listen" else "client"
    path = harness.write("bad.yaml", text.format(role=section))
    args: list[object] = [role, "--config", path, "--log-format", "json"]
    if role == "up":
        args += ["--tcp", "8080"]
    proc = harness.run(*args)
    assert proc.returncode == 2, proc.describe()
    line = _one_error_line(proc)
    assert line.startswith(f"muxtunnel: {path}:{line_no}: "), line
    if key is not None:
        assert f"{key.format(role=section)}:" in line and "unknown key" in line, line
    else:
        assert "invalid YAML" in line, line


def test_listen_refuses_to_run_without_a_token(harness: Harness) -> None:
    proc = harness.run("listen", "--bind", f"127.0.0.1:{free_port()}", "--log-format", "json")
    assert proc.returncode == 2, proc.describe()
    assert "no token" in _one_error_line(proc)


def test_up_refuses_a_service_without_a_token(harness: Harness) -> None:
    proc = harness.run("up", "--server", "127.0.0.1:1", "--tcp", "web=8080", "--no-console")
    assert proc.returncode == 2, proc.describe()
    line = _one_error_line(proc)
    assert "no token" in line and "web" in line, line


def test_token_precedence_flag_then_file_then_environment(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    """--token wins over server.token, which wins over $MUXTUNNEL_TOKEN."""
    config = harness.write("server.yaml", "server:\n  token: file-token-0123456789\n")
    env = harness.env(MUXTUNNEL_TOKEN="env-token-0123456")
    from_file = harness.listen("--config", config, token="", env=env)
    assert harness.up(from_file, tcp=[f"a={tcp_echo.port}"], token="file-token-0123456789")
    wrong = harness.up(from_file, tcp=[f"b={tcp_echo.port}"], token="env-token-0123456", wait=False)
    assert wrong.wait_exit(FATAL_EXIT_S) == 1
    from_flag = harness.listen("--config", config, token="flag-token-0123456789", env=env)
    assert harness.up(from_flag, tcp=[f"c={tcp_echo.port}"], token="flag-token-0123456789")
    # And up reads $MUXTUNNEL_TOKEN when neither the flag nor its file give one.
    from_env = harness.listen(token="", env=env)
    assert harness.up(from_env, tcp=[f"d={tcp_echo.port}"], token="", env=env)


def test_bad_service_spec_is_a_usage_error(harness: Harness) -> None:
    proc = harness.run("up", "--token", harness.token, "--tcp", "web=localhost:notaport")
    assert proc.returncode == 2, proc.describe()
    assert "notaport" in _one_error_line(proc)


def test_listen_bind_failure_is_fatal(harness: Harness) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        bind = f"127.0.0.1:{port}"
        proc = harness.run("listen", "--bind", bind, "--token", harness.token, timeout_s=15)
    assert proc.returncode == 1, proc.describe()
    assert str(port) in _one_error_line(proc)


# --- signals ---


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_both_with_exit_0(
    harness: Harness, tcp_echo: TcpEchoServer, signum: signal.Signals
) -> None:
    """Tokens from $MUXTUNNEL_TOKEN here; `up` is stopped first, then `listen`."""
    env = harness.env(MUXTUNNEL_TOKEN=harness.token)
    listen = harness.listen(token="", env=env)
    remote = free_port()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{remote}"], token="", env=env)
    assert echo_works("127.0.0.1", remote)
    up.send_signal(signum)
    assert up.wait_exit(10) == 0
    assert up.error_lines() == []
    listen.wait_event("session closed", timeout_s=5)
    listen.send_signal(signum)
    assert listen.wait_exit(15) == 0
    assert listen.error_lines() == []


def test_sigterm_listen_with_a_client_connected(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    """The server stops with 0 while a client is connected; the client survives and retries.

    No visitor is connected, so there is nothing to drain: the server must not sit out its
    drain timeout (10 s by default) waiting for the client's control channel.
    """
    config = harness.write("client.yaml", FAST_RECONNECT)
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{free_port()}"], config=config)
    listen.send_signal(signal.SIGTERM)
    assert listen.wait_exit(5) == 0
    assert listen.error_lines() == []
    up.wait_event("reconnecting", timeout_s=10)
    assert up.running()
    up.send_signal(signal.SIGTERM)
    assert up.wait_exit(10) == 0


def _drain_setup(harness: Harness, tcp_echo: TcpEchoServer, drain_s: float) -> tuple:
    """(listen, remote port, a connected visitor, seconds `up` took to start and register)."""
    server_config = harness.write("server.yaml", f"server:\n  drain_timeout_s: {drain_s}\n")
    listen = harness.listen("--config", server_config)
    remote = free_port()
    _, up_start_s = timed_up(harness, listen, tcp=[f"echo={tcp_echo.port}:{remote}"])
    visitor = socket.create_connection(("127.0.0.1", remote), timeout=10)
    visitor.sendall(b"before")
    assert visitor.recv(100) == b"before"
    return listen, remote, visitor, up_start_s


def test_sigterm_listen_lets_live_visitors_finish(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    """After SIGTERM no new visitors get in, but one already connected may finish its exchange
    (server.drain_timeout_s); the server exits 0 as soon as it has."""
    listen, remote, visitor, up_start_s = _drain_setup(harness, tcp_echo, drain_s=8)
    with visitor:
        listen.send_signal(signal.SIGTERM)
        listen.wait_event("stopping", timeout_s=5)
        wait_until(lambda: not tcp_connects("127.0.0.1", remote, 0.5), 5,
                   "the public port to stop accepting")  # fmt: skip
        visitor.sendall(b"after")
        visitor.shutdown(socket.SHUT_WR)
        assert recv_all(visitor) == b"after"  # the echo, then a clean EOF
    finished = time.monotonic()
    assert listen.wait_exit(8) == 0
    # An exit, not the 8 s drain: 1 s on a quiet machine, stretched by load, and always short
    # of the drain so that a server waiting it out still fails.
    exit_bound_s = min(within_load(1.0, up_start_s), 6.0)
    waited_s = time.monotonic() - finished
    assert waited_s < exit_bound_s, "the server waited longer than its last visitor"


def test_sigterm_listen_drain_is_bounded(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    """A visitor that does not finish within drain_timeout_s is cut with RST; exit is still 0."""
    listen, _, visitor, up_start_s = _drain_setup(harness, tcp_echo, drain_s=1)
    with visitor:
        stopped = time.monotonic()
        listen.send_signal(signal.SIGTERM)
        assert listen.wait_exit(10) == 0
        assert time.monotonic() - stopped < within_load(1 + 1, up_start_s)  # drain + exit
        with pytest.raises(ConnectionResetError):
            recv_all(visitor)


def test_keepalive_detects_a_frozen_server(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    """client.mux keepalive settings apply: a server that stops answering (SIGSTOP, so no FIN)
    ends the session within interval + timeout; once it answers again, up registers again.
    (A plain session: a resumable one suspends instead, see tests/netns/test_resume_netns.py.)"""
    config = harness.write("client.yaml", FAST_RECONNECT + "  resume: false\n")
    listen = harness.listen()
    remote = free_port()
    spec = [f"echo={tcp_echo.port}:{remote}"]
    up, up_start_s = timed_up(harness, listen, tcp=spec, config=config)
    frozen = time.monotonic()
    listen.send_signal(signal.SIGSTOP)
    try:
        up.wait_event("session ended", timeout_s=10)
        # interval + timeout, stretched by load: far below the defaults (30 + 10 s) either way
        assert time.monotonic() - frozen < within_load(0.5 + 1.0, up_start_s)
        assert "keepalive" in up.events("session ended")[0]["reason"]
    finally:
        listen.send_signal(signal.SIGCONT)
    up.wait_registered(2, timeout_s=15)
    assert echo_works("127.0.0.1", remote)
