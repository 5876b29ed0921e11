"""Conformance of the core, as a table: frames in -> frames out, GoAway code, events.

Each `Case` is fed to a fresh server core (the peer is a client: odd stream ids) whole, byte by
byte and with trailing bytes. Limits that need many frames or the clock have their own tests
below the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from mux import (
    Connection,
    DataReceived,
    Flag,
    FrameType,
    GoAwayCode,
    GoAwayReceived,
    LocalProtocolError,
    MuxConfig,
    PongReceived,
    RemoteProtocolError,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from mux._const import INITIAL_STREAM_WINDOW, MAX_WINDOW
from mux._events import Event
from mux.testing import Frame, FrameBuilder, drain_frames, feed, parse_frames

F = FrameBuilder()
KIB = 1024
MIB = 1024 * KIB
WINDOW = INITIAL_STREAM_WINDOW
PROTOCOL_ERROR = GoAwayCode.PROTOCOL_ERROR


def rst(stream_id: int) -> Frame:
    return Frame(0, FrameType.WINDOW_UPDATE, Flag.RST, stream_id, 0)


def pong(opaque: int) -> Frame:
    return Frame(0, FrameType.PING, Flag.ACK, 0, opaque)


def go_away(code: int) -> Frame:
    return Frame(0, FrameType.GO_AWAY, 0, 0, code)


def data(stream_id: int, payload: bytes) -> DataReceived:
    return DataReceived(stream_id, memoryview(payload))


@dataclass
class Case:
    name: str
    wire: list[bytes]
    #: Expected GoAway code (the core raises RemoteProtocolError); None: the input is legal.
    error: int | None = None
    events: list[Event] = field(default_factory=list)
    out: list[Frame] = field(default_factory=list)
    config: MuxConfig | None = None
    #: Runs on the fresh core before the input (its output is discarded).
    setup: Callable[[Connection], None] | None = None


def go_away_locally(conn: Connection) -> None:
    conn.go_away()


CASES = [
    # ---- stream ids
    Case("syn with the receiver's parity", [F.syn(2)], error=PROTOCOL_ERROR),
    Case("duplicate syn", [F.syn(1), F.syn(1)], error=PROTOCOL_ERROR),
    Case(
        # hashicorp/yamux picks ids before its goroutines send the SYNs: order is not guaranteed.
        "syn ids out of order",
        [F.syn(5), F.syn(3)],
        events=[StreamOpened(5), StreamOpened(3)],
    ),
    Case("duplicate syn after out of order", [F.syn(5), F.syn(3), F.syn(3)], error=1),
    Case("syn on stream 0", [F.syn(0)], error=PROTOCOL_ERROR),
    Case("data on stream 0", [F.data(0, b"x")], error=PROTOCOL_ERROR),
    Case("window update on stream 0", [F.window_update(0, 5)], error=PROTOCOL_ERROR),
    Case("ping on a stream", [F.ping(1, stream_id=1)], error=PROTOCOL_ERROR),
    Case("go away on a stream", [F.go_away(0, stream_id=1)], error=PROTOCOL_ERROR),
    Case("data for a never-opened id", [F.data(7, b"x")], error=PROTOCOL_ERROR),
    Case("window update for a never-opened id", [F.window_update(7, 1)], error=PROTOCOL_ERROR),
    Case("rst for a never-opened id", [F.rst(7)], error=PROTOCOL_ERROR),
    Case("frame for a never-opened id above a live one", [F.syn(1), F.fin(3)], error=1),
    Case("frame for an id of ours we never opened", [F.window_update(2, 1)], error=1),
    Case(
        "frames for a reset stream are dropped",
        [F.syn(1), F.rst(1), F.data(1, b"late"), F.window_update(1, 9), F.fin(1), F.rst(1)],
        events=[StreamOpened(1), StreamReset(1)],
    ),
    Case(
        "frames for a refused stream are dropped",
        [F.syn(1), F.syn(3), F.data(3, b"late"), F.fin(3)],
        events=[StreamOpened(1)],
        out=[rst(3)],
        config=MuxConfig(max_streams=1),
    ),
    Case(
        "frames for a stream closed both ways are dropped",
        [F.syn(1), F.fin(1), F.data(1, b"", Flag.FIN), F.window_update(1, 5)],
        events=[StreamOpened(1), StreamEnded(1)],
        setup=None,
    ),
    # ---- versions and types
    Case("unknown frame type 4", [F.frame(4)], error=PROTOCOL_ERROR),
    Case("unknown frame type 255", [F.frame(255, stream_id=1)], error=PROTOCOL_ERROR),
    Case("version 1", [F.frame(FrameType.PING, Flag.SYN, 0, 1, version=1)], error=1),
    Case("bad version after good frames", [F.syn(1), F.frame(0, 0, 1, 0, version=255)], error=1),
    # ---- data length, decided from the header before any body byte
    Case("data beyond the window", [F.syn(1), F.data(1, length=WINDOW + 1)], error=1),
    Case("syn data beyond the window", [F.data(1, flags=Flag.SYN, length=WINDOW + 1)], error=1),
    Case("data beyond the 16 MiB cap", [F.syn(1), F.data(1, length=16 * MIB + 1)], error=1),
    Case(
        "data within the window but beyond max_data_frame_bytes",
        [F.syn(1), F.data(1, length=64 * KIB + 1)],
        error=1,
        config=MuxConfig(max_data_frame_bytes=64 * KIB),
    ),
    Case(
        "data beyond max_data_frame_bytes on a closed stream",
        [F.syn(1), F.rst(1), F.data(1, length=64 * KIB + 1)],
        error=1,
        config=MuxConfig(max_data_frame_bytes=64 * KIB),
    ),
    Case("4 GiB data on an open stream", [F.syn(1), F.data(1, length=2**32 - 1)], error=1),
    Case("4 GiB data with syn", [F.data(1, flags=Flag.SYN, length=2**32 - 1)], error=1),
    Case("4 GiB data on an unknown stream", [F.data(9, length=2**32 - 1)], error=1),
    Case("4 GiB data on stream 0", [F.data(0, length=2**32 - 1)], error=1),
    Case(
        "4 GiB data on a closed stream",
        [F.syn(1), F.rst(1), F.data(1, length=2**32 - 1)],
        error=1,
    ),
    Case(
        "4 GiB data on a refused stream",
        [F.syn(1), F.data(3, flags=Flag.SYN, length=2**32 - 1)],
        error=1,
        config=MuxConfig(max_streams=1),
    ),
    Case("data after fin", [F.syn(1), F.fin(1), F.data(1, b"x")], error=PROTOCOL_ERROR),
    Case(
        "a full window is fine",
        [F.syn(1), F.data(1, b"z" * WINDOW)],
        events=[StreamOpened(1), data(1, b"z" * WINDOW)],
    ),
    Case(
        "one byte past a full window",
        [F.syn(1), F.data(1, b"z" * WINDOW), F.data(1, length=1)],
        error=PROTOCOL_ERROR,
    ),
    # ---- window updates
    Case("window update past 2^31-1", [F.syn(1), F.window_update(1, 2**32 - 1)], error=1),
    Case(
        "window update to exactly 2^31-1, then one more",
        [F.syn(1), F.window_update(1, MAX_WINDOW - WINDOW), F.window_update(1, 1)],
        error=PROTOCOL_ERROR,
    ),
    Case(
        "window update to exactly 2^31-1",
        [F.syn(1), F.window_update(1, MAX_WINDOW - WINDOW)],
        events=[StreamOpened(1)],
    ),
    # ---- pings and go away
    Case("ping is answered", [F.ping(42)], out=[pong(42)]),
    Case("pong is reported", [F.ping(42, ack=True)], events=[PongReceived(42)]),
    Case("go away is reported", [F.go_away(2)], events=[GoAwayReceived(2)]),
    Case("a second go away is ignored", [F.go_away(0), F.go_away(1)], events=[GoAwayReceived(0)]),
    Case(
        "after our go away a syn is reset",
        [F.syn(1), F.data(3, b"abc", Flag.SYN)],
        out=[rst(1), rst(3)],
        setup=go_away_locally,
    ),
    # ---- stream limits
    Case(
        "a syn beyond max_streams is reset",
        [F.syn(1), F.syn(3), F.syn(5)],
        events=[StreamOpened(1), StreamOpened(3)],
        out=[rst(5)],
        config=MuxConfig(max_streams=2),
    ),
    Case(
        "a syn beyond the accept backlog is reset",
        [F.syn(1), F.syn(3), F.syn(5), F.syn(7)],
        events=[StreamOpened(1), StreamOpened(3)],
        out=[rst(5), rst(7)],
        config=MuxConfig(accept_backlog=2),
    ),
    Case(
        "a syn beyond the receive budget is reset",
        [F.syn(1), F.syn(3)],
        events=[StreamOpened(1)],
        out=[rst(3)],
        config=MuxConfig(session_receive_budget_bytes=WINDOW + 1),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_conformance(case: Case, feed_mode: str) -> None:
    conn = Connection(client=False, config=case.config)
    if case.setup is not None:
        case.setup(conn)
        conn.data_to_send()
    wire = b"".join(case.wire)
    if case.error is None:
        assert feed(conn, wire, feed_mode) == case.events
        assert drain_frames(conn) == case.out
        assert conn.terminated is None
        return
    with pytest.raises(RemoteProtocolError) as info:
        feed(conn, wire, feed_mode)
    assert info.value.go_away_code == case.error
    assert conn.terminated == case.error
    frames = drain_frames(conn)
    assert frames[-1] == go_away(case.error)
    # The connection is closed: more input is ignored, nothing more is written.
    assert conn.receive_data(F.ping(1), 1.0) == []
    assert drain_frames(conn) == []
    assert conn.stream_count == 0
    assert conn.budget_used == 0


def test_syn_reusing_a_closed_id_is_a_protocol_error() -> None:
    conn = Connection(client=False)
    conn.receive_data(F.syn(1) + F.rst(1), 0.0)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(F.syn(1), 0.0)


# ---------------------------------------------------------------------------------------- limits


def test_accept_backlog_at_defaults_resets_the_excess_syn() -> None:
    conn = Connection(client=False)
    backlog = conn.config.accept_backlog
    ids = [2 * i + 1 for i in range(backlog + 3)]
    events = conn.receive_data(b"".join(F.syn(i) for i in ids), 0.0)
    assert events == [StreamOpened(i) for i in ids[:backlog]]
    assert drain_frames(conn) == [rst(i) for i in ids[backlog:]]
    # Accepting one frees one place in the backlog.
    conn.accept_stream(ids[0])
    next_id = ids[-1] + 2
    assert conn.receive_data(F.syn(next_id), 0.0) == [StreamOpened(next_id)]
    assert drain_frames(conn) == [Frame(0, FrameType.WINDOW_UPDATE, Flag.ACK, ids[0], 0)]


def test_max_streams_at_defaults() -> None:
    conn = Connection(client=False)
    limit = conn.config.max_streams
    for i in range(limit):
        stream_id = 2 * i + 1
        assert conn.receive_data(F.syn(stream_id), 0.0) == [StreamOpened(stream_id)]
        conn.accept_stream(stream_id)
        conn.data_to_send()  # as a driver does: ACKs count among the replies that pause parsing
    assert conn.stream_count == limit
    excess = 2 * limit + 1
    assert conn.receive_data(F.syn(excess), 0.0) == []
    assert drain_frames(conn) == [rst(excess)]
    # Our own opens are refused too, locally.
    with pytest.raises(LocalProtocolError):
        conn.open_stream()
    # A stream closing both ways makes room again.
    conn.receive_data(F.rst(1), 0.0)
    assert conn.receive_data(F.syn(excess + 2), 0.0) == [StreamOpened(excess + 2)]


def test_queued_pongs_are_capped_and_parsing_pauses() -> None:
    conn = Connection(client=False)
    cap = conn.config.max_queued_pongs
    flood = b"".join(F.ping(i) for i in range(10 * cap))
    assert conn.receive_data(flood, 0.0) == []
    assert conn.reading_paused
    # More input while paused is held back, not parsed: still no more than `cap` replies.
    assert conn.receive_data(F.ping(999), 0.0) == []
    assert conn.receive_data(b"", 0.0) == []
    assert drain_frames(conn) == [pong(i) for i in range(cap)]
    # Writing the replies out lets parsing resume, `cap` at a time, in order.
    answered = [f.length for f in drain_frames(conn)]
    assert answered == []
    for _ in range(20):
        if not conn.reading_paused:
            break
        conn.receive_data(b"", 0.0)
        frames = drain_frames(conn)
        assert 0 < len(frames) <= cap
        assert all(f == pong(f.length) for f in frames)
        answered += [f.length for f in frames]
    assert not conn.reading_paused
    assert answered == [*range(cap, 10 * cap), 999]


def test_a_huge_ping_flood_queues_only_the_cap() -> None:
    conn = Connection(client=False)
    cap = conn.config.max_queued_pongs
    conn.receive_data(F.ping(3) * 100_000, 0.0)
    queued = b"".join(bytes(b) for b in conn.data_to_send())
    assert len(queued) == cap * 12


def test_pause_holds_a_frame_split_across_inputs(feed_mode: str) -> None:
    conn = Connection(client=False, config=MuxConfig(max_queued_pongs=1))
    wire = F.ping(1) + F.ping(2) + F.data(3, b"xyz", Flag.SYN) + F.ping(4, ack=True)
    events = feed(conn, wire, feed_mode)
    assert events == []
    assert conn.reading_paused
    assert drain_frames(conn) == [pong(1)]
    events = conn.receive_data(b"", 0.0)
    assert drain_frames(conn) == [pong(2)]
    events += conn.receive_data(b"", 0.0)
    assert not conn.reading_paused
    assert events == [StreamOpened(3), data(3, b"xyz"), PongReceived(4)]


def test_refusals_and_pongs_share_one_cap() -> None:
    conn = Connection(client=False, config=MuxConfig(accept_backlog=1))
    cap = conn.config.max_queued_pongs
    wire = b"".join(F.syn(2 * i + 1) + F.ping(i) for i in range(4 * cap))
    conn.receive_data(wire, 0.0)
    assert conn.reading_paused
    frames = drain_frames(conn)
    replies = [f for f in frames if f.type == FrameType.PING or f.has(Flag.RST)]
    assert len(replies) <= cap


def reset_pairs(first_id: int, count: int) -> bytes:
    return b"".join(F.syn(i) + F.rst(i) for i in range(first_id, first_id + 2 * count, 2))


def test_reset_rate_limit() -> None:
    config = MuxConfig()
    conn = Connection(client=False)
    burst, rate = config.reset_burst, config.reset_rate_per_s
    conn.receive_data(reset_pairs(1, burst), 0.0)
    assert conn.stream_count == 0
    # A second later the bucket holds `rate` more resets, not one more.
    next_id = 2 * burst + 1
    conn.receive_data(reset_pairs(next_id, int(rate)), 1.0)
    next_id += 2 * int(rate)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(reset_pairs(next_id, 2), 1.0)
    assert info.value.go_away_code == PROTOCOL_ERROR
    assert drain_frames(conn)[-1] == go_away(PROTOCOL_ERROR)


def test_refused_syns_count_as_resets() -> None:
    conn = Connection(client=False, config=MuxConfig(max_streams=1, reset_burst=5))
    conn.receive_data(F.syn(1), 0.0)
    conn.receive_data(b"".join(F.syn(i) for i in range(3, 13, 2)), 0.0)  # 5 refusals
    conn.data_to_send()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(F.syn(13), 0.0)


GLITCHES = {
    "empty data": lambda: F.data(1, b""),
    "zero window update": lambda: F.window_update(1, 0),
    "data on a closed stream": lambda: F.data(3, b"x"),
    "window update on a closed stream": lambda: F.window_update(3, 100),
    "rst on a closed stream": lambda: F.rst(3),
}


@pytest.mark.parametrize("kind", list(GLITCHES))
def test_glitch_budget(kind: str) -> None:
    config = MuxConfig()
    conn = Connection(client=False)
    conn.receive_data(F.syn(1) + F.syn(3) + F.rst(3), 0.0)  # 1 open, 3 closed
    frame = GLITCHES[kind]()
    burst, rate = config.glitch_burst, config.glitch_rate_per_s
    conn.receive_data(frame * burst, 0.0)
    assert conn.terminated is None
    # Ten seconds later: `10 * rate` more are tolerated, then the session ends.
    conn.receive_data(frame * int(10 * rate), 10.0)
    with pytest.raises(RemoteProtocolError) as info:
        conn.receive_data(frame * 2, 10.0)
    assert info.value.go_away_code == PROTOCOL_ERROR
    assert drain_frames(conn)[-1] == go_away(PROTOCOL_ERROR)


def test_frames_with_flags_are_not_glitches() -> None:
    conn = Connection(client=False, config=MuxConfig(glitch_burst=1))
    wire = b"".join(F.syn(i) + F.data(i, b"", Flag.FIN) for i in range(1, 41, 2))
    events = conn.receive_data(wire, 0.0)
    assert len(events) == 40
    assert conn.terminated is None


def test_go_away_received_refuses_new_streams() -> None:
    conn = Connection(client=True)
    stream_id = conn.open_stream()
    assert conn.receive_data(F.go_away(0), 0.0) == [GoAwayReceived(0)]
    with pytest.raises(LocalProtocolError):
        conn.open_stream()
    conn.send_data(stream_id, b"existing streams carry on")
    assert any(f.type == FrameType.DATA for f in drain_frames(conn))


def test_local_go_away_refuses_our_opens() -> None:
    conn = Connection(client=True)
    conn.go_away()
    assert drain_frames(conn) == [go_away(GoAwayCode.NORMAL)]
    with pytest.raises(LocalProtocolError):
        conn.open_stream()


# ---------------------------------------------------------------------------------------- windows


def deliver(conn: Connection, stream_id: int, size: int, now: float) -> None:
    events = conn.receive_data(F.data(stream_id, b"d" * size), now)
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == size


def window_updates(conn: Connection) -> list[int]:
    return [f.length for f in drain_frames(conn) if f.type == FrameType.WINDOW_UPDATE]


def test_credit_returns_only_after_reads_half_a_window_at_a_time() -> None:
    conn = Connection(client=False)
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    conn.data_to_send()
    deliver(conn, 1, WINDOW, 0.0)
    assert conn.receive_credit(1) == 0
    assert window_updates(conn) == []  # arrival returns no credit
    conn.stream_read(1, WINDOW // 2 - 1, 0.0)
    assert window_updates(conn) == []  # under half the window: not yet
    conn.stream_read(1, 1, 0.0)
    assert window_updates(conn) == [WINDOW // 2]
    assert conn.receive_credit(1) == WINDOW // 2
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(F.data(1, length=WINDOW // 2 + 1), 0.0)


def grow_once(conn: Connection, stream_id: int, now: float) -> int:
    """Deliver and read half the current window; returns the update sent."""
    half = conn.receive_window(stream_id) // 2
    deliver(conn, stream_id, half, now)
    conn.stream_read(stream_id, half, now)
    (delta,) = window_updates(conn)
    return delta


def test_window_doubles_when_updates_come_within_two_round_trips() -> None:
    max_window = 4 * WINDOW
    conn = Connection(client=False, config=MuxConfig(max_stream_window_bytes=max_window))
    conn.rtt_s = 0.1
    conn.receive_data(F.syn(1), 0.0)
    assert grow_once(conn, 1, 0.0) == WINDOW // 2  # first update: nothing to compare with
    assert conn.receive_window(1) == WINDOW
    assert grow_once(conn, 1, 0.15) == WINDOW // 2 + WINDOW  # within 2 RTT: doubled
    assert conn.receive_window(1) == 2 * WINDOW
    assert grow_once(conn, 1, 0.3) == WINDOW + 2 * WINDOW
    assert conn.receive_window(1) == max_window
    assert grow_once(conn, 1, 0.4) == 2 * WINDOW  # capped: the half window only
    assert conn.receive_window(1) == max_window
    assert conn.budget_used == max_window


def test_window_stays_when_updates_are_slow() -> None:
    conn = Connection(client=False)
    conn.rtt_s = 0.1
    conn.receive_data(F.syn(1), 0.0)
    for i in range(5):
        grow_once(conn, 1, i * 0.25)  # more than two round trips apart
    assert conn.receive_window(1) == WINDOW


def test_window_stays_without_an_rtt() -> None:
    conn = Connection(client=False)
    conn.receive_data(F.syn(1), 0.0)
    for _ in range(5):
        grow_once(conn, 1, 0.0)
    assert conn.receive_window(1) == WINDOW


def test_window_growth_is_bounded_by_the_session_budget() -> None:
    budget = 3 * WINDOW
    config = MuxConfig(session_receive_budget_bytes=budget)
    conn = Connection(client=False, config=config)
    conn.rtt_s = 1.0
    conn.receive_data(F.syn(1) + F.syn(3), 0.0)
    assert conn.budget_used == 2 * WINDOW
    for i in range(6):
        grow_once(conn, 1, i * 0.01)
        assert conn.budget_used <= budget
    assert conn.receive_window(1) == 2 * WINDOW  # only one window's worth was left
    assert conn.receive_window(3) == WINDOW
    # No room for another stream now; closing the grown one gives it all back.
    conn.receive_data(F.syn(5), 0.0)
    assert drain_frames(conn) == [rst(5)]
    conn.receive_data(F.rst(1), 0.0)
    assert conn.budget_used == WINDOW


# ---------------------------------------------------------------------------------------- output


def test_data_frames_are_at_most_max_frame_bytes() -> None:
    config = MuxConfig(max_frame_bytes=16 * KIB)
    conn = Connection(client=True, config=config)
    stream_id = conn.open_stream()
    conn.send_data(stream_id, b"q" * (100 * KIB))
    frames = [f for f in drain_frames(conn, 10 * MIB) if f.type == FrameType.DATA]
    assert max(f.length for f in frames) <= 16 * KIB
    assert sum(f.length for f in frames) == 100 * KIB


def test_ready_streams_take_turns() -> None:
    config = MuxConfig(max_frame_bytes=16 * KIB)
    conn = Connection(client=True, config=config)
    a, b, c = conn.open_stream(), conn.open_stream(), conn.open_stream()
    conn.data_to_send()
    conn.send_data(a, b"a" * (64 * KIB))  # all three heavy: more than a light turn's worth
    conn.send_data(b, b"b" * (32 * KIB))
    conn.send_data(c, b"c" * (20 * KIB))
    order = [f.stream_id for f in drain_frames(conn, 10 * MIB) if f.type == FrameType.DATA]
    assert order == [a, b, c, a, b, c, a, a]


def _data_order(conn: Connection, max_bytes: int | None = None) -> list[tuple[int, int]]:
    return [
        (f.stream_id, f.length)
        for f in parse_frames(b"".join(conn.data_to_send(max_bytes)))
        if f.type == FrameType.DATA
    ]


def test_a_light_stream_goes_ahead_of_bulk() -> None:
    """A stream queued with little to send (a 64 B request) leaves before a bulk stream's
    megabyte, though the bulk stream was queued first."""
    conn = Connection(client=True)
    bulk, light = conn.open_stream(), conn.open_stream()
    conn.data_to_send()
    conn.send_data(bulk, b"B" * MIB)
    conn.send_data(light, b"L" * 64)
    assert _data_order(conn)[0] == (light, 64)


def test_a_light_stream_that_grows_is_served_as_bulk() -> None:
    """Only the first turn is light: what is left after it waits its round-robin turn."""
    config = MuxConfig(max_frame_bytes=16 * KIB)
    conn = Connection(client=True, config=config)
    bulk, grower = conn.open_stream(), conn.open_stream()
    conn.data_to_send()
    conn.send_data(grower, b"g" * 100)  # light when queued
    conn.send_data(bulk, b"B" * (64 * KIB))
    conn.send_data(grower, b"g" * (48 * KIB))  # then a lot more
    order = [sid for sid, _ in _data_order(conn, 10 * MIB)]
    assert order[0] == grower
    assert order[1:5] == [bulk, grower, bulk, grower]  # round-robin from then on


def test_light_streams_never_take_more_than_half_of_a_batch_from_bulk() -> None:
    """However many light streams keep coming, a waiting bulk stream gets half of every
    batch: light priority without starvation."""
    config = MuxConfig(write_batch_bytes=256 * KIB)
    conn = Connection(client=True, config=config)
    bulk = conn.open_stream()
    lights = [conn.open_stream() for _ in range(200)]
    conn.data_to_send()
    conn.send_data(bulk, b"B" * (16 * MIB))
    bulk_bytes = total = 0
    for _ in range(20):
        for stream_id in lights:  # every light stream has a new 1 KiB message each batch
            if conn.send_buffered(stream_id) == 0:
                conn.send_data(stream_id, b"l" * KIB)
        for stream_id, length in _data_order(conn):
            total += length
            bulk_bytes += length if stream_id == bulk else 0
        for stream_id in (bulk, *lights):  # the peer keeps granting credit
            if conn.send_window(stream_id) < 256 * KIB:
                conn.receive_data(F.window_update(stream_id, 256 * KIB), 0.0)
    assert bulk_bytes >= 0.45 * total


def test_with_no_bulk_waiting_light_streams_take_the_whole_batch() -> None:
    conn = Connection(client=True, config=MuxConfig(write_batch_bytes=64 * KIB))
    lights = [conn.open_stream() for _ in range(40)]
    conn.data_to_send()
    for stream_id in lights:
        conn.send_data(stream_id, b"l" * KIB)
    assert len(_data_order(conn)) == 40  # 40 KiB: more than half the batch, all at once


def test_control_frames_leave_before_data() -> None:
    conn = Connection(client=True)
    stream_id = conn.open_stream()
    conn.send_data(stream_id, b"x" * 1000)
    conn.ping(5)
    conn.receive_data(F.ping(6), 0.0)
    frames = drain_frames(conn)
    kinds = [f.type for f in frames]
    assert kinds.index(FrameType.DATA) > max(i for i, k in enumerate(kinds) if k != FrameType.DATA)


def test_write_batch_limit_spreads_data_over_calls() -> None:
    conn = Connection(client=True, config=MuxConfig(max_frame_bytes=4 * KIB))
    stream_id = conn.open_stream()
    conn.data_to_send()
    conn.send_data(stream_id, b"x" * (64 * KIB))
    sizes = []
    for _ in range(100):
        out = drain_frames(conn, 8 * KIB)
        if not out:
            break
        sizes.append(sum(f.length for f in out))
    assert sum(sizes) == 64 * KIB
    assert max(sizes) <= 8 * KIB + 4 * KIB  # one frame may straddle the limit
