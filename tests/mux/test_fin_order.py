"""What the core writes, read as strictly as hashicorp/yamux reads it: every byte before the FIN.

A hypothesis state machine drives one core with random interleavings of application calls
(open with and without first bytes, send, half-close, reset), the peer's frames (ACK, credit,
FIN, RST) and writes of any size (`data_to_send(max_bytes)`), and checks each frame as it leaves:

- a stream we open starts with SYN, and nothing follows our RST;
- a Data frame never exceeds the credit the peer gave;
- a Data frame with a body never carries FIN (`_connection` rule 7: hashicorp/yamux applies the
  flags of a Data frame before it reads the body, and its reader can return EOF in between,
  losing the body);
- no Data frame follows our FIN, and the FIN comes once, after exactly the bytes sent;
- each stream's bytes leave in order and unchanged.

At the end, with ample credit, everything pending must leave: each half-closed stream's whole
payload and then its FIN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from mux import Connection, Flag, FrameType, LocalProtocolError, MuxConfig
from mux._const import INITIAL_STREAM_WINDOW
from mux.testing import FrameBuilder, parse_frames

F = FrameBuilder()
#: Small frames and buffers, so a few hundred bytes already split into frames and batches.
CONFIG = MuxConfig(max_frame_bytes=4096, stream_send_buffer_bytes=16 * 1024, max_streams=8)
picks = st.integers(0, 2**16)


@dataclass
class Wire:
    """One stream as the peer's reader sees it."""

    opened_here: bool
    sent: bytearray = field(default_factory=bytearray)  # what our application queued
    eof: bool = False  # our application half-closed
    reset: bool = False  # either side reset
    peer_fin: bool = False
    seen_frame: bool = False
    received: bytearray = field(default_factory=bytearray)  # Data bodies on the wire
    credit: int = INITIAL_STREAM_WINDOW  # what we may still send
    uncredited: int = 0  # received by the peer and not yet credited back
    fin_on_wire: bool = False
    rst_on_wire: bool = False


class FinOrder(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn = Connection(client=True, config=CONFIG)
        self.streams: dict[int, Wire] = {}
        self.now = 0.0
        self.broken = False  # a check failed: the wire model is off from there on

    # ------------------------------------------------------------------ application

    @rule(size=st.sampled_from([0, 1, 300, 5000]))
    def open(self, size: int) -> None:
        initial = self._payload(len(self.streams), size)
        try:
            stream_id = self.conn.open_stream(initial)
        except LocalProtocolError:
            assert self.conn.stream_count >= CONFIG.max_streams
            return
        self.streams[stream_id] = Wire(opened_here=True, sent=bytearray(initial))

    @precondition(lambda self: self.streams)
    @rule(pick=picks, size=st.sampled_from([1, 100, 4095, 4096, 4097, 20_000, 70_000]))
    def send(self, pick: int, size: int) -> None:
        stream_id = self._pick(pick, lambda w: not (w.eof or w.reset))
        if stream_id is not None:
            payload = self._payload(stream_id + len(self.streams[stream_id].sent), size)
            self.conn.send_data(stream_id, payload)
            self.streams[stream_id].sent += payload

    @precondition(lambda self: self.streams)
    @rule(pick=picks)
    def send_eof(self, pick: int) -> None:
        stream_id = self._pick(pick, lambda w: not (w.eof or w.reset))
        if stream_id is not None:
            self.conn.send_eof(stream_id)
            self.streams[stream_id].eof = True

    @precondition(lambda self: self.streams)
    @rule(pick=picks)
    def reset(self, pick: int) -> None:
        stream_id = self._pick(pick, lambda w: not w.reset)
        if stream_id is not None and self.conn.has_stream(stream_id):
            self.conn.reset_stream(stream_id)
            self.streams[stream_id].reset = True

    # ------------------------------------------------------------------ the peer

    @precondition(lambda self: self.streams)
    @rule(pick=picks, amount=st.sampled_from([1024, 4096, 65_536, INITIAL_STREAM_WINDOW]))
    def peer_credit(self, pick: int, amount: int) -> None:
        stream_id = self._pick(pick, lambda w: w.uncredited > 0 and not w.reset)
        if stream_id is None:
            return
        wire = self.streams[stream_id]
        delta = min(amount, wire.uncredited)
        if delta < 1024 and delta < wire.uncredited:
            return  # an honest peer sends no dribbles (the core counts them as glitches)
        wire.uncredited -= delta
        wire.credit += delta
        self._feed(F.window_update(stream_id, delta))

    @precondition(lambda self: self.streams)
    @rule(pick=picks)
    def peer_ack(self, pick: int) -> None:
        stream_id = self._pick(pick, lambda w: w.seen_frame and not w.reset)
        if stream_id is not None:
            self._feed(F.ack(stream_id))

    @precondition(lambda self: self.streams)
    @rule(pick=picks)
    def peer_fin(self, pick: int) -> None:
        stream_id = self._pick(pick, lambda w: w.seen_frame and not (w.reset or w.peer_fin))
        if stream_id is not None and self.conn.has_stream(stream_id):
            self.streams[stream_id].peer_fin = True
            self._feed(F.fin(stream_id))

    @precondition(lambda self: self.streams)
    @rule(pick=picks)
    def peer_rst(self, pick: int) -> None:
        stream_id = self._pick(pick, lambda w: w.seen_frame and not w.reset)
        if stream_id is not None and self.conn.has_stream(stream_id):
            self.streams[stream_id].reset = True
            self._feed(F.rst(stream_id))

    # ------------------------------------------------------------------ the carrier

    @rule(max_bytes=st.one_of(st.none(), st.sampled_from([1, 100, 4108, 9000, 50_000])))
    def write(self, max_bytes: int | None) -> None:
        self._check(self.conn.data_to_send(max_bytes))

    def teardown(self) -> None:
        """With credit for everything, every pending byte and FIN leaves, in order."""
        if self.broken:
            return
        for _ in range(200):
            for stream_id, wire in self.streams.items():
                if wire.uncredited and not wire.reset:
                    delta, wire.uncredited = wire.uncredited, 0
                    wire.credit += delta
                    self._feed(F.window_update(stream_id, delta))
            if not self.conn.has_data_to_send():
                break
            self._check(self.conn.data_to_send())
        assert not self.conn.has_data_to_send()
        for stream_id, wire in self.streams.items():
            if wire.reset:
                continue
            assert wire.received == wire.sent, f"stream {stream_id}: bytes left behind"
            assert wire.fin_on_wire == wire.eof, f"stream {stream_id}: FIN {wire.fin_on_wire}"

    # ------------------------------------------------------------------ checks

    def _check(self, buffers: list[bytes | bytearray | memoryview]) -> None:
        self.broken = True  # until every frame passed
        for frame in parse_frames(b"".join(bytes(b) for b in buffers)):
            if frame.type not in (FrameType.DATA, FrameType.WINDOW_UPDATE) or not frame.stream_id:
                continue
            wire = self.streams.get(frame.stream_id)
            assert wire is not None, f"frame for a stream nobody opened: {frame}"
            if wire.opened_here and not wire.seen_frame:
                assert frame.has(Flag.SYN), f"first frame of stream {frame.stream_id}: {frame}"
            wire.seen_frame = True
            assert not wire.rst_on_wire, f"frame after our RST: {frame}"
            if frame.has(Flag.RST):
                wire.rst_on_wire = True
                continue
            if frame.type == FrameType.DATA and frame.length:
                assert not frame.has(Flag.FIN), f"FIN on a Data frame with a body: {frame}"
                assert not wire.fin_on_wire, f"data after our FIN: {frame}"
                assert frame.length <= wire.credit, f"{frame.length} bytes, credit {wire.credit}"
                wire.credit -= frame.length
                wire.uncredited += frame.length
                wire.received += frame.body
                assert wire.sent.startswith(wire.received), f"stream {frame.stream_id} garbled"
            if frame.has(Flag.FIN):
                assert not wire.fin_on_wire, f"a second FIN: {frame}"
                assert wire.eof, f"FIN the application did not ask for: {frame}"
                assert wire.received == wire.sent, (
                    f"FIN of stream {frame.stream_id} after {len(wire.received)} of "
                    f"{len(wire.sent)} bytes"
                )
                wire.fin_on_wire = True
        self.broken = False

    # ------------------------------------------------------------------ helpers

    def _feed(self, frame: bytes) -> None:
        self.now += 0.01
        self.conn.receive_data(frame, self.now)
        assert self.conn.terminated is None

    def _pick(self, pick: int, wanted: object) -> int | None:
        assert callable(wanted)
        ids = [i for i, w in self.streams.items() if wanted(w)]
        return ids[pick % len(ids)] if ids else None

    @staticmethod
    def _payload(seed: int, size: int) -> bytes:
        """`size` bytes that differ by offset and stream (a reordering shows)."""
        start = seed % 251
        return (_CYCLE * (1 + (start + size) // 251))[start : start + size]


_CYCLE = bytes(range(251))

FinOrder.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
test_fin_order = FinOrder.TestCase


class FinOrderLonger(FinOrder):
    pass


FinOrderLonger.TestCase.settings = settings(
    max_examples=800, stateful_step_count=80, deadline=None, suppress_health_check=list(HealthCheck)
)
test_fin_order_longer = pytest.mark.slow(FinOrderLonger.TestCase)
