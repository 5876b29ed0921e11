"""Rule 6 of `mux/_window.py`: while the driver caps windows (`Connection.window_cap`), a grown
stream has at most the cap granted and unread at once, never stalls, and gets its full window
back once the cap is lifted."""

from __future__ import annotations

import random

from mux import Connection, MuxConfig
from mux._const import INITIAL_STREAM_WINDOW, FrameType
from mux._events import DataReceived
from mux._window import MIN_TUNING_RTT_S
from mux.testing import FrameBuilder, drain_frames

F = FrameBuilder()
WINDOW = INITIAL_STREAM_WINDOW
CAP = WINDOW


class Peer:
    """The sending end's view: credit it holds; the receiving end's unread bytes."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.credit = conn.receive_window(1)
        self.unread = 0
        self.now = 0.0

    def send(self, size: int) -> None:
        size = min(size, self.credit)
        if size:
            events = self.conn.receive_data(F.data(1, b"d" * size), self.now)
            assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == size
            self.credit -= size
            self.unread += size

    def read(self, size: int) -> None:
        size = min(size, self.unread)
        if size:
            self.unread -= size
            self.conn.stream_read(1, size, self.now)
        for frame in drain_frames(self.conn):
            if frame.type == FrameType.WINDOW_UPDATE:
                self.credit += frame.length

    def outstanding(self) -> int:
        return self.credit + self.unread


def grown() -> Peer:
    """A stream whose window auto-tuned to 4 initial windows (rule 4)."""
    conn = Connection(client=False, config=MuxConfig(max_stream_window_bytes=16 * WINDOW))
    conn.rtt_s = 0.0001
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    drain_frames(conn)
    peer = Peer(conn)
    for _ in range(3):
        half = conn.receive_window(1) // 2
        peer.send(half)
        peer.read(half)
        peer.now += 1.5 * MIN_TUNING_RTT_S
    assert conn.receive_window(1) == 4 * WINDOW
    peer.send(peer.credit)
    peer.read(peer.unread)
    return peer


def test_a_capped_stream_keeps_at_most_the_cap_outstanding_and_never_stalls() -> None:
    peer = grown()
    peer.conn.window_cap = CAP
    rng = random.Random(6)
    moved = 0
    for _ in range(2000):
        assert peer.outstanding() > 0  # the peer can send, or there is something to read
        before = peer.outstanding()
        sent = min(rng.randrange(1, 64 * 1024), peer.credit)
        peer.send(sent)
        peer.read(rng.randrange(1, 96 * 1024))
        moved += sent
        # Shrinks to the cap (credit already granted cannot be taken back), then stays there.
        assert peer.outstanding() <= max(CAP, before)
    assert peer.outstanding() <= CAP
    assert moved > 50 * CAP  # it kept flowing


def test_the_full_window_comes_back_once_the_cap_is_lifted() -> None:
    peer = grown()
    peer.conn.window_cap = CAP
    for _ in range(50):
        peer.send(peer.credit)
        peer.read(peer.unread)
    assert peer.outstanding() <= CAP
    peer.conn.window_cap = None
    for _ in range(4):
        peer.send(peer.credit)
        peer.read(peer.unread)
    # All of it granted again (and free to grow on: rule 4 sees fast updates here).
    assert peer.outstanding() == peer.conn.receive_window(1) >= 4 * WINDOW


def test_a_window_under_the_cap_is_left_alone() -> None:
    conn = Connection(client=False, config=MuxConfig())
    conn.receive_data(F.syn(1), 0.0)
    conn.accept_stream(1)
    drain_frames(conn)
    conn.window_cap = 2 * WINDOW
    peer = Peer(conn)
    peer.send(WINDOW)
    peer.read(WINDOW)
    assert peer.outstanding() == WINDOW
