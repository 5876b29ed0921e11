"""A userspace TCP delay proxy for emulating long fat links on loopback.

The kernel here has no netem, so latency is added in userspace, Toxiproxy-style:
every chunk read from one side is stamped with the time it may leave and is
written to the other side no earlier than that. Per direction it supports

* ``latency_ms`` one-way delay (so an echo through the proxy sees 2x latency),
* ``jitter_ms`` uniform jitter around the latency, never reordering bytes,
* ``rate_bps`` a bandwidth limit, modelled as a link that serialises chunks,
* a bounded in-flight buffer (``max_inflight``, default 32 MiB, enough for the
  bandwidth-delay product of 1 Gbit/s x 200 ms); when it is full the proxy stops
  reading, so the sender feels TCP backpressure instead of the proxy growing
  (exact on asyncio; uvloop drains the socket first, adding up to its receive buffer).

Half-close passes through (EOF is delayed like data and becomes ``shutdown(SHUT_WR)``),
a reset on one side aborts the other side.

Two faults on demand, for the resilience tests and benchmarks: ``reset_connections()``
resets every proxied connection both ways (a middlebox's RST), and ``blackhole = True``
makes the path swallow everything (bytes, EOF, resets) while connections stay open, as a
dead route does; call them on the proxy's loop (``call_soon_threadsafe`` from elsewhere).

Library use::

    async with DelayProxy(("127.0.0.1", 0), ("127.0.0.1", 7835), latency_ms=25) as p:
        print(p.address)

    with DelayProxy(("127.0.0.1", 0), upstream, latency_ms=25).running() as addr:
        ...  # the proxy runs in a background thread

CLI: ``python -m bench.delayproxy --listen 127.0.0.1:0 --upstream 127.0.0.1:7835
--latency-ms 25``; it prints ``listening HOST:PORT`` once ready and runs until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

Address = tuple[str, int]

DEFAULT_MAX_INFLIGHT = 32 * 1024 * 1024  # >= 1 Gbit/s x 200 ms = 25 MB
_RATE_PIECE = 16 * 1024  # rate-limited chunks are released in pieces of this size
_WRITE_HIGH_WATER = 1024 * 1024
_SLACK = 0.0005  # release chunks due within 0.5 ms in the same loop iteration

_LINGER_RESET = struct.pack("ii", 1, 0)
_EOF = object()  # delayed shutdown(SHUT_WR)
_CLOSE = object()  # delayed close (the source side went away)


def parse_address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    if not host:
        host = "127.0.0.1"
    return host.strip("[]"), int(port)


def parse_rate(text: str | None) -> float | None:
    """'100M' -> 100e6 bits/s; plain numbers are bits/s; '0' or None = unlimited."""
    if text is None:
        return None
    text = text.strip()
    mult = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text[-1:].lower())
    value = float(text[:-1]) * mult if mult else float(text)
    return value or None


@dataclass
class Direction:
    """Impairment of one direction."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_bps: float | None = None


@dataclass
class ProxyStats:
    connections: int = 0
    bytes_up: int = 0  # client -> upstream
    bytes_down: int = 0  # upstream -> client
    peak_inflight: int = 0  # largest queued byte count seen in one direction
    errors: list[str] = field(default_factory=list)
    resets: int = 0  # connections reset by `reset_connections`
    blackholed_bytes: int = 0  # bytes swallowed while `blackhole` was on


class _Pipe:
    """One direction of one connection: src transport -> delay queue -> dst transport."""

    def __init__(self, proxy: DelayProxy, conn: _Conn, imp: Direction, name: str) -> None:
        self.proxy = proxy
        self.conn = conn
        self.loop = proxy._loop
        self.imp = imp
        self.name = name
        self.queue: collections.deque[tuple[float, object]] = collections.deque()
        self.inflight = 0
        self.src: asyncio.Transport | None = None
        self.dst: asyncio.Transport | None = None
        self.src_paused = False
        self.dst_paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.last_due = 0.0
        self.link_free_at = 0.0
        self.done = False  # EOF/close has been delivered to dst

    # -- input side -------------------------------------------------------------
    def _delay(self) -> float:
        d = self.imp.latency_ms
        if self.imp.jitter_ms:
            d += self.proxy._rng.uniform(-self.imp.jitter_ms, self.imp.jitter_ms)
        return max(d, 0.0) / 1000.0

    def _push(self, due: float, item: object) -> None:
        due = max(due, self.last_due)  # never reorder
        self.last_due = due
        self.queue.append((due, item))

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        if self.proxy.blackhole:
            self.proxy.stats.blackholed_bytes += len(data)
            return
        now = self.loop.time()
        n = len(data)
        if self.name == "up":
            self.proxy.stats.bytes_up += n
        else:
            self.proxy.stats.bytes_down += n
        rate = self.imp.rate_bps
        if rate:
            view = memoryview(data)
            for off in range(0, n, _RATE_PIECE):
                piece = bytes(view[off : off + _RATE_PIECE])
                start = max(now, self.link_free_at)
                self.link_free_at = start + len(piece) * 8.0 / rate
                self._push(self.link_free_at + self._delay(), piece)
        else:
            self._push(now + self._delay(), data)
        self.inflight += n
        if self.inflight > self.proxy.stats.peak_inflight:
            self.proxy.stats.peak_inflight = self.inflight
        if self.inflight >= self.proxy.max_inflight and not self.src_paused and self.src:
            self.src_paused = True
            self.src.pause_reading()
        self._schedule()

    def feed_marker(self, marker: object) -> None:
        if self.done or self.proxy.blackhole:
            return
        now = self.loop.time()
        base = max(now, self.link_free_at) if self.imp.rate_bps else now
        self._push(base + self._delay(), marker)
        self._schedule()

    # -- output side ------------------------------------------------------------
    def _schedule(self) -> None:
        if self.timer is not None or not self.queue or self.dst is None or self.dst_paused:
            return
        self.timer = self.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self.timer = None
        dst = self.dst
        if dst is None or self.done:
            return
        limit = self.loop.time() + _SLACK
        q = self.queue
        while q and q[0][0] <= limit and not self.dst_paused:
            _, item = q.popleft()
            if item is _EOF:
                self.done = True
                if dst.can_write_eof() and not dst.is_closing():
                    with contextlib.suppress(OSError):  # the peer reset it meanwhile
                        dst.write_eof()
                self.conn.finish_if_done()
                break
            if item is _CLOSE:
                self.done = True
                dst.close()
                break
            data: bytes = item  # type: ignore[assignment]
            self.inflight -= len(data)
            if not dst.is_closing():
                dst.write(data)
        if self.src_paused and self.inflight < self.proxy.max_inflight // 2 and self.src:
            self.src_paused = False
            with contextlib.suppress(Exception):
                self.src.resume_reading()
        self._schedule()

    def pause_writing(self) -> None:
        self.dst_paused = True

    def resume_writing(self) -> None:
        self.dst_paused = False
        self._schedule()

    def drop(self) -> None:
        self.done = True
        self.queue.clear()
        self.inflight = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Conn:
    """A proxied connection: the accepted client side and the upstream side."""

    def __init__(self, proxy: DelayProxy) -> None:
        self.proxy = proxy
        self.up = _Pipe(proxy, self, proxy.up, "up")  # client -> upstream
        self.down = _Pipe(proxy, self, proxy.down, "down")  # upstream -> client
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.closed = False

    def abort(self) -> None:
        """Tear down both sides with a TCP reset (SO_LINGER 0), like the peer did."""
        if self.closed:
            return
        self.closed = True
        self.up.drop()
        self.down.drop()
        for t in (self.client, self.server):
            if t is not None:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError, ValueError):  # already closed
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                t.abort()
        self.proxy._conns.discard(self)

    def finish_if_done(self) -> None:
        if self.up.done and self.down.done and not self.closed:
            self.closed = True
            for t in (self.client, self.server):
                if t is not None:
                    t.close()
            self.proxy._conns.discard(self)


class _Side(asyncio.Protocol):
    def __init__(self, conn: _Conn, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client
        # bytes read on this side go out through `inbound`; `outbound` writes to this side
        self.inbound = conn.up if is_client else conn.down
        self.outbound = conn.down if is_client else conn.up
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        self.inbound.src = transport
        self.outbound.dst = transport
        if self.is_client:
            self.conn.client = transport
            self.conn.proxy._conns.add(self.conn)
            self.conn.proxy.stats.connections += 1
            transport.pause_reading()  # until upstream is connected
            self.conn.proxy._loop.create_task(self.conn.proxy._connect_upstream(self.conn))
        else:
            self.conn.server = transport
            self.outbound._schedule()

    def data_received(self, data: bytes) -> None:
        self.inbound.feed(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.inbound.feed_marker(_EOF)
        return True  # keep the transport open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.conn
        if conn.closed or conn.proxy.blackhole:  # a dead route passes no reset either
            return
        if exc is not None:
            conn.abort()  # reset propagates as an abort of the other side
            return
        # Closed without error: nothing more can be written to this side; deliver what
        # this side sent, then close the other side.
        self.outbound.drop()
        if not self.eof:
            self.inbound.feed_marker(_CLOSE)
        conn.finish_if_done()

    def pause_writing(self) -> None:
        self.outbound.pause_writing()

    def resume_writing(self) -> None:
        self.outbound.resume_writing()


class DelayProxy:
    """TCP proxy adding latency/jitter/bandwidth limits per direction (see module doc)."""

    def __init__(
        self,
        listen: Address | str,
        upstream: Address | str,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        rate_bps: float | None = None,
        *,
        up: Direction | None = None,
        down: Direction | None = None,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        seed: int | None = None,
    ) -> None:
        self.listen = parse_address(listen) if isinstance(listen, str) else listen
        self.upstream = parse_address(upstream) if isinstance(upstream, str) else upstream
        base = Direction(latency_ms, jitter_ms, rate_bps)
        self.up = up or base  # client -> upstream
        self.down = down or Direction(latency_ms, jitter_ms, rate_bps)
        self.max_inflight = max_inflight
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.address: Address | None = None
        #: While True the path swallows everything, both ways (see the module doc).
        self.blackhole = False

    def reset_connections(self) -> int:
        """Reset every proxied connection both ways, as a middlebox would; returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        self.stats.resets += len(conns)
        return len(conns)

    async def start(self) -> Address:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _Side(_Conn(self), True), self.listen[0], self.listen[1], reuse_address=True
        )
        sock = self._server.sockets[0]
        self.address = sock.getsockname()[:2]
        return self.address

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for c in list(self._conns):
            c.abort()

    async def __aenter__(self) -> DelayProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _connect_upstream(self, conn: _Conn) -> None:
        try:
            await self._loop.create_connection(
                lambda: _Side(conn, False), self.upstream[0], self.upstream[1]
            )
        except OSError as e:
            self.stats.errors.append(f"connect {self.upstream}: {e}")
            conn.abort()
            return
        # Not if the in-flight cap paused it meanwhile (uvloop may read before a pause made in
        # connection_made takes hold): resuming then would lift that cap for good.
        if conn.client is not None and not conn.closed and not conn.up.src_paused:
            conn.client.resume_reading()

    @contextlib.contextmanager
    def running(
        self, loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    ) -> Iterator[Address]:
        """Run the proxy on its own event loop in a daemon thread; yield its address."""
        ready = threading.Event()
        box: dict[str, object] = {}

        def main() -> None:
            loop = (loop_factory or asyncio.new_event_loop)()
            box["loop"] = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # reported to the caller below
                box["error"] = e
                ready.set()
                loop.close()
                return
            stop = loop.create_future()
            box["stop"] = stop
            ready.set()
            loop.run_until_complete(stop)
            loop.run_until_complete(self.close())
            loop.close()

        t = threading.Thread(target=main, name="delayproxy", daemon=True)
        t.start()
        ready.wait()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        loop: asyncio.AbstractEventLoop = box["loop"]  # type: ignore[assignment]
        stop: asyncio.Future[None] = box["stop"]  # type: ignore[assignment]
        try:
            assert self.address is not None
            yield self.address
        finally:

            def _stop() -> None:
                if not stop.done():
                    stop.set_result(None)

            loop.call_soon_threadsafe(_stop)
            t.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.delayproxy", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to accept on (port 0 = any)")
    ap.add_argument("--upstream", required=True, help="HOST:PORT to connect to")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="one-way delay, each direction")
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="uniform jitter, each direction")
    ap.add_argument("--rate", default=None, help="bandwidth limit per direction, bits/s (100M)")
    for d in ("up", "down"):
        ap.add_argument(f"--{d}-latency-ms", type=float, default=None)
        ap.add_argument(f"--{d}-jitter-ms", type=float, default=None)
        ap.add_argument(f"--{d}-rate", default=None)
    ap.add_argument(
        "--max-inflight",
        type=int,
        default=DEFAULT_MAX_INFLIGHT,
        help="bytes queued per direction before reading pauses",
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument(
        "--uvloop",
        action="store_true",
        help="run on uvloop; it drains a socket after pause_reading(), so the in-flight "
        "bound grows by the socket's receive buffer (asyncio keeps it exact)",
    )
    a = ap.parse_args(argv)

    def direction(d: str) -> Direction:
        lat = getattr(a, f"{d}_latency_ms")
        jit = getattr(a, f"{d}_jitter_ms")
        rate = getattr(a, f"{d}_rate")
        return Direction(
            a.latency_ms if lat is None else lat,
            a.jitter_ms if jit is None else jit,
            parse_rate(a.rate if rate is None else rate),
        )

    proxy = DelayProxy(
        a.listen,
        a.upstream,
        up=direction("up"),
        down=direction("down"),
        max_inflight=a.max_inflight,
        seed=a.seed,
    )

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        host, port = await proxy.start()
        print(f"listening {host}:{port}", flush=True)
        await stop.wait()
        await proxy.close()

    if a.uvloop:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
