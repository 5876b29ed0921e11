"""Resumable sessions across a real link (network namespaces, as in `conftest.py`): namespace b
runs `listen`, namespace a runs `up` and the echo service, visitors connect in b.

While a bulk echo (seeded random bytes, SHA-256 compared) and an interactive one (a slow
steady echo) cross the tunnel, the carrier TCP connection is killed (`ss -K` in a: `up` gets
ECONNABORTED, `listen` a reset), reset by a middlebox (nftables answers the carrier's packets
with TCP resets, both ways), or the link is blackholed for 5 s (keepalive 1 s + 3 s notices it
first, both ends suspend). Each time both visitors must end "ok" (every byte, in order, no
error) and `up` must have resumed its session, not registered anew. The replay log stays
within its budget (`replay_budget_bytes` and the one frame that may overshoot it, read back
from both admin APIs).

Then what cannot be survived, ends cleanly: a blackhole longer than `resume_timeout_s` ends
the session on both sides (visitors get an error) and `up` registers afresh once the link is
back; a `listen` restarted while `up` was cut off refuses the resume and `up` registers afresh.

Sizes: 32 MiB in the default run (about as long as the other netns tests); the 256 MiB
transfers of the resilience issue are `slow` (`make stress`).
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e.harness import Harness, Listen, TcpEchoServer, Up
from stress.visitors import EchoExact, Visitor, summarize, wait_all
from testenv import skip_or_fail

from .conftest import CONTROL_PORT, PUBLIC_PORT, Link
from .netns import NetnsPair, NetnsUnavailable, run

pytestmark = [pytest.mark.netns, pytest.mark.stress]

MIB = 1 << 20
#: Both ends: a silent carrier is noticed within 1 + 3 s; a suspended session waits 10 s for a
#: new carrier (short, so the test of its expiry stays short); a 4 MiB replay log (small, so
#: bulk fills it and the budget is really exercised; 32 MiB is the default).
RESUME_TIMEOUT_S = 10.0
REPLAY_BUDGET_BYTES = 4 * MIB
MUX = (
    "  mux:\n    keepalive_interval_s: 1.0\n    keepalive_timeout_s: 3.0\n"
    f"    resume_timeout_s: {RESUME_TIMEOUT_S}\n    replay_budget_bytes: {REPLAY_BUDGET_BYTES}\n"
)
#: What the log may hold at most (`mux._replay`, invariant 2): the budget, one Data frame past
#: it (`max_frame_bytes`, 64 KiB, plus its 12-byte header), and the few control frames that go
#: while Data waits (a 4 KiB allowance).
REPLAY_BOUND_BYTES = REPLAY_BUDGET_BYTES + 64 * 1024 + 12 + 4096
ADMIN_PORT = 7837
#: The slow echo that spans the cut: 384 KiB at 1 Mbit/s, about 3 s each way.
INTERACTIVE = (384 * 1024, 1_000_000)


class ResumeLink(Link):
    """`Link`, with both admin APIs and a way to restart `listen`."""

    start_listen: Callable[[], Listen]

    def admin(self, ns: str) -> dict[str, Any]:
        with self.pair.enter(ns):
            host = "127.0.0.1"
            url = f"http://{host}:{ADMIN_PORT}/api/v1/status"
            with urllib.request.urlopen(url, timeout=5) as answer:
                document: dict[str, Any] = json.loads(answer.read())
        return document

    def count(self, proc: Listen | Up, event: str) -> int:
        return len(proc.events(event))


def _listen(pair: NetnsPair, harness: Harness) -> Listen:
    config = harness.write("server.yaml", f"server:\n  admin: 127.0.0.1:{ADMIN_PORT}\n" + MUX)
    bind = f"{pair.addr[pair.b]}:{CONTROL_PORT}"
    listen = Listen(
        "listen",
        pair.argv(
            pair.b, sys.executable, "-m", "muxtunnel", "listen", "--bind", bind,
            "--token", harness.token, "--allow-ports", str(PUBLIC_PORT),
            "--log-format", "json", "--config", str(config),
        ),
        harness.log_dir,
        harness.env(),
    )  # fmt: skip
    harness.procs.append(listen)
    listen.host, listen.port, listen.token = pair.addr[pair.b], CONTROL_PORT, harness.token
    listen.wait_event("listening")
    return listen


def _up(pair: NetnsPair, harness: Harness, echo: TcpEchoServer) -> Up:
    config = harness.write(
        "client.yaml",
        f"client:\n  admin: 127.0.0.1:{ADMIN_PORT}\n  reconnect_min_s: 0.2\n"
        "  reconnect_max_s: 1.0\n" + MUX,
    )
    bind = f"{pair.addr[pair.b]}:{CONTROL_PORT}"
    up = Up(
        "up",
        pair.argv(
            pair.a, sys.executable, "-m", "muxtunnel", "up", "--server", bind,
            "--token", harness.token, "--tcp", f"echo={echo.port}:{PUBLIC_PORT}",
            "--no-console", "--log-format", "json", "--config", str(config),
        ),
        harness.log_dir,
        harness.env(),
    )  # fmt: skip
    harness.procs.append(up)
    up.wait_announced(1)
    return up


@pytest.fixture(scope="module")
def rlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResumeLink]:
    try:
        pair = NetnsPair()
    except NetnsUnavailable as exc:
        skip_or_fail(str(exc))
    harness = Harness(tmp_path_factory.mktemp("netns-resume"))
    echo: TcpEchoServer | None = None
    try:
        with pair.enter(pair.a):
            echo = TcpEchoServer()
        listen = _listen(pair, harness)
        up = _up(pair, harness, echo)
        link = ResumeLink(pair, harness, listen, up, echo)
        link.start_listen = lambda: _listen(pair, harness)
        deadline = time.monotonic() + 10
        while not link.echo_works() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert link.echo_works(), "the tunnel never served"
        yield link
    finally:
        harness.close()
        if echo is not None:
            echo.close()
        pair.close()


# ---------------------------------------------------------------- the faults


def kill_socket(link: ResumeLink) -> None:
    """`ss -K` on the client's side: its socket is destroyed, the server gets a reset."""
    pair = link.pair
    run(*pair.argv(pair.a, "ss", "-K", "dst", pair.addr[pair.b], "dport", "=", str(CONTROL_PORT)))


def middlebox_reset(link: ResumeLink) -> None:
    """Every packet of an established carrier answered with a TCP reset, both ways, for 0.5 s
    (a middlebox that dropped the connection from its table); new connections pass."""
    pair = link.pair
    for ns, match in ((pair.a, "sport"), (pair.b, "dport")):
        run(*pair.argv(
            ns, "nft", "add", "rule", "inet", "chaos", "input", "iifname", pair.dev[ns],
            "tcp", match, str(CONTROL_PORT), "tcp flags & syn == 0",
            "reject", "with", "tcp", "reset",
        ))  # fmt: skip
    time.sleep(0.5)
    pair.heal()


def blackhole(seconds: float) -> Callable[[ResumeLink], None]:
    def cut(link: ResumeLink) -> None:
        link.pair.blackhole()
        time.sleep(seconds)
        link.pair.heal()

    return cut


FAULTS = {
    "ss -K": kill_socket,
    "middlebox reset": middlebox_reset,
    "blackhole 5 s": blackhole(5.0),
}


def visitors_through(link: ResumeLink, size: int, seed: int) -> list[EchoExact]:
    bulk = EchoExact(link.public, size, seed=seed, connect=link.connect, timeout_s=60)
    slow = EchoExact(
        link.public, INTERACTIVE[0], seed=seed + 1, rate_bps=INTERACTIVE[1],
        connect=link.connect, timeout_s=60,
    )  # fmt: skip
    for visitor in (bulk, slow):
        visitor.start()
    return [bulk, slow]


def wait_received(visitor: Visitor, size: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while visitor.received < size and visitor.outcome is None:
        assert time.monotonic() < deadline, f"only {visitor.received} bytes in {timeout_s} s"
        time.sleep(0.01)


def survive(link: ResumeLink, fault: str, size: int, figures: Any) -> None:
    link.pair.heal()
    up, listen = link.up, link.listen
    ended, resumed = link.count(up, "session ended"), link.count(up, "session resumed")
    closed, opened = link.count(listen, "session closed"), link.count(up, "session opened")
    visitors = visitors_through(link, size, seed=len(fault))
    wait_received(visitors[0], min(size // 4, 8 * MIB))
    cut = time.monotonic()
    FAULTS[fault](link)
    up.wait_event("session resumed", timeout_s=30, count=resumed + 1)
    resume_s = time.monotonic() - cut
    assert not wait_all(visitors, 120), summarize(visitors)
    seconds = time.monotonic() - cut
    peaks = {ns: link.admin(ns)["resume"]["replay_peak_bytes"] for ns in (link.pair.a, link.pair.b)}
    figures.record(
        f"netns resume: {fault}, {size // MIB} MiB echo + interactive",
        seconds=round(seconds, 2),
        resumed_after_s=round(resume_s, 2),
        max_stall_s=round(max(v.max_stall_s for v in visitors), 2),
        replay_peak_kib_up=peaks[link.pair.a] // 1024,
        replay_peak_kib_listen=peaks[link.pair.b] // 1024,
    )
    assert summarize(visitors) == {"ok": 2}, summarize(visitors)
    assert link.count(up, "session ended") == ended, "up's session was replaced, not resumed"
    assert link.count(listen, "session closed") == closed, "listen ended the session"
    assert link.count(up, "session opened") == opened, "up registered again"
    for ns, peak in peaks.items():
        assert 0 < peak <= REPLAY_BOUND_BYTES, (ns, peak)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_transfers_survive(rlink: ResumeLink, fault: str, figures: Any) -> None:
    survive(rlink, fault, 32 * MIB, figures)


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(FAULTS))
def test_256_mib_survives(rlink: ResumeLink, fault: str, figures: Any) -> None:
    survive(rlink, fault, 256 * MIB, figures)


@pytest.mark.slow  # 15 s; in the default run: tests/ops/test_resume.py, the same over loopback
def test_no_resume_after_resume_timeout(rlink: ResumeLink, figures: Any) -> None:
    """Cut off for longer than `resume_timeout_s` (plus the keepalive's 4 s): both sides end
    the session; its visitors get an error, never a clean short EOF; when the link is back,
    `up` registers afresh and serves."""
    link = rlink
    link.pair.heal()
    up, listen = link.up, link.listen
    ended, closed = link.count(up, "session ended"), link.count(listen, "session closed")
    opened = link.count(up, "session opened")
    visitors = visitors_through(link, 1 << 40, seed=7)  # runs until the session ends
    wait_received(visitors[0], MIB)
    cut = time.monotonic()
    link.pair.blackhole()
    try:
        listen.wait_event("session closed", timeout_s=RESUME_TIMEOUT_S + 10, count=closed + 1)
        expired_s = time.monotonic() - cut
        assert not wait_all(visitors, 10), summarize(visitors)
    finally:
        link.pair.heal()
    reason = listen.events("session closed")[closed].get("reason", "")
    up.wait_event("session opened", timeout_s=30, count=opened + 1)  # registered afresh
    back_s = time.monotonic() - cut
    assert link.echo_works(5.0)
    figures.record(
        "netns resume: cut off past resume_timeout_s",
        listen_ended_after_s=round(expired_s, 2),
        serving_again_after_s=round(back_s, 2),
        visitors=" ".join(f"{k}={v}" for k, v in summarize(visitors).items()),
    )
    assert "resume_timeout_s" in reason, reason
    assert RESUME_TIMEOUT_S <= expired_s < RESUME_TIMEOUT_S + 4.0 + 3.0, expired_s
    assert link.count(up, "session ended") > ended
    assert all((v.outcome or "").startswith("error") for v in visitors), summarize(visitors)


def test_a_restarted_listen_makes_up_register_afresh(rlink: ResumeLink) -> None:
    """`listen` killed and started again while `up` is cut off (so `up` never saw the old
    carrier end): `up`'s resume is refused (unknown session) and it registers afresh."""
    link = rlink
    link.pair.heal()
    opened = link.count(link.up, "session opened")
    refused = link.count(link.up, "resume refused; registering afresh")
    lost = link.count(link.up, "carrier lost; resuming")
    link.pair.blackhole()
    try:
        link.up.wait_event("carrier lost; resuming", timeout_s=15, count=lost + 1)
        link.listen.kill()
        link.listen = link.start_listen()
    finally:
        link.pair.heal()
    link.up.wait_event("resume refused; registering afresh", timeout_s=20, count=refused + 1)
    link.up.wait_event("session opened", timeout_s=20, count=opened + 1)  # registered afresh
    assert link.echo_works(5.0)
    with link.connect() as sock:  # the new listen serves the service on its port
        sock.sendall(b"again")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(16) == b"again"
