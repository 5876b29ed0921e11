"""TLS by default, through real processes: `listen` makes its own certificate on the first
start and keeps it; `up` trusts it on first use and refuses a changed one; `--no-tls` on both
sides is plaintext with a warning; a mismatch says which flag fixes it.

The harness gives each test a state directory of its own ($XDG_STATE_HOME under the test's
folder), shared by the `listen` and `up` it starts, as on one machine.
"""

from __future__ import annotations

import os
import time

from .harness import Harness, TcpEchoServer, echo_works, free_port

FATAL_EXIT_S = 20.0


def _state(harness: Harness) -> str:
    return os.path.join(harness.log_dir, "state", "muxtunnel")


def test_first_start_makes_a_certificate_and_prints_it_the_second_keeps_it(
    harness: Harness,
) -> None:
    first = harness.listen()
    created = first.events("tls certificate created")
    assert len(created) == 1, first.describe()
    fingerprint = created[0]["fingerprint"]
    assert fingerprint.startswith("sha256:") and len(fingerprint) == 7 + 64
    assert f"--server-fingerprint {fingerprint}" in created[0]["hint"]
    assert first.events("listening")[0]["tls"] == fingerprint
    cert = os.path.join(_state(harness), "server.crt")
    key = os.path.join(_state(harness), "server.key")
    assert created[0]["cert"] == cert
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert os.stat(_state(harness)).st_mode & 0o777 == 0o700
    key_bytes = open(key, "rb").read()
    assert first.stop() == 0
    second = harness.listen(port=first.port)
    assert second.events("tls certificate created") == []
    assert second.events("listening")[0]["tls"] == fingerprint
    assert open(key, "rb").read() == key_bytes


def test_up_trusts_on_first_use_and_refuses_a_changed_certificate(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen()
    fingerprint = listen.events("listening")[0]["tls"]
    remote = free_port()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{remote}"])
    assert echo_works("127.0.0.1", remote)
    up.wait_event("server trusted on first use")
    trusted = up.events("server trusted on first use")[0]
    assert (trusted["server"], trusted["fingerprint"]) == (listen.address, fingerprint)
    known_hosts = os.path.join(_state(harness), "known_hosts")
    assert open(known_hosts).read() == f"{listen.address} {fingerprint}\n"
    assert os.stat(known_hosts).st_mode & 0o777 == 0o600
    # A second `up` knows the server now: it connects without remembering anything anew.
    again = harness.up(listen, tcp=[f"echo2={tcp_echo.port}"])
    assert again.events("server trusted on first use") == []
    for proc in (up, again, listen):
        assert proc.stop() == 0
    # The server's state is lost (or a man in the middle answers): another certificate.
    for name in ("server.crt", "server.key"):
        os.unlink(os.path.join(_state(harness), name))
    replaced = harness.listen(port=listen.port)
    assert replaced.events("listening")[0]["tls"] != fingerprint
    started = time.monotonic()
    refused = harness.up(replaced, tcp=[f"echo={tcp_echo.port}"], wait=False)
    assert refused.wait_exit(FATAL_EXIT_S) == 1, refused.describe()
    assert time.monotonic() - started < FATAL_EXIT_S
    message = refused.error_lines()[-1]
    assert "the server's certificate changed" in message
    assert f"{known_hosts}:1 remembers {fingerprint}" in message
    assert "delete line 1" in message and "--server-fingerprint" in message
    assert refused.events("reconnecting") == []  # no retry: a person must look


def test_no_tls_on_both_sides_is_plaintext_with_a_warning(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen("--no-tls")
    remote = free_port()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}:{remote}"], extra=["--no-tls"])
    assert echo_works("127.0.0.1", remote)
    for proc in (listen, up):
        warnings = proc.events("tls is off")
        assert len(warnings) == 1 and warnings[0]["level"] == "warning", proc.describe()
        assert "--no-tls" in warnings[0]["hint"]
    assert listen.events("listening")[0]["tls"] is None
    assert not os.path.exists(_state(harness))  # nothing to keep without TLS


def test_plaintext_up_against_a_tls_listen_says_which_flag_fixes_it(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen()
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}"], extra=["--no-tls"], wait=False)
    assert up.wait_exit(FATAL_EXIT_S) == 1, up.describe()
    message = up.error_lines()[-1]
    assert "the server speaks TLS" in message and "leave --no-tls" in message
    # (The harness's readiness check, a connect and close, is a failed handshake too.)
    listen.wait_for(
        lambda: any(
            "the client does not speak TLS" in event["error"] and "--no-tls" in event["error"]
            for event in listen.events("tls handshake failed")
        ),
        FATAL_EXIT_S,
        "the server's log line about a plaintext client",
    )


def test_tls_up_against_a_plaintext_listen_says_which_flag_fixes_it(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    listen = harness.listen("--no-tls")
    up = harness.up(listen, tcp=[f"echo={tcp_echo.port}"], wait=False)
    assert up.wait_exit(FATAL_EXIT_S) == 1, up.describe()
    message = up.error_lines()[-1]
    assert "the server does not speak TLS" in message and "give up --no-tls" in message
    listen.wait_for(
        lambda: any(
            "the client speaks TLS" in event["error"] and "--no-tls" in event["error"]
            for event in listen.events("tls handshake failed")
        ),
        FATAL_EXIT_S,
        "the server's log line about a TLS client",
    )
