"""A tunnel of its own for each isolation test: the attacked service and its honest neighbour.

The isolation findings are about shared fate: one visitor, one client or one bad day must not
hurt what shares the server or the session. Each test here starts its own `listen` (with the
limits the finding is about) and one `up` exposing

- `a`: the service under attack; its local side is a `TcpTarget` that accepts and holds every
  connection without a thread per connection (a flood of 1000 idle visitors costs one thread);
- `b`: the honest neighbour on the same session, a TCP echo service, probed all along by an
  `HonestProbe` (fresh connections by default: a neighbour whose new visitors are refused is
  starved even while an old connection still answers);
- optionally `u`: a UDP echo service on the same session.

Attackers connect from 127.0.0.2 and up (`spread` hands out several source addresses), the
honest neighbour from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from e2e.harness import Harness, Listen, TcpEchoServer, TcpTarget, UdpEchoServer, Up, free_port
from stress.live import HonestProbe, connect_from
from stress_report import ProcMeter

Address = tuple[str, int]


@dataclass
class Neighbours:
    """One `listen`, one `up` with services `a` (attacked), `b` (honest), maybe `u` (UDP)."""

    harness: Harness
    listen: Listen
    up: Up
    target: TcpTarget
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
) -> Neighbours:
    """Start `listen` (its `server:` section given as indented YAML lines) and `up` with `a`,
    `b` (and `u` if `udp`). `*_nofile` lowers a process's RLIMIT_NOFILE once it runs."""
    target, echo = TcpTarget(), TcpEchoServer()
    udp_echo = UdpEchoServer() if udp else None
    server_config = harness.write("server.yaml", "server:\n" + (server_yaml or "  {}\n"))
    listen = harness.listen("--config", server_config, *listen_args)
    if listen_nofile is not None:
        resource.prlimit(listen.pid, resource.RLIMIT_NOFILE, (listen_nofile, listen_nofile))
    client_config = harness.write(
        "client.yaml",
        "client:\n  reconnect_min_s: 0.1\n  reconnect_max_s: 1.0\n" + client_yaml,
    )
    ports = {name: free_port() for name in ("a", "b", "u")}
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


def shared_fate(
    probe_window: Any, listen_meter: ProcMeter, up_meter: ProcMeter
) -> dict[str, float | int]:
    """The shared-fate columns: the neighbour's figures, and peak RSS/fds of both processes."""
    return {
        **probe_window.figures(),
        "rss_mib": listen_meter.peak_rss_mib,
        "fds": listen_meter.peak_fds,
        "up_rss_mib": up_meter.peak_rss_mib,
        "up_fds": up_meter.peak_fds,
        "cpu_s": listen_meter.cpu_s + up_meter.cpu_s,
        "seconds": listen_meter.seconds,
    }
