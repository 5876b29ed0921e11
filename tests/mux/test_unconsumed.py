"""`Connection.unconsumed`: what a sender can tell of the bytes its peer has not read yet."""

from __future__ import annotations

from mux._const import INITIAL_STREAM_WINDOW
from mux._events import DataReceived
from mux.testing.pairs import ConnectionPair

WINDOW = INITIAL_STREAM_WINDOW
SENT_BYTES = 4 * WINDOW


def _delivered(events: list[object]) -> int:
    return sum(len(e.data) for e in events if isinstance(e, DataReceived))


def test_a_reader_that_takes_nothing_leaves_everything_unconsumed() -> None:
    pair = ConnectionPair(auto_accept=True)
    stream = pair.client.open_stream()
    pair.client.send_data(stream, b"d" * SENT_BYTES)
    _, server_events = pair.pump()
    assert _delivered(server_events) == WINDOW  # one window's worth, unread
    assert pair.client.unconsumed(stream) == SENT_BYTES


def test_unconsumed_follows_the_reader_and_ends_at_zero() -> None:
    pair = ConnectionPair(auto_accept=True)
    stream = pair.client.open_stream()
    pair.client.send_data(stream, b"d" * SENT_BYTES)
    _, server_events = pair.pump()
    unread = _delivered(server_events)
    seen = [pair.client.unconsumed(stream)]
    read = 0
    while read < SENT_BYTES:
        chunk = min(unread, WINDOW // 4)
        assert chunk > 0, (read, seen)
        pair.server.stream_read(stream, chunk, pair.now)
        read += chunk
        unread -= chunk
        _, server_events = pair.pump()
        unread += _delivered(server_events)
        seen.append(pair.client.unconsumed(stream))
        # Off by at most half a window: credit comes back by the half window, so a sender
        # cannot tell the last half window read from unread (mux/_window.py rule 3).
        assert abs(seen[-1] - (SENT_BYTES - read)) <= WINDOW // 2, (read, seen)
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == 0  # all read: nothing is reported as still in the tunnel


def test_a_stream_gone_has_nothing_unconsumed() -> None:
    pair = ConnectionPair(auto_accept=True)
    assert pair.client.unconsumed(99) == 0
