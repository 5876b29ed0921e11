"""The anyio `Session` on bad days, one test per failure, named after it.

Misbehaving peers are `RawPeer`s writing frames by hand over a memory carrier (whose buffers are
bounded, so a peer that stops reading really does stall our writer) or over loopback TCP.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from mux import (
    Flag,
    FrameType,
    GoAwayCode,
    MuxConfig,
    MuxStream,
    Session,
    SessionClosed,
    StreamResetError,
)
from mux._const import INITIAL_STREAM_WINDOW
from mux.testing import (
    Frame,
    FrameBuilder,
    MemoryByteStream,
    RawPeer,
    echo_stream,
    echo_streams,
    memory_stream_pair,
    session_pair,
    tcp_stream_pair,
)

pytestmark = pytest.mark.anyio

F = FrameBuilder()
#: No keepalive unless a test is about it: a raw peer does not answer pings.
QUIET = MuxConfig(enable_keepalive=False)


@asynccontextmanager
async def session_and_raw_peer(
    config: MuxConfig = QUIET, *, carrier: str = "memory", capacity: int = 256 * 1024
) -> AsyncIterator[tuple[Session, RawPeer]]:
    """A server `Session` whose peer (a client: odd ids) is driven by hand."""
    if carrier == "memory":
        ours, theirs = memory_stream_pair(capacity)
        async with Session(ours, client=False, config=config) as session:
            yield session, RawPeer(theirs)
    else:
        async with (
            tcp_stream_pair() as (ours_tcp, theirs_tcp),
            Session(ours_tcp, client=False, config=config) as session,
        ):
            yield session, RawPeer(theirs_tcp)


def is_go_away(frame: Frame) -> bool:
    return frame.type == FrameType.GO_AWAY


async def receive_all(stream: anyio.abc.ByteStream) -> bytes:
    data = bytearray()
    for _ in range(100_000):
        try:
            data += await stream.receive()
        except anyio.EndOfStream:
            return bytes(data)
    raise AssertionError("no EOF")


# ---------------------------------------------------------------------------------------- peers


@pytest.mark.parametrize("carrier", ["memory", "tcp"])
async def test_window_exceeded_closes_session(carrier: str) -> None:
    with anyio.fail_after(10):
        async with session_and_raw_peer(carrier=carrier) as (session, peer):
            await peer.send(F.syn(1, b"hello"))
            stream = await session.accept_stream()
            assert await stream.receive() == b"hello"
            # A header claiming more than the window: no body byte needs to follow.
            await peer.send(F.data(1, length=INITIAL_STREAM_WINDOW))
            frame = await peer.expect(is_go_away)
            assert frame.length == GoAwayCode.PROTOCOL_ERROR
            await peer.read_until_closed()
            await session.wait_closed()
            assert "protocol error" in (session.close_reason or "")
            with pytest.raises(SessionClosed):
                await stream.receive()
            with pytest.raises(SessionClosed):
                await session.open_stream()


async def test_backlog_exceeded_resets_excess() -> None:
    backlog = QUIET.accept_backlog
    with anyio.fail_after(10):
        async with session_and_raw_peer() as (session, peer):
            ids = [2 * i + 1 for i in range(backlog + 10)]
            await peer.send(*(F.syn(i) for i in ids))
            refused: list[int] = []
            while len(refused) < 10:
                refused += [f.stream_id for f in await peer.read() if f.has(Flag.RST)]
            assert refused == ids[backlog:]
            # The session lives on; accepting frees a place in the backlog.
            stream = await session.accept_stream()
            assert stream.stream_id == ids[0]
            ack = await peer.expect(lambda f: f.has(Flag.ACK))
            assert ack.stream_id == ids[0]
            await peer.send(F.syn(ids[-1] + 2))
            await peer.send(F.ping(77))
            await peer.expect(lambda f: f.type == FrameType.PING and f.length == 77)
            assert not any(f.has(Flag.RST) for f in peer.frames if f.stream_id == ids[-1] + 2)
            assert not session.closed


async def test_ping_of_death_with_stalled_writer() -> None:
    """The peer floods pings and never reads: our replies stay bounded and reading pauses."""
    config = QUIET.replace(glitch_burst=10**9, write_timeout_s=1.0)
    cap = config.max_queued_pongs
    capacity = 4096
    flood = F.ping(1) * 20_000  # 240 KB of pings, far more than the carrier holds
    with anyio.fail_after(10):
        async with session_and_raw_peer(config, capacity=capacity) as (session, peer):
            attacker = peer.stream
            assert isinstance(attacker, MemoryByteStream)
            async with anyio.create_task_group() as tg:

                async def flood_pings() -> None:
                    try:
                        for offset in range(0, len(flood), 1200):
                            await attacker.send(flood[offset : offset + 1200])
                    except anyio.BrokenResourceError:
                        pass

                tg.start_soon(flood_pings)
                await anyio.sleep(0.3)
                # Our writer is stuck on a full carrier; the reader has stopped reading.
                assert session.conn.reading_paused
                # White box: the core's queue of unwritten control frames (the pongs).
                assert len(session.conn._control) <= cap
                # What the attacker got in: the carrier's buffer, one read, the parsed pings.
                assert attacker.bytes_sent < 4 * capacity + 2 * cap * 12 + 64 * 1024
                # The stall outlives the write timeout: the session gives up on the peer.
                await session.wait_closed()
                assert "stalled" in (session.close_reason or "")
                tg.cancel_scope.cancel()


async def test_keepalive_timeout_detects_dead_peer() -> None:
    config = MuxConfig(keepalive_interval_s=0.2, keepalive_timeout_s=0.3)
    with anyio.fail_after(10):
        async with session_and_raw_peer(config) as (session, peer):
            await peer.send(F.syn(1))
            stream = await session.accept_stream()
            started = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer.read_until_closed)  # reads every ping, answers none
                await session.wait_closed()
            assert anyio.current_time() - started < 0.3 + 0.2 + 1.0
            assert "keepalive" in (session.close_reason or "")
            assert any(f.type == FrameType.PING and f.has(Flag.SYN) for f in peer.frames)
            with pytest.raises(SessionClosed):
                await stream.receive()


async def test_keepalive_keeps_a_live_session() -> None:
    config = MuxConfig(keepalive_interval_s=0.05, keepalive_timeout_s=0.5)
    with anyio.fail_after(10):
        async with session_pair("memory", config) as (client, server):
            await anyio.sleep(0.4)
            assert not client.closed and not server.closed
            assert client.rtt_s is not None and server.rtt_s is not None


async def test_write_timeout_when_carrier_stalls() -> None:
    config = QUIET.replace(write_timeout_s=0.3)
    with anyio.fail_after(10):
        async with session_and_raw_peer(config, capacity=16 * 1024) as (session, peer):
            await peer.send(F.syn(1))
            stream = await session.accept_stream()
            started = anyio.current_time()
            with pytest.raises(SessionClosed):  # the peer never reads: the carrier fills up
                for _ in range(100):
                    await stream.send(b"x" * 16 * 1024)
            await session.wait_closed()
            assert anyio.current_time() - started < 0.3 + 1.5
            assert "stalled" in (session.close_reason or "")
            with pytest.raises(SessionClosed):
                await stream.receive()


@pytest.mark.parametrize("carrier", ["memory", "tcp"])
async def test_carrier_eof_fails_streams_with_error_not_eof(carrier: str) -> None:
    with anyio.fail_after(10):
        async with session_and_raw_peer(carrier=carrier) as (session, peer):
            await peer.send(F.syn(1, b"partial "), F.data(1, b"answer"), F.syn(3))
            first = await session.accept_stream()
            second = await session.accept_stream()
            await anyio.sleep(0.05)
            await peer.stream.aclose()
            await session.wait_closed()
            # Bytes that arrived are still readable; then an error, never a clean EOF.
            got = b""
            with pytest.raises(SessionClosed):
                for _ in range(10):
                    got += await first.receive()
            assert got == b"partial answer"
            with pytest.raises(SessionClosed):
                await second.receive()
            with pytest.raises(SessionClosed):
                await second.send(b"x")


async def test_reset_before_accept_frees_the_stream() -> None:
    """SYN with data then RST, while the application is not accepting: nothing piles up."""
    rounds, size = 100, 64 * 1024
    with anyio.fail_after(20):
        async with session_and_raw_peer() as (session, peer):
            gc.collect()
            tracemalloc.start()
            try:
                baseline = tracemalloc.get_traced_memory()[0]
                for i in range(rounds):
                    stream_id = 2 * i + 1
                    await peer.send(F.syn(stream_id, b"z" * size), F.rst(stream_id))
                await peer.send(F.ping(5))
                await peer.expect(lambda f: f.type == FrameType.PING and f.length == 5)
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - baseline
            finally:
                tracemalloc.stop()
            assert session.conn.stream_count == 0
            assert held < rounds * size // 4, f"{held} bytes held for reset, unaccepted streams"


# ---------------------------------------------------------------------------------------- streams


async def test_slow_reader_does_not_stall_other_streams() -> None:
    size = 4 << 20
    with anyio.fail_after(30):
        async with session_pair("tcp", QUIET) as (client, server):
            slow = await client.open_stream()
            fast = await client.open_stream()
            slow_peer = await server.accept_stream()
            fast_peer = await server.accept_stream()
            async with anyio.create_task_group() as tg:

                async def flood_slow() -> None:
                    for _ in range(size // 65536):
                        await slow.send(b"s" * 65536)
                    await slow.send_eof()

                async def round_trips(count: int) -> float:
                    started = anyio.current_time()
                    for _ in range(count):
                        await fast.send(b"p" * 1000)
                        got = b""
                        while len(got) < 1000:
                            got += await fast.receive()
                        assert got == b"p" * 1000
                    return anyio.current_time() - started

                tg.start_soon(echo_stream, fast_peer)
                baseline_s = await round_trips(200)  # the same work, nothing else running
                tg.start_soon(flood_slow)
                await anyio.sleep(0.2)  # the slow stream's window is full by now
                assert server.conn.receive_credit(slow_peer.stream_id) == 0
                fast_time = await round_trips(200)
                await fast.send_eof()
                assert await receive_all(fast) == b""
                # The slow stream never held more than its window.
                assert server.conn.receive_credit(slow_peer.stream_id) == 0
                # Reading it now lets everything through.
                assert len(await receive_all(slow_peer)) == size
            # Beside a stalled stream the fast one does what it did alone (a stall would hang it
            # until the 30 s limit): 5x the same test's baseline, plus 1 s for a loaded machine.
            assert fast_time < 5 * baseline_s + 1.0, (fast_time, baseline_s)


@pytest.mark.parametrize("carrier", ["memory", "tcp"])
@pytest.mark.parametrize("with_eof", [True, False], ids=["eof", "no-eof"])
async def test_session_close_with_pending_data_delivers_it(carrier: str, with_eof: bool) -> None:
    """The sender closes its session right after writing; the receiver has read nothing yet."""
    streams, size = 8, INITIAL_STREAM_WINDOW  # a full window each: 2 MiB queued in all
    with anyio.fail_after(20):
        async with session_pair(carrier, QUIET) as (client, server):
            sent = []
            for i in range(streams):
                stream = await client.open_stream()
                payload = bytes([i]) * size
                await stream.send(payload)
                if with_eof:
                    await stream.send_eof()
                sent.append(payload)
            await client.aclose()
            await server.wait_closed()
            for payload in sent:
                peer = await server.accept_stream()
                received = bytearray()
                with pytest.raises(anyio.EndOfStream if with_eof else SessionClosed):
                    for _ in range(10_000):
                        received += await peer.receive()
                assert received == payload


async def test_open_timeout_resets_unacked_stream() -> None:
    config = QUIET.replace(stream_open_timeout_s=0.3)
    with anyio.fail_after(10):
        async with session_pair("memory", config) as (client, server):
            started = anyio.current_time()  # before the stream's own clock starts, never after
            stream = await client.open_stream(b"anyone there?")  # the server never accepts
            with pytest.raises(StreamResetError):
                await stream.receive()
            # The sweeper looks every 0.03 s (a tenth of the limit); 1 s of room for a loaded
            # machine, well under what a sweeper that missed the stream would take (forever).
            assert 0.3 <= anyio.current_time() - started < 0.3 + 1.0
            with pytest.raises(StreamResetError):
                await stream.send(b"x")
            for _ in range(50):
                if client.conn.stream_count == server.conn.stream_count == 0:
                    break
                await anyio.sleep(0.02)
            assert client.conn.stream_count == server.conn.stream_count == 0
            assert client.stream_count == 0


async def test_half_closed_timeout_resets_stream() -> None:
    config = QUIET.replace(half_closed_timeout_s=0.3)
    with anyio.fail_after(10):
        async with session_pair("memory", config) as (client, server):
            stream = await client.open_stream()
            peer = await server.accept_stream()
            await stream.send(b"done")
            await stream.send_eof()  # the peer never closes its side
            assert await receive_all(peer) == b"done"
            with pytest.raises(StreamResetError):
                await stream.receive()
            with anyio.fail_after(2), pytest.raises(StreamResetError):
                for _ in range(200):
                    await peer.send(b"late")
                    await anyio.sleep(0.01)
            assert client.conn.stream_count == server.conn.stream_count == 0


async def test_goaway_drains_then_closes() -> None:
    with anyio.fail_after(10):
        async with session_pair("memory", QUIET) as (client, server):
            stream = await client.open_stream(b"in flight")
            peer = await server.accept_stream()
            async with anyio.create_task_group() as tg:
                drained: list[bool] = []

                async def drain() -> None:
                    drained.append(await server.drain(timeout_s=5))

                tg.start_soon(drain)
                for _ in range(100):  # the GoAway reaches the client
                    if client.conn.remote_go_away is not None:
                        break
                    await anyio.sleep(0.01)
                assert client.conn.remote_go_away == GoAwayCode.NORMAL
                with pytest.raises(SessionClosed):
                    await client.open_stream()
                # The stream in flight finishes normally, both ways, byte exact.
                assert await peer.receive() == b"in flight"
                await peer.send(b"answered")
                await peer.send_eof()
                await stream.send_eof()
                assert await receive_all(stream) == b"answered"
                assert await receive_all(peer) == b""
            assert drained == [True]
            await server.aclose()
            await client.wait_closed()


async def test_drain_gives_up_at_the_deadline() -> None:
    with anyio.fail_after(10):
        async with session_pair("memory", QUIET) as (client, server):
            await client.open_stream()
            await server.accept_stream()
            started = anyio.current_time()
            assert await server.drain(timeout_s=0.2) is False
            assert anyio.current_time() - started < 1.0  # 0.2 s promised, room for a busy loop


async def test_peer_syn_after_our_goaway_is_reset() -> None:
    with anyio.fail_after(10):
        async with session_and_raw_peer() as (session, peer):
            await session.go_away()
            await peer.expect(is_go_away)
            await peer.send(F.syn(1))
            rst = await peer.expect(lambda f: f.has(Flag.RST))
            assert rst.stream_id == 1
            assert not session.closed


# ---------------------------------------------------------------------------------------- scale


async def run_many_streams(total: int, concurrency: int, carrier: str, timeout_s: float) -> None:
    """Open, echo and close `total` small streams, `concurrency` at a time, on one session."""
    config = QUIET
    assert concurrency <= config.max_streams
    with anyio.fail_after(timeout_s):
        async with session_pair(carrier, config) as (client, server):
            async with anyio.create_task_group() as servers:
                servers.start_soon(echo_streams, server, servers)
                limiter = anyio.Semaphore(concurrency)
                peak = 0
                failures: list[str] = []

                async def one(i: int) -> None:
                    nonlocal peak
                    async with limiter:
                        peak = max(peak, client.conn.stream_count)
                        payload = b"%d" % i
                        stream = await client.open_stream(payload)
                        await stream.send_eof()
                        got = await receive_all(stream)
                        await stream.aclose()
                        if got != payload:
                            failures.append(f"stream {i}: {got!r}")

                async with anyio.create_task_group() as clients:
                    for i in range(total):
                        clients.start_soon(one, i)
                assert failures == []
                assert peak <= config.max_streams
                for _ in range(100):
                    if client.conn.stream_count == server.conn.stream_count == 0:
                        break
                    await anyio.sleep(0.01)
                assert client.conn.stream_count == server.conn.stream_count == 0
                assert client.stream_count == server.stream_count == 0
                assert client.conn.budget_used == server.conn.budget_used == 0
                servers.cancel_scope.cancel()


async def test_2000_streams_one_session() -> None:
    """Below the accept backlog: no opener ever waits for an ACK (a hang guard, as below)."""
    await run_many_streams(2000, QUIET.accept_backlog - 1, "tcp", timeout_s=60)


async def test_10000_streams_one_session() -> None:
    """max_streams openers at once: most of them wait for the backlog at some point.

    The time limit only catches a hang (an opener never woken): the run takes 2.5-5 s on an
    idle 2-core machine and several times that beside other test runs, so 60 s.
    """
    await run_many_streams(10_000, QUIET.max_streams, "tcp", timeout_s=60)


# ---------------------------------------------------------------------------------------- waiters


async def test_open_stream_waiters_all_wake_when_the_backlog_frees() -> None:
    backlog = QUIET.accept_backlog
    with anyio.fail_after(10):
        async with session_pair("memory", QUIET) as (client, server):
            for _ in range(backlog):  # the server does not accept yet: all of them un-ACKed
                await client.open_stream()
            assert not client.conn.can_open_stream
            opened: list[MuxStream] = []

            async def open_one() -> None:
                opened.append(await client.open_stream())

            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(open_one)
                await anyio.sleep(0.05)
                assert opened == []  # all three wait for the backlog
                with anyio.fail_after(2):
                    for _ in range(backlog + 3):
                        await server.accept_stream()
            assert len(opened) == 3


async def test_accept_stream_waiters_all_get_a_stream() -> None:
    with anyio.fail_after(10):
        async with session_pair("memory", QUIET) as (client, server):
            accepted: list[MuxStream] = []

            async def accept_one() -> None:
                accepted.append(await server.accept_stream())

            with anyio.fail_after(2):
                async with anyio.create_task_group() as tg:
                    for _ in range(3):
                        tg.start_soon(accept_one)
                    await anyio.sleep(0.05)
                    for _ in range(3):
                        await client.open_stream(b"hi")
            assert sorted(s.stream_id for s in accepted) == [1, 3, 5]


async def test_half_closed_stream_still_carrying_data_is_not_reset() -> None:
    """A visitor sends its request and FIN, then downloads for longer than the timeout."""
    config = QUIET.replace(half_closed_timeout_s=0.3)
    with anyio.fail_after(10):
        async with session_pair("memory", config) as (client, server):
            stream = await client.open_stream(b"GET /big")
            await stream.send_eof()
            peer = await server.accept_stream()
            assert await receive_all(peer) == b"GET /big"
            received = 0
            deadline = anyio.current_time() + 1.0  # three timeouts long, never idle
            while anyio.current_time() < deadline:
                await peer.send(b"d" * 1000)
                received += len(await stream.receive())
                await anyio.sleep(0.01)
            await peer.send_eof()
            received += len(await receive_all(stream))
            assert received > 0
