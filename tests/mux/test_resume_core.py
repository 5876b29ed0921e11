"""Resumption in the pure core: receipts, the replay log, and streams that survive lost carriers.

The property test drives two resumable cores over a carrier that breaks at random points
(whatever was in flight is lost), with random write sizes, random delivery chunks, random
receipt spacing and random pings; after each break both sides exchange their received counts
and `resume`. Every stream must arrive byte-exact both ways, and the replay log must stay
within its budget throughout (`mux/_replay.py`'s invariants).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mux import (
    Connection,
    DataReceived,
    FrameType,
    GoAwayCode,
    LocalProtocolError,
    MuxConfig,
    RemoteProtocolError,
    StreamEnded,
    StreamOpened,
)
from mux._const import HEADER_SIZE, MAX_REPLAY_BUDGET_BYTES
from mux._replay import ReplayLog, ResumeError, unwrap_receipt
from mux.testing import FrameBuilder, drain_frames

F = FrameBuilder()
KIB = 1024


# ------------------------------------------------------------------------- receipt arithmetic


@given(
    acked=st.integers(0, 2**48),
    ahead=st.integers(0, MAX_REPLAY_BUDGET_BYTES),
    behind=st.integers(1, MAX_REPLAY_BUDGET_BYTES),
)
def test_a_receipt_names_one_count_near_acked(acked: int, ahead: int, behind: int) -> None:
    """Invariant 3: ahead of `acked` (within the budget) a 32-bit receipt unwraps to the full
    count; behind it, however far within the budget, it is stale."""
    assert unwrap_receipt((acked + ahead) % 2**32, acked) == acked + ahead
    if acked >= behind:
        assert unwrap_receipt((acked - behind) % 2**32, acked) is None


def test_the_replay_log_keeps_exactly_the_unconfirmed_bytes() -> None:
    log = ReplayLog(1000)
    log.record([b"abc", memoryview(b"defgh"), bytearray(b"ij")])
    assert (log.sent, log.acked, log.buffered_bytes, log.room()) == (10, 0, 10, 990)
    assert log.confirm(4) and not log.confirm(4) and not log.confirm(2)
    log.rewind(6)
    assert b"".join(bytes(b) for b in log.take_pending()) == b"ghij"
    log.rewind(6)  # a second break before the replay was written: the same tail again
    assert b"".join(bytes(b) for b in log.take_pending()) == b"ghij"
    with pytest.raises(ResumeError):
        log.rewind(5)  # behind what the peer already confirmed
    with pytest.raises(ResumeError):
        log.rewind(11)  # more than we ever sent
    with pytest.raises(ValueError):
        log.confirm(11)
    assert log.peak_bytes == 10


def test_a_lent_writable_buffer_is_copied_when_recorded() -> None:
    """Invariant 1: whoever lent a bytearray may reuse it; the log keeps what was sent."""
    log = ReplayLog(1000)
    lent = bytearray(b"abc")
    log.record([lent])
    lent[:] = b"xyz"
    log.rewind(0)
    assert b"".join(bytes(b) for b in log.take_pending()) == b"abc"


def test_the_budget_is_bounded_so_receipts_never_wrap_into_each_other() -> None:
    with pytest.raises(ValueError):
        MuxConfig(replay_budget_bytes=MAX_REPLAY_BUDGET_BYTES + 1)
    with pytest.raises(ValueError):
        MuxConfig(replay_budget_bytes=1 * KIB * KIB, receipt_every_bytes=600 * KIB)


# ------------------------------------------------------------------------- the core's rules


def _pair(config: MuxConfig | None = None) -> tuple[Connection, Connection]:
    a = Connection(client=True, config=config, resumable=True)
    b = Connection(client=False, config=config, resumable=True)
    return a, b


def _move(sender: Connection, receiver: Connection) -> list[object]:
    data = b"".join(bytes(x) for x in sender.data_to_send())
    return list(receiver.receive_data(data, 0.0))


def test_no_receipt_leaves_before_both_sides_agreed() -> None:
    """A resumable core that was not told the peer agreed speaks plain yamux (rule 6)."""
    a, b = _pair()
    sid = a.open_stream(b"x" * 5000)
    _move(a, b)
    b.accept_stream(sid)
    b.stream_read(sid, 5000, 0.0)
    b.ping(7)
    frames = drain_frames(b)
    assert frames and all(f.type != FrameType.RECEIPT for f in frames)


def test_a_receipt_to_a_plain_core_is_a_protocol_error() -> None:
    conn = Connection(client=False)
    with pytest.raises(RemoteProtocolError, match="unknown frame type 4"):
        conn.receive_data(F.frame(FrameType.RECEIPT, length=0), 0.0)
    assert conn.terminated is GoAwayCode.PROTOCOL_ERROR


def test_a_plain_core_writes_what_it_wrote_before() -> None:
    """Counting received bytes is all a plain core does more: its frames are unchanged."""
    plain, resumable = Connection(client=True), Connection(client=True, resumable=True)
    for conn in (plain, resumable):
        sid = conn.open_stream(b"hello")
        conn.send_data(sid, b"x" * 100_000)
        conn.ping(3)
    assert b"".join(map(bytes, plain.data_to_send())) == b"".join(
        map(bytes, resumable.data_to_send())
    )
    assert plain.bytes_sent is None and resumable.bytes_sent is not None


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (F.frame(FrameType.RECEIPT, stream_id=1, length=1), "stream 0"),
        (F.frame(FrameType.RECEIPT, flags=1, length=1), "no flags"),
        (F.frame(FrameType.RECEIPT, length=10**6), "only"),
    ],
)
def test_bad_receipts_are_protocol_errors(frame: bytes, match: str) -> None:
    a, _ = _pair()
    a.resume_agreed()
    a.open_stream(b"x" * 100)
    a.data_to_send()
    with pytest.raises(RemoteProtocolError, match=match):
        a.receive_data(frame, 0.0)


def test_receipts_follow_received_bytes_and_pings() -> None:
    config = MuxConfig(receipt_every_bytes=64 * KIB)
    a, b = _pair(config)
    a.resume_agreed()
    b.resume_agreed()
    sid = a.open_stream()
    _move(a, b)
    b.accept_stream(sid)
    _move(b, a)
    a.send_data(sid, b"y" * (200 * KIB))
    _move(a, b)
    receipts = [f for f in drain_frames(b) if f.type == FrameType.RECEIPT]
    assert receipts and receipts[-1].length == b.bytes_received
    a.send_data(sid, b"z" * 10)  # below the spacing: confirmed with the next ping only
    _move(a, b)
    assert not [f for f in drain_frames(b) if f.type == FrameType.RECEIPT]
    a.ping(1)
    _move(a, b)
    receipts = [f for f in drain_frames(b) if f.type == FrameType.RECEIPT]
    assert [f.length for f in receipts] == [b.bytes_received]


def test_data_waits_for_room_in_the_log_and_nothing_spins() -> None:
    """Invariant 2: at the budget Data stops, `has_data_to_send` says so (a writer that
    believed it would loop without end), and a receipt lets it go on."""
    config = MuxConfig(replay_budget_bytes=256 * KIB, receipt_every_bytes=64 * KIB)
    a, b = _pair(config)
    a.resume_agreed()
    b.resume_agreed()
    sid = a.open_stream()
    _move(a, b)
    b.accept_stream(sid)
    _move(b, a)
    a.send_data(sid, b"d" * (240 * KIB))  # within the stream's 256 KiB window
    first = b"".join(map(bytes, a.data_to_send()))
    assert len(first) > 200 * KIB
    a.send_data(sid, b"e" * (64 * KIB))
    assert a.replay_bytes <= 256 * KIB + config.max_frame_bytes + HEADER_SIZE
    while a.has_data_to_send():
        a.data_to_send()
    assert a.replay_bytes >= 256 * KIB - config.max_frame_bytes
    assert a.send_buffered(sid) > 0  # Data waits...
    events = b.receive_data(first, 0.0)
    b.stream_read(sid, sum(len(e.data) for e in events if isinstance(e, DataReceived)), 0.0)
    _move(b, a)  # ...until b's receipt (and window update) arrives
    assert a.has_data_to_send()
    assert a.replay_bytes < 64 * KIB


def test_resume_checks_the_peers_count() -> None:
    a, _ = _pair()
    a.open_stream(b"x" * 100)
    sent = len(b"".join(map(bytes, a.data_to_send())))
    with pytest.raises(ResumeError):
        a.resume(sent + 1)
    a.resume(sent)
    assert not a.has_data_to_send()
    with pytest.raises(LocalProtocolError):
        Connection(client=True).resume(0)


def test_stop_retaining_keeps_nothing_and_refuses_receipts() -> None:
    a, _ = _pair()
    a.open_stream(b"x" * 100)
    a.data_to_send()
    a.stop_retaining()
    assert (a.resumable, a.replay_bytes, a.bytes_sent) == (False, 0, None)
    with pytest.raises(RemoteProtocolError):
        a.receive_data(F.frame(FrameType.RECEIPT, length=1), 0.0)


# ------------------------------------------------------------------ streams across lost carriers


@dataclass
class _Side:
    conn: Connection
    wire: bytearray = field(default_factory=bytearray)  # written, not yet delivered
    outgoing: dict[int, bytes] = field(default_factory=dict)  # stream -> bytes left to send
    incoming: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    peak: int = 0


class LossyCarrier:
    """Two resumable cores over a carrier that may be cut: bytes in flight are lost, and each
    side resumes with the other's count of what it received."""

    def __init__(self, config: MuxConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.a = _Side(Connection(client=True, config=config, resumable=True))
        self.b = _Side(Connection(client=False, config=config, resumable=True))
        self.a.conn.resume_agreed()
        self.b.conn.resume_agreed()
        self.cuts = 0

    def other(self, side: _Side) -> _Side:
        return self.b if side is self.a else self.a

    def open(self, side: _Side, payload: bytes) -> int:
        first = payload[: self.rng.randint(0, 4 * KIB)]
        sid = side.conn.open_stream(first)
        side.outgoing[sid] = payload[len(first) :]
        return sid

    def feed_app(self, side: _Side) -> None:
        """Each stream's writer hands the core more while its buffer is low; FIN when done."""
        conn = side.conn
        for sid, rest in list(side.outgoing.items()):
            if not conn.has_stream(sid) or conn.send_buffered(sid) >= 64 * KIB:
                continue
            size = self.rng.randint(1, 48 * KIB)
            if rest:
                conn.send_data(sid, rest[:size])
                side.outgoing[sid] = rest[size:]
            else:
                conn.send_eof(sid)
                del side.outgoing[sid]

    def write(self, side: _Side) -> None:
        limit = self.rng.choice([None, self.rng.randint(1, 128 * KIB)])
        side.wire += b"".join(bytes(b) for b in side.conn.data_to_send(limit))
        side.peak = max(side.peak, side.conn.replay_bytes)

    def deliver(self, side: _Side, size: int) -> None:
        """`size` bytes of what `side` wrote reach the other side."""
        piece = bytes(side.wire[:size])
        del side.wire[:size]
        receiver = self.other(side)
        conn = receiver.conn
        for event in conn.receive_data(piece, 0.0):
            if isinstance(event, StreamOpened):
                conn.accept_stream(event.stream_id)
                receiver.incoming[event.stream_id] = bytearray()
            elif isinstance(event, DataReceived):
                receiver.incoming.setdefault(event.stream_id, bytearray()).extend(event.data)
                conn.stream_read(event.stream_id, len(event.data), 0.0)
            elif isinstance(event, StreamEnded):
                receiver.ended.add(event.stream_id)

    def cut(self) -> None:
        """The carrier breaks: what was in flight is lost; both sides resume."""
        self.cuts += 1
        self.a.wire.clear()
        self.b.wire.clear()
        a_received, b_received = self.a.conn.bytes_received, self.b.conn.bytes_received
        self.a.conn.resume(b_received)
        self.b.conn.resume(a_received)

    def step(self, cut_probability: float) -> None:
        rng = self.rng
        side = rng.choice((self.a, self.b))
        roll = rng.random()
        if roll < cut_probability:
            self.cut()
        elif roll < 0.05:
            side.conn.ping(rng.randint(0, 2**32 - 1))
        elif roll < 0.5:
            self.feed_app(side)
            self.write(side)
        elif side.wire:
            self.deliver(side, rng.randint(1, max(1, len(side.wire))))

    def settle(self) -> None:
        """No more cuts: run until every stream finished and both sides are quiet."""
        for _ in range(20_000):
            for side in (self.a, self.b):
                self.feed_app(side)
                self.write(side)
                if side.wire:
                    self.deliver(side, len(side.wire))
            busy = any(
                s.outgoing or s.wire or s.conn.has_data_to_send() for s in (self.a, self.b)
            )
            if not busy:
                return
        raise AssertionError("the cores were still talking")


def _payload(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    budget_kib=st.sampled_from([128, 256, 1024, 32 * 1024]),
    receipt_kib=st.sampled_from([1, 16, 64]),
    cut_probability=st.sampled_from([0.0, 0.01, 0.05]),
    sizes=st.lists(st.integers(0, 300 * KIB), min_size=1, max_size=4),
)
def test_streams_are_byte_exact_across_random_cuts(
    seed: int, budget_kib: int, receipt_kib: int, cut_probability: float, sizes: list[int]
) -> None:
    config = MuxConfig(
        replay_budget_bytes=budget_kib * KIB,
        receipt_every_bytes=min(receipt_kib, budget_kib // 2) * KIB,
    )
    rng = random.Random(seed)
    link = LossyCarrier(config, rng)
    sent: dict[tuple[str, int], bytes] = {}
    for i, size in enumerate(sizes):
        side = link.a if i % 2 == 0 else link.b
        payload = _payload(rng, size)
        sid = link.open(side, payload)
        sent[("a" if side is link.a else "b", sid)] = payload
    for _ in range(400):
        link.step(cut_probability)
    link.settle()
    for (name, sid), payload in sent.items():
        receiver = link.b if name == "a" else link.a
        got = bytes(receiver.incoming.get(sid, b""))
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest(), (
            name, sid, len(got), len(payload), link.cuts,
        )  # fmt: skip
        assert sid in receiver.ended
    slack = config.max_frame_bytes + HEADER_SIZE + 4 * KIB  # one frame over, a few controls
    for side in (link.a, link.b):
        assert side.peak <= config.replay_budget_bytes + slack
        assert side.conn.terminated is None


def test_a_cut_in_the_middle_of_a_frame_resumes_at_the_right_byte() -> None:
    """The receiving parser keeps its half-read header or body: the replay continues it."""
    config = MuxConfig(receipt_every_bytes=16 * KIB)
    rng = random.Random(5)
    link = LossyCarrier(config, rng)
    payload = _payload(rng, 200 * KIB)
    sid = link.open(link.a, payload)
    link.feed_app(link.a)
    link.write(link.a)
    for cut_at in (5, HEADER_SIZE + 3, 70 * KIB + 7):  # inside a header, a body, a later frame
        link.deliver(link.a, cut_at)
        link.cut()
        link.feed_app(link.a)
        link.write(link.a)
    link.settle()
    assert bytes(link.b.incoming[sid]) == payload
