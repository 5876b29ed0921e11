"""The multiplexer's pure core: bytes in, events and bytes out. No sockets, no clock, no `await`.

What this module owns: the stream table, both directions of flow control, the order frames leave
in, and every rule about what the peer may send. Whoever drives it (see `aio.py`) feeds carrier
bytes to `receive_data`, writes what `data_to_send` returns, and passes the time in where a rule
needs one.

Rules that must stay true:

1. Peer garbage yields events or `RemoteProtocolError`, never any other exception. On that error
   a GoAway with the error's code is queued and the connection takes no further input.
2. Nothing the peer sends grows memory without bound. Data is bounded by the receive windows
   (checked from the header, before any body byte); streams by `max_streams` and the accept
   backlog; replies to what the peer sent (pongs, refusals, and the ACK and RST the application
   queues for streams the peer opened) by `max_queued_pongs`, after which parsing stops until the
   driver has written them out (`reading_paused`).
3. Control frames (window updates, ACK, RST, pongs, GoAway) leave before any data. Data leaves
   round-robin over the streams that have both bytes and credit, one frame of at most
   `max_frame_bytes` each per turn, so a bulk stream cannot hold the carrier. A stream that
   has little to send when it is queued (at most `_LIGHT_BYTES`: a request, a keystroke, an
   echo) is light: light streams go first, a frame of at most `_LIGHT_BYTES` each per turn,
   but take at most half of a batch while heavy streams wait (deficit round robin with a
   small quantum for the light class: a 64 B message never waits behind megabytes, and no
   number of light streams starves bulk). O(1) per frame.
4. Credit is returned only for bytes the consumer has read (`stream_read`): see `_window.py`.
5. A stream leaves the table when it reaches `CLOSED` in `_state.py`'s transition table: both
   FINs have passed or either side reset it. Every change of a stream's half-close state goes
   through that table.
6. A resumable core (`resumable=True`) keeps every byte it hands out in its replay log until the
   peer's Receipt confirms it (`_replay.py`); after `resume` the log's unconfirmed tail leaves
   before anything new. Receipts go out only once the application said both sides agreed
   (`resume_agreed`): a plain yamux peer never sees a frame type it does not know, and a
   Receipt from a peer that did not agree is a protocol error.
7. Our FIN never rides a Data frame with a body: it leaves in an empty Data frame right after
   the frame that carried the stream's last byte, in the same batch. hashicorp/yamux applies a
   Data frame's flags before it has read the body: its reader can wake in between, see the FIN
   and an empty buffer, and return EOF, and the body that lands after is never read (0.15 % of
   16 KiB Data|FIN frames sent to its echo server over loopback lost their body).

Longer than the project's ~400 lines: the parser, the scheduler and the stream table share the
per-frame state (the partial header, the body being skipped, the ready queue), and splitting
them would put an attribute lookup through another object on the per-frame path.
"""

from __future__ import annotations

from collections import deque

from mux._config import MuxConfig
from mux._const import (
    HEADER,
    HEADER_SIZE,
    INITIAL_STREAM_WINDOW,
    MAX_STREAM_ID,
    MAX_WINDOW,
    PROTOCOL_VERSION,
    Flag,
    FrameType,
    GoAwayCode,
)
from mux._errors import LocalProtocolError, RemoteProtocolError
from mux._events import (
    DataReceived,
    Event,
    GoAwayReceived,
    PongReceived,
    StreamAcked,
    StreamEnded,
    StreamOpened,
    StreamReset,
)
from mux._frame import go_away, ping, receipt, window_update
from mux._limits import TokenBucket
from mux._replay import ReplayLog, unwrap_receipt
from mux._state import StreamInput, StreamState, next_state
from mux._window import ReceiveWindow, SessionBudget

_unpack_header = HEADER.unpack_from
_pack_header = HEADER.pack
# Plain ints on the per-frame path: `int & Flag.SYN` builds an enum member on every test, which
# was half of the cost of parsing a Data frame.
_DATA, _WINDOW_UPDATE = int(FrameType.DATA), int(FrameType.WINDOW_UPDATE)
_PING, _GO_AWAY = int(FrameType.PING), int(FrameType.GO_AWAY)
_RECEIPT = int(FrameType.RECEIPT)
_SYN, _ACK, _FIN, _RST = int(Flag.SYN), int(Flag.ACK), int(Flag.FIN), int(Flag.RST)
# Stream states as plain ints, for the same reason (see `_state.py`). OPEN, by far the most
# common, is 0: `if stream.state:` costs what testing one boolean did before the state table.
_OPEN, _REMOTE_CLOSED, _CLOSED = (
    int(StreamState.OPEN), int(StreamState.REMOTE_CLOSED), int(StreamState.CLOSED)
)
assert _OPEN == 0
#: States in which our FIN waits to be written.
_FIN_PENDING = frozenset((int(StreamState.LOCAL_CLOSING), int(StreamState.CLOSING)))

Buffer = bytes | bytearray | memoryview
#: Out-of-order SYNs accepted this far behind the highest id seen (in ids of the peer's parity).
_MAX_SKIPPED_IDS = 1024
#: A WindowUpdate smaller than this, without flags, counts as a useless frame.
_SMALL_UPDATE_BYTES = 1024
#: Smallest Data frame we send while more bytes are waiting (see `_Stream.sendable`).
_MIN_DATA_FRAME_BYTES = 1024
#: A stream queued with at most this much to send is light (rule 3), and this is the most a
#: light stream sends per turn: an interactive message fits (a 64 B request, an HTTP request
#: head); a bulk stream's buffer is far larger (reads of 256 KiB).
_LIGHT_BYTES = 16 * 1024


class _Stream:
    """Per-stream state of the core."""

    __slots__ = (
        "chunks",
        "id",
        "outbound",
        "peer_window",
        "queued",
        "recv",
        "send_buffered",
        "send_window",
        "state",
        "syn_pending",
    )

    def __init__(self, stream_id: int, outbound: bool) -> None:
        self.id = stream_id
        self.outbound = outbound
        #: `int(StreamState)`: changed only through `Connection._transition`.
        self.state = _OPEN
        self.syn_pending = False  # our SYN rides the first frame we send on this stream
        self.send_window = INITIAL_STREAM_WINDOW
        self.chunks: deque[memoryview] = deque()
        self.send_buffered = 0
        #: The peer's receive window as far as we can tell: its largest update (an update returns
        #: at most the bytes read plus the window's growth, so never more than the new window).
        self.peer_window = INITIAL_STREAM_WINDOW
        self.queued = False  # in the round-robin queue
        self.recv = ReceiveWindow()

    def sendable(self) -> bool:
        if self.send_buffered:
            # No frame under _MIN_DATA_FRAME_BYTES unless it empties the buffer: a peer that
            # grants credit a byte at a time gets no one-byte frames (honest windows are
            # 256 KiB and more, so this only ever waits for the next update).
            return self.send_window >= min(self.send_buffered, _MIN_DATA_FRAME_BYTES)
        if not self.state:  # OPEN (0): see `_OPEN`
            return False
        return self.state in _FIN_PENDING


class Connection:
    """One yamux session seen from one side. `client=True` opens odd stream ids.

    `resumable=True` keeps what it sends for a resume (rule 6) from the first byte on.
    """

    def __init__(
        self, *, client: bool, config: MuxConfig | None = None, resumable: bool = False
    ) -> None:
        self.config = config or MuxConfig()
        self.client = client
        self._next_id = 1 if client else 2
        self._peer_parity = 0 if client else 1
        self._highest_peer_id = 0
        self._skipped_peer_ids: set[int] = set()  # peer ids jumped over, that may still come
        self._streams: dict[int, _Stream] = {}
        self._budget = SessionBudget(self.config.session_receive_budget_bytes)
        self._resets = TokenBucket(self.config.reset_burst, self.config.reset_rate_per_s)
        self._glitches = TokenBucket(self.config.glitch_burst, self.config.glitch_rate_per_s)
        #: Round trip time as measured by the driver; feeds window auto-tuning.
        self.rtt_s: float | None = None

        self._control: list[Buffer] = []
        #: Replies to what the peer sent that sit in `_control`: pongs, refusals, and the ACKs
        #: and RSTs of streams it opened (a peer that opens streams and never reads would
        #: otherwise grow `_control` by two frames a SYN, whoever queues them).
        self._solicited = 0
        self._ready: deque[_Stream] = deque()  # heavy streams with bytes and credit
        self._light: deque[_Stream] = deque()  # light streams (rule 3): they go first
        self._writable: list[int] = []

        self._header_buf = bytearray()
        self._retained: memoryview | None = None
        self._body_left = 0
        self._body_stream: _Stream | None = None
        self._body_fin = False

        self._unaccepted: set[int] = set()  # inbound streams the application has not accepted
        self._unacked: set[int] = set()  # outbound streams the peer has not ACKed yet
        #: The application takes no more inbound streams: every SYN is refused (`refuse_streams`).
        self.refusing = False
        #: Inbound streams refused with RST so far (backlog, limits, GoAway, `refuse_streams`).
        self.refused_streams = 0
        self.local_go_away = False
        self.remote_go_away: int | None = None
        self.terminated: GoAwayCode | None = None

        #: Carrier bytes fed to `receive_data` since the session began.
        self.bytes_received = 0
        #: Rule 6: what we sent and the peer has not confirmed (None: not resumable).
        self._replay = ReplayLog(self.config.replay_budget_bytes) if resumable else None
        self._receipts = False  # both sides agreed: we send Receipts
        self._receipted = 0  # the count our last Receipt carried
        self._receipt_every = self.config.receipt_every_bytes

    # ------------------------------------------------------------------ introspection

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def unaccepted(self) -> int:
        """Inbound streams waiting for the application's accept (the accept backlog)."""
        return len(self._unaccepted)

    @property
    def unacked(self) -> int:
        """Outbound streams waiting for the peer's ACK."""
        return len(self._unacked)

    def stream_state(self, stream_id: int) -> StreamState:
        """Where the stream is in its half-close lifecycle (`CLOSED` once it left the table)."""
        stream = self._streams.get(stream_id)
        return StreamState.CLOSED if stream is None else StreamState(stream.state)

    def stream_ids(self) -> list[int]:
        return list(self._streams)

    def has_stream(self, stream_id: int) -> bool:
        return stream_id in self._streams

    def send_window(self, stream_id: int) -> int:
        return self._streams[stream_id].send_window

    def receive_window(self, stream_id: int) -> int:
        return self._streams[stream_id].recv.window

    def receive_credit(self, stream_id: int) -> int:
        return self._streams[stream_id].recv.credit

    def send_buffered(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        return stream.send_buffered if stream else 0

    def unconsumed(self, stream_id: int) -> int:
        """Bytes queued on the stream that the peer's reader has not read yet, as far as a
        sender can tell: still buffered here, on the wire, or unread there (0 once it is gone).

        The peer holds `window - send_window` bytes we have sent and it has not credited back,
        but it credits by the half window (`_window` rule 3), and we know its window only from
        its largest update (`peer_window`: at least half of it once it grew). While bytes wait
        here for credit the reader is behind, and all of them count; otherwise up to half the
        window may have been read unreported, so only what lies beyond that half counts (an
        idle stream whose reader took everything then reads 0).
        """
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        if stream.send_buffered:
            return stream.send_buffered + max(0, stream.peer_window - stream.send_window)
        return max(0, stream.peer_window // 2 - stream.send_window)

    def is_half_closed(self, stream_id: int) -> bool:
        stream = self._streams.get(stream_id)
        return stream is not None and stream.state != _OPEN

    @property
    def budget_used(self) -> int:
        return self._budget.used

    @property
    def reading_paused(self) -> bool:
        """True while input is held back until the queued replies have been written."""
        return self._retained is not None

    @property
    def can_open_stream(self) -> bool:
        """False while the peer has `accept_backlog` of our streams un-ACKed (wait, then retry)."""
        return len(self._unacked) < self.config.accept_backlog

    def has_data_to_send(self) -> bool:
        if self._control:
            return True
        data = bool(self._ready or self._light)
        replay = self._replay
        if replay is None:
            return data
        # Data that waits for room in the replay log is not writable yet (rule 6).
        return replay.pending or (data and replay.room() > 0)

    # ------------------------------------------------------------------ resumption (rule 6)

    @property
    def resumable(self) -> bool:
        """True while the core keeps what it sends for a resume."""
        return self._replay is not None

    @property
    def bytes_sent(self) -> int | None:
        """Carrier bytes handed out since the session began (None: not resumable)."""
        return None if self._replay is None else self._replay.sent

    @property
    def replay_bytes(self) -> int:
        """Bytes held for a resume now (sent, not yet confirmed by the peer)."""
        return 0 if self._replay is None else self._replay.buffered_bytes

    @property
    def replay_peak_bytes(self) -> int:
        """Most bytes held for a resume at once."""
        return 0 if self._replay is None else self._replay.peak_bytes

    def resume_agreed(self) -> None:
        """Both sides agreed to resume this session: send Receipts from now on."""
        if self._replay is None:
            raise LocalProtocolError("the session was not started resumable")
        self._receipts = True
        self._queue_receipt()

    def stop_retaining(self) -> None:
        """The peer does not resume sessions: keep nothing more, accept no Receipt."""
        if self._replay is not None:
            self._replay.clear()
        self._replay = None
        self._receipts = False

    def resume(self, peer_received: int) -> None:
        """A new carrier replaces the lost one; the peer has received `peer_received` of our
        bytes. What follows them in the replay log leaves first, then everything new.

        `ResumeError` if the peer's count is outside what we sent and still hold; the session
        cannot go on then.
        """
        if self._replay is None:
            raise LocalProtocolError("the session was not started resumable")
        self._check_usable()
        self._replay.rewind(peer_received)

    def _queue_receipt(self) -> None:
        if self._receipts and self.bytes_received != self._receipted:
            self._receipted = self.bytes_received
            self._control.append(receipt(self.bytes_received))

    # ------------------------------------------------------------------ local actions

    def open_stream(self, initial_data: Buffer = b"") -> int:
        """Open a stream; `initial_data` rides in the SYN frame. Returns the new stream id."""
        self._check_usable()
        if self.local_go_away or self.remote_go_away is not None:
            raise LocalProtocolError("the session is going away: no new streams")
        if len(self._streams) >= self.config.max_streams:
            raise LocalProtocolError(f"too many open streams ({self.config.max_streams})")
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise LocalProtocolError("stream ids exhausted")
        self._next_id += 2
        reserved = self._budget.reserve(INITIAL_STREAM_WINDOW)
        if reserved < INITIAL_STREAM_WINDOW:  # the peer may send a full initial window at once
            self._budget.release(reserved)
            raise LocalProtocolError("the session's receive budget is exhausted")
        stream = _Stream(stream_id, outbound=True)
        self._streams[stream_id] = stream
        self._unacked.add(stream_id)
        if initial_data:
            stream.syn_pending = True
            self._buffer(stream, initial_data)
        else:
            self._control.append(window_update(stream_id, 0, _SYN))
        return stream_id

    def accept_stream(self, stream_id: int) -> None:
        """The application took an inbound stream: ACK it (this is what frees the backlog)."""
        if stream_id not in self._unaccepted:  # unknown, gone, ours, or accepted already
            return
        self._unaccepted.discard(stream_id)
        self._control.append(window_update(stream_id, 0, _ACK))
        self._solicited += 1  # the reply to the peer's SYN

    def send_data(self, stream_id: int, data: Buffer) -> None:
        """Queue bytes on a stream; they leave as the peer's credit allows."""
        stream = self._stream_for_sending(stream_id)
        if data:
            self._buffer(stream, data)

    def send_eof(self, stream_id: int) -> None:
        """Half-close: FIN once the bytes queued before it have left."""
        stream = self._stream_for_sending(stream_id)
        self._transition(stream, StreamInput.SEND_EOF)
        if not stream.send_buffered and not stream.syn_pending:
            self._emit_fin_now(stream)
        else:
            self._schedule(stream)

    def reset_stream(self, stream_id: int) -> None:
        """Abort a stream both ways with RST. Unknown or finished streams are ignored."""
        stream = self._streams.get(stream_id)
        if stream is None or self.terminated is not None:
            return
        if not (stream.outbound and stream.syn_pending):  # the peer knows of it
            self._control.append(window_update(stream_id, 0, _RST))
            if not stream.outbound:
                self._solicited += 1  # a stream the peer opened: counted as its reply
        self._transition(stream, StreamInput.RESET)
        self._remove(stream)

    def refuse_streams(self, now: float) -> None:
        """Take no more streams from the peer: each later SYN is refused with RST, as one over
        the accept backlog is (charged to the peer's reset budget: a peer that keeps opening
        streams is sent GoAway(1) once it is spent). Streams it opened that the application
        has not accepted yet are refused now, and charged alike."""
        self.refusing = True
        for stream_id in sorted(self._unaccepted):
            stream = self._streams[stream_id]
            self._resets.take(now)
            self._control.append(window_update(stream_id, 0, _RST))
            self._solicited += 1
            self.refused_streams += 1
            self._transition(stream, StreamInput.RESET)
            self._remove(stream)

    def allow_streams(self) -> None:
        """Take streams from the peer again after `refuse_streams` (e.g. once it has proven
        who it is): later SYNs are accepted up to the backlog and stream limits as before."""
        self.refusing = False

    def stream_read(self, stream_id: int, amount: int, now: float) -> None:
        """The consumer has read `amount` bytes of the stream: return credit as policy says."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.state >= _REMOTE_CLOSED or self.terminated is not None:
            return  # no more data will come: credit would be useless
        delta = stream.recv.read(
            amount, now, self.rtt_s, self.config.max_stream_window_bytes, self._budget
        )
        if delta:
            self._control.append(window_update(stream_id, delta))

    def ping(self, opaque: int) -> None:
        self._check_usable()
        self._control.append(ping(opaque & 0xFFFFFFFF, _SYN))
        if self._receipts:
            self._queue_receipt()

    def go_away(self, code: GoAwayCode = GoAwayCode.NORMAL) -> None:
        """Tell the peer we accept no new streams; open ones carry on."""
        if self.local_go_away or self.terminated is not None:
            return
        self.local_go_away = True
        self._control.append(go_away(code))

    def take_writable(self) -> list[int]:
        """Streams whose send buffer fell below `stream_send_buffer_bytes` since the last call."""
        writable, self._writable = self._writable, []
        return writable

    # ------------------------------------------------------------------ output

    def data_to_send(self, max_bytes: int | None = None) -> list[Buffer]:
        """Buffers to write to the carrier, in order: all control frames, then data round-robin."""
        out: list[Buffer] = self._control
        self._control = []
        self._solicited = 0
        replay = self._replay
        if replay is not None:
            return self._replayed(replay, out, max_bytes)
        if self.terminated is not None:
            return out
        budget = self.config.write_batch_bytes if max_bytes is None else max_bytes
        return self._take_data(out, budget)

    def _replayed(
        self, replay: ReplayLog, out: list[Buffer], max_bytes: int | None
    ) -> list[Buffer]:
        """`data_to_send` of a resumable core: a resume's replay first, then control frames,
        then as much data as the log has room for; all of it kept in the log."""
        if self.terminated is None:
            budget = self.config.write_batch_bytes if max_bytes is None else max_bytes
            room = replay.room()
            if room > 0:
                out = self._take_data(out, min(budget, room))
        replay.record(out)
        if replay.pending:
            pending: list[Buffer] = list(replay.take_pending())
            return pending + out
        return out

    def _take_data(self, out: list[Buffer], budget: int) -> list[Buffer]:
        """Data frames round-robin after `out`, about `budget` bytes (one frame may overshoot)."""
        ready, light = self._ready, self._light
        light_budget = budget // 2  # while heavy streams wait (rule 3)
        max_frame = self.config.max_frame_bytes
        light_quantum = min(_LIGHT_BYTES, max_frame)
        mark = self.config.stream_send_buffer_bytes
        while (ready or light) and budget > 0:
            from_light = bool(light) and (light_budget > 0 or not ready)
            if from_light:
                stream = light.popleft()
                quantum = light_quantum
            else:
                stream = ready.popleft()
                quantum = max_frame
            stream.queued = False
            if stream.id not in self._streams or not stream.sendable():
                continue
            size = min(stream.send_buffered, stream.send_window, quantum)
            if from_light:
                light_budget -= size + HEADER_SIZE
            flags = 0
            if stream.syn_pending:
                flags |= _SYN
                stream.syn_pending = False
            was_full = stream.send_buffered >= mark
            stream.send_buffered -= size
            stream.send_window -= size
            fin = bool(stream.state) and not stream.send_buffered and stream.state in _FIN_PENDING
            if fin and not size:
                flags |= _FIN
            out.append(_pack_header(PROTOCOL_VERSION, _DATA, flags, stream.id, size))
            self._take_chunks(stream, size, out)
            if fin and size:  # rule 7: a frame of its own, never on one with a body
                out.append(_pack_header(PROTOCOL_VERSION, _DATA, _FIN, stream.id, 0))
                budget -= HEADER_SIZE
            budget -= size + HEADER_SIZE
            if was_full and stream.send_buffered < mark:
                self._writable.append(stream.id)
            if fin:
                self._transition(stream, StreamInput.FIN_WRITTEN)
                self._maybe_remove(stream)
            elif stream.sendable():  # it had more than a light turn's worth: heavy now
                stream.queued = True
                ready.append(stream)
        return out

    # ------------------------------------------------------------------ input

    def receive_data(self, data: Buffer, now: float) -> list[Event]:
        """Feed carrier bytes (any chunking). Raises `RemoteProtocolError` on a broken peer."""
        events: list[Event] = []
        if self.terminated is not None:
            return events
        view = memoryview(data).cast("B") if data else memoryview(b"")
        self.bytes_received += len(view)
        if self._retained is not None:
            view = memoryview(bytes(self._retained) + bytes(view)) if view else self._retained
            self._retained = None
        try:
            self._parse(view, now, events)
        except RemoteProtocolError as exc:
            self._terminate(exc.go_away_code)
            raise
        if self._receipts and self.bytes_received - self._receipted >= self._receipt_every:
            self._queue_receipt()
        return events

    def _parse(self, view: memoryview, now: float, events: list[Event]) -> None:
        pos = 0
        end = len(view)
        streams = self._streams
        max_data = self.config.max_data_frame_bytes
        while pos < end:
            if self._body_left:
                take = min(self._body_left, end - pos)
                self._body_left -= take
                stream = self._body_stream
                if stream is not None and stream.id in self._streams:
                    events.append(DataReceived(stream.id, view[pos : pos + take]))
                pos += take
                if not self._body_left:
                    self._finish_body(events)
                continue
            start = pos
            prior = len(self._header_buf)
            if prior:
                need = HEADER_SIZE - len(self._header_buf)
                pos += min(need, end - pos)
                self._header_buf += view[start:pos]
                if len(self._header_buf) < HEADER_SIZE:
                    return
                header = _unpack_header(self._header_buf)
            elif end - pos < HEADER_SIZE:
                self._header_buf += view[pos:end]
                return
            else:
                header = _unpack_header(view, pos)
                pos += HEADER_SIZE
                version, type, flags, stream_id, length = header
                if not (version or flags) and type == _DATA and 0 < length <= end - pos:
                    # The bulk of any transfer: a plain Data frame, whole in this chunk, for an
                    # open stream. Same checks and outcome as the general path below, without
                    # its calls and the body bookkeeping (a third of the cost of a frame).
                    stream = streams.get(stream_id)
                    if (
                        stream is not None
                        and length <= max_data
                        and (not stream.state or stream.state < _REMOTE_CLOSED)
                        and stream.recv.fits(length)
                    ):
                        stream.recv.received(length, now)
                        events.append(DataReceived(stream_id, view[pos : pos + length]))
                        pos += length
                        continue
            if header[2] & _SYN and self._solicited >= self.config.max_queued_pongs:
                # A SYN may need a reply (pong, refusal) and too many replies are unwritten:
                # hold this frame and everything after it until the driver drains the queue.
                held = bytes(self._header_buf[:prior])
                self._retained = memoryview(held + bytes(view[start:])) if held else view[start:]
                self._header_buf.clear()
                return
            self._header_buf.clear()
            self._on_header(*header, now=now, events=events)
        return

    def _finish_body(self, events: list[Event]) -> None:
        stream = self._body_stream
        self._body_stream = None
        fin, self._body_fin = self._body_fin, False
        if fin and stream is not None and stream.id in self._streams:
            # The FIN of a Data frame takes effect after its last byte: applied at the header,
            # our own FIN written while the body still came in would close the stream and drop
            # the rest of the body and the EOF.
            self._transition(stream, StreamInput.RECV_FIN)
            events.append(StreamEnded(stream.id))
            self._maybe_remove(stream)

    def _on_header(
        self, version: int, type: int, flags: int, stream_id: int, length: int,
        *, now: float, events: list[Event],
    ) -> None:
        if version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"unsupported protocol version {version}")
        if type == _DATA or type == _WINDOW_UPDATE:
            self._on_stream_frame(type, flags, stream_id, length, now, events)
        elif type == _PING:
            if stream_id != 0:
                raise RemoteProtocolError(f"ping on stream {stream_id}; pings use stream 0")
            if flags & _SYN:
                self._glitch(now, "ping")
                self._control.append(ping(length, _ACK))
                self._solicited += 1
                if self._receipts:  # an idle session's last bytes are confirmed too
                    self._queue_receipt()
            elif flags & _ACK:
                events.append(PongReceived(length))
            else:
                self._glitch(now, "ping without SYN or ACK")
        elif type == _GO_AWAY:
            if stream_id != 0:
                raise RemoteProtocolError(f"go away on stream {stream_id}; go away uses stream 0")
            if self.remote_go_away is None:
                self.remote_go_away = length
                events.append(GoAwayReceived(length))
            else:
                self._glitch(now, "repeated go away")
        elif type == _RECEIPT and self._replay is not None:
            self._on_receipt(flags, stream_id, length, now)
        else:
            raise RemoteProtocolError(f"unknown frame type {type}")

    def _on_receipt(self, flags: int, stream_id: int, value: int, now: float) -> None:
        if stream_id != 0 or flags:
            raise RemoteProtocolError("a receipt uses stream 0 and no flags")
        replay = self._replay
        assert replay is not None
        count = unwrap_receipt(value, replay.acked)
        if count is not None and count > replay.sent:
            raise RemoteProtocolError(f"receipt for {count} bytes; only {replay.sent} were sent")
        if count is None or not replay.confirm(count):
            self._glitch(now, "stale receipt")

    def _on_stream_frame(
        self, type: int, flags: int, stream_id: int, length: int, now: float, events: list[Event]
    ) -> None:
        is_data = type == _DATA
        if stream_id == 0:
            raise RemoteProtocolError("data or window update on stream 0")
        if is_data and length > self.config.max_data_frame_bytes:
            raise RemoteProtocolError(
                f"data frame of {length} bytes exceeds the {self.config.max_data_frame_bytes} cap"
            )
        stream = self._streams.get(stream_id)
        if flags & _SYN:
            stream = self._on_syn(stream_id, now, events)
        elif stream is None:
            self._on_unknown_stream(stream_id, now)
        if stream is None:  # refused or closed: drop the frame, but never read past a window
            if is_data:
                if length > INITIAL_STREAM_WINDOW and flags & _SYN:
                    raise RemoteProtocolError(f"data frame of {length} bytes exceeds the window")
                self._skip_body(length)
            return
        if flags & _ACK and stream_id in self._unacked:
            self._unacked.discard(stream_id)
            events.append(StreamAcked(stream_id))
        if is_data:
            if length:
                if stream.state >= _REMOTE_CLOSED:
                    raise RemoteProtocolError(f"data on stream {stream_id} after its FIN")
                if not stream.recv.fits(length):
                    raise RemoteProtocolError(
                        f"data frame of {length} bytes exceeds stream {stream_id}'s window "
                        f"({stream.recv.credit} bytes)"
                    )
                stream.recv.received(length, now)
                self._body_left = length
                self._body_stream = stream
            elif not flags:
                self._glitch(now, "empty data frame")
        elif length:
            window = stream.send_window + length
            if window > MAX_WINDOW:
                raise RemoteProtocolError(f"window update takes stream {stream_id} above 2^31-1")
            if length < _SMALL_UPDATE_BYTES and not flags:
                # Honest peers return credit by the half window; a dribble of tiny updates would
                # make us send tiny frames (13 bytes of work per byte).
                self._glitch(now, "tiny window update")
            stream.send_window = window
            if length > stream.peer_window:
                stream.peer_window = length
            if stream.send_buffered and not stream.queued:
                self._schedule(stream)
        elif not flags:
            self._glitch(now, "empty window update")
        if flags & _RST:
            if self._body_left:  # the body of a Data|RST frame is dropped
                self._body_stream = None
            # Rapid reset: a peer that opens streams and resets them before we took them makes
            # us pay for nothing. Resets of streams we opened, or that are already in use,
            # are ordinary (a visitor hung up, a service was down) and do not count.
            if stream_id in self._unaccepted and not self._resets.take(now):
                raise RemoteProtocolError("reset rate limit exceeded")
            self._transition(stream, StreamInput.RESET)
            self._remove(stream)
            events.append(StreamReset(stream_id))
            return
        if flags & _FIN and stream.state < _REMOTE_CLOSED:
            if self._body_left:
                self._body_fin = True  # the FIN takes effect after the body (`_finish_body`)
            else:
                self._transition(stream, StreamInput.RECV_FIN)
                events.append(StreamEnded(stream_id))
                self._maybe_remove(stream)

    def _on_syn(self, stream_id: int, now: float, events: list[Event]) -> _Stream | None:
        if stream_id % 2 != self._peer_parity:
            raise RemoteProtocolError(f"stream {stream_id} opened with our parity")
        if stream_id in self._streams:
            raise RemoteProtocolError(f"stream {stream_id} opened twice")
        # Ids may arrive out of order: hashicorp/yamux picks ids first and sends SYNs later from
        # concurrent goroutines. An id below the highest seen is new only if it was skipped over
        # (and recently: the set of skipped ids is bounded); otherwise it is a reuse.
        highest = self._highest_peer_id
        if stream_id <= highest:
            if stream_id not in self._skipped_peer_ids:
                raise RemoteProtocolError(f"stream {stream_id} reuses a closed stream's id")
            self._skipped_peer_ids.discard(stream_id)
        else:
            lowest_unseen = highest + 2 if highest else 2 - self._peer_parity
            first_skipped = max(lowest_unseen, stream_id - 2 * _MAX_SKIPPED_IDS)
            self._skipped_peer_ids.update(range(first_skipped, stream_id, 2))
            if len(self._skipped_peer_ids) > _MAX_SKIPPED_IDS:
                floor = stream_id - 2 * _MAX_SKIPPED_IDS
                self._skipped_peer_ids = {i for i in self._skipped_peer_ids if i >= floor}
            self._highest_peer_id = stream_id
        refuse = (
            self.refusing
            or self.local_go_away
            or len(self._unaccepted) >= self.config.accept_backlog
            or len(self._streams) >= self.config.max_streams
        )
        window = 0 if refuse else self._budget.reserve(INITIAL_STREAM_WINDOW)
        if window < INITIAL_STREAM_WINDOW:
            self._budget.release(window)
            if not self._resets.take(now):
                raise RemoteProtocolError("reset rate limit exceeded (refused streams)")
            self._control.append(window_update(stream_id, 0, _RST))
            self._solicited += 1
            self.refused_streams += 1
            return None
        stream = _Stream(stream_id, outbound=False)
        self._streams[stream_id] = stream
        self._unaccepted.add(stream_id)
        events.append(StreamOpened(stream_id))
        return stream

    def _on_unknown_stream(self, stream_id: int, now: float) -> None:
        if stream_id % 2 == self._peer_parity:
            never_opened = stream_id > self._highest_peer_id
        else:
            never_opened = stream_id >= self._next_id
        if never_opened:
            raise RemoteProtocolError(f"frame for stream {stream_id}, which was never opened")
        self._glitch(now, "frame for a closed stream")

    def _skip_body(self, length: int) -> None:
        self._body_left = length
        self._body_stream = None

    def _glitch(self, now: float, what: str) -> None:
        if not self._glitches.take(now):
            raise RemoteProtocolError(f"too many useless frames (last: {what})")

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if self.terminated is not None:
            raise LocalProtocolError("the session is closed")

    def _stream_for_sending(self, stream_id: int) -> _Stream:
        self._check_usable()
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is closed or was reset")
        if stream.state and stream.state != _REMOTE_CLOSED:  # neither OPEN (0) nor REMOTE_CLOSED
            raise LocalProtocolError(f"stream {stream_id} was already half-closed by us")
        return stream

    def _buffer(self, stream: _Stream, data: Buffer) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        stream.chunks.append(view)
        stream.send_buffered += len(view)
        if not stream.queued and stream.send_window > 0:
            self._schedule(stream)

    def _schedule(self, stream: _Stream) -> None:
        if not stream.queued:
            stream.queued = True
            if stream.send_buffered <= _LIGHT_BYTES:
                self._light.append(stream)
            else:
                self._ready.append(stream)

    @staticmethod
    def _take_chunks(stream: _Stream, size: int, out: list[Buffer]) -> None:
        chunks = stream.chunks
        while size:
            chunk = chunks[0]
            if len(chunk) <= size:
                out.append(chunks.popleft())
                size -= len(chunk)
            else:
                out.append(chunk[:size])
                chunks[0] = chunk[size:]
                size = 0

    def _emit_fin_now(self, stream: _Stream) -> None:
        self._transition(stream, StreamInput.FIN_WRITTEN)
        self._control.append(window_update(stream.id, 0, _FIN))
        self._maybe_remove(stream)

    @staticmethod
    def _transition(stream: _Stream, event: StreamInput) -> None:
        stream.state = next_state(stream.id, stream.state, event)

    def _maybe_remove(self, stream: _Stream) -> None:
        # Not while the peer's last Data|FIN frame is still being read: its FIN closed the
        # stream at the header, our FIN may close it both ways before the body is in, and the
        # body and StreamEnded would be dropped. `_finish_body` removes it then.
        if stream.state == _CLOSED and stream is not self._body_stream:
            self._remove(stream)

    def _remove(self, stream: _Stream) -> None:
        """Take the stream out of the table (both FINs passed, a reset, or the session's end)."""
        if self._streams.pop(stream.id, None) is None:
            return
        stream.state = _CLOSED
        self._budget.release(stream.recv.window)
        self._unaccepted.discard(stream.id)
        self._unacked.discard(stream.id)
        stream.chunks.clear()
        stream.send_buffered = 0

    def _terminate(self, code: GoAwayCode) -> None:
        self._control.append(go_away(code))
        self.terminated = code
        self.local_go_away = True
        self._ready.clear()
        self._light.clear()
        for stream in list(self._streams.values()):
            self._remove(stream)
