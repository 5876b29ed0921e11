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
from mux._carrier import StreamCarrier, TransportCarrier
from mux._const import Flag, FrameType
from mux.testing import FrameBuilder, FrameReader, memory_stream_pair, tcp_stream_pair

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
