"""A load-balancing group of real processes on loopback: one `listen`, three `up` members, each
with a local service of its own that says who it is.

- `NamedEcho`: the local service. It answers every connection with its name and a newline,
  then echoes what it gets until EOF; it can stop listening (connections refused, as a crashed
  service's are) and start again on the same port.
- `Cluster`: the processes, with their config files; `server(...)` and `member(...)` rewrite a
  config and reload it with SIGHUP, `status()` reads the admin API, `wait_status(...)` polls it.
- `visit(...)`: one visitor (from a chosen 127.0.0.x address if asked): it sends its bytes
  at once (so a failed dial has something to replay), then reads the member's name and the
  echo; `visit_many(...)` runs many from a thread pool and counts who served them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.harness import IO_TIMEOUT_S, Harness, Listen, Up, free_port, recv_all

#: Threads that run visitors at once: enough to keep three members busy on two cores.
WORKERS = 8


class NamedEcho:
    """A local service: `NAME\\n`, then an echo of the connection until EOF."""

    def __init__(self, name: str, port: int = 0) -> None:
        self.name = name
        self.port = port
        self.connections = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.start()

    def start(self) -> None:
        """Listen (again) on `port`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        self._sock = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def stop(self) -> None:
        """Stop listening: new connections are refused; open ones carry on, those still in the
        listen queue too.

        Closing a listening socket resets the connections queued on it, yet to a member they
        are open: its dial succeeded and it wrote the visitor's bytes, so no retry may save
        that visitor. The accept thread lags under load, so `stop` serves the queue itself,
        then closes at once: only a connection completed between its last accept() and the
        close (microseconds, unless the thread is preempted right there) can still be reset."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.setblocking(False)  # the accept thread returns at its next empty accept()
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:  # BlockingIOError: the queue is empty
                break
            self._serve(conn)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(120)
        with conn:
            try:
                conn.sendall(self.name.encode() + b"\n")
                while data := conn.recv(1 << 16):
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass


class VisitFailed(Exception):
    """The visitor's connection failed (reset, closed early, or its bytes came back wrong)."""


def visit(
    host: str, port: int, *, source: str | None = None, timeout_s: float = IO_TIMEOUT_S
) -> str:
    """One visitor: the name of the member's service that answered it."""
    payload = secrets.token_bytes(32)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            data = recv_all(sock)
    except OSError as exc:
        raise VisitFailed(f"{type(exc).__name__}: {exc}") from None
    name, newline, echo = data.partition(b"\n")
    if not newline or echo != payload:
        raise VisitFailed(f"got {data[:80]!r}")
    return name.decode()


@dataclass
class Tally:
    """Who served the visitors of a run, and how many failed."""

    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def shares(self) -> dict[str, float]:
        total = sum(self.served.values())
        return {name: round(n / total, 4) for name, n in sorted(self.served.items())}


def visit_many(
    host: str,
    port: int,
    count: int,
    *,
    sources: Iterable[str | None] = (None,),
    workers: int = WORKERS,
) -> Tally:
    """`count` visitors from a pool of `workers` threads, round the `sources` in turn."""
    pool = list(sources)
    tally = Tally()
    started = time.monotonic()

    def one(index: int) -> str | Exception:
        try:
            return visit(host, port, source=pool[index % len(pool)])
        except VisitFailed as exc:
            return exc

    with ThreadPoolExecutor(workers) as executor:
        for result in executor.map(one, range(count)):
            if isinstance(result, Exception):
                tally.failures.append(str(result))
            else:
                tally.served[result] += 1
    tally.elapsed_s = time.monotonic() - started
    return tally


def open_visitor(cluster: Cluster) -> tuple[socket.socket, str]:
    """A long-lived visitor: connected, its member's name read; closed by the caller."""
    sock = socket.create_connection((cluster.host, cluster.port), timeout=20)
    name = b""
    while not name.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, "the visitor was closed"
        name += chunk
    return sock, name.decode().strip()


def _member_yaml(index: int, port: int, group: dict[str, Any]) -> str:
    entry = {"name": f"web-{index}", "local": port, "group": "web", **group}
    return "client:\n  services:\n    - " + json.dumps(entry) + "\n"


class Cluster:
    """`listen` with an admin API, and `up` members of group `web`, each with a `NamedEcho`."""

    def __init__(self, harness: Harness, members: int = 3) -> None:
        self.harness = harness
        self.admin_port = free_port()
        self.server_config = harness.write("server.yaml", self._server_yaml({}))
        self.listen: Listen = harness.listen(
            "--config", self.server_config, "--admin", f"127.0.0.1:{self.admin_port}",
            "--no-watch",
        )  # fmt: skip
        self.echoes = [NamedEcho(f"web-{i}") for i in range(members)]
        self.member_configs: list[Path] = [
            harness.write(f"member{i}.yaml", _member_yaml(i, echo.port, {}))
            for i, echo in enumerate(self.echoes)
        ]
        self.ups: list[Up] = [self._start_up(i) for i in range(members)]
        self.host, self.port = self.ups[0].public("web-0")
        self.wait_members(members)

    def _start_up(self, index: int) -> Up:
        up: Up = self.harness.up(
            self.listen, config=self.member_configs[index], extra=["--no-watch"], wait=False
        )
        up.wait_announced(1)
        return up

    @staticmethod
    def _server_yaml(policy: dict[str, Any]) -> str:
        entry = json.dumps({"name": "web", **policy})
        return f"server:\n  services:\n    - {entry}\n"

    # --- changes ---

    def server(self, **policy: Any) -> None:
        """Give group `web` this policy (`lb`, `circuit`, `rate_limit`, ...) and reload."""
        reloads = len(self.listen.events("config reloaded"))
        self.harness.write("server.yaml", self._server_yaml(policy))
        self.listen.send_signal(signal.SIGHUP)
        self.listen.wait_event("config reloaded", count=reloads + 1)

    def member(self, index: int, **group: Any) -> None:
        """Give member `index` these group keys (`weight`, `health`, ...) and reload its up."""
        up = self.ups[index]
        reloads = len(up.events("config reloaded"))
        port = self.echoes[index].port
        self.harness.write(f"member{index}.yaml", _member_yaml(index, port, group))
        up.send_signal(signal.SIGHUP)
        up.wait_event("config reloaded", count=reloads + 1)

    def restart_up(self, index: int) -> None:
        """Start member `index`'s up again (after a test stopped it)."""
        self.ups[index].stop()
        self.ups[index] = self._start_up(index)
        self.wait_members(len(self.ups))

    # --- what the server says ---

    def status(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.admin_port}/api/v1/status"
        with urllib.request.urlopen(url, timeout=IO_TIMEOUT_S) as reply:
            data: dict[str, Any] = json.load(reply)
        return data

    def group(self) -> dict[str, Any]:
        groups = {group["name"]: group for group in self.status()["groups"]}
        found: dict[str, Any] = groups.get("web", {"members": []})
        return found

    def members(self) -> dict[str, dict[str, Any]]:
        """The group's members by their service name."""
        return {member["service"]: member for member in self.group()["members"]}

    def wait_status(
        self, check: Callable[[dict[str, dict[str, Any]]], bool], what: str, timeout_s: float = 20
    ) -> dict[str, dict[str, Any]]:
        """Poll the members until `check` holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            members = self.members()
            if check(members):
                return members
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {members}")
            time.sleep(0.05)

    def wait_members(self, count: int) -> None:
        self.wait_status(lambda m: len(m) == count, f"{count} members")

    def close(self) -> None:
        for echo in self.echoes:
            echo.stop()
