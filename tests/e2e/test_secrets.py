"""Tokens and the process list: a token flag is warned about and masked; token files are quiet."""

from __future__ import annotations

from pathlib import Path

from .harness import Harness, Proc, TcpEchoServer, echo_works, free_port


def _cmdline(proc: Proc) -> bytes:
    return Path(f"/proc/{proc.pid}/cmdline").read_bytes()


def test_a_token_on_the_command_line_is_warned_about_and_masked(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    admin_token = "admin-token-" + harness.token
    listen = harness.listen("--admin", f"127.0.0.1:{free_port()}", "--admin-token", admin_token)
    warnings = listen.events("secret on the command line")
    assert len(warnings) == 1, listen.describe()  # one line, naming both flags
    assert warnings[0]["flags"] == ["--token", "--admin-token"]
    assert "--token-file" in warnings[0]["hint"]
    shown = _cmdline(listen)
    assert harness.token.encode() not in shown and admin_token.encode() not in shown, shown
    assert b"--token\0" + b"*" * len(harness.token) in shown
    # The process itself still uses the real token: a client with it gets through.
    remote = free_port()
    harness.up(listen, tcp=[f"echo={tcp_echo.port}:{remote}"])
    assert echo_works("127.0.0.1", remote)


def test_token_files_start_both_sides_without_a_warning(
    harness: Harness, tcp_echo: TcpEchoServer
) -> None:
    token_file = harness.write("token", harness.token + "\n")
    token_file.chmod(0o600)
    listen = harness.listen("--token-file", token_file, token="")
    remote = free_port()
    up = harness.up(
        listen, tcp=[f"echo={tcp_echo.port}:{remote}"], token="", extra=["--token-file", token_file]
    )
    assert echo_works("127.0.0.1", remote)
    for proc in (listen, up):
        assert proc.events("secret on the command line") == [], proc.describe()
        assert harness.token.encode() not in _cmdline(proc)
