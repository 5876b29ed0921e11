"""Visitors that say how their connection ended: for fault and impaired-link tests.

Every visitor runs in a thread and ends with an `outcome`:

- "ok": the whole exchange happened and the echo's SHA-256 matched what was sent;
- "error: <ExceptionName>": the connection failed (reset, broken pipe, timeout): an explicit
  failure, which is what a tunnel owes a visitor it cannot serve;
- "clean EOF after N of M bytes": the connection ended normally short of the full exchange,
  the silent truncation a tunnel must never produce;
- "mismatch": all bytes came back, different.

They also note the longest wait between two received chunks (`max_stall_s`).
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterable

Address = tuple[str, int]
CHUNK = 64 * 1024


class Visitor(threading.Thread):
    """Base: connect (from `source`), run `exchange()`, record the outcome."""

    def __init__(
        self,
        address: Address,
        *,
        timeout_s: float = 30.0,
        source: str | None = None,
        connect: object | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.timeout_s = timeout_s
        self.source = source
        self._connect = connect  # callable returning a connected socket (e.g. inside a netns)
        self.outcome: str | None = None
        self.received = 0
        self.max_stall_s = 0.0
        self.started_at = 0.0
        self.ended_at = 0.0
        self.connected = threading.Event()
        self.sock: socket.socket | None = None

    def _open(self) -> socket.socket:
        if callable(self._connect):
            sock = self._connect()
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if self.source:
                sock.bind((self.source, 0))
            sock.settimeout(self.timeout_s)
            sock.connect(self.address)
        sock.settimeout(self.timeout_s)
        return sock

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.sock = self._open()
            self.connected.set()
            with self.sock:
                self.outcome = self.exchange(self.sock)
        except OSError as exc:
            self.outcome = f"error: {type(exc).__name__}"
        finally:
            self.connected.set()
            self.ended_at = time.monotonic()

    def exchange(self, sock: socket.socket) -> str:
        raise NotImplementedError

    def _recv(self, sock: socket.socket, size: int = CHUNK) -> bytes:
        before = time.monotonic()
        data = sock.recv(size)
        self.max_stall_s = max(self.max_stall_s, time.monotonic() - before)
        self.received += len(data)
        return data

    def abort(self) -> None:
        """Close our socket from outside (ends a visitor that would run forever)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class EchoExact(Visitor):
    """Sends `size` seeded random bytes, half-closes, reads the echo to EOF, compares SHA-256."""

    def __init__(
        self,
        address: Address,
        size: int,
        seed: int = 0,
        rate_bps: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(address, **kwargs)  # type: ignore[arg-type]
        self.size = size
        self.seed = seed
        self.rate_bps = rate_bps  # None: as fast as the tunnel takes it
        self.send_error: str | None = None

    def payload(self) -> Iterable[bytes]:
        rng = random.Random(self.seed)
        left = self.size
        while left:
            n = min(CHUNK, left)
            yield rng.randbytes(n)
            left -= n

    def exchange(self, sock: socket.socket) -> str:
        sent = hashlib.sha256()

        def send() -> None:
            try:
                for block in self.payload():
                    sent.update(block)
                    sock.sendall(block)
                    if self.rate_bps:
                        time.sleep(len(block) * 8 / self.rate_bps)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self.send_error = type(exc).__name__

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        got = hashlib.sha256()
        while True:
            data = self._recv(sock)
            if not data:
                break
            got.update(data)
        sender.join(self.timeout_s)
        if self.send_error is not None:
            return f"error: {self.send_error}"
        if self.received != self.size:
            return f"clean EOF after {self.received} of {self.size} bytes"
        return "ok" if got.digest() == sent.digest() else "mismatch"


class Streamer(Visitor):
    """Sends and reads echo without end (until the connection fails or `abort()`)."""

    def __init__(self, address: Address, rate_bps: float | None = None, **kwargs: object) -> None:
        super().__init__(address, **kwargs)  # type: ignore[arg-type]
        self.rate_bps = rate_bps
        self.sent = 0
        self.stop = threading.Event()

    def exchange(self, sock: socket.socket) -> str:
        failure: list[str] = []

        def send() -> None:
            block = b"s" * (1024 if self.rate_bps else CHUNK)
            try:
                while not self.stop.is_set():
                    sock.sendall(block)
                    self.sent += len(block)
                    if self.rate_bps:
                        time.sleep(len(block) * 8 / self.rate_bps)
            except OSError as exc:
                failure.append(type(exc).__name__)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            while True:
                if not self._recv(sock):
                    break
        finally:
            self.stop.set()
        sender.join(5)
        # A reset is reported once per socket: if the sending thread took it (EPIPE or
        # ECONNRESET), the reading one sees an ordinary EOF afterwards.
        if failure:
            return f"error: {failure[0]}"
        return f"clean EOF after {self.received} of {self.sent} bytes"


class Idle(Visitor):
    """One small echo, then waits for the connection to end (it should fail, not EOF)."""

    def exchange(self, sock: socket.socket) -> str:
        sock.sendall(b"hello")
        got = b""
        while len(got) < 5:
            data = self._recv(sock, 5 - len(got))
            if not data:
                return "clean EOF before the echo"
            got += data
        data = self._recv(sock)
        return "clean EOF after 5 of 5 bytes" if not data else "unexpected bytes"


def summarize(visitors: Iterable[Visitor]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for visitor in visitors:
        key = visitor.outcome or "still running"
        if key.startswith("clean EOF after"):
            key = "clean EOF (short)"
        counts[key] = counts.get(key, 0) + 1
    return counts


def wait_all(visitors: Iterable[Visitor], timeout_s: float) -> list[Visitor]:
    """Join every visitor within `timeout_s` in all; returns those still running."""
    deadline = time.monotonic() + timeout_s
    alive = []
    for visitor in visitors:
        visitor.join(max(0.0, deadline - time.monotonic()))
        if visitor.is_alive():
            alive.append(visitor)
    return alive
