"""HTTP requests/s through the vhost engine vs a raw byte pipe to the same backend (loopback).

    .venv/bin/python -m bench.micro.vhost_proxy [--seconds 5] [--connections 8] [--uvloop]
        [--no-keepalive] [--profile FILE.svg]

Three processes: a backend (asyncio, answers every request head with a fixed 13-byte body), a
relay, and a load generator (asyncio, `--connections` connections, each sending its next
request when the previous response is complete). The relay is either a raw `proxy.pipe` per
connection (what a plain TCP service costs, without the multiplexer) or
`VhostEngine.serve_http` routing by Host. Both relays use the project's listener and dialer.
Prints requests/s, p50/p99 latency per path, and the ratio vhost / raw pipe (the issue's
target for the integrated path is >= 70% of a plain TCP service with keep-alive; both sides of
that comparison also pay for the mux, which this bench leaves out, so this ratio is the harsher
one). `--profile` runs the vhost relay under py-spy and writes a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
)
HOST = "app.example.com"


# ---------------------------------------------------------------------------------- backend


class _Backend(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        count = data.count(b"\r\n\r\n")
        self.tail = data[-3:]
        if count:
            self.transport.write(RESPONSE * count)  # type: ignore[attr-defined]
            if b"connection: close" in data.lower():
                self.transport.close()


async def _run_backend() -> None:
    server = await asyncio.get_running_loop().create_server(_Backend, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


# ---------------------------------------------------------------------------------- relays


async def _run_relay(kind: str, backend_port: int, mux: bool) -> None:
    """Serve visitors on a port (printed); with `mux`, reach the backend through a mux session
    to a `muxclient` process (the carrier port is printed second), as `listen` reaches `up`."""
    import anyio

    from mux import Session
    from muxtunnel.transport import listen_tcp, local_port

    listener = await listen_tcp("127.0.0.1", 0)
    print(local_port(listener), flush=True)
    session: Session | None = None
    if mux:
        carriers = await listen_tcp("127.0.0.1", 0)
        print(local_port(carriers), flush=True)
        accepted: list[anyio.abc.SocketStream] = []
        got_one = anyio.Event()

        async def take(stream: anyio.abc.SocketStream) -> None:
            accepted.append(stream)
            got_one.set()
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(carriers.serve, take)
            await got_one.wait()
            async with Session(accepted[0], client=False) as session:
                await _serve_visitors(kind, listener, backend_port, session)
        return
    await _serve_visitors(kind, listener, backend_port, None)


async def _serve_visitors(kind: str, listener: object, backend_port: int, session: object) -> None:
    import anyio

    from mux import Session
    from muxtunnel.proxy import pipe
    from muxtunnel.transport import connect
    from muxtunnel.vhost import DirectUpstream, RouteTarget, VhostEngine, Visitor

    assert isinstance(listener, anyio.abc.Listener)
    assert session is None or isinstance(session, Session)

    async def open_upstream() -> anyio.abc.ByteStream:
        if session is not None:
            return await session.open_stream()
        return await connect("127.0.0.1", backend_port)

    if kind == "pipe":

        async def handle(stream: anyio.abc.SocketStream) -> None:
            await pipe(stream, await open_upstream())

        await listener.serve(handle)
        return

    class MuxUpstream(DirectUpstream):
        async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
            return await open_upstream()

    engine = VhostEngine(MuxUpstream({}))
    engine.http_routes.add(RouteTarget("app", "bench"), [HOST])
    await listener.serve(engine.serve_http)


async def _run_mux_client(carrier_port: int, backend_port: int) -> None:
    """The `up` side: one carrier to the relay, every stream piped to the backend."""
    import anyio

    from mux import Session
    from muxtunnel.proxy import pipe
    from muxtunnel.transport import connect

    carrier = await connect("127.0.0.1", carrier_port)
    async with Session(carrier, client=True) as session, anyio.create_task_group() as tg:
        while True:
            stream = await session.accept_stream()

            async def serve(stream: anyio.abc.ByteStream = stream) -> None:
                await pipe(stream, await connect("127.0.0.1", backend_port))

            tg.start_soon(serve)


# ---------------------------------------------------------------------------------- client


class _Client(asyncio.Protocol):
    """Sends a request, reads one response (Content-Length framed), repeats."""

    def __init__(self, request: bytes, done: asyncio.Future[None] | None) -> None:
        self.request = request
        self.buffer = b""
        self.waiter: asyncio.Future[None] | None = None
        self.closed = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].lower()
        start = head.find(b"content-length:") + 15
        length = int(head[start : head.find(b"\r\n", start) if b"\r\n" in head[start:] else None])
        if len(self.buffer) >= head_end + 4 + length:
            self.buffer = self.buffer[head_end + 4 + length :]
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    async def ask(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(self.request)  # type: ignore[attr-defined]
        await self.waiter


async def _worker(port: int, keepalive: bool, stop_at: float, latencies: list[float]) -> None:
    loop = asyncio.get_running_loop()
    headers = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    if keepalive:
        _, client = await loop.create_connection(
            lambda: _Client((headers + "\r\n").encode(), None), "127.0.0.1", port
        )
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await client.ask()
            latencies.append(time.perf_counter() - started)
        client.transport.close()
        return
    request = (headers + "Connection: close\r\n\r\n").encode()
    while time.perf_counter() < stop_at:
        started = time.perf_counter()
        transport, client = await loop.create_connection(
            lambda: _Client(request, None), "127.0.0.1", port
        )
        await client.ask()
        transport.close()
        latencies.append(time.perf_counter() - started)


async def _run_client(port: int, seconds: float, connections: int, keepalive: bool) -> None:
    latencies: list[float] = []
    await asyncio.gather(
        *(_worker(port, keepalive, time.perf_counter() + 0.5, []) for _ in range(connections))
    )
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(_worker(port, keepalive, stop_at, latencies) for _ in range(connections))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(f"{len(latencies) / elapsed:.0f} {p50:.3f} {p99:.3f}", flush=True)


# ---------------------------------------------------------------------------------- driver


def _spawn(*args: str, uvloop: bool) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "bench.micro.vhost_proxy", *args]
    if uvloop:
        command.append("--uvloop")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _spawn_relay(
    kind: str, backend_port: int, args: argparse.Namespace, processes: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], int]:
    """A relay (and, with --mux, its mux client process); returns the relay and its port."""
    extra = ["--mux"] if args.mux else []
    relay, port = _spawn("--role", kind, "--port", str(backend_port), *extra, uvloop=args.uvloop)
    processes.append(relay)
    if args.mux:
        assert relay.stdout is not None
        carrier_port = int(relay.stdout.readline())
        client = subprocess.Popen(
            [sys.executable, "-m", "bench.micro.vhost_proxy", "--role", "muxclient",
             "--port", str(backend_port), "--carrier-port", str(carrier_port)]
            + (["--uvloop"] if args.uvloop else []),
        )  # fmt: skip
        processes.append(client)
    return relay, port


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(port: int, args: argparse.Namespace, relay: int | None = None) -> tuple[float, ...]:
    command = [sys.executable, "-m", "bench.micro.vhost_proxy", "--role", "client",
               "--port", str(port), "--seconds", str(args.seconds),
               "--connections", str(args.connections)]  # fmt: skip
    if not args.keepalive:
        command.append("--no-keepalive")
    if args.uvloop:
        command.append("--uvloop")
    cpu_before = _cpu_s(relay) if relay else 0.0
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=args.seconds + 60
    )
    rate, p50, p99 = (float(x) for x in out.stdout.split())
    # The client's warm-up (0.5 s) and measurement both fall in the CPU window: per request,
    # divide by every request of both, estimated at the measured rate.
    cpu_us = (_cpu_s(relay) - cpu_before) / (rate * (args.seconds + 0.5)) * 1e6 if relay else 0.0
    return rate, p50, p99, cpu_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    roles = ["driver", "backend", "pipe", "vhost", "client", "muxclient"]
    parser.add_argument("--role", choices=roles, default="driver")
    parser.add_argument("--carrier-port", type=int, default=0)
    parser.add_argument(
        "--mux",
        action="store_true",
        help="relays reach the backend through a mux session to a second process (as listen/up)",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--no-keepalive", dest="keepalive", action="store_false")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy profile of the vhost relay: a flame graph (.svg) or collapsed stacks (.txt)",
    )
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.install()
    if args.role == "backend":
        asyncio.run(_run_backend())
        return
    if args.role in ("pipe", "vhost"):
        import anyio

        anyio.run(_run_relay, args.role, args.port, args.mux, backend="asyncio")
        return
    if args.role == "muxclient":
        import anyio

        anyio.run(_run_mux_client, args.carrier_port, args.port, backend="asyncio")
        return
    if args.role == "client":
        asyncio.run(_run_client(args.port, args.seconds, args.connections, args.keepalive))
        return

    os.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    backend, backend_port = _spawn("--role", "backend", uvloop=args.uvloop)
    processes = [backend]
    try:
        rows = [("direct", _measure(backend_port, args))]
        pipe, pipe_port = _spawn_relay("pipe", backend_port, args, processes)
        rows.append(("raw pipe", _measure(pipe_port, args, pipe.pid)))
        vhost, vhost_port = _spawn_relay("vhost", backend_port, args, processes)
        spy = None
        if args.profile:
            py_spy = shutil.which("py-spy") or os.path.join(
                os.path.dirname(sys.executable), "py-spy"
            )
            fmt = "raw" if args.profile.endswith(".txt") else "flamegraph"
            spy = subprocess.Popen(
                [py_spy, "record", "--pid", str(vhost.pid), "-o", args.profile, "-f", fmt,
                 "-r", "250", "-d", str(int(args.seconds + 1.5))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        rows.append(("vhost", _measure(vhost_port, args, vhost.pid)))
        if spy is not None:
            spy.wait(60)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(30)
    mode = "keep-alive" if args.keepalive else "a new connection per request"
    if args.mux:
        mode += ", relays reach the backend through a mux session (as listen/up)"
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"HTTP GET, {mode}, {args.connections} connections, {args.seconds:g} s each, {loop}")
    print(f"{'path':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'relay CPU us/req':>17}")
    for name, (rate, p50, p99, cpu_us) in rows:
        cpu = f"{cpu_us:>17.0f}" if cpu_us else f"{'-':>17}"
        print(f"{name:<10} {rate:>9.0f} {p50:>8.3f} {p99:>8.3f} {cpu}")
    ratio = rows[2][1][0] / rows[1][1][0]
    print(f"vhost / raw pipe: {ratio:.2f}")


if __name__ == "__main__":
    main()
