"""`muxtunnel.splice.Splice`: a visitor's stream and its service's stream, spliced by callbacks.

Each test wires two real session pairs as the server sees a private service: the visitor's
session (the test drives its far end `v`, as `muxtunnel visit` would) and the provider's (far
end `p`, as `muxtunnel up` would). `forward` splices the server's two ends (`a`, from the
visitor; `b`, opened towards the provider): two mux hops, no socket in between.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import anyio.abc
import pytest
import testenv

from mux import MuxConfig, MuxStream, Session, StreamResetError
from mux.testing import session_pair, tcp_stream_pair
from muxtunnel.forward import forward
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.model import ServicePolicy
from muxtunnel.proxy import PipeResult
from muxtunnel.splice import Splice

QUIET = MuxConfig(enable_keepalive=False)
MIB = 1024 * 1024


@pytest.fixture(params=testenv.ANYIO_BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return testenv.anyio_backend(request.param)


@dataclass
class Hops:
    v: MuxStream  # the visitor's end (`visit`)
    a: MuxStream  # the server's end of the visitor's stream
    b: MuxStream  # the server's end of the provider's stream
    p: MuxStream  # the provider's end (`up`)
    provider_carrier: anyio.abc.SocketStream  # the provider's own socket to the server
    traffic: ServiceTraffic
    result: list[PipeResult]
    done: anyio.Event


@asynccontextmanager
async def spliced(
    config: MuxConfig = QUIET, limiter: ServiceLimiter | None = None
) -> AsyncIterator[Hops]:
    async with (
        session_pair("tcp", config) as (visit, server_v),
        tcp_stream_pair() as (up_carrier, server_carrier),
        Session(server_carrier, client=False, config=config) as server_p,
        Session(up_carrier, client=True, config=config) as up,
        anyio.create_task_group() as tg,
    ):
        v = await visit.open_stream()
        a = await server_v.accept_stream()
        b = await server_p.open_stream()
        p = await up.accept_stream()
        hops = Hops(v, a, b, p, up_carrier, ServiceTraffic(), [], anyio.Event())

        async def run() -> None:
            hops.result.append(
                await forward(
                    a,
                    b,
                    visitor_side=True,
                    service="svc",
                    peer="test",
                    traffic=hops.traffic,
                    limiter=limiter,
                )
            )
            hops.done.set()

        tg.start_soon(run)
        await anyio.wait_all_tasks_blocked()
        yield hops
        tg.cancel_scope.cancel()


async def receive_exactly(stream: MuxStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        data += await stream.receive(size - len(data))
    return bytes(data)


async def receive_all(stream: MuxStream) -> bytes:
    data = bytearray()
    while True:
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)


@pytest.mark.anyio
async def test_one_mib_each_way_arrives_byte_exact_through_two_hops() -> None:
    up_bytes, down_bytes = os.urandom(MIB), os.urandom(MIB)
    with anyio.fail_after(20):
        async with spliced() as h:
            assert h.a._consumer is not None  # spliced, not piped
            got: dict[str, bytes] = {}

            async def provider() -> None:
                got["up"] = await receive_all(h.p)
                await h.p.send(down_bytes)
                await h.p.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(provider)
                for i in range(0, MIB, 48 * 1024):  # odd sizes: chunks split and join
                    await h.v.send(up_bytes[i : i + 48 * 1024])
                await h.v.send_eof()
                got["down"] = await receive_all(h.v)
            await h.done.wait()
    assert got["up"] == up_bytes and got["down"] == down_bytes
    (result,) = h.result
    assert (result.forward_bytes, result.backward_bytes, result.error) == (MIB, MIB, None)
    assert (h.traffic.closed_in, h.traffic.closed_out) == (MIB, MIB)


@pytest.mark.anyio
async def test_the_splice_is_the_callback_path_unless_a_limit_is_in_the_way() -> None:
    with anyio.fail_after(10):
        async with spliced() as h:
            assert h.a._consumer is not None and h.b._consumer is not None
            assert type(h.a._consumer).__module__ == Splice.__module__
        limiter = ServiceLimiter(ServicePolicy(name="svc", bandwidth_bytes_per_s=10 * MIB))
        async with spliced(limiter=limiter) as h:
            assert h.a._consumer is None and h.b._consumer is None  # metered task pipe
            await h.v.send(b"x")
            assert await receive_exactly(h.p, 1) == b"x"


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["visitor", "provider"])
async def test_a_half_close_passes_on_and_the_other_way_carries_on(first: str) -> None:
    with anyio.fail_after(10):
        async with spliced() as h:
            closer, other = (h.v, h.p) if first == "visitor" else (h.p, h.v)
            await closer.send(b"last words")
            await closer.send_eof()
            assert await receive_all(other) == b"last words"  # then a clean EOF
            await other.send(b"the answer")  # the other way still carries
            assert await receive_exactly(closer, 10) == b"the answer"
            assert not h.done.is_set()
            await other.send_eof()
            assert await receive_all(closer) == b""
            await h.done.wait()
    assert h.result[0].error is None


@pytest.mark.anyio
@pytest.mark.parametrize("first", ["visitor", "provider"])
async def test_a_reset_resets_the_other_hop(first: str) -> None:
    with anyio.fail_after(10):
        async with spliced() as h:
            resetter, other = (h.v, h.p) if first == "visitor" else (h.p, h.v)
            await resetter.send(b"partial")
            assert await receive_exactly(other, 7) == b"partial"
            resetter.reset()
            with pytest.raises(StreamResetError):  # never a clean EOF
                await other.receive()
            await h.done.wait()
    assert h.result[0].error is not None


@pytest.mark.anyio
@pytest.mark.parametrize("stalled", ["provider", "visitor"])
async def test_a_reader_that_stalls_holds_no_more_than_the_windows(stalled: str) -> None:
    """Credit goes back only while the receiving stream's send buffer is below its mark: the
    sender stalls, and what the server holds stays within that mark plus one window."""
    window = 256 * 1024
    config = MuxConfig(enable_keepalive=False, max_stream_window_bytes=window)
    with anyio.fail_after(30):
        async with spliced(config) as h:
            sender, reader = (h.v, h.p) if stalled == "provider" else (h.p, h.v)
            towards = h.b if stalled == "provider" else h.a  # the server's end facing it
            chunk = b"z" * (64 * 1024)
            sent = 0
            with anyio.move_on_after(1.0):  # the reader never reads
                while sent < 256 * MIB:
                    await sender.send(chunk)
                    sent += len(chunk)
            assert sent < 256 * MIB, "the sender never stalled"
            held = towards._conn.send_buffered(towards.stream_id)
            assert held <= config.stream_send_buffer_bytes + window
            # Everything sent is within the reader's window, the server's buffer and
            # window, and the sender's own buffer (bounded, not the 256 MiB it tried).
            assert sent <= 2 * window + 2 * config.stream_send_buffer_bytes + len(chunk)
            await sender.send_eof()  # queued behind the stalled bytes
            received = await receive_all(reader)  # reading unstalls the sender
            # (the send the timeout cut had queued its chunk already)
            assert sent <= len(received) <= sent + len(chunk)
            assert received.count(b"z") == len(received)


@pytest.mark.anyio
async def test_a_provider_that_vanishes_mid_transfer_fails_the_visitor() -> None:
    with anyio.fail_after(20):
        async with spliced() as h:
            await h.p.send(b"a" * MIB)
            assert await receive_exactly(h.v, 1024) == b"a" * 1024
            raw = h.provider_carrier.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await h.provider_carrier.aclose()  # RST: the provider's machine is gone
            with pytest.raises(anyio.BrokenResourceError):  # after what arrived, a failure
                while True:
                    await h.v.receive()
            await h.done.wait()
    assert h.result[0].error is not None


@pytest.mark.anyio
async def test_a_cancelled_splice_resets_both_hops() -> None:
    with anyio.fail_after(10):
        async with (
            session_pair("tcp", QUIET) as (visit, server_v),
            session_pair("tcp", QUIET) as (up, server_p),
        ):
            v = await visit.open_stream()
            a = await server_v.accept_stream()
            b = await server_p.open_stream()
            p = await up.accept_stream()
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: forward(
                        a, b, visitor_side=True, service="svc", peer="t", traffic=ServiceTraffic()
                    )
                )
                await v.send(b"a")
                assert await receive_exactly(p, 1) == b"a"
                tg.cancel_scope.cancel()
            for end in (v, p):
                with pytest.raises(StreamResetError):
                    await end.receive()
