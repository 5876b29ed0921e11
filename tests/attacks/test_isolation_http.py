"""Finding 9: the admin API and the metrics endpoint bound what a peer can hold.

At most 32 connections wait for their request head (a new one evicts the oldest), the head has
5 s to arrive, and a wrong bearer token is answered as soon as its header line is in. The old
endpoint held every half-sent request for 10 s: 1500 of them held 1500 fds.
"""

from __future__ import annotations

import secrets
import socket
import time
import urllib.request

import pytest
from e2e.harness import Harness, free_port

from bench.procstat import fd_count

from .isolation import holder, neighbours, quiet_window, shared_fate

pytestmark = pytest.mark.stress

HALF_SENT = b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n"  # no blank line: never finished
CONNECTIONS = 1500


def _status_code(url: str, token: str | None = None, timeout_s: float = 5.0) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        response.read()
        return int(response.status)


def test_f9_half_sent_requests_hold_few_fds(harness: Harness, figures) -> None:
    """1500 connections to the admin API each send part of a request head and stall: `listen`
    holds at most 32 of them (plus the ones being accepted), a scrape made meanwhile is
    answered, and the neighbour's service is unaffected."""
    admin = free_port()
    with neighbours(harness, listen_args=("--admin", f"127.0.0.1:{admin}")) as tunnel:
        baseline = fd_count(tunnel.listen.pid)
        with tunnel.probe("b") as probe, holder() as attacker:
            probe.wait_samples(5)
            quiet = quiet_window(probe)
            listen_meter, up_meter = tunnel.meters()
            with listen_meter, up_meter, probe.window() as honest:
                held = attacker.open(
                    ("127.0.0.1", admin), CONNECTIONS, per_source=100, send=HALF_SENT
                )
                time.sleep(0.5)
                fds_during = fd_count(tunnel.listen.pid)
                scrape = _status_code(f"http://127.0.0.1:{admin}/api/v1/status")
        figures.record(
            "isolation 9: 1500 half-sent admin requests",
            **shared_fate(honest, listen_meter, up_meter, quiet),
            connected=held,
            fds_over_baseline=fds_during - baseline,
            scrape=scrape,
        )
        honest.assert_shared_fate(quiet=quiet)
        assert held >= CONNECTIONS - 10
        assert listen_meter.peak_fds <= baseline + 32 + 64, (listen_meter.peak_fds, baseline)
        assert fds_during <= baseline + 32 + 8, (fds_during, baseline)
        assert scrape == 200


def test_f9_a_wrong_token_is_answered_at_its_header_line(harness: Harness) -> None:
    """With a bearer token, a request whose Authorization line is wrong gets its 401 as soon as
    that line arrives, before the rest of the head (which never comes); the right token still
    works."""
    admin, token = free_port(), secrets.token_hex(16)
    server_yaml = f"  admin:\n    bind: '127.0.0.1:{admin}'\n    token: {token}\n"
    with neighbours(harness, server_yaml=server_yaml):
        with socket.create_connection(("127.0.0.1", admin), timeout=5) as sock:
            started = time.monotonic()
            sock.sendall(b"GET /api/v1/status HTTP/1.1\r\nAuthorization: Bearer wrong\r\n")
            answer = sock.recv(100)
            answered_s = time.monotonic() - started
        good = _status_code(f"http://127.0.0.1:{admin}/api/v1/status", token)
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert answered_s < 1.0, answered_s
    assert good == 200


@pytest.mark.slow
def test_f9_a_request_head_has_five_seconds(harness: Harness) -> None:
    """A connection that sends nothing is closed at the head deadline (5 s), not 10 s later."""
    admin = free_port()
    with neighbours(harness, listen_args=("--admin", f"127.0.0.1:{admin}")):
        with socket.create_connection(("127.0.0.1", admin), timeout=15) as sock:
            started = time.monotonic()
            closed = sock.recv(100)
            closed_s = time.monotonic() - started
    assert closed == b""
    assert 4.5 < closed_s < 7.0, closed_s
