"""`muxtunnel.relay.Relay`: a visitor's socket and its mux stream, relayed by callbacks.

Each test wires a real loopback socket pair and a real session pair: `forward` takes over
one end of the socket pair (`sock`) and relays it to a mux stream (`stream`) whose other end
(`peer`) the test drives, as the far side of the tunnel would; `ext` is the socket's peer
(the visitor, or the local service).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest
import testenv

from mux import MuxConfig, MuxStream, StreamResetError
from mux.testing import session_pair, tcp_stream_pair
from muxtunnel.forward import forward
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.model import ServicePolicy
from muxtunnel.proxy import PipeResult
from muxtunnel.relay import Relay

QUIET = MuxConfig(enable_keepalive=False)
MIB = 1024 * 1024


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return testenv.anyio_backend(request.param)


@dataclass
class Wiring:
    ext: anyio.abc.SocketStream
    sock: anyio.abc.SocketStream
    stream: MuxStream
    peer: MuxStream
    traffic: ServiceTraffic
    result: list[PipeResult]
    done: anyio.Event


@asynccontextmanager
async def relayed(
    config: MuxConfig = QUIET, limiter: ServiceLimiter | None = None
) -> AsyncIterator[Wiring]:
    async with (
        session_pair("tcp", config) as (client, server),
        tcp_stream_pair() as (ext, sock),
        anyio.create_task_group() as tg,
    ):
        stream = await server.open_stream()
        peer = await client.accept_stream()
        traffic = ServiceTraffic()
        wiring = Wiring(ext, sock, stream, peer, traffic, [], anyio.Event())

        async def run() -> None:
            wiring.result.append(
                await forward(
                    sock,
                    stream,
                    visitor_side=True,
                    service="svc",
                    peer="test",
                    traffic=traffic,
                    limiter=limiter,
                )
            )
            wiring.done.set()

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        yield wiring
        tg.cancel_scope.cancel()


async def receive_exactly(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return data


@pytest.mark.anyio
async def test_bytes_and_half_closes_go_both_ways_through_the_relay() -> None:
    with anyio.fail_after(10):
        async with relayed() as w:
            assert isinstance(w.stream._consumer, Relay)  # the callback path, not `pipe`
            await w.ext.send(b"hello")
            assert await receive_exactly(w.peer, 5) == b"hello"
            await w.peer.send(b"world")
            assert await receive_exactly(w.ext, 5) == b"world"
            await w.ext.send_eof()  # the visitor half-closes; the service still answers
            with pytest.raises(anyio.EndOfStream):
                await w.peer.receive()
            await w.peer.send(b"late")
            assert await receive_exactly(w.ext, 4) == b"late"
            await w.peer.send_eof()
            with pytest.raises(anyio.EndOfStream):
                await w.ext.receive()
            await w.done.wait()
    (result,) = w.result
    assert (result.forward_bytes, result.backward_bytes, result.error) == (5, 9, None)
    assert (w.traffic.closed_in, w.traffic.closed_out) == (5, 9)


@pytest.mark.anyio
async def test_a_bandwidth_limit_keeps_the_metered_task_pipe() -> None:
    limiter = ServiceLimiter(ServicePolicy(name="svc", bandwidth_bytes_per_s=10 * MIB))
    with anyio.fail_after(10):
        async with relayed(limiter=limiter) as w:
            assert w.stream._consumer is None
            await w.ext.send(b"x")
            assert await receive_exactly(w.peer, 1) == b"x"


@pytest.mark.anyio
async def test_a_socket_that_stops_reading_gets_no_more_than_the_window() -> None:
    """Credit goes back only for bytes the socket took: the peer's sender stalls, and what
    the relay holds for the socket stays within the stream's receive window."""
    config = MuxConfig(enable_keepalive=False, max_stream_window_bytes=256 * 1024)
    with anyio.fail_after(20):
        async with relayed(config) as w:
            relay = w.stream._consumer
            assert isinstance(relay, Relay)
            chunk = b"z" * (256 * 1024)
            sent = 0
            with anyio.move_on_after(1.0):  # the socket's peer never reads
                while sent < 256 * MIB:
                    await w.peer.send(chunk)
                    sent += len(chunk)
            assert sent < 256 * MIB, "the sender never stalled"
            transport = relay._transport
            assert transport is not None
            # Unsent bytes wait for the kernel; those the kernel took since the last
            # `resume_writing` get their credit at the next one: both within the window.
            assert transport.get_write_buffer_size() <= relay._uncredited <= 256 * 1024
            received = await receive_exactly(w.ext, 4 * MIB)  # reading unstalls the sender
            assert received.count(b"z") == 4 * MIB


@pytest.mark.anyio
async def test_a_stream_that_stops_draining_pauses_the_socket_reads() -> None:
    with anyio.fail_after(20):
        async with relayed() as w:
            chunk = b"y" * (256 * 1024)
            sent = 0
            with anyio.move_on_after(1.0):  # the mux peer never reads
                while sent < 256 * MIB:
                    await w.ext.send(chunk)
                    sent += len(chunk)
            assert sent < 256 * MIB, "the visitor never stalled"
            mark = QUIET.stream_send_buffer_bytes
            # At most the mark plus the read that crossed it wait in the stream's buffer.
            assert w.stream._conn.send_buffered(w.stream.stream_id) <= mark + 256 * 1024
            received = await receive_exactly(w.peer, 4 * MIB)
            assert received.count(b"y") == 4 * MIB


@pytest.mark.anyio
async def test_a_reset_stream_resets_the_socket() -> None:
    with anyio.fail_after(10):
        async with relayed() as w:
            await w.peer.send(b"partial")
            assert await receive_exactly(w.ext, 7) == b"partial"
            w.peer.reset()
            with pytest.raises(anyio.BrokenResourceError):  # ECONNRESET, not a clean EOF
                await w.ext.receive()
            await w.done.wait()
    assert w.result[0].error is not None


@pytest.mark.anyio
async def test_a_reset_socket_resets_the_stream() -> None:
    with anyio.fail_after(10):
        async with relayed() as w:
            await w.ext.send(b"partial")
            assert await receive_exactly(w.peer, 7) == b"partial"
            raw = w.ext.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await w.ext.aclose()  # RST
            with pytest.raises(StreamResetError):
                await w.peer.receive()
            await w.done.wait()
    assert w.result[0].error is not None


@pytest.mark.anyio
async def test_a_cancelled_forward_aborts_both_ends() -> None:
    with anyio.fail_after(10):
        async with (
            session_pair("tcp", QUIET) as (client, server),
            tcp_stream_pair() as (ext, sock),
        ):
            stream = await server.open_stream()
            peer = await client.accept_stream()
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: forward(
                        sock,
                        stream,
                        visitor_side=True,
                        service="svc",
                        peer="test",
                        traffic=ServiceTraffic(),
                    )
                )
                await ext.send(b"a")
                assert await receive_exactly(peer, 1) == b"a"
                tg.cancel_scope.cancel()
            with pytest.raises(StreamResetError):
                await peer.receive()
            with pytest.raises(anyio.BrokenResourceError):
                await ext.receive()
