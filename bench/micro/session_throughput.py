"""Session figures over loopback TCP, without pytest: MB/s for 1 and 8 streams, echo latency.

    .venv/bin/python -m bench.micro.session_throughput [--megabytes 64] [--uvloop] [--latency]
        [--resumable]

Each run opens a fresh pair of `Session`s on 127.0.0.1; the client writes `--megabytes` in all
(split evenly over the streams) and the clock stops when the server has read the last byte.
The latency probe times 64-byte echoes on one stream while another stream of the same session
carries bulk data.
"""

from __future__ import annotations

import argparse
import statistics
import time

import anyio

from mux import MuxConfig, MuxStream, Session
from mux.testing import echo_stream, session_pair

CHUNK = 64 * 1024
CONFIG = MuxConfig(enable_keepalive=False)


async def _sink(stream: MuxStream) -> None:
    """Read to EOF, then close: the writer waits for that close to stop its clock."""
    async with stream:
        while True:
            try:
                await stream.receive(1 << 20)
            except anyio.EndOfStream:
                break
        await stream.send_eof()


async def _serve(session: Session, task_group: anyio.abc.TaskGroup, echo_first: bool) -> None:
    """Echo the first stream (when asked), sink every other one."""
    first = True
    while True:
        try:
            stream = await session.accept_stream()
        except anyio.BrokenResourceError:
            return
        task_group.start_soon(echo_stream if echo_first and first else _sink, stream)
        first = False


async def _write(session: Session, size: int) -> None:
    stream = await session.open_stream()
    chunk = b"\xa5" * CHUNK
    sent = 0
    while sent < size:
        await stream.send(chunk[: size - sent])
        sent += min(CHUNK, size - sent)
    await stream.send_eof()
    with anyio.fail_after(120):
        try:
            await stream.receive()
        except anyio.EndOfStream:
            pass
    await stream.aclose()


async def throughput_mb_s(
    streams: int, total_bytes: int, carrier: str = "tcp", resumable: bool = False
) -> float:
    """MB/s (10^6 bytes per second) of `total_bytes` written over `streams` streams at once
    (`resumable`: both sessions keep what they send until receipted, as `up` and `listen` do)."""
    async with session_pair(carrier, CONFIG, resumable=resumable) as (client, server):
        async with anyio.create_task_group() as servers:
            servers.start_soon(_serve, server, servers, False)
            started = time.perf_counter()
            async with anyio.create_task_group() as writers:
                for _ in range(streams):
                    writers.start_soon(_write, client, total_bytes // streams)
            elapsed = time.perf_counter() - started
            servers.cancel_scope.cancel()
    return total_bytes / elapsed / 1e6


async def echo_latency_ms(rounds: int = 300, bulk: bool = True) -> list[float]:
    """Round-trip times of 64-byte echoes, in ms, with (or without) a bulk stream alongside."""
    times: list[float] = []
    async with session_pair("tcp", CONFIG) as (client, server):
        async with anyio.create_task_group() as servers:
            servers.start_soon(_serve, server, servers, True)
            probe = await client.open_stream()
            async with anyio.create_task_group() as bulk_group:
                if bulk:
                    bulk_group.start_soon(_write, client, 1 << 40)  # until cancelled
                    await anyio.sleep(0.2)  # let it reach full speed
                message = b"l" * 64
                for _ in range(rounds):
                    started = time.perf_counter()
                    await probe.send(message)
                    got = b""
                    while len(got) < len(message):
                        got += await probe.receive()
                    times.append((time.perf_counter() - started) * 1000)
                bulk_group.cancel_scope.cancel()
            await probe.aclose()
            servers.cancel_scope.cancel()
    return times


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64, help="bytes per run, in MiB")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--latency", action="store_true", help="also time 64-byte echoes")
    parser.add_argument(
        "--resumable", action="store_true", help="resumable sessions (replay log, receipts)"
    )
    args = parser.parse_args(argv)
    options = {"use_uvloop": True} if args.uvloop else {}
    total = args.megabytes << 20
    for streams in (1, 8):
        rate = anyio.run(
            throughput_mb_s, streams, total, "tcp", args.resumable, backend_options=options
        )
        print(f"{streams} stream{'s' if streams > 1 else ''}: {rate:7.1f} MB/s", flush=True)
    if args.latency:
        for bulk in (False, True):
            times = anyio.run(echo_latency_ms, 300, bulk, backend_options=options)
            label = "with bulk" if bulk else "idle     "
            print(
                f"64 B echo {label}: p50 {statistics.median(times):.3f} ms, "
                f"p99 {percentile(times, 0.99):.3f} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
