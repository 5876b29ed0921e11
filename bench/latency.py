"""Latency probes against the echo service behind a path.

* ``request_response``: one persistent connection, 64-byte request, wait for the
  64-byte echo, repeat; each sample is the full round trip through the path.
* ``short_connections``: connect, send 64 bytes, read the echo, close, one after
  another; gives the new-connection rate and the time to first byte (from the
  start of connect() to the first byte of the reply).
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

from bench.proc import Address

PAYLOAD = 64


def _recv_exact(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(n - got)
        if not chunk:
            raise ConnectionError(f"EOF after {got} of {n} bytes")
        got += len(chunk)


def request_response(
    addr: Address,
    *,
    count: int | None = None,
    until: Callable[[], bool] | None = None,
    interval: float = 0.001,
    warmup: int = 5,
    timeout: float = 10.0,
) -> list[float]:
    """Round-trip times in seconds; stops after `count` samples or when `until()` is true."""
    msg = b"L" * PAYLOAD
    out: list[float] = []
    with socket.create_connection(addr, timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(warmup):
            s.sendall(msg)
            _recv_exact(s, PAYLOAD)
        while True:
            if count is not None and len(out) >= count:
                break
            if until is not None and until():
                break
            t0 = time.perf_counter()
            s.sendall(msg)
            _recv_exact(s, PAYLOAD)
            out.append(time.perf_counter() - t0)
            if interval:
                time.sleep(interval)
    return out


def first_byte(addr: Address, timeout: float = 10.0) -> float:
    """Seconds from connect() start to the first byte of the echoed reply."""
    msg = b"F" * PAYLOAD
    t0 = time.perf_counter()
    with socket.create_connection(addr, timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(msg)
        if not s.recv(1):
            raise ConnectionError("closed before the first byte")
        t = time.perf_counter() - t0
        s.shutdown(socket.SHUT_WR)
        while s.recv(4096):
            pass
    return t


def short_connections(
    addr: Address, seconds: float, limit: int = 5000
) -> tuple[float, list[float]]:
    """Sequential short connections for `seconds`: (connections/s, first-byte times)."""
    ttfb: list[float] = []
    t0 = time.perf_counter()
    end = t0 + seconds
    while time.perf_counter() < end and len(ttfb) < limit:
        ttfb.append(first_byte(addr))
    return len(ttfb) / (time.perf_counter() - t0), ttfb


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": (max(values) * 1000) if values else math.nan,
    }
