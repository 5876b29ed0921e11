"""Fixtures for the attack tests.

`live` is one real tunnel shared by this folder's live tests (starting Python processes is the
expensive part): a `listen` with small, test-friendly limits, an honest `up` exposing a TCP and a
UDP echo service, and an `HonestProbe` doing round trips through the TCP service all along.
Attackers connect from 127.0.0.2 and up, so per-address limits never hit the honest client.

The floods open about 2000 sockets in this process (and as many in `listen`), past the usual
soft limit of 1024 open files: `open_files` raises it for the whole folder first.
"""

from __future__ import annotations

import resource
import secrets
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e.harness import Harness, Listen, TcpEchoServer, UdpEchoServer, Up, free_port
from stress.live import HonestProbe
from testenv import raise_open_files_limit, skip_or_fail

__all__ = ["harness"]


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    """The e2e harness, plaintext: the attackers here speak raw yamux frames (RawCarrier,
    AuthClient, FrameTap), the layer every attack row is about; TLS would only wrap them."""
    h = Harness(tmp_path, tls=False)
    try:
        yield h
    finally:
        h.close()

#: Limits of the shared server (small, so tests reach them quickly).
MAX_VISITORS = 64
UDP_MAX_FLOWS = 32
AUTH_TIMEOUT_S = 5.0


@dataclass
class LiveTunnel:
    harness: Harness
    listen: Listen
    up: Up
    tcp_echo: TcpEchoServer
    udp_echo: UdpEchoServer
    tcp_public: tuple[str, int]
    udp_public: tuple[str, int]
    probe: HonestProbe
    #: Per-service tokens the server knows (service name -> token).
    tokens: dict[str, str] = field(default_factory=dict)
    #: Extra arguments `listen` was started with (to restart it on the same port).
    listen_args: tuple[str, ...] = ()

    @property
    def control(self) -> tuple[str, int]:
        return (self.listen.host, self.listen.port)

    def check_alive(self, timeout_s: float = 20.0) -> None:
        """Both processes run and the honest session answers (waiting out a reconnect that an
        earlier test may have caused). A dead `listen` is restarted on its port for the tests
        that follow, and this check fails, with its output, in the test that found it dead."""
        if not self.listen.running():
            dead = self.listen.describe()
            self.listen = self.harness.listen(*self.listen_args, port=self.listen.port)
            raise AssertionError(f"listen died (restarted for the next tests)\n{dead}")
        assert self.up.running(), self.up.describe()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            mark = time.monotonic()
            time.sleep(0.2)
            window = self.probe.since(mark)
            if not window.errors and len(window.samples) >= 5:
                return
        raise AssertionError(f"the honest session did not answer for {timeout_s} s")


#: Open files the floods need: 2000 attacker sockets, the visitors, the harness, with room.
OPEN_FILES = 8192
#: Below this the floods cannot run at all (row 19 opens 2000 sockets from one source).
MIN_OPEN_FILES = 4096


@pytest.fixture(scope="package", autouse=True)
def open_files() -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE for these tests (and the processes they start)."""
    soft, hard = raise_open_files_limit(OPEN_FILES)
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if now != resource.RLIM_INFINITY and now < MIN_OPEN_FILES:
        skip_or_fail(f"the attack tests need {MIN_OPEN_FILES} open files; the hard limit is {hard}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTunnel]:
    harness = Harness(tmp_path_factory.mktemp("live"), tls=False)  # raw frames: see `harness`
    tcp_echo, udp_echo = TcpEchoServer(), UdpEchoServer()
    tokens = {"svc-a": secrets.token_hex(16), "svc-b": secrets.token_hex(16)}
    try:
        config = harness.write(
            "server.yaml",
            "server:\n"
            f"  auth_timeout_s: {AUTH_TIMEOUT_S}\n"
            f"  max_visitors_per_service: {MAX_VISITORS}\n"
            f"  udp_max_flows: {UDP_MAX_FLOWS}\n"
            "  services:\n"
            + "".join(f"    - name: {n}\n      token: {t}\n" for n, t in tokens.items()),
        )
        listen = harness.listen("--config", config)
        client = harness.write(
            "client.yaml", "client:\n  reconnect_min_s: 0.1\n  reconnect_max_s: 1.0\n"
        )
        tcp_remote, udp_remote = free_port(), free_port()
        up = harness.up(
            listen,
            tcp=[f"echo={tcp_echo.port}:{tcp_remote}"],
            udp=[f"uecho={udp_echo.port}:{udp_remote}"],
            config=client,
        )
        probe = HonestProbe(("127.0.0.1", tcp_remote))
        with probe:
            probe.wait_samples(20)
            yield LiveTunnel(
                harness,
                listen,
                up,
                tcp_echo,
                udp_echo,
                ("127.0.0.1", tcp_remote),
                ("127.0.0.1", udp_remote),
                probe,
                tokens,
                ("--config", str(config)),
            )
    finally:
        harness.close()
        tcp_echo.close()
        udp_echo.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failing live test's report shows what listen and up logged."""
    report = yield
    tunnel = getattr(item, "funcargs", {}).get("live")
    if report.failed and isinstance(tunnel, LiveTunnel):
        for name, text in tunnel.harness.report():
            report.sections.append((f"muxtunnel {name} ({report.when})", text))
    return report
