"""One set of byte-stream checks over every stream we have (trio's check_half_closeable_stream).

A `MuxStream` must behave like a TCP socket: the checks run against a real TCP pair, a
`MuxStream` pair over a TCP carrier and over a memory carrier, and the memory carrier itself.
Where sockets and streams legitimately differ (how a reset is made, what anyio raises for a send
after `send_eof`) the pair says so.
"""

from __future__ import annotations

import hashlib
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest

from mux import MuxConfig, MuxStream
from mux.testing import MemoryByteStream, memory_stream_pair, session_pair, tcp_stream_pair

pytestmark = pytest.mark.anyio

KINDS = ["tcp", "memory", "mux-over-tcp", "mux-over-memory"]
#: Keepalive off: these checks are about streams, and a slow CI box must not trip a timer.
CONFIG = MuxConfig(enable_keepalive=False)


@dataclass
class Pair:
    kind: str
    a: anyio.abc.ByteStream
    b: anyio.abc.ByteStream
    reset: Callable[[anyio.abc.ByteStream], object]
    #: What `send` after our own `send_eof` raises.
    send_after_eof: tuple[type[BaseException], ...]


def reset_tcp(stream: anyio.abc.ByteStream) -> object:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return stream.aclose()  # closing with linger 0 sends RST


def reset_memory(stream: anyio.abc.ByteStream) -> object:
    assert isinstance(stream, MemoryByteStream)
    stream.abort()
    return None


def reset_mux(stream: anyio.abc.ByteStream) -> object:
    assert isinstance(stream, MuxStream)
    stream.reset()
    return None


CLOSED = (anyio.ClosedResourceError, anyio.BrokenResourceError)


@asynccontextmanager
async def open_pair(kind: str) -> AsyncIterator[Pair]:
    with anyio.fail_after(30):
        if kind == "tcp":
            async with tcp_stream_pair() as (tcp_a, tcp_b):
                # anyio's asyncio socket lets the transport's RuntimeError through here.
                yield Pair(kind, tcp_a, tcp_b, reset_tcp, (*CLOSED, RuntimeError))
        elif kind == "memory":
            mem_a, mem_b = memory_stream_pair()
            async with mem_a, mem_b:
                yield Pair(kind, mem_a, mem_b, reset_memory, CLOSED)
        else:
            carrier = kind.removeprefix("mux-over-")
            async with session_pair(carrier, CONFIG) as (client, server):
                mux_a = await client.open_stream()
                mux_b = await server.accept_stream()
                async with mux_a, mux_b:
                    yield Pair(kind, mux_a, mux_b, reset_mux, CLOSED)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


async def receive_all(stream: anyio.abc.ByteStream, limit: int = 64 << 20) -> bytes:
    """Everything until EOF (at most `limit` bytes)."""
    chunks = bytearray()
    while len(chunks) <= limit:
        try:
            chunks += await stream.receive()
        except anyio.EndOfStream:
            return bytes(chunks)
    raise AssertionError(f"more than {limit} bytes without EOF")


async def test_bytes_flow_both_ways(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send(b"hello")
        assert await pair.b.receive() == b"hello"
        await pair.b.send(b"world")
        assert await pair.a.receive() == b"world"


async def test_receive_respects_max_bytes(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send(b"0123456789")
        got = b""
        for _ in range(20):
            chunk = await pair.b.receive(3)
            assert 1 <= len(chunk) <= 3
            got += chunk
            if len(got) == 10:
                break
        assert got == b"0123456789"


async def test_half_close_both_ways(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send(b"request")
        await pair.a.send_eof()
        assert await receive_all(pair.b) == b"request"
        # b can still talk after a's EOF, and a can still listen.
        await pair.b.send(b"response")
        await pair.b.send_eof()
        assert await receive_all(pair.a) == b"response"


async def test_receive_after_eof_keeps_raising_end_of_stream(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send_eof()
        for _ in range(3):
            with pytest.raises(anyio.EndOfStream):
                await pair.b.receive()


async def test_send_after_send_eof_fails(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send(b"last words")
        await pair.a.send_eof()
        with pytest.raises(pair.send_after_eof):
            await pair.a.send(b"more")
        assert await receive_all(pair.b) == b"last words"


async def test_send_eof_twice_is_harmless(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send_eof()
        await pair.a.send_eof()
        assert await receive_all(pair.b) == b""


async def test_operations_after_aclose_raise_closed(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.aclose()
        await pair.a.aclose()  # idempotent
        with pytest.raises(anyio.ClosedResourceError):
            await pair.a.send(b"x")
        with pytest.raises(anyio.ClosedResourceError):
            await pair.a.receive()
        assert await receive_all(pair.b) == b""


async def test_aclose_after_eof_received_then_receive_raises_closed(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.b.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await pair.a.receive()
        await pair.a.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await pair.a.receive()


async def test_aclose_with_unread_data_then_operations_raise_closed(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.b.send(b"unread")
        await anyio.sleep(0.05)
        await pair.a.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await pair.a.receive()
        with pytest.raises(anyio.ClosedResourceError):
            await pair.a.send(b"x")


async def test_reset_fails_the_peer_not_eof(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.a.send(b"before the reset")
        await anyio.sleep(0.05)  # let the bytes arrive first
        closing = pair.reset(pair.a)
        if closing is not None:
            await closing  # type: ignore[misc]
        received = b""
        with pytest.raises(anyio.BrokenResourceError):
            for _ in range(100):
                received += await pair.b.receive()
        # Bytes that arrived before the reset are read first, whole (as TCP does on Linux).
        assert received == b"before the reset"
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            for _ in range(1000):  # TCP may accept a send or two before it notices
                await pair.b.send(b"into the void")
                await anyio.sleep(0.005)


async def test_close_with_unread_data_resets_the_peer(kind: str) -> None:
    async with open_pair(kind) as pair:
        await pair.b.send(b"never read")
        await anyio.sleep(0.05)
        await pair.a.aclose()
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            for _ in range(1000):
                await pair.b.send(b"more")
                await anyio.sleep(0.005)


async def test_large_transfer_both_ways_at_once(kind: str) -> None:
    size = 8 << 20
    async with open_pair(kind) as pair:
        forward = hashlib.shake_256(b"forward").digest(size)
        backward = hashlib.shake_256(b"backward").digest(size)
        digests: dict[str, str] = {}

        async def send(stream: anyio.abc.ByteStream, payload: bytes) -> None:
            view = memoryview(payload)
            for offset in range(0, len(payload), 100_000):
                await stream.send(bytes(view[offset : offset + 100_000]))
            await stream.send_eof()

        async def receive(name: str, stream: anyio.abc.ByteStream) -> None:
            digests[name] = hashlib.sha256(await receive_all(stream)).hexdigest()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, pair.a, forward)
                tg.start_soon(send, pair.b, backward)
                tg.start_soon(receive, "at b", pair.b)
                tg.start_soon(receive, "at a", pair.a)
        assert digests["at b"] == hashlib.sha256(forward).hexdigest()
        assert digests["at a"] == hashlib.sha256(backward).hexdigest()
