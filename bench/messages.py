"""Small messages at concurrency: many visitors, each with one 64-byte request in flight.

* ``tcp``: `conns` connections to the echo service; each sends 64 bytes, waits for the
  64-byte echo, sends the next. Messages/s is the replies received over the measured window.
* ``udp``: the same with `conns` UDP sockets (each its own visitor address, so its own flow
  through a tunnel): a 64-byte datagram, wait for its echo, send the next. A datagram whose
  echo has not come back within `lost_after_s` counts as lost and the socket sends the next;
  each request carries a sequence number, and the late echo of one counted lost is ignored
  (`stale`), so every socket keeps exactly one request in flight.

The load runs in this process on uvloop (asyncio if uvloop is missing), driven by protocol
callbacks: one callback and one write per message, so the generator costs far less than
any path it measures (`direct` shows its ceiling).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from bench.latency import PAYLOAD, summary_ms
from bench.proc import Address

#: A UDP echo slower than this counts as lost (loopback round trips are well under 10 ms
#: even through a loaded tunnel; a lost datagram must not stall its sender for long).
LOST_AFTER_S = 0.2
#: A UDP request's sequence number, in its first bytes (the echo must carry it back).
_SEQ = struct.Struct(">Q")
#: Round-trip samples kept per run for the percentiles (one in `_SAMPLE_EVERY` messages).
_SAMPLE_EVERY = 16


@dataclass
class _Tally:
    measuring: bool = False
    replies: int = 0
    lost: int = 0
    stale: int = 0  # UDP echoes of requests already counted lost (ignored)
    samples: list[float] = field(default_factory=list)

    def reply(self, sent_at: float) -> None:
        if self.measuring:
            self.replies += 1
            if self.replies % _SAMPLE_EVERY == 0:
                self.samples.append(time.perf_counter() - sent_at)


class _TcpClient(asyncio.Protocol):
    def __init__(self, tally: _Tally, msg: bytes) -> None:
        self.tally = tally
        self.msg = msg
        self.got = 0
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.msg)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        while self.got >= PAYLOAD:
            self.got -= PAYLOAD
            self.tally.reply(self.sent_at)
            if not self.got:
                self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _UdpClient(asyncio.DatagramProtocol):
    """One visitor with exactly one datagram in flight.

    Each request carries a sequence number; an echo of an older one (a datagram counted lost
    and sent again, whose first copy came back late after all) is ignored, so a loss never
    leaves two requests in flight on one socket (which would count pipelined echoes as round
    trips of a few microseconds).
    """

    def __init__(self, tally: _Tally, msg: bytes) -> None:
        self.tally = tally
        self.body = msg[_SEQ.size :]
        self.seq = 0
        self.expect = b""
        self.sent_at = 0.0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.send()

    def send(self) -> None:
        """Send the next request (a new sequence number: the last one's echo no longer counts)."""
        assert self.transport is not None
        self.seq += 1
        self.expect = _SEQ.pack(self.seq)
        self.sent_at = time.perf_counter()
        self.transport.sendto(self.expect + self.body)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not data.startswith(self.expect):
            self.tally.stale += 1
            return
        self.tally.reply(self.sent_at)
        self.send()

    def error_received(self, exc: Exception) -> None:
        pass  # the tunnel is not up yet or dropped it: the timeout resends


async def _measure(
    start_all: Callable[[_Tally], Coroutine[Any, Any, Callable[[], None]]],
    seconds: float,
    warmup_s: float,
    tick: Callable[[_Tally], None] | None = None,
) -> dict[str, Any]:
    tally = _Tally()
    stop = await start_all(tally)
    try:
        loop = asyncio.get_running_loop()
        end_warmup = loop.time() + warmup_s
        while loop.time() < end_warmup:
            await asyncio.sleep(0.02)
            if tick:
                tick(tally)
        tally.measuring = True
        t0 = time.perf_counter()
        end = loop.time() + seconds
        while loop.time() < end:
            await asyncio.sleep(0.02)
            if tick:
                tick(tally)
        elapsed = time.perf_counter() - t0
        tally.measuring = False
    finally:
        stop()
    return {
        "msgs_per_s": tally.replies / elapsed,
        "lost": tally.lost,
        "stale": tally.stale,
        "rtt": summary_ms(tally.samples),
    }


async def _tcp(addr: Address, conns: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    msg = b"M" * PAYLOAD
    clients: list[_TcpClient] = []

    async def start_all(tally: _Tally) -> Callable[[], None]:
        for _ in range(conns):
            _, proto = await loop.create_connection(lambda: _TcpClient(tally, msg), *addr)
            clients.append(proto)

        def stop() -> None:
            for c in clients:
                if c.transport is not None:
                    c.transport.close()

        return stop

    result = await _measure(start_all, seconds, warmup_s)
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), 5)
    return result


async def _udp(addr: Address, conns: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    msg = b"U" * PAYLOAD
    clients: list[_UdpClient] = []

    async def start_all(tally: _Tally) -> Callable[[], None]:
        for _ in range(conns):
            _, proto = await loop.create_datagram_endpoint(
                lambda: _UdpClient(tally, msg), remote_addr=addr
            )
            clients.append(proto)

        def stop() -> None:
            for c in clients:
                if c.transport is not None:
                    c.transport.close()

        return stop

    def resend_lost(tally: _Tally) -> None:
        now = time.perf_counter()
        for c in clients:
            if now - c.sent_at > LOST_AFTER_S:
                if tally.measuring:
                    tally.lost += 1
                c.send()

    return await _measure(start_all, seconds, warmup_s, resend_lost)


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(coro)
    return cast(dict[str, Any], uvloop.run(coro))


def tcp(
    addr: Address, *, conns: int = 50, seconds: float = 2.0, warmup_s: float = 0.3
) -> dict[str, Any]:
    """Messages/s (and sampled round trips) of `conns` concurrent TCP request/response loops."""
    return _run(_tcp(addr, conns, seconds, warmup_s))


def udp(
    addr: Address, *, conns: int = 50, seconds: float = 2.0, warmup_s: float = 0.3
) -> dict[str, Any]:
    """Messages/s of `conns` concurrent UDP request/response loops; `lost` datagrams."""
    return _run(_udp(addr, conns, seconds, warmup_s))
