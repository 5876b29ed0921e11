"""`refuse_streams`, and the ACK/RST an application queues for a peer's streams.

A session that takes no more inbound streams (a tunnel server after the control channel)
refuses each later SYN with RST in the core, as one over the accept backlog: charged to the
peer's reset budget, counted among the replies that pause parsing. The ACK and RST the
application queues for streams the peer opened count among those replies too.
"""

from __future__ import annotations

import anyio
import pytest

from mux import Connection, Flag, FrameType, GoAwayCode, MuxConfig, RemoteProtocolError
from mux.testing import FrameBuilder, drain_frames, session_pair

F = FrameBuilder()
QUIET = MuxConfig(enable_keepalive=False)


def server(**changes: object) -> Connection:
    return Connection(client=False, config=QUIET.replace(**changes))


def test_refused_syns_are_answered_with_rst_and_counted() -> None:
    conn = server()
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    conn.refuse_streams(0.0)
    events = conn.receive_data(F.syn(3, b"hello") + F.syn(5), 0.0)
    assert events == []  # no StreamOpened: the application never sees them
    frames = drain_frames(conn)
    assert [(f.type, f.flags, f.stream_id) for f in frames] == [
        (FrameType.WINDOW_UPDATE, Flag.ACK, 1),
        (FrameType.WINDOW_UPDATE, Flag.RST, 3),
        (FrameType.WINDOW_UPDATE, Flag.RST, 5),
    ]
    assert conn.refused_streams == 2 and conn.stream_ids() == [1]


def test_streams_waiting_to_be_accepted_are_refused_too() -> None:
    conn = server()
    conn.receive_data(F.syn(1) + F.syn(3) + F.syn(5), 0.0)
    conn.accept_stream(1)
    conn.refuse_streams(0.0)
    assert conn.stream_ids() == [1] and conn.unaccepted == 0
    rsts = [f.stream_id for f in drain_frames(conn) if f.flags & Flag.RST]
    assert rsts == [3, 5] and conn.refused_streams == 2


def test_a_peer_that_keeps_opening_streams_spends_its_reset_budget() -> None:
    conn = server(reset_burst=100, reset_rate_per_s=1.0)
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    conn.refuse_streams(0.0)
    with pytest.raises(RemoteProtocolError, match="reset rate limit"):
        for stream_id in range(3, 10_000, 2):
            conn.receive_data(F.syn(stream_id), 0.0)
            drain_frames(conn)  # a peer that reads: only the budget can stop it
    assert conn.terminated == GoAwayCode.PROTOCOL_ERROR
    assert 100 <= conn.refused_streams <= 101


def test_application_acks_and_resets_pause_parsing_like_pongs() -> None:
    """A peer that opens streams the application accepts and resets, and never reads: once
    `max_queued_pongs` of those replies are unwritten, the next SYN waits."""
    conn = server(max_queued_pongs=8)
    for stream_id in range(1, 9, 2):  # 4 streams: an ACK and an RST each
        conn.receive_data(F.syn(stream_id), 0.0)
        conn.accept_stream(stream_id)
        conn.reset_stream(stream_id)
    assert not conn.reading_paused
    conn.receive_data(F.syn(9), 0.0)
    assert conn.reading_paused and conn.stream_ids() == []
    drain_frames(conn)  # the driver writes them out
    conn.receive_data(b"", 0.0)
    assert not conn.reading_paused and conn.stream_ids() == [9]


def test_resets_of_our_own_streams_do_not_count_as_replies() -> None:
    conn = server(max_queued_pongs=2)
    for _ in range(5):
        conn.reset_stream(conn.open_stream(b"x"))  # never sent: nothing queued
    ours = [conn.open_stream() for _ in range(5)]
    drain_frames(conn)
    for stream_id in ours:
        conn.reset_stream(stream_id)
    conn.receive_data(F.syn(1), 0.0)
    assert not conn.reading_paused and conn.stream_ids() == [1]


@pytest.mark.anyio
async def test_session_refuse_streams_resets_what_waits_and_what_comes() -> None:
    async with session_pair("memory", QUIET) as (client, srv):
        control = await client.open_stream(b"hi")
        waiting = await client.open_stream(b"early")
        accepted = await srv.accept_stream()
        assert await accepted.receive() == b"hi"
        with anyio.fail_after(5):
            while srv.conn.unaccepted < 1:  # the second SYN has arrived
                await anyio.sleep(0.01)
        srv.refuse_streams()
        late = await client.open_stream(b"late")
        with anyio.fail_after(5):
            for stream in (waiting, late):
                with pytest.raises(anyio.BrokenResourceError):
                    await stream.receive()
                assert stream.is_reset
        assert srv.refused_streams == 2
        await control.send(b"still here")
        assert await accepted.receive() == b"still here"


def test_allow_streams_takes_streams_again_after_a_refusal() -> None:
    conn = server()
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    conn.refuse_streams(0.0)
    conn.receive_data(F.syn(3), 0.0)
    conn.allow_streams()
    events = conn.receive_data(F.syn(5, b"after"), 0.0)
    assert [type(event).__name__ for event in events] == ["StreamOpened", "DataReceived"]
    assert conn.stream_ids() == [1, 5] and conn.refused_streams == 1


@pytest.mark.anyio
async def test_session_allow_streams_accepts_the_peers_streams_again() -> None:
    async with session_pair("memory", QUIET) as (client, srv):
        control = await client.open_stream(b"hi")
        accepted = await srv.accept_stream()
        assert await accepted.receive() == b"hi"
        srv.refuse_streams()
        refused = await client.open_stream(b"too early")
        with anyio.fail_after(5), pytest.raises(anyio.BrokenResourceError):
            await refused.receive()
        srv.allow_streams()
        await control.send(b"go")  # what a server answers before the peer opens more
        later = await client.open_stream(b"welcome")
        with anyio.fail_after(5):
            taken = await srv.accept_stream()
            assert await taken.receive() == b"welcome"
        await taken.send(b"back")
        with anyio.fail_after(5):
            assert await later.receive() == b"back"
        assert srv.refused_streams == 1
