"""Socket-level attacks (rows 19-22) against the real `listen` of the shared live tunnel.

Each test asserts its bound (file descriptors from /proc/PID/fd, RSS, time) and that the honest
session through the same server keeps working meanwhile (`HonestProbe`), or, where the attack
is on the honest client's own path, that it recovers within the stated time.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import anyio
import pytest
from stress.live import ATTACKER_IP, AuthClient, Refused, connect_from, log_lines
from stress_report import ProcMeter, up_figures
from testenv import within_load

from bench.procstat import fd_count
from mux.testing import FrameBuilder
from muxtunnel import control

from .conftest import AUTH_TIMEOUT_S, MAX_VISITORS, UDP_MAX_FLOWS, LiveTunnel

pytestmark = pytest.mark.stress

F = FrameBuilder()
#: Generous: attack windows are short (p99 is about the worst sample) and the machine shared;
#: the figures table shows the real numbers.
HONEST_P99_MS = 1000.0
#: Pre-auth limits of the server (ServerConfig defaults).
PREAUTH_PER_SOURCE = 16
PREAUTH_TOTAL = 256
LINGER_ZERO = struct.pack("ii", 1, 0)


def honest_auth_seconds(live: LiveTunnel, service: str = "svc-a") -> float:
    """Connect, authenticate and register `service` as an honest client (127.0.0.1)."""

    async def run() -> float:
        started = anyio.current_time()
        with anyio.fail_after(10):
            async with AuthClient(live.control, source="127.0.0.1") as client:
                await client.register(service, live.tokens[service])
                return anyio.current_time() - started

    return anyio.run(run)


def new_visitor_seconds(live: LiveTunnel) -> float:
    """Connect a new visitor to the TCP service and get one echo: seconds it took (OSError if
    the tunnel did not serve it)."""
    started = time.monotonic()
    with connect_from("127.0.0.1", live.tcp_public, timeout_s=1) as sock:
        sock.sendall(b"ping")
        if sock.recv(4) != b"ping":
            raise ConnectionError("no echo")
    return time.monotonic() - started


def still_open(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets the peer has not closed (reads and discards what they received)."""
    open_ = []
    for sock in socks:
        sock.setblocking(False)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
        except BlockingIOError:
            open_.append(sock)
        except OSError:
            pass
    return open_


# ---------------------------------------------------------------------------------------- row 19


def test_row19_preauth_slowloris(live: LiveTunnel, figures) -> None:
    """2000 idle connections on the control port from one address, plus one that dribbles its
    Hello a byte at a time from another: at most 16 of the 2000 are admitted before
    authentication (the rest are closed at once), the admitted ones and the dribbler are closed
    at the 5 s deadline, an honest client still authenticates in under a second, and the fd
    count returns to its baseline."""
    live.check_alive()
    pid = live.listen.pid
    baseline_fds = fd_count(pid)
    socks: list[socket.socket] = []
    lines_before = log_lines(live.listen)
    hello = control.encode_message(control.Hello(control.PROTOCOL_VERSION, b"n" * 32, "slow"))
    closed_at: dict[socket.socket, float] = {}
    quiet_auth_s = honest_auth_seconds(live)
    try:
        with (
            ProcMeter(pid) as meter,
            ProcMeter(live.up.pid) as up_meter,
            live.probe.window() as honest,
        ):
            started = time.monotonic()
            dribbler = connect_from("127.0.0.5", live.control)
            dribbler.sendall(F.syn(1))
            for _ in range(2000):
                with contextlib.suppress(OSError):
                    socks.append(connect_from(ATTACKER_IP, live.control, timeout_s=2))
            auth_s = honest_auth_seconds(live)
            time.sleep(0.5)
            admitted = still_open(socks)
            refused_at_once = len(socks) - len(admitted)
            watched = [*admitted, dribbler]
            sent = 0
            while len(closed_at) < len(watched) and time.monotonic() - started < AUTH_TIMEOUT_S + 4:
                if sent < len(hello) and dribbler not in closed_at:
                    with contextlib.suppress(OSError):
                        dribbler.send(F.data(1, hello[sent : sent + 1]))
                    sent += 1
                open_now = still_open([s for s in watched if s not in closed_at])
                for sock in watched:
                    if sock not in closed_at and sock not in open_now:
                        closed_at[sock] = time.monotonic() - started
                time.sleep(0.2)
    finally:
        for sock in [*socks, dribbler]:
            sock.close()
    time.sleep(0.5)
    after_fds = fd_count(pid)
    times = sorted(closed_at.values())
    figures.record(
        "attack row 19: 2000 idle pre-auth connections + 1 dribbler",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        connections=len(socks),
        admitted=len(admitted),
        honest_auth_s=round(auth_s, 3),
        deadline_closes_s=f"{times[0]:.1f}..{times[-1]:.1f}" if times else "-",
        fds_after=after_fds - baseline_fds,
        log_lines=log_lines(live.listen) - lines_before,
    )
    assert len(socks) >= 1900, "the attacker could not even connect"
    assert len(admitted) <= PREAUTH_PER_SOURCE
    assert refused_at_once >= len(socks) - PREAUTH_PER_SOURCE
    # Under a second on a quiet machine; never near the 5 s deadline that would mean it queued
    # behind the idle connections.
    auth_bound_s = min(within_load(1.0, quiet_auth_s), AUTH_TIMEOUT_S - 1.0)
    assert auth_s < auth_bound_s, f"the honest client needed {auth_s:.2f} s to authenticate"
    assert len(times) == len(watched), f"{len(watched) - len(times)} outlived the deadline"
    # The closes are polled every 0.2 s through 17 sockets; 3 s of room for a loaded machine.
    assert AUTH_TIMEOUT_S - 0.5 <= times[0] and times[-1] <= AUTH_TIMEOUT_S + 3.0, times
    assert meter.peak_fds <= baseline_fds + PREAUTH_PER_SOURCE + 32, meter.peak_fds
    assert after_fds <= baseline_fds + 2
    assert log_lines(live.listen) - lines_before <= 60
    honest.assert_healthy(p99_ms=HONEST_P99_MS)


def test_row19_preauth_flood_from_many_addresses(live: LiveTunnel, figures) -> None:
    """640 idle connections from 40 addresses (16 each, every one within its per-address cap)
    overflow the global cap of 256: the oldest are evicted, fds stay within the cap, and an
    honest client still authenticates within 3 s (it waits in the kernel's accept queue behind
    the flood; once accepted it is never the oldest, so never evicted)."""
    live.check_alive()
    pid = live.listen.pid
    baseline_fds = fd_count(pid)
    socks: list[socket.socket] = []
    quiet_auth_s = honest_auth_seconds(live)
    try:
        with (
            ProcMeter(pid) as meter,
            ProcMeter(live.up.pid) as up_meter,
            live.probe.window() as honest,
        ):
            for source in range(10, 50):
                for _ in range(PREAUTH_PER_SOURCE):
                    with contextlib.suppress(OSError):
                        socks.append(connect_from(f"127.0.0.{source}", live.control, timeout_s=2))
            auth_s = honest_auth_seconds(live)
            time.sleep(0.5)
            admitted = len(still_open(socks))
    finally:
        for sock in socks:
            sock.close()
    figures.record(
        "attack row 19: 640 pre-auth connections from 40 addresses",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        admitted=admitted,
        honest_auth_s=round(auth_s, 3),
    )
    auth_bound_s = min(within_load(3.0, quiet_auth_s), AUTH_TIMEOUT_S - 1.0)
    assert auth_s < auth_bound_s, f"the honest client needed {auth_s:.2f} s to authenticate"
    assert admitted <= PREAUTH_TOTAL
    assert meter.peak_fds <= baseline_fds + PREAUTH_TOTAL + 48, meter.peak_fds
    honest.assert_healthy(p99_ms=HONEST_P99_MS)


# ---------------------------------------------------------------------------------------- row 20


def test_row20_public_port_connection_flood(live: LiveTunnel, figures) -> None:
    """2000 concurrent connections to the public port of a service capped at MAX_VISITORS:
    the server's fds stay within the cap (plus slack), the honest visitor already connected
    keeps working, and once the flood stops a new visitor is served within 1 s."""
    live.check_alive()
    pid = live.listen.pid
    baseline_fds = fd_count(pid)
    socks: list[socket.socket] = []
    quiet_visit_s = new_visitor_seconds(live)
    try:
        with (
            ProcMeter(pid) as meter,
            ProcMeter(live.up.pid) as up_meter,
            live.probe.window() as honest,
        ):
            for _ in range(2000):
                with contextlib.suppress(OSError):
                    socks.append(connect_from(ATTACKER_IP, live.tcp_public, timeout_s=2))
            # Those past the cap are closed by the server; on a loaded machine that can take
            # longer than the 1 s it takes here when quiet (219 of 2000 still open after 1 s
            # once, at a load average of 5): wait for it, bounded.
            time.sleep(1.0)
            held = len(still_open(socks))
            deadline = time.monotonic() + 10.0
            while held > MAX_VISITORS and time.monotonic() < deadline:
                time.sleep(0.2)
                held = len(still_open(socks))
    finally:
        for sock in socks:
            sock.close()
    stopped = time.monotonic()
    recovered = None
    while time.monotonic() - stopped < 5:
        try:
            new_visitor_seconds(live)
            recovered = time.monotonic() - stopped
            break
        except OSError:
            time.sleep(0.05)
    figures.record(
        "attack row 20: 2000 visitors on one public port",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        visitors_held=held,
        recovered_s=None if recovered is None else round(recovered, 3),
        cap=MAX_VISITORS,
    )
    # Every visitor beyond the cap costs the server an fd for a moment only.
    assert meter.peak_fds <= baseline_fds + MAX_VISITORS + 64, meter.peak_fds
    assert held <= MAX_VISITORS
    assert recovered is not None and recovered < within_load(1.0, quiet_visit_s), recovered
    assert meter.rss_growth_mib < 64
    honest.assert_healthy(p99_ms=HONEST_P99_MS)


# ---------------------------------------------------------------------------------------- row 21


@pytest.mark.anyio
async def test_row21_client_beyond_its_rights(live: LiveTunnel, figures) -> None:
    """A client holding svc-a's token: svc-b's name is refused as a failed authentication;
    svc-b's port (held by another client) and a port outside the allow-list are refused; a
    stream the client opens itself is reset. The honest session carries on throughout."""
    live.check_alive()
    lines_before = log_lines(live.listen)
    with (
        ProcMeter(live.listen.pid) as meter,
        ProcMeter(live.up.pid) as up_meter,
        live.probe.window() as honest,
        anyio.fail_after(20),
    ):
        async with AuthClient(live.control, source="127.0.0.3") as owner:
            port_b = await owner.register("svc-b", live.tokens["svc-b"])
            async with AuthClient(live.control, source="127.0.0.4") as client:
                token = live.tokens["svc-a"]
                with pytest.raises(Refused) as port_taken:
                    await client.register("svc-a", token, port=port_b)
                with pytest.raises(Refused) as outside:
                    await client.register("svc-a", token, port=80)
                await client.register("svc-a", token)
                # Streams of its own: every one is reset, the session stays up.
                assert client.session is not None
                resets = 0
                for _ in range(200):
                    stream = await client.session.open_stream(b"GET / HTTP/1.0\r\n\r\n")
                    try:
                        with anyio.fail_after(5):
                            await stream.receive()
                    except anyio.BrokenResourceError:
                        resets += stream.is_reset
                assert not client.session.closed
                # Last: another service's name with our token (this ends the session).
                with pytest.raises(Refused) as stolen:
                    await client.register("svc-b", token)
    figures.record(
        "attack row 21: client beyond its rights",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        client_streams_reset=resets,
        log_lines=log_lines(live.listen) - lines_before,
    )
    assert port_taken.value.code == control.PORT_IN_USE
    assert outside.value.code == control.PORT_NOT_ALLOWED
    assert stolen.value.code == control.AUTH_FAILED
    assert resets == 200
    assert log_lines(live.listen) - lines_before <= 20
    honest.assert_healthy(p99_ms=HONEST_P99_MS)


# ---------------------------------------------------------------------------------------- row 22


def udp_spray(live: LiveTunnel, sources: int, legit_every: int = 10) -> tuple[int, int]:
    """`sources` datagrams from distinct source ports (127.0.0.2), and a legitimate flow
    (127.0.0.1) asking for an echo every `legit_every` of them: (answered, asked)."""
    legit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    legit.bind(("127.0.0.1", 0))
    legit.settimeout(2)
    answered = asked = 0
    try:
        for i in range(sources):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoof:
                spoof.bind((ATTACKER_IP, 0))
                spoof.sendto(b"x%d" % i, live.udp_public)
            if i % legit_every == 0:
                asked += 1
                legit.sendto(b"legit %d" % i, live.udp_public)
                with contextlib.suppress(TimeoutError):
                    while legit.recv(100) != b"legit %d" % i:
                        pass
                    answered += 1
    finally:
        legit.close()
    return answered, asked


def test_row22_udp_flow_table_is_capped(live: LiveTunnel, figures) -> None:
    """900 distinct source ports on the public UDP port of a service capped at UDP_MAX_FLOWS
    flows: the client (one UDP socket per flow) never holds more than the cap, the oldest
    flows are evicted, and a legitimate flow that keeps talking keeps getting its answers."""
    live.check_alive()
    up_pid = live.up.pid
    baseline_up_fds = fd_count(up_pid)
    with ProcMeter(up_pid) as up_meter, ProcMeter(live.listen.pid) as server_meter:
        with live.probe.window() as honest:
            answered, asked = udp_spray(live, 900)
    time.sleep(0.3)
    figures.record(
        "attack row 22: 900 UDP source ports",
        rss_mib=server_meter.peak_rss_mib,
        rss_growth_mib=server_meter.rss_growth_mib,
        fds=server_meter.peak_fds,
        **up_figures(up_meter),
        cpu_s=server_meter.cpu_s + up_meter.cpu_s,
        **honest.figures(),
        up_fds_over_baseline=up_meter.peak_fds - baseline_up_fds,
        legit_answered=f"{answered}/{asked}",
        cap=UDP_MAX_FLOWS,
    )
    # The cap, plus flows whose eviction (an RST on its way to `up`) is still in flight.
    assert up_meter.peak_fds <= baseline_up_fds + UDP_MAX_FLOWS + 24, up_meter.peak_fds
    assert fd_count(up_pid) <= baseline_up_fds + UDP_MAX_FLOWS + 2
    assert answered >= 0.95 * asked, f"the legitimate flow got {answered} of {asked} answers"
    assert server_meter.rss_growth_mib < 32
    honest.assert_healthy(p99_ms=HONEST_P99_MS)


# ---------------------------------------------------------------------------------------- storms
# Visitors and UDP flows resetting in bulk must not end the client's session: resets of streams
# already in use are not rapid reset. They run last in this file all the same.


@pytest.mark.slow
def test_row22_flow_eviction_storm_keeps_the_tunnel_up(live: LiveTunnel, figures) -> None:
    """3000 source ports: 2968 evictions, each resetting a flow's stream. The tunnel must stay
    up (no session ended in `up`'s log) and the honest TCP session must keep answering."""
    live.check_alive()
    ended_before = len(live.up.events("session ended"))
    with (
        ProcMeter(live.listen.pid) as meter,
        ProcMeter(live.up.pid) as up_meter,
        live.probe.window() as honest,
    ):
        answered, asked = udp_spray(live, 3000)
        time.sleep(0.5)
    ended = live.up.events("session ended")[ended_before:]
    figures.record(
        "attack row 22: 3000 UDP source ports (eviction storm)",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        sessions_ended=len(ended),
        legit_answered=f"{answered}/{asked}",
    )
    assert ended == [], [e.get("reason") for e in ended]
    honest.assert_healthy(p99_ms=HONEST_P99_MS)


def test_row4_visitor_reset_storm_keeps_the_tunnel_up(live: LiveTunnel, figures) -> None:
    """1500 visitors, 100 at a time, each exchanging a byte through the tunnel and then
    closing with RST (a browser giving up, a scanner, an attacker): the tunnel must stay up."""
    live.check_alive()
    ended_before = len(live.up.events("session ended"))
    with (
        ProcMeter(live.listen.pid) as meter,
        ProcMeter(live.up.pid) as up_meter,
        live.probe.window() as honest,
    ):
        for _ in range(15):
            socks = []
            for _ in range(100):
                with contextlib.suppress(OSError):
                    sock = connect_from(ATTACKER_IP, live.tcp_public, timeout_s=2)
                    sock.sendall(b"x")
                    socks.append(sock)
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.recv(1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                sock.close()
        time.sleep(0.5)
    ended = live.up.events("session ended")[ended_before:]
    figures.record(
        "attack row 4: 1500 visitors reset after one byte",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        sessions_ended=len(ended),
    )
    assert ended == [], [e.get("reason") for e in ended]
    honest.assert_healthy(p99_ms=HONEST_P99_MS)
