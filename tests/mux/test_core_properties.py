"""Property tests of the core: codec round trips, garbage in, and two cores talking at random."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from mux import (
    Connection,
    DataReceived,
    FrameType,
    GoAwayCode,
    LocalProtocolError,
    MuxConfig,
    PongReceived,
    RemoteProtocolError,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from mux._const import INITIAL_STREAM_WINDOW, MAX_WINDOW
from mux._frame import decode_header, encode_header
from mux.testing import (
    ConnectionPair,
    FrameBuilder,
    drain_frames,
    merge_events,
    parse_frames,
    random_chunks,
)

F = FrameBuilder()
u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)

# ---------------------------------------------------------------------------------------- codec


@given(type=st.sampled_from(FrameType), flags=u16, stream_id=u32, length=u32)
def test_header_round_trip(type: FrameType, flags: int, stream_id: int, length: int) -> None:
    raw = encode_header(type, flags, stream_id, length)
    assert decode_header(raw) == (0, type, flags, stream_id, length)
    assert decode_header(b"junk" + raw, 4) == (0, type, flags, stream_id, length)


@given(version=u8, type=u8, flags=u16, stream_id=u32, length=u32)
def test_frame_builder_writes_any_header(
    version: int, type: int, flags: int, stream_id: int, length: int
) -> None:
    raw = F.frame(type, flags, stream_id, length, version=version)
    assert decode_header(raw) == (version, type, flags, stream_id, length)


@given(bodies=st.lists(st.tuples(st.integers(1, 99), st.binary(max_size=300), u16), max_size=10))
def test_data_frames_round_trip(bodies: list[tuple[int, bytes, int]]) -> None:
    wire = b"".join(F.data(sid, body, flags) for sid, body, flags in bodies)
    frames = parse_frames(wire)
    assert [(f.stream_id, f.body, f.flags) for f in frames] == bodies


@given(payload=st.binary(max_size=5000), seed=st.integers(0, 2**16), max_chunk=st.integers(1, 64))
def test_data_survives_any_chunking(payload: bytes, seed: int, max_chunk: int) -> None:
    conn = Connection(client=False)
    wire = F.syn(1) + F.data(1, payload[:2000]) + F.data(1, payload[2000:]) + F.fin(1)
    events = []
    for piece in random_chunks(wire, random.Random(seed), max_chunk):
        events += conn.receive_data(piece, 0.0)
    received = b"".join(bytes(e.data) for e in events if isinstance(e, DataReceived))
    assert received == payload
    assert merge_events(events)[-1] == StreamEnded(1)


# ---------------------------------------------------------------------------------------- garbage


def frame_strategy() -> st.SearchStrategy[bytes]:
    """Frames that are mostly well formed, so the fuzzing reaches past the version check."""
    small_ids = st.integers(0, 9)
    lengths = st.one_of(st.integers(0, 40), st.sampled_from([2**16, 2**18, 2**31 - 1, 2**32 - 1]))
    flags = st.one_of(st.sampled_from([0, 1, 2, 4, 8, 1 | 4, 1 | 8, 2 | 4]), u16)
    header = st.builds(
        lambda v, t, f, s, n: F.frame(t, f, s, n, version=v),
        st.one_of(st.just(0), u8),
        st.one_of(st.integers(0, 3), u8),
        flags,
        small_ids,
        lengths,
    )
    data = st.builds(lambda s, f, b: F.data(s, b, f), small_ids, flags, st.binary(max_size=40))
    return st.one_of(header, data, st.binary(min_size=1, max_size=30))


def run_garbage(conn: Connection, chunks: list[bytes]) -> None:
    """Peer bytes may yield events or RemoteProtocolError, nothing else; then a GoAway is sent."""
    try:
        for chunk in chunks:
            conn.receive_data(chunk, 0.0)
            for _ in range(100):  # a paused core resumes once its replies are written
                if not conn.reading_paused:
                    break
                conn.data_to_send()
                conn.receive_data(b"", 0.0)
    except RemoteProtocolError as exc:
        frames = drain_frames(conn)
        assert frames[-1].type == FrameType.GO_AWAY
        assert frames[-1].length == exc.go_away_code
        assert conn.terminated == exc.go_away_code
        assert conn.receive_data(b"\0" * 24, 0.0) == []
        assert conn.stream_count == 0
    else:
        assert conn.terminated is None
        drain_frames(conn)  # whatever it wrote parses as frames


@given(st.lists(st.binary(max_size=200), max_size=10), st.booleans())
def test_random_bytes_yield_events_or_protocol_error(chunks: list[bytes], client: bool) -> None:
    run_garbage(Connection(client=client), chunks)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_strategy(), max_size=40), st.booleans(), st.integers(1, 50))
def test_random_frames_yield_events_or_protocol_error(
    frames: list[bytes], client: bool, max_chunk: int
) -> None:
    config = MuxConfig(max_queued_pongs=2, accept_backlog=3, max_streams=4, glitch_burst=20)
    conn = Connection(client=client, config=config)
    wire = b"".join(frames)
    run_garbage(conn, random_chunks(wire, random.Random(len(wire)), max_chunk))


# ---------------------------------------------------------------------------------------- windows


@given(deltas=st.lists(st.one_of(u32, st.integers(0, 2**20)), max_size=20))
def test_window_updates_keep_the_send_window_in_range(deltas: list[int]) -> None:
    conn = Connection(client=True)
    stream_id = conn.open_stream()
    conn.data_to_send()
    expected = INITIAL_STREAM_WINDOW
    for delta in deltas:
        try:
            conn.receive_data(F.window_update(stream_id, delta), 0.0)
        except RemoteProtocolError as exc:
            assert expected + delta > MAX_WINDOW
            assert exc.go_away_code == GoAwayCode.PROTOCOL_ERROR
            return
        expected += delta
        assert conn.send_window(stream_id) == expected <= MAX_WINDOW


# ---------------------------------------------------------------------------------------- two cores

_BLOCK = random.Random(1).randbytes(1 << 20)
CLIENT, SERVER = "client", "server"
OTHER = {CLIENT: SERVER, SERVER: CLIENT}
MAX_BYTES_PER_DIRECTION = 1 << 20
sides = st.sampled_from([CLIENT, SERVER])
picks = st.integers(0, 7)  # which of the eligible streams a rule acts on


class StreamModel:
    def __init__(self, stream_id: int, opener: str) -> None:
        self.id = stream_id
        self.opener = opener
        self.seen = {opener: True, OTHER[opener]: False}  # the side knows the stream exists
        self.accepted = False
        self.sent = {CLIENT: bytearray(), SERVER: bytearray()}  # by the side
        self.delivered = {CLIENT: bytearray(), SERVER: bytearray()}  # to the side
        self.read = {CLIENT: 0, SERVER: 0}  # bytes the side has consumed
        self.eof_sent = {CLIENT: False, SERVER: False}
        self.eof_received = {CLIENT: False, SERVER: False}
        self.reset = False  # by either side

    def unread(self, side: str) -> int:
        return len(self.delivered[side]) - self.read[side]


class TwoCores(RuleBasedStateMachine):
    """A client and a server core driven by random application calls and random chunking.

    The model records what each side's application sent and was given; the cores must agree:
    bytes arrive in order and unchanged (a prefix while open, all of them at the FIN), windows
    never go negative, honest peers never trip a limit, and once every stream is closed both
    ways or reset, both stream tables and receive budgets are empty.
    """

    def __init__(self) -> None:
        super().__init__()
        config = MuxConfig(
            max_frame_bytes=16 * 1024,
            max_streams=6,
            session_receive_budget_bytes=6 * INITIAL_STREAM_WINDOW + 512 * 1024,
            write_batch_bytes=64 * 1024,
        )
        self.pair = ConnectionPair(config)
        self.conns = {CLIENT: self.pair.client, SERVER: self.pair.server}
        for conn in self.conns.values():
            conn.rtt_s = 0.05
        self.model: dict[int, StreamModel] = {}
        self.pings: dict[str, set[int]] = {CLIENT: set(), SERVER: set()}
        self.now = 0.0

    # ------------------------------------------------------------------ rules

    @rule(side=sides, size=st.sampled_from([0, 10, 3000]))
    def open(self, side: str, size: int) -> None:
        conn = self.conns[side]
        initial = self._payload(len(self.model), size)
        try:
            stream_id = conn.open_stream(initial)
        except LocalProtocolError:
            full = conn.stream_count >= conn.config.max_streams
            budget = conn.config.session_receive_budget_bytes
            assert full or conn.budget_used + INITIAL_STREAM_WINDOW > budget
            return
        assert stream_id not in self.model
        stream = self.model[stream_id] = StreamModel(stream_id, side)
        stream.sent[side] += initial

    @precondition(lambda self: self.model)
    @rule(pick=picks)
    def accept(self, pick: int) -> None:
        waiting = [s for s in self.model.values() if s.seen[OTHER[s.opener]] and not s.accepted]
        if waiting:
            self._accept(waiting[pick % len(waiting)])

    @precondition(lambda self: self.model)
    @rule(pick=picks, size=st.sampled_from([1, 100, 5000, 40_000, 150_000, 400_000]))
    def write(self, pick: int, size: int) -> None:
        picked = self._pick_sendable(pick)
        if picked is None:
            return
        stream, side = picked
        if len(stream.sent[side]) + size > MAX_BYTES_PER_DIRECTION:
            return
        payload = self._payload(stream.id * 3 + len(stream.sent[side]), size)
        self.conns[side].send_data(stream.id, payload)
        stream.sent[side] += payload

    @precondition(lambda self: self.model)
    @rule(pick=picks, size=st.integers(1, 300_000))
    def read(self, pick: int, size: int) -> None:
        unread = [(s, side) for s in self.model.values() for side in OTHER if s.unread(side)]
        if unread:
            stream, side = unread[pick % len(unread)]
            self._read(stream, side, size)

    @precondition(lambda self: self.model)
    @rule(pick=picks)
    def fin(self, pick: int) -> None:
        picked = self._pick_sendable(pick)
        if picked is not None:
            self._fin(*picked)

    @precondition(lambda self: self.model)
    @rule(side=sides, pick=picks)
    def rst(self, side: str, pick: int) -> None:
        known = [
            s
            for s in self.model.values()
            if s.seen[side] and not s.reset and self.conns[side].has_stream(s.id)
        ]
        if known:
            stream = known[pick % len(known)]
            self.conns[side].reset_stream(stream.id)
            stream.reset = True

    @rule(side=sides, opaque=u32)
    def ping(self, side: str, opaque: int) -> None:
        self.conns[side].ping(opaque)
        self.pings[side].add(opaque)

    @rule(max_chunk=st.one_of(st.none(), st.integers(1, 5000)), seed=st.integers(0, 1000))
    def pump(self, max_chunk: int | None, seed: int) -> None:
        self.pair.max_chunk = max_chunk
        self.pair.rng.seed(seed)
        self._pump()

    @rule(seconds=st.sampled_from([0.01, 0.2, 5.0]))
    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.pair.now = self.now

    # ------------------------------------------------------------------ invariants

    @invariant()
    def windows_stay_in_range(self) -> None:
        for conn in self.conns.values():
            assert conn.terminated is None
            held = 0
            for stream_id in conn.stream_ids():
                assert 0 <= conn.send_window(stream_id) <= MAX_WINDOW
                credit, window = conn.receive_credit(stream_id), conn.receive_window(stream_id)
                assert 0 <= credit <= window <= conn.config.max_stream_window_bytes
                held += window
            assert held == conn.budget_used <= conn.config.session_receive_budget_bytes

    @invariant()
    def credit_comes_back_only_for_bytes_read(self) -> None:
        """window = credit + unread + read-but-not-yet-returned, and the last is under half."""
        for stream in self.model.values():
            for side, conn in self.conns.items():
                if stream.reset or stream.eof_received[side] or not conn.has_stream(stream.id):
                    continue
                window = conn.receive_window(stream.id)
                pending = window - conn.receive_credit(stream.id) - stream.unread(side)
                assert 0 <= pending < window // 2

    @invariant()
    def delivered_bytes_are_a_prefix_of_sent_bytes(self) -> None:
        for stream in self.model.values():
            for side in (CLIENT, SERVER):
                delivered, sent = stream.delivered[side], stream.sent[OTHER[side]]
                assert sent[: len(delivered)] == delivered

    def teardown(self) -> None:
        """Close every stream both ways; then nothing may be left in either core."""
        for _ in range(200):
            for stream in self.model.values():
                if stream.reset:
                    continue
                for side in (CLIENT, SERVER):
                    if not stream.seen[side]:
                        continue
                    if side != stream.opener and not stream.accepted:
                        self._accept(stream)
                    if stream.unread(side):
                        self._read(stream, side, stream.unread(side))
                    if self._sendable(stream, side):
                        self._fin(stream, side)
            self._pump()
            if all(
                s.reset or all(s.eof_received[side] for side in (CLIENT, SERVER))
                for s in self.model.values()
            ) and not any(s.unread(side) for s in self.model.values() for side in (CLIENT, SERVER)):
                break
        for stream in self.model.values():
            if not stream.reset:
                for side in (CLIENT, SERVER):
                    assert stream.eof_received[side], f"stream {stream.id} never ended at {side}"
                    assert stream.delivered[side] == stream.sent[OTHER[side]]
        for side, conn in self.conns.items():
            assert conn.stream_count == 0, f"{side} kept streams {conn.stream_ids()}"
            assert conn.budget_used == 0
            assert conn.unaccepted == 0 and conn.unacked == 0
            assert not conn.has_data_to_send()

    # ------------------------------------------------------------------ plumbing

    def _sendable(self, stream: StreamModel, side: str) -> bool:
        """May `side` still write on the stream: known, accepted, not closed or reset?"""
        if stream.reset or not stream.seen[side] or stream.eof_sent[side]:
            return False
        if side != stream.opener and not stream.accepted:
            return False
        return self.conns[side].has_stream(stream.id)

    def _pick_sendable(self, pick: int) -> tuple[StreamModel, str] | None:
        candidates = [
            (s, side) for s in self.model.values() for side in OTHER if self._sendable(s, side)
        ]
        return candidates[pick % len(candidates)] if candidates else None

    def _accept(self, stream: StreamModel) -> None:
        stream.accepted = True
        self.conns[OTHER[stream.opener]].accept_stream(stream.id)

    def _read(self, stream: StreamModel, side: str, size: int) -> None:
        amount = min(size, stream.unread(side))
        stream.read[side] += amount
        self.conns[side].stream_read(stream.id, amount, self.now)

    def _fin(self, stream: StreamModel, side: str) -> None:
        self.conns[side].send_eof(stream.id)
        stream.eof_sent[side] = True

    @staticmethod
    def _payload(salt: int, size: int) -> bytes:
        start = (salt * 7919) % (len(_BLOCK) - size)
        return _BLOCK[start : start + size]

    def _pump(self) -> None:
        client_events, server_events = self.pair.pump(max_rounds=2000)
        self._apply(CLIENT, client_events)
        self._apply(SERVER, server_events)

    def _apply(self, side: str, events: list) -> None:
        for event in events:
            if isinstance(event, PongReceived):
                assert event.opaque in self.pings[side]
                continue
            stream = self.model[event.stream_id]
            if isinstance(event, StreamOpened):
                assert stream.opener == OTHER[side] and not stream.seen[side]
                stream.seen[side] = True
            elif isinstance(event, StreamAcked):
                assert stream.opener == side and stream.accepted
            elif isinstance(event, DataReceived):
                assert not stream.eof_received[side]
                stream.delivered[side] += event.data
            elif isinstance(event, StreamEnded):
                assert stream.eof_sent[OTHER[side]]
                assert stream.delivered[side] == stream.sent[OTHER[side]]
                stream.eof_received[side] = True
            elif isinstance(event, StreamReset):
                stream.reset = True
            else:
                raise AssertionError(f"unexpected event {event!r}")


TwoCores.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_two_cores = TwoCores.TestCase


class TwoCoresLonger(TwoCores):
    pass


TwoCoresLonger.TestCase.settings = settings(
    max_examples=400, stateful_step_count=80, deadline=None, suppress_health_check=list(HealthCheck)
)
test_two_cores_longer = pytest.mark.slow(TwoCoresLonger.TestCase)
