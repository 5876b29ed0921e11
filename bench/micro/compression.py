"""Compression figures: one visitor stream through a mux session over loopback TCP, with and
without zstd, on compressible and incompressible data.

    .venv/bin/python -m bench.micro.compression [--megabytes 64] [--level 3]
    .venv/bin/python -m bench.micro.compression --memory

`--memory` prints what a compressed visitor stream holds per level instead: the RSS growth of
a fresh process per level with 100 streams that each carried one byte each way (what an idle
visitor costs), beside the estimate a session's compression budget is charged
(`compress.stream_memory_bytes`: contexts plus a full window, what a busy stream can reach).

Each row writes `--megabytes` in 64 KiB writes (the size `proxy.pipe` hands over at most is
256 KiB; 64 KiB is closer to what an interactive protocol or a loaded socket yields) on one
stream and stops the clock when the far side has read (and decompressed) the last byte.
"wire" is what crossed the mux stream, so wire/plain is the saving on the carrier.
"""

from __future__ import annotations

import argparse
import os
import time

import anyio
import anyio.abc

from mux import MuxConfig, MuxStream
from mux.testing import session_pair
from muxtunnel.compress import CompressedStream

WRITE_BYTES = 64 * 1024
CONFIG = MuxConfig(enable_keepalive=False)


def compressible(size: int) -> bytes:
    """Log-like text: repeated structure with changing numbers (zstd level 3: about 6x)."""
    lines = []
    total = i = 0
    while total < size:
        line = (
            f"2024-05-01T12:{i % 60:02d}:{i * 7 % 60:02d}Z INFO request id={i * 2654435761 % 10**9}"
            f" path=/api/v1/items/{i % 977} status=200 bytes={i * 31 % 65536} ms={i % 250}\n"
        ).encode()
        lines.append(line)
        total += len(line)
        i += 1
    return b"".join(lines)[:size]


async def run_once(data: bytes, level: int | None) -> tuple[float, int]:
    """Seconds to carry `data` one way, and the bytes that crossed the mux stream."""
    async with session_pair("tcp", CONFIG) as (client, server):
        sent = await client.open_stream()
        received: MuxStream = await server.accept_stream()
        writer: anyio.abc.ByteStream = sent
        reader: anyio.abc.ByteStream = received
        if level is not None:
            writer, reader = CompressedStream(sent, level), CompressedStream(received, level)
        got = 0
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:

            async def write() -> None:
                for offset in range(0, len(data), WRITE_BYTES):
                    await writer.send(data[offset : offset + WRITE_BYTES])
                await writer.send_eof()

            tg.start_soon(write)
            while got < len(data):
                got += len(await reader.receive(1 << 20))
        elapsed = time.perf_counter() - started
        wire = writer.wire_sent if isinstance(writer, CompressedStream) else len(data)
        return elapsed, wire


async def main(megabytes: int, level: int) -> None:
    size = megabytes * 1024 * 1024
    cases = {"compressible": compressible(size), "incompressible": os.urandom(size)}
    print(f"{megabytes} MiB one way, {WRITE_BYTES // 1024} KiB writes, zstd level {level}")
    print(f"{'data':16} {'mode':6} {'MB/s':>8} {'wire/plain':>11}")
    for name, data in cases.items():
        for mode, chosen in (("plain", None), ("zstd", level)):
            elapsed, wire = await run_once(data, chosen)
            rate = len(data) / elapsed / 1e6
            print(f"{name:16} {mode:6} {rate:8.1f} {wire / len(data):11.3f}")


_MEMORY_PROBE = """
import os, sys
from bench.procstat import rss_mib
from muxtunnel.compress import CompressedStream
level, streams = int(sys.argv[1]), int(sys.argv[2])
import anyio
class Loop(anyio.abc.ByteStream):  # what is sent comes back: one byte each way per stream
    def __init__(self): self.data = b""
    async def send(self, item): self.data += item
    async def receive(self, max_bytes=65536): data, self.data = self.data, b""; return data
    async def send_eof(self): pass
    async def aclose(self): pass
async def run():
    held = []
    before = rss_mib(os.getpid())
    for _ in range(streams):
        stream = CompressedStream(Loop(), level)
        await stream.send(b"x")
        assert await stream.receive() == b"x"
        held.append(stream)
    print((rss_mib(os.getpid()) - before) / streams)
anyio.run(run)
"""


def memory(levels: tuple[int, ...] = (1, 3, 5, 7, 9, 12, 19), streams: int = 100) -> None:
    """RSS per compressed stream (one byte each way), each level in a fresh process."""
    import subprocess
    import sys

    from muxtunnel.compress import stream_memory_bytes

    print(f"zstd memory per compressed stream, {streams} streams per level")
    print(f"{'level':>5} {'RSS MiB (1 byte)':>17} {'budget charge MiB':>18}")
    for level in levels:
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(level), str(streams)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        charge = stream_memory_bytes(level) / 2**20
        print(f"{level:5} {float(out):17.2f} {charge:18.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--level", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="memory per stream and level")
    args = parser.parse_args()
    if args.memory:
        memory()
    else:
        anyio.run(main, args.megabytes, args.level)
