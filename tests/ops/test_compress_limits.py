"""Compression through the tunnel; bandwidth and connection limits enforced by the server."""

from __future__ import annotations

import os

import anyio
import anyio.abc
import pytest

from muxtunnel.compress import CompressedStream
from muxtunnel.model import ServicePolicy
from muxtunnel.web.metrics import StatusCollector, render

from .helpers import (
    WAIT_S,
    client_config,
    digest,
    echo_service,
    echo_through,
    public_port,
    running_client,
    running_server,
    server_config,
    tcp,
    wait_until,
)

pytestmark = pytest.mark.anyio


async def test_compressed_service_round_trip(capsys: pytest.CaptureFixture[str]) -> None:
    text = b"".join(b"line %d of a very compressible log\n" % i for i in range(40_000))
    noise = os.urandom(500_000)
    async with echo_service() as local, running_server(server_config()) as server:
        assert server.port is not None
        spec = tcp("logs", local, compression="zstd", compression_level=6)
        async with running_client(client_config(server.port, spec)) as client:
            assert server.registry.by_name["logs"].compression == "zstd"
            assert client.services["logs"].compression == "zstd"
            port = public_port(client, "logs")
            for payload in (text, noise, b"x"):
                assert digest(await echo_through(port, payload)) == digest(payload)
            # What compression did can be seen: carrier bytes before and after, both sides.
            sent = 2 * (len(text) + len(noise) + 1)  # each payload went there and back
            for status in (server.status(), client.status()):
                (row,) = [row for row in status.services if row.name == "logs"]
                carrier = row.to_dict()["carrier_bytes"]
                assert carrier["plain"] == sent, carrier
                assert len(noise) * 2 < carrier["compressed"] < sent * 0.75, carrier
                metrics = render(StatusCollector(lambda s=status: s)).decode()  # type: ignore[misc]
                for stage, value in carrier.items():
                    name = "muxtunnel_service_carrier_bytes_total"
                    name += f'{{service="logs",stage="{stage}"}}'
                    (line,) = [ln for ln in metrics.splitlines() if ln.startswith(name + " ")]
                    assert float(line.rsplit(" ", 1)[1]) == value, line
            # The server caps the level at 3 (server.compression_level_max): the client says so.
            lowered = [ln for ln in capsys.readouterr().out.splitlines() if "level lowered" in ln]
            assert len(lowered) == 1 and "asked=6" in lowered[0] and "capped_to=3" in lowered[0]


async def test_compression_is_off_when_the_server_policy_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = ServicePolicy("logs", compression=False)
    async with echo_service() as local, running_server(server_config(services=(policy,))) as s:
        assert s.port is not None
        spec = tcp("logs", local, compression="zstd")
        async with running_client(client_config(s.port, spec)) as client:
            assert client.services["logs"].compression is None
            assert await echo_through(public_port(client, "logs"), b"plain") == b"plain"
            (row,) = client.status().services
            assert "carrier_bytes" not in row.to_dict()
    refused = [ln for ln in capsys.readouterr().out.splitlines() if "compression refused" in ln]
    assert len(refused) == 1 and "service=logs" in refused[0], refused


async def test_compressed_stream_flushes_every_write() -> None:
    left, right = anyio.create_memory_object_stream[bytes](100)

    class Pipe(anyio.abc.ByteStream):
        async def send(self, item: bytes) -> None:
            await left.send(item)

        async def receive(self, max_bytes: int = 65536) -> bytes:
            return await right.receive()

        async def send_eof(self) -> None:
            await left.aclose()

        async def aclose(self) -> None:
            await left.aclose()

    sender, receiver = CompressedStream(Pipe()), CompressedStream(Pipe())
    await sender.send(b"ping " * 1000)
    assert await receiver.receive(1 << 20) == b"ping " * 1000  # no waiting for more input
    assert sender.wire_sent < sender.plain_sent / 20


RATE = 1_000_000  # bytes per second, each direction
#: The ceiling is the limit's promise (within 10% over 3 s). The floor only catches a limiter
#: that throttles far below its rate (a bucket refilled at half speed, or counting bytes twice,
#: gives 0.5x or less); late timer wake-ups on a loaded 2-core machine cost up to ~20%.
FLOOR, CEILING = 0.75, 1.1


async def _source(stream: anyio.abc.SocketStream) -> None:
    """Local service: sends as fast as it may, and counts what it receives."""
    block = os.urandom(64 * 1024)
    try:
        while True:
            await stream.send(block)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass


async def _measure(receive: anyio.abc.ByteReceiveStream, seconds: float) -> float:
    """Bytes per second over `seconds`, counted from the first byte."""
    await receive.receive()
    started, total = anyio.current_time(), 0
    with anyio.move_on_after(seconds):
        while True:
            total += len(await receive.receive())
    return total / (anyio.current_time() - started)


async def test_bandwidth_limit_holds_both_ways() -> None:
    uploads: list[float] = []

    async def service(stream: anyio.abc.SocketStream) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_source, stream)
            uploads.append(await _measure(stream, 3.0))
            tg.cancel_scope.cancel()

    policy = ServicePolicy("bulk", bandwidth_bytes_per_s=RATE)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    local = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with (
        anyio.create_task_group() as tg,
        running_server(server_config(services=(policy,))) as s,
    ):
        tg.start_soon(listener.serve, service)
        assert s.port is not None
        async with running_client(client_config(s.port, tcp("bulk", local))) as client:
            async with await anyio.connect_tcp("127.0.0.1", public_port(client, "bulk")) as visitor:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(_source, visitor)
                    download = await _measure(visitor, 3.0)
                    await wait_until(lambda: uploads, WAIT_S)
                    inner.cancel_scope.cancel()
        tg.cancel_scope.cancel()
    print(f"download {download:.0f} B/s, upload {uploads[0]:.0f} B/s, limit {RATE}")
    assert FLOOR * RATE <= download <= CEILING * RATE, download
    assert FLOOR * RATE <= uploads[0] <= CEILING * RATE, uploads[0]


async def test_max_connections_per_service(capsys: pytest.CaptureFixture[str]) -> None:
    policy = ServicePolicy("web", max_connections=2)
    async with echo_service() as local, running_server(server_config(services=(policy,))) as s:
        assert s.port is not None
        async with running_client(client_config(s.port, tcp("web", local))) as client:
            port = public_port(client, "web")
            first = await anyio.connect_tcp("127.0.0.1", port)
            second = await anyio.connect_tcp("127.0.0.1", port)
            for stream in (first, second):
                await stream.send(b"hi")
                assert await stream.receive() == b"hi"
            third = await anyio.connect_tcp("127.0.0.1", port)
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                with anyio.fail_after(WAIT_S):
                    await third.send(b"hi")
                    await third.receive()
            # Counted (the metrics' muxtunnel_refusals_total) and logged, naming the limit.
            assert s.status().refusals["max_connections"] == 1
            (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "refused" in ln]
            assert "has max_connections open" in line and "service=web" in line, line
            await first.aclose()
            await wait_until(lambda: s.registry.by_name["web"].visitors < 2)
            assert await echo_through(port, b"again") == b"again"
            await second.aclose()
            await third.aclose()


async def test_a_decompression_bomb_costs_no_more_than_honest_data() -> None:
    """80 KB of RLE blocks would regenerate 2.6 GB in one call; reads stay about 1 MiB each."""
    rle_block = ((128 * 1024) << 3 | 1 << 1).to_bytes(3, "little") + b"\x00"
    bomb = b"\x28\xb5\x2f\xfd" + b"\x00\x38" + rle_block * 20_000
    chunks = [bomb]

    class Source(anyio.abc.ByteStream):
        async def send(self, item: bytes) -> None:
            raise NotImplementedError

        async def receive(self, max_bytes: int = 65536) -> bytes:
            if not chunks:
                raise anyio.EndOfStream
            return chunks.pop()

        async def send_eof(self) -> None:
            pass

        async def aclose(self) -> None:
            pass

    stream = CompressedStream(Source())
    total = 0
    for _ in range(20):
        data = await stream.receive(4 << 20)
        assert len(data) <= 2 << 20
        assert len(stream._ready) <= 2 << 20  # nothing piles up behind the read either
        total += len(data)
    assert total >= 20 << 20  # it does decompress, in bounded steps


@pytest.mark.parametrize("split", [1, 7, 4096])
async def test_block_headers_split_anywhere_still_decompress(split: int) -> None:
    writes = [b"abc" * 5000, os.urandom(70_000), b"", b"z" * 300_000, b"tail"]
    wire = bytearray()

    class Sink(anyio.abc.ByteStream):
        async def send(self, item: bytes) -> None:
            wire.extend(item)

        async def receive(self, max_bytes: int = 65536) -> bytes:
            raise NotImplementedError

        async def send_eof(self) -> None:
            pass

        async def aclose(self) -> None:
            pass

    sender = CompressedStream(Sink(), level=1)
    for item in writes:
        await sender.send(item)
    pieces = [bytes(wire[i : i + split]) for i in range(0, len(wire), split)][::-1]

    class Source(Sink):
        async def receive(self, max_bytes: int = 65536) -> bytes:
            if not pieces:
                raise anyio.EndOfStream
            return pieces.pop()

    receiver, got = CompressedStream(Source()), bytearray()
    with pytest.raises(anyio.EndOfStream):
        while True:
            got += await receiver.receive()
    assert bytes(got) == b"".join(writes)
