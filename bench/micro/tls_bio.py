"""TLS carrier transports compared: the loop's SSL transport (memory BIO) vs a socket BIO.

    .venv/bin/python -m bench.micro.tls_bio [--gibibytes 2] [--rounds 3]

Each round runs both transports in turn (order alternating), each as two processes under
uvloop on 127.0.0.1: a sender that writes `--gibibytes` as the carrier does (a 12-byte frame
header and a 64 KiB payload per `writelines`, waiting at a 256 KiB write buffer) and a receiver
that takes them into fresh buffers as the carrier does (`get_buffer`, at most 256 KiB). Printed
per run: CPU seconds per GiB of each process (`time.process_time`, handshake excluded) and the
throughput. `loop` is what `mux.start_tls` gives the carrier (`loop.start_tls`); `socket` is
`bench.micro.tls_socket.TlsSocketTransport` over a non-blocking `ssl.SSLSocket`.

Only ratios of runs of one invocation mean anything; on a machine others share, say so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from bench.micro.tls_socket import TlsSocketTransport
from muxtunnel.certgen import generate_self_signed

GIB = 1 << 30
HEADER = b"\0" * 12  # a yamux frame header's size
PAYLOAD = memoryview(bytes(64 * 1024))  # a full Data frame (`max_frame_bytes`)
#: The carrier's figures (`mux._carrier.TransportCarrier`): its write limit, its largest read.
WRITE_HIGH_BYTES = 256 * 1024
MAX_BUFFER_BYTES = 256 * 1024
#: How long the sender waits after connecting before its ClientHello, so that the receiver's
#: loop transport exists by then and cannot read (and lose) it.
SETTLE_S = 0.5


class Receiver(asyncio.BufferedProtocol):
    """Counts what arrives, into a fresh buffer per read as the TLS carrier does."""

    def __init__(self, total: int, done: asyncio.Future[None]) -> None:
        self.total = total
        self.received = 0
        self.done = done
        self.buffer = memoryview(b"")

    def get_buffer(self, sizehint: int) -> memoryview:
        size = min(sizehint, MAX_BUFFER_BYTES) if sizehint > 0 else 64 * 1024
        self.buffer = memoryview(bytearray(size))
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.received >= self.total and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before the last byte"))


class Sender(asyncio.Protocol):
    """Waits while the transport holds more than its limit."""

    def __init__(self) -> None:
        self.room = asyncio.Event()
        self.room.set()

    def pause_writing(self) -> None:
        self.room.clear()

    def resume_writing(self) -> None:
        self.room.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.room.set()


async def _socket_handshake(
    sock: socket.socket, context: ssl.SSLContext, server_side: bool, protocol: Any
) -> TlsSocketTransport:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    tls = context.wrap_socket(
        sock, server_side=server_side, do_handshake_on_connect=False, suppress_ragged_eofs=False
    )
    while True:
        try:
            tls.do_handshake()
            break
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
            ready = loop.create_future()
            wait = loop.add_reader if isinstance(exc, ssl.SSLWantReadError) else loop.add_writer
            wait(tls.fileno(), ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_reader(tls.fileno())
                loop.remove_writer(tls.fileno())
    return TlsSocketTransport(loop, tls, protocol, shutdown_timeout_s=5.0)


async def _loop_handshake(
    sock: socket.socket, context: ssl.SSLContext, server_side: bool, protocol: Any
) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    if server_side:
        plain, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock)
    else:
        plain, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
    tls = await loop.start_tls(plain, protocol, context, server_side=server_side)
    assert tls is not None
    return tls


async def receive(kind: str, listener: socket.socket, cert: str, key: str, total: int) -> None:
    """The receiving process: one connection, `total` bytes, then a JSON line of figures."""
    loop = asyncio.get_running_loop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener.setblocking(False)
    sock, _ = await loop.sock_accept(listener)
    done: asyncio.Future[None] = loop.create_future()
    protocol = Receiver(total, done)
    handshake = _socket_handshake if kind == "socket" else _loop_handshake
    transport = await handshake(sock, context, True, protocol)
    if isinstance(transport, TlsSocketTransport):
        transport.resume_reading()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await done
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    transport.close()
    print(json.dumps({"recv_cpu_s": cpu, "wall_s": wall}), flush=True)
    await asyncio.sleep(0.2)


async def send(kind: str, port: int, total: int) -> None:
    """The sending process: `total` bytes as frames, then a JSON line of figures."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.sleep(SETTLE_S)
    protocol = Sender()
    handshake = _socket_handshake if kind == "socket" else _loop_handshake
    transport = await handshake(sock, context, False, protocol)
    transport.set_protocol(protocol)
    transport.set_write_buffer_limits(WRITE_HIGH_BYTES, WRITE_HIGH_BYTES // 4)
    cpu0 = time.process_time()
    sent = 0
    while sent < total:
        transport.writelines([HEADER, PAYLOAD])
        sent += len(PAYLOAD)
        if not protocol.room.is_set():
            await protocol.room.wait()
    while transport.get_write_buffer_size() and not transport.is_closing():
        await asyncio.sleep(0.001)
    cpu = time.process_time() - cpu0
    print(json.dumps({"send_cpu_s": cpu}), flush=True)
    await asyncio.sleep(1.0)  # the receiver closes first
    transport.close()


def run_once(kind: str, total: int, cert: Path, key: Path) -> dict[str, float]:
    """One transfer with `kind` on both ends; figures per GiB."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    me = [sys.executable, "-m", "bench.micro.tls_bio"]
    recv = subprocess.Popen(
        [*me, "--role", "recv", "--kind", kind, "--fd", str(listener.fileno()), "--total",
         str(total), "--cert", str(cert), "--key", str(key)],
        stdout=subprocess.PIPE, pass_fds=(listener.fileno(),), text=True,
    )  # fmt: skip
    listener.close()
    sender = subprocess.Popen(
        [*me, "--role", "send", "--kind", kind, "--port", str(port), "--total", str(total)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    out_send, _ = sender.communicate(timeout=300)
    out_recv, _ = recv.communicate(timeout=60)
    figures = {**json.loads(out_send), **json.loads(out_recv)}
    gib = total / GIB
    return {
        "send_cpu_s_per_gib": figures["send_cpu_s"] / gib,
        "recv_cpu_s_per_gib": figures["recv_cpu_s"] / gib,
        "gbit_s": total * 8 / figures["wall_s"] / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gibibytes", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--role", choices=["recv", "send"], help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=["loop", "socket"], help=argparse.SUPPRESS)
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--total", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--cert", help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "recv":
        listener = socket.socket(fileno=args.fd)
        uvloop.run(receive(args.kind, listener, args.cert, args.key, args.total))
        return
    if args.role == "send":
        uvloop.run(send(args.kind, args.port, args.total))
        return
    total = int(args.gibibytes * GIB)
    with tempfile.TemporaryDirectory() as tmp:
        cert_pem, key_pem, _ = generate_self_signed(["127.0.0.1"])
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        load = Path("/proc/loadavg").read_text()[:14]
        print(f"{args.gibibytes:g} GiB per run, load average {load}")
        for round_ in range(args.rounds):
            kinds = ("loop", "socket") if round_ % 2 == 0 else ("socket", "loop")
            for kind in kinds:
                f = run_once(kind, total, cert, key)
                print(
                    f"{kind:6}  send {f['send_cpu_s_per_gib']:.2f} CPU s/GiB  "
                    f"recv {f['recv_cpu_s_per_gib']:.2f} CPU s/GiB  {f['gbit_s']:.2f} Gbit/s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
