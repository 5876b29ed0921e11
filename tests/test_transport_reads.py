"""`muxtunnel.transport`: sockets it hands out read one chunk per `receive()` wait.

Without that, anyio's asyncio stream lets the loop read a fast sender's socket dry while one
`receive()` waits (uvloop: up to 32 reads of 256 KiB per readiness event): megabytes queued
in our memory and an event loop busy for milliseconds.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import pytest
import testenv

from mux import read_ready
from muxtunnel.transport import connect, listen_tcp, local_port

PAYLOAD = bytes(range(256)) * 16384  # 4 MiB


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return testenv.anyio_backend(request.param)


def queued(stream: anyio.abc.SocketStream) -> int:
    protocol: Any = stream._protocol  # type: ignore[attr-defined]
    return sum(len(chunk) for chunk in protocol.read_queue)


async def check_reads(reader: anyio.abc.SocketStream, writer: anyio.abc.SocketStream) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer.send, PAYLOAD)
        received = bytearray(await reader.receive(1 << 20))
        await anyio.sleep(0.05)  # the writer keeps the socket full meanwhile
        assert queued(reader) <= 256 * 1024  # at most the one chunk that ended the wait
        while len(received) < len(PAYLOAD):
            received += await reader.receive(1 << 20)
            assert queued(reader) <= 256 * 1024
    assert received == PAYLOAD


@pytest.mark.anyio
async def test_accepted_and_connected_sockets_read_one_chunk_per_wait() -> None:
    listener = await listen_tcp("127.0.0.1", 0)
    accepted: list[anyio.abc.SocketStream] = []
    ready = anyio.Event()

    async def keep(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        ready.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, keep)
            client = await connect("127.0.0.1", local_port(listener))
            await ready.wait()
            async with client:
                await check_reads(accepted[0], client)  # the listener's side reads
                await check_reads(client, accepted[0])  # the connecting side reads
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_read_ready_takes_what_an_accepted_visitor_sent_with_its_connect() -> None:
    """What a visitor sent before it was served comes out at once (to ride its stream's SYN);
    nothing waiting, nothing read and no wait; what follows still arrives through the stream."""
    listener = await listen_tcp("127.0.0.1", 0)
    results: list[bytes] = []
    done = anyio.Event()

    async def serve(stream: anyio.abc.SocketStream) -> None:
        with anyio.fail_after(5):
            while not (early := read_ready(stream, 1024)):
                await anyio.sleep(0.01)  # the bytes are on their way through loopback
            results.append(early)
            results.append(read_ready(stream, 1024))  # nothing more waiting: no wait
            await stream.send(b"ok")
            results.append(await stream.receive())
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", local_port(listener)) as client:
                await client.send(b"GET / HTTP/1.0\r\n\r\n")
                assert await client.receive() == b"ok"
                await client.send(b"later")
                await done.wait()
        tg.cancel_scope.cancel()
    assert results == [b"GET / HTTP/1.0\r\n\r\n", b"", b"later"]
