"""Faults injected into real `listen` and `up` processes while visitors are transferring.

What a fault may never do is end a visitor's connection cleanly short of its data: every
visitor either completes byte-exact or sees an error (`tests/stress/visitors.py`). Each test
also checks that the tunnel comes back, and records its figures (detection time, attempts,
fds) for the stress table.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from e2e.harness import (
    Harness,
    TcpEchoServer,
    TcpTarget,
    echo_works,
    free_port,
    kill_process_group,
    wait_until,
)
from stress.live import FrameTap
from stress.visitors import EchoExact, Idle, Streamer, summarize, wait_all
from testenv import within_load

from bench.procstat import fd_count

pytestmark = pytest.mark.stress

MIB = 1 << 20
#: Keepalive for fault tests: a dead or frozen peer is noticed within 0.5 + 0.5 s.
KEEPALIVE = "  mux:\n    keepalive_interval_s: 0.5\n    keepalive_timeout_s: 0.5\n"
CLIENT_FAST = "client:\n  reconnect_min_s: 0.2\n  reconnect_max_s: 1.0\n" + KEEPALIVE
#: For tests of a graceful stop, where `up` learns of the end from the carrier itself: a 0.5 s
#: keepalive timeout only adds false alarms on a loaded machine (a carrier given up mid-drain).
CLIENT_PATIENT = (
    "client:\n  reconnect_min_s: 0.2\n  reconnect_max_s: 1.0\n"
    "  mux:\n    keepalive_interval_s: 0.5\n    keepalive_timeout_s: 5.0\n"
)


def event_time(record: dict) -> float:
    """A log record's timestamp as seconds since the epoch (time.time() scale)."""
    return datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()


def errors_only(visitors: list) -> None:
    outcomes = summarize(visitors)
    assert set(outcomes) <= {f"error: {name}" for name in _ERRORS}, outcomes


_ERRORS = ("ConnectionResetError", "BrokenPipeError", "ConnectionAbortedError")


@pytest.fixture
def target() -> Iterator[TcpTarget]:
    server = TcpTarget()
    yield server
    server.close()


# ---------------------------------------------------------------------------------------- up


def test_sigkill_up_mid_transfer(harness: Harness, tcp_echo: TcpEchoServer, figures) -> None:
    """SIGKILL `up` while 4 visitors stream and 20 sit idle: every visitor socket ends in an
    error (never a clean EOF), the server frees the public port, and a restarted `up` gets the
    same port and serves. The killed process's kernel resets the carrier (unread bytes), which
    the server cannot tell from a broken network: it holds the resumable session for
    `resume_timeout_s` (2 s here; 60 by default) before its visitors get their error."""
    resume_timeout_s = 2.0
    config = harness.write(
        "server.yaml", f"server:\n  mux:\n    resume_timeout_s: {resume_timeout_s}\n"
    )
    listen = harness.listen("--config", config)
    remote = free_port()
    spec = [f"echo={tcp_echo.port}:{remote}"]
    started = time.monotonic()
    up = harness.up(listen, tcp=spec)
    up_start_s = time.monotonic() - started  # the baseline the time bounds stretch with
    address = ("127.0.0.1", remote)
    idle = [Idle(address) for _ in range(20)]
    busy = [Streamer(address) for _ in range(4)]
    for visitor in [*idle, *busy]:
        visitor.start()
        assert visitor.connected.wait(10)
    wait_until(lambda: all(v.received > MIB for v in busy), 20, "the transfers to get going")
    fds_before = fd_count(listen.pid)
    killed = time.monotonic()
    up.kill()
    assert not wait_all([*idle, *busy], timeout_s=10 + resume_timeout_s), summarize([*idle, *busy])
    detected = max(v.ended_at for v in [*idle, *busy]) - killed
    listen.wait_event("session closed", timeout_s=5)
    wait_until(lambda: not echo_works(*address, timeout_s=0.5), 5, "the public port to close")
    fds_after = fd_count(listen.pid)
    restarted = harness.up(listen, tcp=spec)
    assert restarted.services()["echo"].port == remote
    assert echo_works(*address)
    figures.record(
        "fault: SIGKILL up mid-transfer",
        visitors=len(idle) + len(busy),
        all_failed_within_s=round(detected, 2),
        idle=" ".join(f"{k}={v}" for k, v in summarize(idle).items()),
        streaming=" ".join(f"{k}={v}" for k, v in summarize(busy).items()),
        fds=fds_before,
        fds_freed=fds_before - fds_after,
    )
    errors_only([*idle, *busy])
    # The kernel closes the carrier at once: 1 s on a quiet machine, stretched by load, after
    # the resume timeout (a clean FIN, with no bytes unread, would end the session at once).
    assert detected < resume_timeout_s + within_load(1.0, up_start_s), (detected, up_start_s)
    assert fds_after <= fds_before - len(idle) - len(busy)


# ---------------------------------------------------------------------------------------- listen


def test_sigterm_listen_with_transfers_running(
    harness: Harness, tcp_echo: TcpEchoServer, figures
) -> None:
    """SIGTERM `listen` (drain 4 s) with 3 transfers that finish within the drain and 2 that
    never would: a GoAway goes out on the carrier, the first are byte-exact, the others end in
    an error at the deadline, no new visitor gets in meanwhile, listen exits 0, and `up` serves
    again through a restarted listen."""
    drain_s = 4.0
    harness.tls = False  # the tap decodes the frames on the carrier: plaintext
    config = harness.write("server.yaml", f"server:\n  drain_timeout_s: {drain_s}\n")
    client = harness.write("client.yaml", CLIENT_PATIENT)
    listen = harness.listen("--config", config)
    tap = FrameTap((listen.host, listen.port))
    remote = free_port()
    started = time.monotonic()
    up = harness.up(
        f"{tap.address[0]}:{tap.address[1]}", tcp=[f"echo={tcp_echo.port}:{remote}"], config=client
    )
    up_start_s = time.monotonic() - started  # the baseline the time bounds stretch with
    address = ("127.0.0.1", remote)
    forever = [Streamer(address, rate_bps=200_000) for _ in range(2)]
    for visitor in forever:
        visitor.start()
    wait_until(lambda: all(v.received > 0 for v in forever), 10, "the endless transfers")
    # 4 MiB at 20 Mbit/s: about 1.7 s, so in flight at SIGTERM and done within the drain.
    finishing = [EchoExact(address, 4 * MIB, seed=i, rate_bps=20e6) for i in range(3)]
    for visitor in finishing:
        visitor.start()
    wait_until(lambda: all(v.received > 0 for v in finishing), 10, "the finishing transfers")
    stopped = time.monotonic()
    listen.send_signal(signal.SIGTERM)
    listen.wait_event("stopping", timeout_s=5)
    refused_new = not echo_works(*address, timeout_s=1)
    assert not wait_all(finishing, timeout_s=drain_s + 5), summarize(finishing)
    assert not wait_all(forever, timeout_s=drain_s + 5), summarize(forever)
    forever_ended = max(v.ended_at for v in forever) - stopped
    exit_code = listen.wait_exit(drain_s + 10)
    exited = time.monotonic() - stopped
    go_aways = [(round(t - stopped, 2), code) for t, code in tap.go_aways]
    restarted = harness.listen(port=listen.port)
    up.wait_registered(2, timeout_s=10)
    assert echo_works(*address)
    tap.close()
    figures.record(
        "fault: SIGTERM listen with transfers",
        drain_s=drain_s,
        finishing=" ".join(f"{k}={v}" for k, v in summarize(finishing).items()),
        endless=" ".join(f"{k}={v}" for k, v in summarize(forever).items()),
        endless_cut_s=round(forever_ended, 2),
        exited_s=round(exited, 2),
        go_away_at_s=go_aways[0][0] if go_aways else None,
    )
    # The GoAway leaves at once (well before the drain ends): 0.5 s, stretched by load.
    go_away_bound_s = min(within_load(0.5, up_start_s), drain_s - 1)
    assert go_aways and go_aways[0][1] == 0 and go_aways[0][0] < go_away_bound_s, go_aways
    assert refused_new, "a new visitor got in after SIGTERM"
    assert summarize(finishing) == {"ok": 3}
    errors_only(forever)
    assert drain_s - 0.5 <= forever_ended <= within_load(drain_s + 1, up_start_s)
    assert exit_code == 0 and exited < within_load(drain_s + 2, up_start_s)
    assert restarted.running() and up.running()


def test_sigkill_listen_client_reconnects_with_bounded_backoff(
    harness: Harness, target: TcpTarget, figures
) -> None:
    """SIGKILL `listen`: `up` notices at once (the kernel closes the carrier) and well within
    keepalive interval + timeout (0.5 + 0.5 s), resets its side of every visitor (the local
    service sees an error, not EOF), retries with backoff (no hot spin: at most a handful of
    attempts while the server is down), and registers again once it is back."""
    client = harness.write(
        "client.yaml", "client:\n  reconnect_min_s: 0.5\n  reconnect_max_s: 2.0\n" + KEEPALIVE
    )
    listen = harness.listen()
    remote = free_port()
    started = time.monotonic()
    up = harness.up(listen, tcp=[f"svc={target.port}:{remote}"], config=client)
    up_start_s = time.monotonic() - started  # the baseline the time bounds stretch with
    visitors = [Idle(("127.0.0.1", remote)) for _ in range(3)]
    local = []
    for visitor in visitors:
        visitor.start()
        conn = target.accept()
        conn.sendall(conn.recv(5))  # the local service answers the hello
        local.append(conn)
    for visitor in visitors:
        wait_until(lambda v=visitor: v.received >= 5, 10, "the hello echo")
    killed = time.time()
    listen.kill()
    up.wait_event("session ended", timeout_s=5)
    detected = event_time(up.events("session ended")[-1]) - killed
    local_outcomes = []
    for conn in local:
        conn.settimeout(5)
        try:
            local_outcomes.append("clean EOF" if conn.recv(10) == b"" else "data")
        except OSError as exc:
            local_outcomes.append(type(exc).__name__)
        conn.close()
    down_s = 6.0
    time.sleep(down_s)
    attempts = [event_time(e) for e in up.events("connection failed") if event_time(e) > killed]
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    harness.listen(port=listen.port)
    back = time.monotonic()
    up.wait_registered(2, timeout_s=10)
    reregistered = time.monotonic() - back
    figures.record(
        "fault: SIGKILL listen",
        detected_s=round(detected, 3),
        attempts_while_down=len(attempts),
        min_gap_s=round(min(gaps), 2) if gaps else None,
        reregistered_s=round(reregistered, 2),
        local_side=",".join(sorted(set(local_outcomes))),
        # The visitors' own sockets were the killed process's: the kernel ends them (a FIN when
        # nothing was left unread), nothing muxtunnel can choose.
        visitors=" ".join(f"{k}={v}" for k, v in summarize(visitors).items()),
    )
    # Within keepalive interval + timeout (0.5 + 0.5 s) and 0.5 s more, plus one start-up of
    # `up` measured in this test: a loaded machine delays the log line, not the detection.
    assert detected < within_load(0.5 + 0.5 + 0.5, up_start_s, factor=1), (detected, up_start_s)
    assert all(outcome == "ConnectionResetError" for outcome in local_outcomes), local_outcomes
    # Backoff 0.5 s doubling to 2 s (with jitter down to half): about 4 attempts in 6 s.
    assert 2 <= len(attempts) <= 8, attempts
    assert not gaps or min(gaps) >= 0.2
    assert reregistered < within_load(2.0 + 1.0, up_start_s)  # longest backoff + registering


# ---------------------------------------------------------------------------------------- carrier


def start_proxy(harness: Harness, upstream: int) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m bench.delayproxy` (no delay) between up and listen, in its own session."""
    out = harness.log_dir / "proxy.stdout"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.delayproxy", "--listen", "127.0.0.1:0",
         "--upstream", f"127.0.0.1:{upstream}"],
        stdout=out.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[2], start_new_session=True,
    )  # fmt: skip
    line = wait_until(lambda: _listening(out), 20, "the proxy to listen")
    return proc, int(line.rsplit(":", 1)[1])


def _listening(path: Path) -> str | None:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("listening "):
            return line
    return None


def test_half_open_carrier_is_detected_by_keepalive_on_both_ends(
    harness: Harness, tcp_echo: TcpEchoServer, figures
) -> None:
    """The carrier runs through a userspace proxy; SIGSTOP freezes it, so no FIN and no RST
    ever come (the kernel still accepts bytes into its buffers): a half-open connection. Both
    `up` and `listen` must end the session by keepalive within interval + timeout (0.5 + 0.5 s,
    plus slack), visitors get an error, and after SIGCONT `up` reconnects and serves. (Plain
    sessions: a resumable one suspends instead, see tests/netns/test_resume_netns.py.)"""
    server = harness.write("server.yaml", "server:\n  resume: false\n" + KEEPALIVE)
    client = harness.write("client.yaml", CLIENT_FAST + "  resume: false\n")
    listen = harness.listen("--config", server)
    proxy, proxy_port = start_proxy(harness, listen.port)
    try:
        remote = free_port()
        started = time.monotonic()
        up = harness.up(
            f"127.0.0.1:{proxy_port}", tcp=[f"echo={tcp_echo.port}:{remote}"], config=client
        )
        up_start_s = time.monotonic() - started  # the baseline the time bounds stretch with
        address = ("127.0.0.1", remote)
        visitors = [Streamer(address, rate_bps=100_000) for _ in range(2)]
        for visitor in visitors:
            visitor.start()
        wait_until(lambda: all(v.received > 0 for v in visitors), 10, "the transfers")
        up_before = len(up.events("session ended"))
        listen_before = len(listen.events("session closed"))
        frozen = time.time()
        proxy.send_signal(signal.SIGSTOP)
        try:
            up.wait_event("session ended", timeout_s=10, count=up_before + 1)
            listen.wait_event("session closed", timeout_s=10, count=listen_before + 1)
            assert not wait_all(visitors, timeout_s=10), summarize(visitors)
        finally:
            proxy.send_signal(signal.SIGCONT)
        up_detect = event_time(up.events("session ended")[up_before]) - frozen
        listen_detect = event_time(listen.events("session closed")[listen_before]) - frozen
        reason = up.events("session ended")[up_before].get("reason", "")
        up.wait_registered(2, timeout_s=15)
        assert echo_works(*address)
    finally:
        kill_process_group(proxy)
    figures.record(
        "fault: half-open carrier (frozen proxy)",
        up_detect_s=round(up_detect, 2),
        listen_detect_s=round(listen_detect, 2),
        visitors=" ".join(f"{k}={v}" for k, v in summarize(visitors).items()),
    )
    assert "keepalive" in reason, reason
    # keepalive interval + timeout (0.5 + 0.5 s), 0.5 s more, stretched by load
    detect_bound_s = within_load(0.5 + 0.5 + 0.5, up_start_s)
    assert up_detect < detect_bound_s, (up_detect, up_start_s)
    assert listen_detect < detect_bound_s, (listen_detect, up_start_s)
    errors_only(visitors)
