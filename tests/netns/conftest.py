"""A tunnel across two network namespaces (`link`), for the impaired-link tests.

Namespace b runs `listen` on its veth address; namespace a runs `up` and the local echo
service; visitors connect from b to b's own address, so only the carrier crosses the veth and
feels the impairment. Skipped, with the reason, where namespaces cannot be built (no root, no
`ip`/`nft`/`tc`, or a container that forbids them), except under CI, where that fails; an error
in our own setup after the namespaces exist (veth, addresses, nft rules) always fails.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e.harness import Harness, Listen, TcpEchoServer, Up
from testenv import skip_or_fail

from .netns import NetnsPair, NetnsUnavailable

CONTROL_PORT = 7835
PUBLIC_PORT = 20001
#: Keepalive on both ends for these tests: a blackholed carrier dies within 1 + 3 s, and a
#: lossy one (retransmissions within a few RTOs) must not be mistaken for dead.
KEEPALIVE = "  mux:\n    keepalive_interval_s: 1.0\n    keepalive_timeout_s: 3.0\n"


@dataclass
class Link:
    pair: NetnsPair
    harness: Harness
    listen: Listen
    up: Up
    echo: TcpEchoServer

    @property
    def public(self) -> tuple[str, int]:
        return (self.pair.addr[self.pair.b], PUBLIC_PORT)

    def connect(self, timeout_s: float = 30.0) -> socket.socket:
        """A visitor socket in namespace b, connected to the public port."""
        with self.pair.enter(self.pair.b):
            sock = socket.create_connection(self.public, timeout=timeout_s)
        return sock

    def connector(self) -> Callable[[], socket.socket]:
        return self.connect

    def sessions_ended(self) -> int:
        return len(self.up.events("session ended"))

    def echo_works(self, timeout_s: float = 2.0) -> bool:
        try:
            with self.connect(timeout_s) as sock:
                sock.sendall(b"ping")
                sock.shutdown(socket.SHUT_WR)
                return sock.recv(10) == b"ping"
        except OSError:
            return False


def _start(pair: NetnsPair, harness: Harness, echo: TcpEchoServer) -> tuple[Listen, Up]:
    # Plain sessions: these tests judge how a lost carrier is noticed and the session replaced
    # (test_resume_netns.py judges resumable ones).
    server = harness.write("server.yaml", "server:\n  resume: false\n" + KEEPALIVE)
    client = harness.write(
        "client.yaml",
        "client:\n  resume: false\n  reconnect_min_s: 0.2\n  reconnect_max_s: 1.0\n" + KEEPALIVE,
    )
    python = [sys.executable, "-m", "muxtunnel"]
    bind = f"{pair.addr[pair.b]}:{CONTROL_PORT}"
    listen = Listen(
        "listen",
        pair.argv(
            pair.b, *python, "listen", "--bind", bind, "--token", harness.token,
            "--allow-ports", str(PUBLIC_PORT), "--log-format", "json", "--config", str(server),
        ),
        harness.log_dir,
        harness.env(),
    )
    harness.procs.append(listen)
    listen.host, listen.port, listen.token = pair.addr[pair.b], CONTROL_PORT, harness.token
    listen.wait_event("listening")
    up = Up(
        "up",
        pair.argv(
            pair.a, *python, "up", "--server", bind, "--token", harness.token,
            "--tcp", f"echo={echo.port}:{PUBLIC_PORT}", "--no-console",
            "--log-format", "json", "--config", str(client),
        ),
        harness.log_dir,
        harness.env(),
    )
    harness.procs.append(up)
    up.wait_announced(1)
    return listen, up


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    try:
        pair = NetnsPair()
    except NetnsUnavailable as exc:
        skip_or_fail(str(exc))
    harness = Harness(tmp_path_factory.mktemp("netns"))
    echo: TcpEchoServer | None = None
    try:
        with pair.enter(pair.a):
            echo = TcpEchoServer()  # its listening socket lives in namespace a
        listen, up = _start(pair, harness, echo)
        link = Link(pair, harness, listen, up, echo)
        deadline = time.monotonic() + 10
        while not link.echo_works() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield link
    finally:
        harness.close()
        if echo is not None:
            echo.close()
        pair.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """The end-to-end harness (for the tests here that need no namespace)."""
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def tcp_echo() -> Iterator[TcpEchoServer]:
    server = TcpEchoServer()
    try:
        yield server
    finally:
        server.close()
