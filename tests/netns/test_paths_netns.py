"""Several paths to one server across real links: namespaces a (`up`, the echo service) and b
(`listen`, the visitors) joined by TWO veth pairs, `up` told of both (`client.paths`: path
"one" from its address on the first link, path "two" through the second link's interface
(SO_BINDTODEVICE), to the server's address there). The session runs on "one" (first in the
list) while "two" holds a standby carrier, probed.

While a bulk echo (seeded random bytes, SHA-256 compared) and an interactive one (a slow
steady echo) cross the tunnel, the active path is blackholed (nftables drop on its devices, both
ways: the carrier stalls without a FIN or a RST) or its carrier is killed (`ss -K` in a). Both
visitors must end "ok" (every byte, in order, no error), the longest stall must stay within
3 s, `up` must have switched paths (logged once, with the reason), never registered anew.
When the first path is back, the session moves back to it only after `switch_after_s` of it
being as good (and not before), and `status` shows both paths with the active one marked.

Visitors connect in b to 127.0.0.1 (the public port listens on every address of b), so only
the carriers cross the veths. Sizes: 32 MiB by default, 256 MiB `slow`.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from e2e.harness import Harness, Listen, TcpEchoServer, Up
from stress.visitors import EchoExact, summarize, wait_all
from testenv import skip_or_fail

from .netns import NetnsPair, NetnsUnavailable, run

pytestmark = [pytest.mark.netns, pytest.mark.stress]

MIB = 1 << 20
CONTROL_PORT = 7835
PUBLIC_PORT = 20011
ADMIN_PORT = 7837
#: The hysteresis under test: short, so that the test of moving back stays short.
SWITCH_AFTER_S = 3.0
#: The issue's bound on the longest visitor stall at a switch.
MAX_STALL_S = 3.0
#: The slow echo that spans the cut: 256 KiB at 1 Mbit/s, about 2 s each way.
INTERACTIVE = (256 * 1024, 1_000_000)
#: Keepalive as in the other netns tests (the paths' own stall detection, 1.5 s, is faster).
MUX = "  mux:\n    keepalive_interval_s: 1.0\n    keepalive_timeout_s: 3.0\n"


@dataclass
class TwoPaths:
    pair: NetnsPair
    harness: Harness
    listen: Listen
    up: Up
    echo: TcpEchoServer
    #: name -> (device in a, device in b, address in a, address in b)
    links: dict[str, tuple[str, str, str, str]]

    def connect(self, timeout_s: float = 30.0) -> socket.socket:
        with self.pair.enter(self.pair.b):
            return socket.create_connection(("127.0.0.1", PUBLIC_PORT), timeout=timeout_s)

    def admin(self) -> dict[str, Any]:
        with self.pair.enter(self.pair.a):
            url = f"http://127.0.0.1:{ADMIN_PORT}/api/v1/status"
            with urllib.request.urlopen(url, timeout=5) as answer:
                document: dict[str, Any] = json.loads(answer.read())
        return document

    def paths(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.admin()["servers"][0]["paths"]}

    def active(self) -> str:
        return next(name for name, row in self.paths().items() if row["state"] == "active")

    def count(self, event: str) -> int:
        return len(self.up.events(event))

    def switches(self) -> list[dict[str, Any]]:
        return self.up.events("path switch")

    def blackhole(self, name: str) -> None:
        dev_a, dev_b, _, _ = self.links[name]
        self.pair.blackhole_dev(dev_a, dev_b)

    def kill_carrier(self, name: str) -> None:
        """`ss -K` on `up`'s side of the carriers on path `name` (the active one: the
        standby of the other path goes to another address of the server)."""
        server = self.links[name][3]
        run(*self.pair.argv(self.pair.a, "ss", "-K", "dst", server, "dport", "=",
                            str(CONTROL_PORT)))  # fmt: skip

    def echo_works(self, timeout_s: float = 2.0) -> bool:
        try:
            with self.connect(timeout_s) as sock:
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(10) == b"ping"
        except OSError:
            return False


def _start(pair: NetnsPair, harness: Harness, echo: TcpEchoServer, links: dict[str, Any]) -> Up:
    _, _, one_a, one_b = links["one"]
    two_dev, _, _, two_b = links["two"]
    config = harness.write(
        "client.yaml",
        f"client:\n  admin: 127.0.0.1:{ADMIN_PORT}\n  reconnect_min_s: 0.2\n"
        f"  reconnect_max_s: 1.0\n  switch_after_s: {SWITCH_AFTER_S}\n  paths:\n"
        f"    - {{name: one, bind: {one_a}}}\n"
        f"    - {{name: two, interface: {two_dev}, server: '{two_b}:{CONTROL_PORT}'}}\n" + MUX,
    )
    up = Up(
        "up",
        pair.argv(
            pair.a, sys.executable, "-m", "muxtunnel", "up", "--server",
            f"{one_b}:{CONTROL_PORT}", "--token", harness.token,
            "--tcp", f"echo={echo.port}:{PUBLIC_PORT}", "--no-console",
            "--log-format", "json", "--config", str(config),
        ),
        harness.log_dir,
        harness.env(),
    )  # fmt: skip
    harness.procs.append(up)
    up.wait_announced(1)
    return up


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoPaths]:
    try:
        pair = NetnsPair()
    except NetnsUnavailable as exc:
        skip_or_fail(str(exc))
    harness = Harness(tmp_path_factory.mktemp("netns-paths"))
    echo: TcpEchoServer | None = None
    try:
        links = {"one": (pair.dev[pair.a], pair.dev[pair.b], pair.addr[pair.a], pair.addr[pair.b])}
        links["two"] = pair.add_link()
        with pair.enter(pair.a):
            echo = TcpEchoServer()
        server = harness.write("server.yaml", "server:\n" + MUX)
        listen = Listen(
            "listen",
            pair.argv(
                pair.b, sys.executable, "-m", "muxtunnel", "listen", "--bind",
                f"0.0.0.0:{CONTROL_PORT}", "--token", harness.token, "--allow-ports",
                str(PUBLIC_PORT), "--log-format", "json", "--config", str(server),
            ),
            harness.log_dir,
            harness.env(),
        )  # fmt: skip
        harness.procs.append(listen)
        listen.wait_event("listening")
        up = _start(pair, harness, echo, links)
        setup = TwoPaths(pair, harness, listen, up, echo, links)
        deadline = time.monotonic() + 10
        while not setup.echo_works() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert setup.echo_works(), "the tunnel never served"
        yield setup
    finally:
        harness.close()
        if echo is not None:
            echo.close()
        pair.close()


def _at(event: dict[str, Any]) -> float:
    """An event's wall-clock time (structlog's ISO timestamp), in seconds."""
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def wait_for(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.05)


def wait_paths_ready(setup: TwoPaths, timeout_s: float = 20.0) -> None:
    """Both paths up (one active, one standby with a score), the way a test starts."""

    def ready() -> bool:
        rows = setup.paths()
        states = sorted(row["state"] for row in rows.values())
        return states == ["active", "standby"] and all(
            r["score"] is not None for r in rows.values()
        )

    wait_for(ready, timeout_s, "active path and measured standby")


def survive(setup: TwoPaths, fault: str, size: int, figures: Any) -> None:
    """A bulk and an interactive echo across a fault of the active path: both ok, stall
    bounded, one path switch, the session never replaced."""
    setup.pair.heal()
    wait_paths_ready(setup)
    active = setup.active()
    other = "two" if active == "one" else "one"
    switched, ended = len(setup.switches()), setup.count("session ended")
    opened = setup.count("session opened")
    bulk = EchoExact(("127.0.0.1", PUBLIC_PORT), size, seed=size % 97, connect=setup.connect,
                     timeout_s=120)  # fmt: skip
    slow = EchoExact(("127.0.0.1", PUBLIC_PORT), INTERACTIVE[0], seed=5, rate_bps=INTERACTIVE[1],
                     connect=setup.connect, timeout_s=120)  # fmt: skip
    for visitor in (bulk, slow):
        visitor.start()
    wait_for(lambda: bulk.received >= min(size // 4, 8 * MIB) or bulk.outcome is not None, 60,
             "bulk progress")  # fmt: skip
    cut = time.monotonic()
    if fault == "blackhole":
        setup.blackhole(active)
    else:
        setup.kill_carrier(active)
    try:
        wait_for(lambda: len(setup.switches()) > switched, 15, "path switch")
        switch_s = time.monotonic() - cut
        assert not wait_all([bulk, slow], 180), summarize([bulk, slow])
    finally:
        if fault == "blackhole":
            setup.pair.heal()
    event = setup.switches()[switched]
    stall_s = max(bulk.max_stall_s, slow.max_stall_s)
    figures.record(
        f"netns paths: {fault} of the active path, {size // MIB} MiB echo + interactive",
        switched_after_s=round(switch_s, 2),
        max_stall_s=round(stall_s, 2),
        reason=event["reason"],
        seconds=round(time.monotonic() - cut, 2),
    )
    assert summarize([bulk, slow]) == {"ok": 2}, summarize([bulk, slow])
    assert (event["from_path"], event["to_path"]) == (active, other), event
    assert event["reason"] == ("stalled" if fault == "blackhole" else "down"), event
    assert stall_s <= MAX_STALL_S, stall_s
    assert setup.count("session ended") == ended, "up's session ended: not moved"
    assert setup.count("session opened") == opened, "up registered anew"


def test_status_shows_both_paths_with_the_active_one_marked(paths: TwoPaths) -> None:
    wait_paths_ready(paths)
    rows = paths.paths()
    assert set(rows) == {"one", "two"}
    assert rows["one"]["state"] == "active" and rows["two"]["state"] == "standby"
    assert rows["two"]["route"].endswith(f"{paths.links['two'][3]}:{CONTROL_PORT}")
    assert rows["two"]["rtt_ms"] is not None and rows["two"]["loss"] == 0.0
    admin = f"127.0.0.1:{ADMIN_PORT}"
    status = ("-m", "muxtunnel", "status", "--admin", admin)
    shown = run(*paths.pair.argv(paths.pair.a, sys.executable, *status))
    assert "paths to" in shown and "active" in shown and "standby" in shown, shown


def test_a_blackholed_active_path_is_left_within_the_stall_bound(
    paths: TwoPaths, figures: Any
) -> None:
    survive(paths, "blackhole", 32 * MIB, figures)


def test_the_session_moves_back_only_past_the_hysteresis(paths: TwoPaths, figures: Any) -> None:
    """After the blackhole (the session moved to path "two"), path "one" comes back (its
    standby attached again: "path up"); the session moves back to it, the first in the list,
    `switch_after_s` later: not before, and not much after."""
    paths.pair.heal()
    left = [e for e in paths.switches() if e["to_path"] == "two"]
    assert left, "runs after the blackhole test, which moves the session to path two"
    wait_for(lambda: paths.switches()[-1]["to_path"] == "one", SWITCH_AFTER_S + 20, "switch back")
    back = next(e for e in paths.switches() if _at(e) > _at(left[-1]) and e["to_path"] == "one")
    ups = [e for e in paths.up.events("path up") if e["path"] == "one" and _at(e) <= _at(back)]
    waited_s = _at(back) - _at(ups[-1])
    figures.record("netns paths: back to the first path", after_path_up_s=round(waited_s, 2))
    assert (back["from_path"], back["reason"]) == ("two", "preferred"), back
    assert SWITCH_AFTER_S <= waited_s <= SWITCH_AFTER_S + 2.0, waited_s
    assert paths.active() == "one"
    assert paths.echo_works(5.0)


def test_a_killed_active_carrier_is_left_at_once(paths: TwoPaths, figures: Any) -> None:
    survive(paths, "ss -K", 32 * MIB, figures)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["blackhole", "ss -K"])
def test_256_mib_survives_a_path_fault(paths: TwoPaths, fault: str, figures: Any) -> None:
    survive(paths, fault, 256 * MIB, figures)
