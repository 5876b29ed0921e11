"""Receive-side flow control of one stream, with auto-tuning.

Policy (numbered so tests and SPEC.md can cite it):

1. The peer may send at most `credit` bytes; a Data frame longer than that is a protocol error.
2. Credit comes back only when the consumer has *read* bytes (`consumed`), never on arrival:
   that is the backpressure from a slow reader all the way to the remote writer.
3. An update is sent once the consumer has read at least half the window (hashicorp's rule), so a
   bulk stream costs one WINDOW_UPDATE per half window, not one per read.
4. Auto-tuning: if that update comes less than two round trips after the previous one, the
   window was the bottleneck (the sender drained it within an RTT), so the window doubles, up to
   `max_window`, as far as the session budget allows, but only while the reader keeps up (at
   most a quarter of the window delivered and unread): a reader working through a backlog is
   itself the bottleneck, and a bigger window would only queue more bytes in our memory and in
   front of every other stream of the carrier. On a long path (`LONG_PATH_RTT_S`), bytes that
   arrived within `FRESH_S` of the read
   are not a backlog: one carrier read brings a whole window's frames, and the update falls due
   while the rest of them wait for their turn in the same loop turn. Counted as unread, they
   held a window at 256 KiB for a whole transfer in about one run in four (one stream at 50 ms:
   25 Mbit/s instead of 1.1-1.8 Gbit/s, each update mid-burst with 95-101 KB "unread").
   Windows never shrink; a stream's growth
   is returned to the budget when the stream leaves the table. Round trips shorter than
   `MIN_TUNING_RTT_S` count as that long: below it (loopback, a LAN) the credit round trip is
   set by how soon two busy event loops get to the update and to the data it lets through, not
   by the wire, and a window sized for the wire alone starves the stream.
5. The window a stream may grow to is sized by the path: `PATH_RATE_BYTES_PER_S` times
   `PATH_WINDOW_RTTS` round trips (the round trip at its rule-4 floor), at least
   `MIN_PATH_WINDOW_BYTES`, at most `max_window`. Rule 4 alone ratchets: on a busy loopback
   the loop's stalls make a burst of updates look fast, windows never shrink, and a bulk
   stream ended at the 16 MiB cap, all of it buffered in one process or the other (peak RSS
   of both ends during one bulk stream 80-86 MiB at a 16 MiB cap, 77-78 at 4 MiB, idle 67).
   A long path still gets the full cap (50 ms: 62 MB wanted, `max_window` given). Loopback's
   round trip, measured by pings on a busy machine, is 1-3 ms: 4 MiB.

Invariant: credit + unread + consumed == window (unread = bytes delivered, not yet read).
"""

from __future__ import annotations

from mux._const import INITIAL_STREAM_WINDOW

#: Rule 4's floor for the round trip time. About one busy event-loop turn on each side; on
#: loopback it lets a bulk stream grow to 2-4 MiB, where a 0.1 ms ping would hold it at 512 KiB.
MIN_TUNING_RTT_S = 0.001
#: Rule 5: the rate one stream is sized for (5 Gbit/s: what one stream of a Python process
#: moves on this project's machines, 2-7 Gbit/s on loopback in `bench`) ...
PATH_RATE_BYTES_PER_S = 625_000_000
#: ... for this many round trips (the updates of rule 3 come every half window) ...
PATH_WINDOW_RTTS = 2
#: ... and never below this: what rule 4 reached on loopback before the ratchet (2-4 MiB).
MIN_PATH_WINDOW_BYTES = 4 * 1024 * 1024
#: Rule 4: bytes that arrived this recently are not a reader's backlog (a loop turn or two) ...
FRESH_S = 2 * MIN_TUNING_RTT_S
#: ... on a path at least this long. On a short one the window reaches its path size either
#: way, and a stalled reader's counts (tests/ops/test_rates.py) rely on its staying there.
LONG_PATH_RTT_S = 0.01


def path_window(rtt_s: float, max_window: int) -> int:
    """Rule 5: the largest window a path with this round trip needs."""
    wanted = int(PATH_RATE_BYTES_PER_S * PATH_WINDOW_RTTS * max(rtt_s, MIN_TUNING_RTT_S))
    return min(max_window, max(MIN_PATH_WINDOW_BYTES, wanted))


class SessionBudget:
    """The bytes of receive window all streams of one session may hold together."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, wanted: int) -> int:
        """Take up to `wanted` bytes; returns how many were granted."""
        granted = max(0, min(wanted, self.limit - self.used))
        self.used += granted
        return granted

    def release(self, amount: int) -> None:
        self.used -= amount


class ReceiveWindow:
    __slots__ = ("consumed", "credit", "fresh", "fresh_since_s", "last_update_s", "window")

    def __init__(self) -> None:
        self.window = INITIAL_STREAM_WINDOW
        self.credit = INITIAL_STREAM_WINDOW
        self.consumed = 0
        self.last_update_s: float | None = None
        #: Bytes received since `fresh_since_s` (rule 4: not a backlog while that is recent).
        self.fresh = 0
        self.fresh_since_s = 0.0

    def fits(self, length: int) -> bool:
        """Rule 1: may a Data frame of `length` bytes arrive now?"""
        return length <= self.credit

    def received(self, length: int, now: float) -> None:
        self.credit -= length
        if now - self.fresh_since_s > FRESH_S:
            self.fresh_since_s = now
            self.fresh = 0
        self.fresh += length

    def read(
        self, amount: int, now: float, rtt_s: float | None, max_window: int, budget: SessionBudget
    ) -> int:
        """The consumer read `amount` bytes; returns the update delta to send now (0: none)."""
        self.consumed += amount
        if self.consumed < self.window // 2:  # rule 3
            return 0
        unread = self.window - self.credit - self.consumed
        if (
            rtt_s is not None
            and rtt_s >= LONG_PATH_RTT_S
            and now - self.fresh_since_s <= 2 * FRESH_S
        ):
            unread -= self.fresh  # what arrived this loop turn is not a backlog
        if (
            rtt_s is not None
            and self.last_update_s is not None
            and now - self.last_update_s < 2 * max(rtt_s, MIN_TUNING_RTT_S)
            and unread <= self.window // 4
            and self.window < (ceiling := path_window(rtt_s, max_window))
        ):  # rules 4 and 5
            growth = budget.reserve(min(self.window, ceiling - self.window))
            self.window += growth
        else:
            growth = 0
        delta = self.consumed + growth
        self.credit += delta
        self.consumed = 0
        self.last_update_s = now
        return delta
