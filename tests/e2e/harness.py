"""Run `muxtunnel listen` and `muxtunnel up` as real processes, and local services beside them.

Everything here is synchronous (threads and plain sockets) and bounded in time:

- `Harness` starts the two commands with `sys.executable -m muxtunnel`, a random token and ports
  nobody else holds, with TLS as by default (a state directory of the test's own) or, for
  tests that speak raw yamux frames, `--no-tls`; it waits until they are ready (listen: its
  `listening` log line and a TCP connect to the control port; up: one `NAME tcp HOST:PORT ->
  LOCAL` line per service on stdout), and stops every process it started when the test ends
  (SIGTERM, then SIGKILL).
- Children write stdout and stderr to files, never to pipes nobody drains; `Proc.describe()`
  shows them, and the conftest attaches them to the report of a failing test.
- `TcpEchoServer`, `TcpTarget` and `UdpEchoServer` are the local services behind the tunnel.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Time a process gets to become ready (Python start-up on a loaded 2-core machine included).
START_TIMEOUT_S = 20.0
#: Time a process gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0
#: Default bound for socket operations in tests.
IO_TIMEOUT_S = 20.0
#: Ports handed out come from below Linux's ephemeral range (32768-60999), so a port we checked
#: is not taken meanwhile by some process's outgoing connection.
PORT_RANGE = (20000, 32700)

_ANNOUNCE = re.compile(
    r"^(?P<name>\S+) (?P<type>tcp|udp|http|https) (?P<public>\S+) -> (?P<local>\S+)$"
)
_given_ports: set[int] = set()
_ports_lock = threading.Lock()


# --- ports ---


def _can_bind(family: socket.AddressFamily, kind: socket.SocketKind, host: str, port: int) -> bool:
    with socket.socket(family, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on `host` (and the wildcard), unique in this run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    with _ports_lock:
        for _ in range(1000):
            port = random.randrange(*PORT_RANGE)
            if port in _given_ports:
                continue
            if all(
                _can_bind(family, kind, address, port)
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
                for address in (host, wildcard)
            ):
                _given_ports.add(port)
                return port
    raise RuntimeError("no free port found")


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05
) -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def tcp_connects(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# --- processes ---


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no file)\n"
    return text if len(text) <= limit else f"...({len(text) - limit} chars before)\n{text[-limit:]}"


class Proc:
    """One child process whose stdout and stderr go to files."""

    def __init__(self, name: str, argv: Sequence[object], log_dir: Path, env: dict[str, str]):
        self.name = name
        self.argv = [str(arg) for arg in argv]
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=log_dir,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not the child
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        """The user-facing error lines (`muxtunnel: ...`) on stderr."""
        return [line for line in self.stderr().splitlines() if line.startswith("muxtunnel: ")]

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines on stderr (all, or those whose `event` is `event`)."""
        found = []
        for line in self.stderr().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if event is None or record.get("event") == event:
                found.append(record)
        return found

    def describe(self) -> str:
        code = self.popen.poll()
        state = "running" if code is None else f"exited {code}"
        return (
            f"{self.name}: {' '.join(self.argv)} ({state}, pid {self.pid}, "
            f"{time.monotonic() - self.started:.1f} s)\n"
            f"--- {self.name} stdout ---\n{_tail(self.stdout_path)}\n"
            f"--- {self.name} stderr ---\n{_tail(self.stderr_path)}"
        )

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Poll `predicate` while the process runs; fail (showing its output) if it exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if self.popen.poll() is not None:
                value = predicate()  # it may have printed it just before exiting
                if value:
                    return value
                raise AssertionError(
                    f"{self.name} exited while waiting for {what}\n{self.describe()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what}\n{self.describe()}"
                )
            time.sleep(0.05)

    def wait_event(self, event: str, timeout_s: float = START_TIMEOUT_S, count: int = 1) -> None:
        self.wait_for(
            lambda: len(self.events(event)) >= count, timeout_s, f"{count}x log event {event!r}"
        )

    def wait_exit(self, timeout_s: float) -> int:
        """The exit code; fails (and kills the process) if it runs longer than `timeout_s`."""
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} still running after {timeout_s} s\n{self.describe()}"
            ) from None

    def send_signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S. Returns the exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            self.popen.send_signal(signal.SIGCONT)  # in case a test left it stopped
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.poll()


@dataclass(frozen=True)
class Announcement:
    """One `NAME tcp HOST:PORT -> LOCAL` line printed by `up` (web services: `NAME http URL
    -> LOCAL`, whose host and port are the URL's)."""

    name: str
    type: str
    host: str
    port: int
    local: str
    #: Web services: the URL as printed.
    url: str | None = None


class Listen(Proc):
    host: str
    port: int
    token: str

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        # The log line tells it is our process that bound the port; the connect, that it accepts.
        self.wait_event("listening", timeout_s)
        self.wait_for(lambda: tcp_connects(self.host, self.port), timeout_s, "the control port")


class Up(Proc):
    def announcements(self) -> list[Announcement]:
        found = []
        for line in self.stdout().splitlines():
            if match := _ANNOUNCE.match(line):
                public, url = match["public"], None
                if "://" in public:
                    url = public
                    parts = urllib.parse.urlsplit(public)
                    default = 443 if parts.scheme == "https" else 80
                    host, port = parts.hostname or "", parts.port or default
                elif public == "private":  # no public port: reached with `muxtunnel visit`
                    host, port = public, 0
                else:
                    host, port = split_host_port(public)
                found.append(
                    Announcement(match["name"], match["type"], host, port, match["local"], url)
                )
        return found

    def services(self) -> dict[str, Announcement]:
        """The latest announcement of each service."""
        return {a.name: a for a in self.announcements()}

    def wait_announced(
        self, count: int, timeout_s: float = START_TIMEOUT_S
    ) -> dict[str, Announcement]:
        """Wait for `count` announcement lines in all (one per service and public address)."""
        self.wait_for(
            lambda: len(self.announcements()) >= count, timeout_s, f"{count} service line(s)"
        )
        return self.services()

    def wait_registered(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait for `count` registrations in all, re-registrations after a reconnect included
        (those print no service line again when the address stays the same)."""
        self.wait_event("service registered", timeout_s, count)

    def public(self, name: str) -> tuple[str, int]:
        announcement = self.services()[name]
        return announcement.host, announcement.port


class Harness:
    """The processes of one test; `close()` stops them all."""

    def __init__(self, log_dir: Path, *, tls: bool = True) -> None:
        self.log_dir = log_dir
        #: False: `listen` and `up` get `--no-tls` (for tests that speak raw yamux frames).
        self.tls = tls
        self.token = secrets.token_hex(16)
        self.procs: list[Proc] = []
        self._names: dict[str, int] = {}

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a child: ours without MUXTUNNEL_*, and a state directory of the
        test's own (listen's certificate, up's known hosts: TLS as by default, never in the
        real home)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MUXTUNNEL_")}
        env.update(
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            XDG_STATE_HOME=str(self.log_dir / "state"),
            **extra,
        )
        return env

    def _name(self, base: str) -> str:
        n = self._names.get(base, 0) + 1
        self._names[base] = n
        return base if n == 1 else f"{base}{n}"

    def spawn(
        self, kind: type[Proc], base: str, args: Sequence[object], env: dict[str, str] | None = None
    ) -> Any:
        proc = kind(
            self._name(base),
            [sys.executable, "-m", "muxtunnel", *args],
            self.log_dir,
            env or self.env(),
        )
        self.procs.append(proc)
        return proc

    def write(self, name: str, text: str) -> Path:
        path = self.log_dir / name
        path.write_text(text, encoding="utf-8")
        return path

    def listen(
        self,
        *extra: object,
        host: str = "127.0.0.1",
        port: int | None = None,
        token: str | None = None,
        allow_ports: str | None = "20000-32767",
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> Listen:
        port = port or free_port(host)
        token = self.token if token is None else token
        args: list[object] = ["listen", "--bind", host_port(host, port), "--log-format", "json"]
        if token:
            args += ["--token", token]
        if allow_ports:
            args += ["--allow-ports", allow_ports]
        if not self.tls:
            args.append("--no-tls")
        proc: Listen = self.spawn(Listen, "listen", [*args, *extra], env)
        proc.host, proc.port, proc.token = host, port, token
        if wait:
            proc.wait_ready()
        return proc

    def up(
        self,
        server: Listen | str,
        *,
        tcp: Sequence[str] = (),
        udp: Sequence[str] = (),
        http: Sequence[str] = (),
        https: Sequence[str] = (),
        token: str | None = None,
        config: Path | None = None,
        extra: Sequence[object] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> Up:
        address = server if isinstance(server, str) else server.address
        token = self.token if token is None else token
        args: list[object] = ["up", "--server", address, "--no-console", "--log-format", "json"]
        if token:
            args += ["--token", token]
        if config is not None:
            args += ["--config", config]
        if not self.tls:
            args.append("--no-tls")
        for spec in tcp:
            args += ["--tcp", spec]
        for spec in udp:
            args += ["--udp", spec]
        for spec in http:
            args += ["--http", spec]
        for spec in https:
            args += ["--https", spec]
        if http and not any(str(arg).startswith("--inspect") for arg in extra):
            args.append("--no-inspect")  # its default port, 4040, is the machine's to share
        proc: Up = self.spawn(Up, "up", [*args, *extra], env)
        if wait:
            proc.wait_announced(len(tcp) + len(udp) + len(http) + len(https))
            stray = [line for line in proc.stdout().splitlines() if not _ANNOUNCE.match(line)]
            assert not stray, f"up printed more than service lines on stdout: {stray}"
        return proc

    def run(
        self, *args: object, timeout_s: float = 15.0, env: dict[str, str] | None = None
    ) -> Proc:
        """Run `muxtunnel ARGS` to its end (killed and failed after `timeout_s`)."""
        proc: Proc = self.spawn(Proc, str(args[0]) if args else "muxtunnel", args, env)
        proc.wait_exit(timeout_s)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def report(self) -> Iterator[tuple[str, str]]:
        for proc in self.procs:
            yield proc.name, proc.describe()


# --- local services ---


class _Threads:
    """Daemon threads that a `close()` joins with a bound."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                self.errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def join(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _listener(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(512)
    return sock


def recv_all(sock: socket.socket, limit: int | None = None) -> bytes:
    """Read until EOF (or `limit` bytes)."""
    chunks, total = [], 0
    while limit is None or total < limit:
        data = sock.recv(min(1 << 20, limit - total) if limit is not None else 1 << 20)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


class TcpEchoServer:
    """Echoes each connection; on EOF shuts its own sending side, like a well-behaved peer."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = _listener(host)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.connections = 0
        self._conns: list[socket.socket] = []
        self._threads = _Threads()
        self._threads.start(self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conns.append(conn)
            self._threads.start(self._echo, conn)

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        with conn:
            try:
                while data := conn.recv(1 << 18):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()
        self._threads.join()


class TcpTarget:
    """A listener whose connections the test drives itself: `accept()` hands them out."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = _listener(host)
        self.host, self.port = host, self.sock.getsockname()[1]
        self._accepted: queue.Queue[socket.socket] = queue.Queue()
        self._threads = _Threads()
        self._threads.start(self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(IO_TIMEOUT_S)
            self._accepted.put(conn)

    def accept(self, timeout_s: float = IO_TIMEOUT_S) -> socket.socket:
        try:
            return self._accepted.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"the local target got no connection in {timeout_s} s") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        while not self._accepted.empty():
            self._accepted.get_nowait().close()
        self._threads.join()


class UdpEchoServer:
    """Echoes every datagram to its sender and records what arrived.

    A datagram `b"send:N"` is answered with N bytes of `b"R"` instead of an echo (to send an
    oversize reply towards the tunnel).
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((host, 0))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self.senders: list[tuple[str, int]] = []
        self._closed = False
        self._threads = _Threads()
        self._threads.start(self._serve)

    def _serve(self) -> None:
        while not self._closed:
            try:
                data, address = self.sock.recvfrom(1 << 17)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append(data)
            self.senders.append(address[:2])
            reply = data
            if data.startswith(b"send:"):
                reply = b"R" * int(data[5:])
            with contextlib.suppress(OSError):
                self.sock.sendto(reply, address)

    def close(self) -> None:
        self._closed = True
        self._threads.join()
        self.sock.close()


def kill_process_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a helper started with start_new_session=True (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


def echo_roundtrip(host: str, port: int, payload: bytes, timeout_s: float = IO_TIMEOUT_S) -> bytes:
    """Connect, send `payload`, half-close, and return everything read until EOF."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def echo_works(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """True if one small echo through host:port comes back intact."""
    payload = secrets.token_bytes(64)
    try:
        return echo_roundtrip(host, port, payload, timeout_s) == payload
    except OSError:
        return False
