"""Tests of the bench's small-message probes against its echo server (loopback, fast)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from bench import messages
from bench.proc import Address


@pytest.fixture(scope="module")
def echo() -> Iterator[Address]:
    """`python -m bench.echo`: TCP and UDP echo on one port number."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        host, _, port = line.split()[1].rpartition(":")
        yield host, int(port)
    finally:
        proc.terminate()
        proc.wait(5)


def test_echo_answers_tcp_and_udp_on_one_port(echo: Address) -> None:
    with socket.create_connection(echo, timeout=5) as s:
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.settimeout(5)
        u.sendto(b"pong", echo)
        assert u.recvfrom(16)[0] == b"pong"


@pytest.mark.parametrize("probe", [messages.tcp, messages.udp])
def test_probe_counts_echoed_messages(echo: Address, probe: object) -> None:
    result = probe(echo, conns=5, seconds=0.3, warmup_s=0.05)  # type: ignore[operator]
    # Loopback echo: thousands of round trips in 0.3 s, none lost, each sampled one well
    # under a second.
    assert result["msgs_per_s"] > 500
    assert result.get("lost", 0) == 0
    assert result["rtt"]["n"] > 0
    assert result["rtt"]["p50_ms"] < 1000


def test_udp_probe_counts_a_silent_peer_as_loss() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        result = messages.udp(silent.getsockname(), conns=2, seconds=0.5, warmup_s=0.0)
    assert result["msgs_per_s"] == 0
    assert result["lost"] >= 2  # each socket resent at least once after LOST_AFTER_S
