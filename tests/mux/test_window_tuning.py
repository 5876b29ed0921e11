"""Receive-window auto-tuning (rules 4 and 5 of `mux/_window.py`): the RTT floor, the reader's lag,
the path's own window."""

from __future__ import annotations

import anyio
import pytest

from mux import Connection, MuxConfig
from mux._const import INITIAL_STREAM_WINDOW, FrameType
from mux._events import DataReceived
from mux._window import MIN_PATH_WINDOW_BYTES, MIN_TUNING_RTT_S, path_window
from mux.testing import FrameBuilder, drain_frames, session_pair

MIB = 1024 * 1024

F = FrameBuilder()
WINDOW = INITIAL_STREAM_WINDOW


def opened(rtt_s: float | None) -> Connection:
    conn = Connection(client=False, config=MuxConfig(max_stream_window_bytes=16 * WINDOW))
    conn.rtt_s = rtt_s
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    drain_frames(conn)
    return conn


def deliver(conn: Connection, size: int, now: float) -> None:
    events = conn.receive_data(F.data(1, b"d" * size), now)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == size


def updates(conn: Connection) -> list[int]:
    return [f.length for f in drain_frames(conn) if f.type == FrameType.WINDOW_UPDATE]


def test_a_sub_millisecond_rtt_counts_as_the_floor() -> None:
    """Updates 1.5 ms apart grow the window although the pings said 0.1 ms."""
    conn = opened(rtt_s=0.0001)
    now = 0.0
    for _ in range(3):
        half = conn.receive_window(1) // 2
        deliver(conn, half, now)
        conn.stream_read(1, half, now)
        updates(conn)
        now += 1.5 * MIN_TUNING_RTT_S
    assert conn.receive_window(1) == 4 * WINDOW


def test_updates_slower_than_two_floors_do_not_grow() -> None:
    conn = opened(rtt_s=0.0001)
    for i in range(4):
        deliver(conn, WINDOW // 2, i * 3 * MIN_TUNING_RTT_S)
        conn.stream_read(1, WINDOW // 2, i * 3 * MIN_TUNING_RTT_S)
    assert conn.receive_window(1) == WINDOW


def test_no_growth_while_the_reader_lags_behind() -> None:
    """The whole window arrived, the reader came 10 ms later and took half: the reader is the
    bottleneck."""
    conn = opened(rtt_s=0.1)
    deliver(conn, WINDOW // 2, 0.0)
    conn.stream_read(1, WINDOW // 2, 0.0)  # first update: nothing to compare with
    assert updates(conn) == [WINDOW // 2]
    deliver(conn, WINDOW, 0.01)
    conn.stream_read(1, WINDOW // 2, 0.02)  # a turn later: half the window still waits unread
    assert updates(conn) == [WINDOW // 2]
    assert conn.receive_window(1) == WINDOW
    conn.stream_read(1, WINDOW // 2, 0.021)  # caught up, still fast: now it grows
    assert updates(conn) == [WINDOW // 2 + WINDOW]
    assert conn.receive_window(1) == 2 * WINDOW


def test_a_window_that_arrived_in_one_read_is_not_a_backlog() -> None:
    """One carrier read brings the whole window; the update falls due while the rest of its
    frames wait for their turn in the same loop turn: no lagging reader, the window grows.
    (Counted as one, a stream at 50 ms stayed at 256 KiB for a whole transfer in about one run
    in four.) The lagging reader above differs only in coming back 10 ms later."""
    conn = opened(rtt_s=0.05)
    deliver(conn, WINDOW // 2, 0.0)
    conn.stream_read(1, WINDOW // 2, 0.0)
    assert updates(conn) == [WINDOW // 2]
    deliver(conn, WINDOW, 0.05)  # one round trip later, the whole window in one read
    conn.stream_read(1, WINDOW // 2, 0.0501)  # the first half of its frames, this loop turn
    assert updates(conn) == [WINDOW // 2 + WINDOW]
    assert conn.receive_window(1) == 2 * WINDOW


@pytest.mark.anyio
async def test_session_feeds_the_core_the_shortest_recent_rtt() -> None:
    async with session_pair("memory", MuxConfig(enable_keepalive=False)) as (client, _server):
        with anyio.fail_after(5):
            rtts = [await client.ping() for _ in range(3)]
        assert client.rtt_s == rtts[-1]
        assert client.conn.rtt_s == min(rtts)


def _grow_fast(rtt_s: float, max_window: int) -> int:
    """Updates come as fast as rule 4 likes, the reader keeps up: where does the window stop?"""
    conn = Connection(client=False, config=MuxConfig(max_stream_window_bytes=max_window))
    conn.rtt_s = rtt_s
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    drain_frames(conn)
    now = 0.0
    for _ in range(20):
        half = conn.receive_window(1) // 2
        deliver(conn, half, now)
        conn.stream_read(1, half, now)
        updates(conn)
        now += MIN_TUNING_RTT_S / 10
    return conn.receive_window(1)


def test_a_short_path_grows_to_its_own_window_not_to_the_cap() -> None:
    """Rule 5: loopback's round trip (even as a busy machine's pings measure it) needs 4 MiB;
    the 16 MiB cap is for long paths, which still reach it."""
    assert path_window(0.0001, 64 * MIB) == MIN_PATH_WINDOW_BYTES == 4 * MIB
    assert _grow_fast(0.0001, 16 * MIB) == 4 * MIB
    assert _grow_fast(0.003, 16 * MIB) == 4 * MIB
    assert _grow_fast(0.05, 16 * MIB) == 16 * MIB
    assert _grow_fast(0.01, 64 * MIB) == 12_500_000  # 5 Gbit/s for two 10 ms round trips
