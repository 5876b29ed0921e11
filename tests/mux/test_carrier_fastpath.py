"""The session's fast path for asyncio/uvloop socket carriers (`TransportCarrier` in `_carrier.py`).

Sessions over loopback TCP use it, on plain asyncio and on uvloop; memory carriers use the generic
`ByteStream` path. These tests pin the edges of the takeover: bytes anyio had already read, the
final flush before closing, and that both event loops take the fast path.
"""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import pytest

from mux import MuxConfig, Session
from mux._carrier import ReceiveBuffer, StreamCarrier, TransportCarrier
from mux._const import Flag, FrameType
from mux.testing import FrameBuilder, FrameReader, memory_stream_pair, session_pair, tcp_stream_pair

QUIET = MuxConfig(enable_keepalive=False)


@pytest.mark.anyio
async def test_tcp_carrier_takes_the_fast_path_memory_does_not() -> None:
    async with tcp_stream_pair() as (left, _right):
        assert TransportCarrier.attach(left) is not None
    left_mem, _right_mem = memory_stream_pair(1024)
    assert TransportCarrier.attach(left_mem) is None
    session = Session(left_mem, client=True, config=QUIET)
    assert isinstance(session._carrier, StreamCarrier)


@pytest.mark.anyio
async def test_bytes_read_before_the_session_started_are_parsed_first() -> None:
    frames = FrameBuilder()
    async with tcp_stream_pair() as (client_side, server_side):
        # The peer's SYN and data arrive while the socket still belongs to anyio's protocol: a
        # zero-byte wait lets the loop read them into anyio's queue before the session starts.
        await client_side.send(frames.syn(1, b"early bytes") + frames.data(1, b"!"))
        with anyio.fail_after(5):
            while not server_side._protocol.read_queue:  # type: ignore[attr-defined]
                server_side._transport.resume_reading()  # type: ignore[attr-defined]
                await anyio.sleep(0.01)
        async with Session(server_side, client=False, config=QUIET) as session:
            assert isinstance(session._carrier, TransportCarrier)
            with anyio.fail_after(5):
                stream = await session.accept_stream()
                received = b""
                while len(received) < 12:
                    received += await stream.receive()
            assert received == b"early bytes!"


@pytest.mark.anyio
async def test_aclose_flushes_queued_frames_and_go_away_before_closing() -> None:
    """Writes only queue in the transport; closing must not discard them (abort would).

    Small socket buffers and a peer that grants a large window, then stalls before reading, leave
    bytes in the transport's own buffer when the session closes (without `flush`, both loops lose
    the tail of the payload and the GoAway here).
    """
    payload = bytes(range(256)) * 8192  # 2 MiB
    async with tcp_stream_pair() as (client_side, server_side):
        client_side.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024
        )
        server_side.extra(anyio.abc.SocketAttribute.raw_socket).setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024
        )
        # anyio leaves accepted sockets reading on; the stalled peer must really stop reading.
        server_side._transport.pause_reading()  # type: ignore[attr-defined]
        reader = FrameReader()
        got = bytearray()
        go_away = False

        async def peer() -> None:
            nonlocal go_away
            granted = False
            while True:
                try:
                    chunk = await server_side.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return
                for frame in reader.feed(chunk):
                    if frame.type == FrameType.DATA:
                        got.extend(frame.body)
                        if not granted:
                            granted = True
                            grant = FrameBuilder().window_update(frame.stream_id, 4 << 20, Flag.ACK)
                            await server_side.send(grant)
                            await anyio.sleep(0.3)  # let the client close meanwhile
                    elif frame.type == FrameType.GO_AWAY:
                        go_away = True

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(peer)
                async with Session(client_side, client=True, config=QUIET) as session:
                    stream = await session.open_stream(b"x")
                    await stream.send(payload)
                    while session.conn.send_buffered(stream.stream_id):
                        await anyio.sleep(0.001)
                    assert isinstance(session._carrier, TransportCarrier)
                # The session has closed: everything it had written must have arrived.
    assert bytes(got) == b"x" + payload
    assert go_away


@pytest.mark.anyio
async def test_the_carrier_keeps_its_unsent_queue_short() -> None:
    """TCP_NOTSENT_LOWAT on both ends' sockets: bulk waits in the core, where it is ordered."""
    config = QUIET.replace(carrier_unsent_bytes=96 * 1024)
    lowat = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
    async with session_pair("tcp", config) as (client, server):
        for session in (client, server):
            raw = session._transport.extra(anyio.abc.SocketAttribute.raw_socket)
            assert raw.getsockopt(socket.IPPROTO_TCP, lowat) == 96 * 1024


@pytest.mark.anyio
async def test_a_carrier_with_room_again_writes_without_the_writer_task() -> None:
    """`resume_writing` writes what waits from the loop's callback (no task turn in between)."""
    async with session_pair("tcp", QUIET) as (client, server):
        carrier = client._carrier
        assert isinstance(carrier, TransportCarrier)
        stream = await client.open_stream()
        peer = await server.accept_stream()
        carrier.pause_writing()  # as the transport would at its high-water mark
        stream.write(b"queued while paused")
        assert client.conn.has_data_to_send()
        carrier.resume_writing()
        assert not client.conn.has_data_to_send()  # taken and written inside the callback
        with anyio.fail_after(5):
            assert await peer.receive() == b"queued while paused"


@pytest.mark.anyio
async def test_bulk_bytes_go_at_once_unless_more_follow_in_the_same_turn() -> None:
    """A bulk `write` is handed to the carrier at once; with `more` (a splice handing on the
    frames of one read) it waits for the end of the loop turn, and the frames leave together."""
    async with session_pair("tcp", QUIET) as (client, server):
        stream = await client.open_stream()
        peer = await server.accept_stream()
        bulk = b"b" * (64 * 1024)
        stream.write(bulk)
        assert not client.conn.has_data_to_send()  # written inside `write`
        stream.write(bulk, more=True)
        stream.write(bulk, more=True)
        assert client.conn.has_data_to_send()  # queued until the turn ends
        with anyio.fail_after(5):
            received = b""
            while len(received) < 3 * len(bulk):
                received += await peer.receive()
        assert received == 3 * bulk
        assert not client.conn.has_data_to_send()


def _rcvbuf(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


@pytest.mark.anyio
async def test_the_receive_buffer_shrinks_while_light_and_bulk_streams_mix() -> None:
    """Two windows in a row with a heavy and a light stream: the kernel's receive buffer is
    held small (bulk queues at the sender, behind light frames); once the mix ends it gets
    its old size back. Bulk alone, or one window of mix, leave it alone."""
    config = QUIET.replace(carrier_mixed_receive_buffer_bytes=64 * 1024)
    async with tcp_stream_pair() as (left, _right):
        buffer = ReceiveBuffer.of(left, config)
        assert buffer is not None
        sock = left.extra(anyio.abc.SocketAttribute.raw_socket)
        before = _rcvbuf(sock)
        window = config.carrier_mix_window_s
        now = 100.0

        def window_with(received: dict[int, int], rtt_s: float | None = 0.0002) -> int:
            nonlocal now
            buffer.received.update(received)
            now += window
            buffer.update(now, rtt_s)
            return _rcvbuf(sock)

        heavy, light = {1: 4 * 1024 * 1024}, {3: 64}
        assert window_with(heavy) == before  # bulk alone
        assert window_with({**heavy, **light}) == before  # one window of mix
        assert window_with({**heavy, **light}) == 2 * 64 * 1024  # Linux doubles it
        assert window_with({**heavy, **light}) == 2 * 64 * 1024
        assert window_with(heavy) == 2 * (before // 2)  # the mix ended


@pytest.mark.anyio
@pytest.mark.parametrize("rtt_s", [None, 0.05])
async def test_the_receive_buffer_is_left_alone_on_a_long_path(rtt_s: float | None) -> None:
    """The session's own round trip decides (a loopback hop may front a 50 ms path); unknown
    counts as long."""
    async with tcp_stream_pair() as (left, _right):
        buffer = ReceiveBuffer.of(left, QUIET)
        assert buffer is not None
        sock = left.extra(anyio.abc.SocketAttribute.raw_socket)
        before = _rcvbuf(sock)
        for step in range(1, 5):
            buffer.received.update({1: 4 * 1024 * 1024, 3: 64})
            buffer.update(100.0 + step, rtt_s)
        assert _rcvbuf(sock) == before
    left_mem, _right_mem = memory_stream_pair(1024)
    assert ReceiveBuffer.of(left_mem, QUIET) is None
