"""A small TCP and UDP echo server: the second service behind each path, used by latency probes.

``python -m bench.echo --listen 127.0.0.1:0`` prints ``listening HOST:PORT`` when ready
and echoes every byte back (TCP_NODELAY), half-closing after the client's EOF; every UDP
datagram to the same port number goes back to its sender.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import cast


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.Transport, transport)
        sock = self.t.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.t.write(data)

    def eof_received(self) -> bool:
        if self.t.can_write_eof():
            self.t.write_eof()
        return False  # close once the reply is flushed


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.t.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # a visitor that went away: ICMP port unreachable


async def _bind_both(host: str, port: int) -> tuple[asyncio.Server, asyncio.BaseTransport]:
    """TCP and UDP on one port number (a free one for both when `port` is 0)."""
    loop = asyncio.get_running_loop()
    for _ in range(50):
        server = await loop.create_server(_Echo, host, port, reuse_address=True, backlog=1024)
        bound = server.sockets[0].getsockname()[1]
        try:
            udp, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(host, bound))
        except OSError:
            server.close()
            if port:
                raise
            continue
        return server, udp
    raise OSError("no port number free for both TCP and UDP")


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server, udp = await _bind_both(host, port)
    h, p = server.sockets[0].getsockname()[:2]
    print(f"listening {h}:{p}", flush=True)
    await stop.wait()
    server.close()
    udp.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.echo")
    ap.add_argument("--listen", default="127.0.0.1:0")
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        asyncio.run(serve(host or "127.0.0.1", int(port)))
    else:
        uvloop.run(serve(host or "127.0.0.1", int(port)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
