"""A tunnel of its own for each isolation test: the attacked service and its honest neighbour.

The isolation findings are about shared fate: one visitor, one client or one bad day must not
hurt what shares the server or the session. Each test here starts its own `listen` (with the
limits the finding is about) and one `up` exposing

- `a`: the service under attack; its local side is an `EchoSink`, an echo service in one
  thread (a flood of 1000 idle visitors costs no thread each) that closes on EOF;
- `b`: the honest neighbour on the same session, a TCP echo service, probed all along by an
  `HonestProbe` (fresh connections by default: a neighbour whose new visitors are refused is
  starved even while an old connection still answers);
- optionally `u`: a UDP echo service on the same session.

Attackers connect from 127.0.0.2 and up (`spread` hands out several source addresses), the
honest neighbour from 127.0.0.1. Floods of idle connections run in a `Holder`, a process of
their own, so that they do not compete with the probe's thread for this process's GIL.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.harness import Harness, Listen, TcpEchoServer, UdpEchoServer, Up, free_port
from stress.live import HonestProbe, ProbeWindow, connect_from
from stress_report import ProcMeter

Address = tuple[str, int]


_ECHO_SINK = """
import contextlib, selectors, socket, sys
server = socket.create_server((sys.argv[1], 0), backlog=4096)
server.setblocking(False)
print(server.getsockname()[1], flush=True)
selector = selectors.DefaultSelector()
selector.register(server, selectors.EVENT_READ)
selector.register(sys.stdin, selectors.EVENT_READ)
while True:
    for key, _ in selector.select():
        sock = key.fileobj
        if sock is sys.stdin:
            sys.exit(0)  # the test closed our stdin: done
        if sock is server:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
            continue
        try:
            data = sock.recv(65536)
            if data:
                sock.send(data)  # small echoes; a full buffer drops the rest
                continue
        except OSError:
            pass
        selector.unregister(sock)
        sock.close()
"""


class EchoSink:
    """A TCP echo service in a process of its own, one thread (selectors): holds any number of
    idle connections, echoes what arrives, closes a connection on its EOF. Out of the test's
    process, so that a flood of visitors does not compete with the probe's thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ECHO_SINK, host], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        self.host, self.port = host, int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Holder:
    """An attacker process holding idle connections (`tests/attacks/holder.py`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("holder.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _ask(self, command: str) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().split()
        assert answer[:1] == ["ok"], answer
        return int(answer[1])

    def open(
        self, address: Address, count: int, per_source: int, first: int = 10, send: bytes = b""
    ) -> int:
        """Open `count` connections from `count / per_source` addresses; how many connected."""
        extra = f" {send.hex()}" if send else ""
        return self._ask(f"open {address[0]} {address[1]} {count} {per_source} {first}{extra}")

    def udp(
        self,
        address: Address,
        count: int,
        source: str = "127.0.0.2",
        *,
        batch: int = 100,
        pause_s: float = 0.05,
    ) -> int:
        """One 1-byte datagram from each of `count` source ports of `source`, pausing after
        each `batch` (so that flows open rather than meet a full SYN backlog); how many sent."""
        pause_ms = round(pause_s * 1000)
        return self._ask(f"udp {address[0]} {address[1]} {count} {source} {batch} {pause_ms}")

    def close_all(self, *, reset: bool = False) -> int:
        return self._ask("rst" if reset else "close")

    def stop(self) -> None:
        with contextlib.suppress(OSError, AssertionError, IndexError):
            self.close_all()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def holder() -> Iterator[Holder]:
    attacker = Holder()
    try:
        yield attacker
    finally:
        attacker.stop()


@dataclass
class Neighbours:
    """One `listen`, one `up` with services `a` (attacked), `b` (honest), maybe `u` (UDP)."""

    harness: Harness
    listen: Listen
    up: Up
    target: EchoSink
    echo: TcpEchoServer
    udp_echo: UdpEchoServer | None
    publics: dict[str, Address] = field(default_factory=dict)

    def public(self, name: str) -> Address:
        return self.publics[name]

    def probe(self, name: str = "b", *, fresh: bool = True, **options: Any) -> HonestProbe:
        """An honest probe on service `name` (start it with `with`)."""
        return HonestProbe(self.public(name), fresh=fresh, **options)

    def meters(self) -> tuple[ProcMeter, ProcMeter]:
        """Meters of `listen` and `up` (use both in one `with`)."""
        return ProcMeter(self.listen.pid), ProcMeter(self.up.pid)

    def close(self) -> None:
        self.target.close()
        self.echo.close()
        if self.udp_echo is not None:
            self.udp_echo.close()


def start(
    harness: Harness,
    *,
    server_yaml: str = "",
    client_yaml: str = "",
    listen_args: Sequence[object] = (),
    up_args: Sequence[object] = (),
    udp: bool = False,
    listen_nofile: int | None = None,
    up_nofile: int | None = None,
    ports: dict[str, int] | None = None,
    allow_ports: str = "20000-32767",
) -> Neighbours:
    """Start `listen` (its `server:` section given as indented YAML lines) and `up` with `a`,
    `b` (and `u` if `udp`) on `ports` (default: free ones). `*_nofile` lowers a process's
    RLIMIT_NOFILE once it runs."""
    target, echo = EchoSink(), TcpEchoServer()
    udp_echo = UdpEchoServer() if udp else None
    server_config = harness.write("server.yaml", "server:\n" + (server_yaml or "  {}\n"))
    listen = harness.listen("--config", server_config, *listen_args, allow_ports=allow_ports)
    if listen_nofile is not None:
        resource.prlimit(listen.pid, resource.RLIMIT_NOFILE, (listen_nofile, listen_nofile))
    client_config = harness.write(
        "client.yaml",
        "client:\n  reconnect_min_s: 0.1\n  reconnect_max_s: 1.0\n" + client_yaml,
    )
    ports = ports or {name: free_port() for name in ("a", "b", "u")}
    up = harness.up(
        listen,
        tcp=[f"a={target.port}:{ports['a']}", f"b={echo.port}:{ports['b']}"],
        udp=[f"u={udp_echo.port}:{ports['u']}"] if udp_echo is not None else [],
        config=client_config,
        extra=up_args,
    )
    if up_nofile is not None:
        resource.prlimit(up.pid, resource.RLIMIT_NOFILE, (up_nofile, up_nofile))
    publics = {name: ("127.0.0.1", port) for name, port in ports.items()}
    return Neighbours(harness, listen, up, target, echo, udp_echo, publics)


@contextlib.contextmanager
def neighbours(harness: Harness, **options: Any) -> Iterator[Neighbours]:
    """`start`, and close the local services at the end (the harness stops the processes)."""
    tunnel = start(harness, **options)
    try:
        yield tunnel
    finally:
        tunnel.close()


def status(port: int, token: str | None = None, timeout_s: float = 5.0) -> dict[str, Any]:
    """The admin API's status document of the process whose admin port is `port`."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/status")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def udp_echoes(address: Address, count: int, timeout_s: float = 1.0) -> int:
    """Datagrams of a new flow (from 127.0.0.1) that came back echoed, of `count` sent."""
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(timeout_s)
        for n in range(count):
            sock.sendto(b"legit %d" % n, address)
            with contextlib.suppress(TimeoutError):
                while sock.recv(100) != b"legit %d" % n:
                    pass
                answered += 1
    return answered


def spread(count: int, per_source: int, first: int = 10) -> Iterator[str]:
    """`count` source addresses in 127.0.0.0/8, each used `per_source` times in a row."""
    for n in range(count):
        k = first + n // per_source
        yield f"127.0.{k // 250}.{2 + k % 250}"


def flood(address: Address, sources: Iterator[str] | Sequence[str], timeout_s: float = 2.0
          ) -> list[socket.socket]:  # fmt: skip
    """One idle connection from each source address given (failures are skipped)."""
    socks = []
    for source in sources:
        with contextlib.suppress(OSError):
            socks.append(connect_from(source, address, timeout_s=timeout_s))
    return socks


def close_all(socks: Sequence[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def echo_seconds(address: Address, timeout_s: float = 2.0, source: str = "127.0.0.1") -> float:
    """A new visitor's echo round trip through `address`, in seconds; OSError if not served."""
    started = time.monotonic()
    with connect_from(source, address, timeout_s=timeout_s) as sock:
        sock.sendall(b"ping")
        got = b""
        while len(got) < 4:
            chunk = sock.recv(4 - len(got))
            if not chunk:
                raise ConnectionError("closed without an answer")
            got += chunk
    return time.monotonic() - started


def served_within(address: Address, timeout_s: float) -> float | None:
    """Seconds until a new visitor to `address` is served (None: not within `timeout_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            echo_seconds(address, timeout_s=1.0)
            return time.monotonic() - started
        except OSError:
            time.sleep(0.05)
    return None


def quiet_window(probe: HonestProbe, seconds: float = 0.5) -> ProbeWindow:
    """The probe's round trips over `seconds` before an attack: its baseline."""
    start = probe.mark()
    time.sleep(seconds)
    return probe.since(start)


def shared_fate(
    probe_window: ProbeWindow,
    listen_meter: ProcMeter,
    up_meter: ProcMeter,
    quiet: ProbeWindow | None = None,
) -> dict[str, float | int]:
    """The shared-fate columns: the neighbour's figures (and its p99 before the attack), and
    peak RSS/fds of both processes."""
    before = {} if quiet is None else {"quiet_p99_ms": quiet.figures()["honest_p99_ms"]}
    return {
        **probe_window.figures(),
        **before,
        "rss_mib": listen_meter.peak_rss_mib,
        "fds": listen_meter.peak_fds,
        "up_rss_mib": up_meter.peak_rss_mib,
        "up_fds": up_meter.peak_fds,
        "cpu_s": listen_meter.cpu_s + up_meter.cpu_s,
        "seconds": listen_meter.seconds,
    }
