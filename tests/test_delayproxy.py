"""Tests of bench.delayproxy, the userspace long-fat-link emulator (loopback, fast)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from testenv import import_or_skip

from bench.delayproxy import DelayProxy, Direction, parse_rate

Handler = Callable[[socket.socket], None]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _uvloop_factory() -> LoopFactory:
    uvloop = import_or_skip("uvloop")
    return uvloop.new_event_loop  # type: ignore[no-any-return]


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request: pytest.FixtureRequest) -> LoopFactory:
    """The proxy CLI runs on uvloop when installed, the library on the caller's loop."""
    if request.param == "uvloop":
        return _uvloop_factory()
    return asyncio.new_event_loop


@contextmanager
def tcp_server(handler: Handler) -> Iterator[tuple[str, int]]:
    """A threaded loopback server calling handler(conn) per connection."""
    ls = socket.create_server(("127.0.0.1", 0))
    ls.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.settimeout(None)
            threading.Thread(target=_run, args=(c,), daemon=True).start()

    def _run(c: socket.socket) -> None:
        with c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                handler(c)
            except (ConnectionResetError, BrokenPipeError):
                pass  # stopping the proxy aborts its connections

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield ls.getsockname()[:2]
    finally:
        stop.set()
        t.join(2)
        ls.close()


def echo(c: socket.socket) -> None:
    while data := c.recv(65536):
        c.sendall(data)
    c.shutdown(socket.SHUT_WR)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def rtts(addr: tuple[str, int], n: int) -> list[float]:
    with socket.create_connection(addr, timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = []
        msg = b"x" * 64
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(msg)
            recv_exact(s, 64)
            out.append(time.perf_counter() - t0)
        return out


def test_parse_rate() -> None:
    assert parse_rate("100M") == 100e6
    assert parse_rate("1.5k") == 1500
    assert parse_rate("0") is None
    assert parse_rate(None) is None


def delay_bounds_s(delay_s: float, base_s: float) -> tuple[float, float]:
    """Where a round trip through the proxy must land: never below the configured delay (less
    a timer's 1 ms), and above it by at most 10 ms (timers ~1 ms each way, the proxy's loop)
    plus 4x the direct round trip measured in the same test (the proxy adds two hops through
    an event loop that a loaded machine slows as it slows the direct path)."""
    return delay_s - 0.001, delay_s + 0.010 + 4 * base_s


def direct_rtt_s(up: tuple[str, int]) -> float:
    return statistics.median(rtts(up, 10))


def test_adds_configured_delay(loop_factory: LoopFactory) -> None:
    with tcp_server(echo) as up:
        base = direct_rtt_s(up)
        with DelayProxy(("127.0.0.1", 0), up, latency_ms=20).running(loop_factory) as addr:
            rtt = statistics.median(rtts(addr, 8))
    low, high = delay_bounds_s(0.040, base)  # 20 ms each way
    assert low <= rtt <= high, (rtt, base)


def test_asymmetric_delay(loop_factory: LoopFactory) -> None:
    proxy = DelayProxy(
        ("127.0.0.1", 0),
        ("127.0.0.1", 0),
        up=Direction(latency_ms=5),
        down=Direction(latency_ms=25),
    )
    with tcp_server(echo) as up:
        base = direct_rtt_s(up)
        proxy.upstream = up
        with proxy.running(loop_factory) as addr:
            rtt = statistics.median(rtts(addr, 6))
    low, high = delay_bounds_s(0.030, base)  # 5 ms up, 25 ms down
    assert low <= rtt <= high, (rtt, base)


def test_preserves_bytes_and_order_with_jitter(loop_factory: LoopFactory) -> None:
    payload = os.urandom(8 * 1024 * 1024)
    with (
        tcp_server(echo) as up,
        DelayProxy(("127.0.0.1", 0), up, latency_ms=3, jitter_ms=3, seed=1).running(
            loop_factory
        ) as addr,
    ):
        with socket.create_connection(addr, timeout=10) as s:
            got = hashlib.sha256()
            received = 0

            def reader() -> None:
                nonlocal received
                while data := s.recv(1 << 20):
                    got.update(data)
                    received += len(data)

            t = threading.Thread(target=reader)
            t.start()
            view = memoryview(payload)
            for off in range(0, len(payload), 100_003):  # odd-sized writes
                s.sendall(view[off : off + 100_003])
            s.shutdown(socket.SHUT_WR)
            t.join(10)
    assert received == len(payload)
    assert got.hexdigest() == hashlib.sha256(payload).hexdigest()


def test_half_close_passes_through(loop_factory: LoopFactory) -> None:
    request = os.urandom(300_000)
    reply = os.urandom(200_000)
    seen: dict[str, bytes] = {}

    def handler(c: socket.socket) -> None:
        buf = bytearray()
        while data := c.recv(65536):  # read until the client's FIN
            buf += data
        seen["request"] = bytes(buf)
        c.sendall(reply)  # reply only after EOF: needs a half-open connection
        c.shutdown(socket.SHUT_WR)

    with (
        tcp_server(handler) as up,
        DelayProxy(("127.0.0.1", 0), up, latency_ms=5).running(loop_factory) as addr,
    ):
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            while data := s.recv(65536):
                got += data
    assert seen["request"] == request
    assert bytes(got) == reply


def test_reset_propagates(loop_factory: LoopFactory) -> None:
    def resetter(c: socket.socket) -> None:
        c.recv(10)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()

    with tcp_server(resetter) as up, DelayProxy(("127.0.0.1", 0), up).running(loop_factory) as addr:
        with socket.create_connection(addr, timeout=5) as s:
            s.sendall(b"hello")
            with pytest.raises(ConnectionResetError):
                s.recv(10)


def test_bandwidth_limit_roughly_holds(loop_factory: LoopFactory) -> None:
    size = 500_000  # at 8 Mbit/s = 1 MB/s: ~0.5 s
    payload = os.urandom(size)
    done: dict[str, float] = {}

    def sink(c: socket.socket) -> None:
        n = 0
        while data := c.recv(65536):
            n += len(data)
        done["n"] = n
        done["t"] = time.perf_counter()
        c.sendall(b"k")

    def transfer_s(addr: tuple[str, int]) -> float:
        with socket.create_connection(addr, timeout=5) as s:
            t0 = time.perf_counter()
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b"k"
        assert done["n"] == size
        return done["t"] - t0

    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 0), rate_bps=8e6)
    with tcp_server(sink) as up:
        direct = transfer_s(up)  # the same transfer unshaped: what this machine needs now
        proxy.upstream = up
        with proxy.running(loop_factory) as addr:
            elapsed = transfer_s(addr)
    # 0.5 s at the rate; the first bucketful may pass at once (0.4). Above: 0.2 s of timer
    # slack plus 4x the unshaped transfer, which a loaded machine slows as it slows the proxy.
    assert 0.4 <= elapsed <= 0.5 + 0.2 + 4 * direct, (elapsed, direct)


def test_inflight_buffer_is_bounded(loop_factory: LoopFactory) -> None:
    cap = 256 * 1024
    release = threading.Event()

    def slow(c: socket.socket) -> None:
        release.wait(5)  # do not read: the proxy must stop reading too
        while c.recv(65536):
            pass

    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 0), latency_ms=1, max_inflight=cap)
    with tcp_server(slow) as up:
        proxy.upstream = up
        with proxy.running(loop_factory) as addr, socket.create_connection(addr, timeout=5) as s:
            s.setblocking(False)
            sent = 0
            deadline = time.monotonic() + 1.0
            chunk = b"z" * 65536
            while time.monotonic() < deadline:
                try:
                    sent += s.send(chunk)
                except BlockingIOError:
                    time.sleep(0.01)
            release.set()
    # asyncio: one read of up to 256 KiB may land after the threshold, kernel buffers hold
    # the rest. uvloop keeps reading until the socket is drained after pause_reading(), so
    # there the bound is the cap plus the socket's receive buffer (tcp_rmem max).
    slack = 256 * 1024
    if loop_factory is not asyncio.new_event_loop:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            slack += int(f.read().split()[2])
    assert proxy.stats.peak_inflight <= cap + slack, proxy.stats.peak_inflight
    assert sent > proxy.stats.peak_inflight  # the sender really was backpressured
