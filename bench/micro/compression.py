"""Compression figures: one visitor stream through a mux session over loopback TCP, with and
without zstd, on compressible and incompressible data.

    .venv/bin/python -m bench.micro.compression [--megabytes 64] [--level 3]

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--level", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.megabytes, args.level)
