"""Frame-level attacks against the sans-IO core and the anyio `Session`: the rows of the attack
table that `tests/mux/` does not already cover (those are listed in `tests/attacks/README.md`).

Bounds are asserted in the core's own terms (queued frames, frames emitted, stream table size,
bytes held per tracemalloc, CPU seconds); the live versions in `test_live_frames.py` show the
same limits hold in a running server with an honest session beside the attacker.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from mux import (
    Connection,
    Flag,
    FrameType,
    GoAwayCode,
    MuxConfig,
    MuxStream,
    RemoteProtocolError,
    Session,
    SessionClosed,
    StreamOpened,
)
from mux._const import INITIAL_STREAM_WINDOW
from mux.testing import (
    ConnectionPair,
    FrameBuilder,
    RawPeer,
    drain_frames,
    memory_stream_pair,
    session_pair,
    tcp_stream_pair,
)

pytestmark = pytest.mark.stress

F = FrameBuilder()
KIB, MIB = 1024, 1024 * 1024
WINDOW = INITIAL_STREAM_WINDOW
QUIET = MuxConfig(enable_keepalive=False)


@asynccontextmanager
async def session_and_raw_peer(
    config: MuxConfig = QUIET, capacity: int = 256 * KIB
) -> AsyncIterator[tuple[Session, RawPeer]]:
    """A server `Session` whose peer (a client: odd ids) writes frames by hand."""
    ours, theirs = memory_stream_pair(capacity)
    async with Session(ours, client=False, config=config) as session:
        yield session, RawPeer(theirs)


def traced(func):  # type: ignore[no-untyped-def]
    """Run `func()`; returns (result, peak bytes allocated meanwhile, bytes still held)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = func()
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base, current - base


# ---------------------------------------------------------------------------------------- row 2


def test_row2_syn_and_ping_floods_share_one_reply_budget(figures) -> None:
    """100 000 frames mixing pings and SYNs the core must refuse: however they are mixed, no
    more than `max_queued_pongs` replies ever wait unwritten, every solicited reply is written
    in the end, in order, and the memory the core holds stays small."""
    config = MuxConfig(accept_backlog=1, reset_burst=10**6, glitch_burst=10**6)
    conn = Connection(client=False, config=config)
    cap = config.max_queued_pongs
    frames, pings, refusals = [F.syn(1)], 0, 0
    for i in range(50_000):
        if i % 3:
            frames.append(F.ping(i))
            pings += 1
        else:
            frames.append(F.syn(2 * i + 3))
            refusals += 1
    wire = b"".join(frames)

    def run() -> tuple[int, int, int]:
        replies = worst = rounds = 0
        conn.receive_data(wire, 0.0)
        while rounds < 100_000:
            rounds += 1
            queued = [f for f in drain_frames(conn) if f.type == FrameType.PING or f.has(Flag.RST)]
            worst = max(worst, len(queued))
            replies += len(queued)
            if not conn.reading_paused:
                break
            conn.receive_data(b"", 0.0)
        return replies, worst, rounds

    (replies, worst, _), peak, held = traced(run)
    figures.record(
        "core row 2: SYN+ping flood, one reply budget",
        frames=len(frames),
        worst_queued_replies=worst,
        peak_alloc_kib=round(peak / KIB),
    )
    assert worst <= cap
    assert replies == pings + refusals
    assert conn.terminated is None and not conn.reading_paused
    # The input itself (1.2 MB) is the caller's; the core's own state stays far below it.
    assert held < 256 * KIB
    assert peak < len(wire) + 1 * MIB


@pytest.mark.anyio
async def test_row2_application_replies_to_a_peer_that_does_not_read(figures) -> None:
    """The server accepts every stream a client opens and resets it. A peer that opens streams
    and never reads makes each cost us an ACK and an RST: they count as replies to the peer
    (once 32 are unwritten, parsing stops), so the queue stays bounded (two frames per stream
    of the accept backlog, which the parser may fill in one read, plus the 32) and the session
    ends at the write timeout."""
    config = QUIET.replace(write_timeout_s=1.0)
    with anyio.fail_after(20):
        async with session_and_raw_peer(config, capacity=16 * KIB) as (session, peer):
            worst = 0

            async def refuse() -> None:
                try:
                    while True:
                        (await session.accept_stream()).reset()
                except SessionClosed:
                    pass

            async def flood() -> None:
                next_id = 1
                try:
                    for _ in range(200):
                        syns = (F.syn(i) for i in range(next_id, next_id + 400, 2))
                        await peer.send(b"".join(syns))
                        next_id += 400
                except anyio.BrokenResourceError:
                    pass

            started = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(refuse)
                tg.start_soon(flood)
                while not session.closed and anyio.current_time() - started < 10:
                    worst = max(worst, len(session.conn._control))
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
            closed_after = anyio.current_time() - started
    figures.record(
        "session row 2: accept+reset replies, peer not reading",
        worst_queued_control_frames=worst,
        closed_s=round(closed_after, 2),
        reason=(session.close_reason or "")[:40],
    )
    assert session.closed and closed_after < 1.0 + 2.0
    assert worst <= 2 * config.accept_backlog + config.max_queued_pongs, worst


# ---------------------------------------------------------------------------------------- row 6


@pytest.mark.anyio
async def test_row6_full_windows_never_read_stay_within_the_receive_budget(figures) -> None:
    """A peer opens more streams than the receive budget holds windows for and fills every
    window; our application accepts them and never reads. Memory stays within the budget (plus
    20 %), the streams beyond it are refused with RST, and once one stream is done a new one is
    accepted again."""
    windows = 16
    config = QUIET.replace(session_receive_budget_bytes=windows * WINDOW, max_streams=64)
    ids = [2 * i + 1 for i in range(windows + 4)]
    with anyio.fail_after(30):
        async with session_and_raw_peer(config, capacity=1 * MIB) as (session, peer):
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                accepted: list[MuxStream] = []
                for stream_id in ids:
                    await peer.send(F.syn(stream_id))
                refused = set()
                while len(refused) < 4:
                    refused |= {f.stream_id for f in await peer.read() if f.has(Flag.RST)}
                for _ in range(windows):
                    accepted.append(await session.accept_stream())
                for stream_id in ids[:windows]:
                    await peer.send(F.data(stream_id, bytes([stream_id % 256]) * WINDOW))
                await peer.send(F.ping(9))
                await peer.expect(lambda f: f.type == FrameType.PING and f.length == 9)
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            assert refused == set(ids[windows:])
            assert session.conn.budget_used == windows * WINDOW
            # One more SYN is refused while the budget is full...
            await peer.send(F.syn(ids[-1] + 2))
            await peer.expect(lambda f: f.has(Flag.RST) and f.stream_id == ids[-1] + 2)
            # ...until a stream is done: the peer ends one, we read it to the end and close.
            await peer.send(F.fin(ids[0]))
            got = b""
            with pytest.raises(anyio.EndOfStream):
                while True:
                    got += await accepted[0].receive()
            assert len(got) == WINDOW
            await accepted[0].aclose()
            await peer.send(F.syn(ids[-1] + 4))
            again = await session.accept_stream()
            assert again.stream_id == ids[-1] + 4
    figures.record(
        "session row 6: full windows never read",
        held_mib=round(held / MIB, 2),
        budget_mib=round(windows * WINDOW / MIB, 2),
    )
    assert held < 1.2 * windows * WINDOW


@pytest.mark.anyio
async def test_row6_unread_bytes_do_not_pin_whole_read_buffers(figures) -> None:
    """Per read of the carrier, the peer sends 1 byte on stream A (never read) and ~200 KiB on
    stream B (read at once). A holds 200 bytes of window; memory must hold about that much,
    not 200 read buffers."""
    rounds = 200
    with anyio.fail_after(30):
        async with session_and_raw_peer(capacity=256 * KIB) as (session, peer):
            await peer.send(F.syn(1), F.syn(3))
            a, b = await session.accept_stream(), await session.accept_stream()
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                for i in range(rounds):
                    await peer.send(F.data(1, b"a"), F.data(3, b"b" * (100 * KIB)))
                    got = 0
                    while got < 100 * KIB:
                        got += len(await b.receive(1 << 20))
                    if i % 2:
                        await peer.send(F.window_update(3, 0))  # keep the frames apart
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            assert a._buffered == rounds
    figures.record(
        "session row 6: unread bytes pinning read buffers", held_mib=round(held / MIB, 2)
    )
    assert held < 4 * MIB, f"{held / MIB:.1f} MiB held for {rounds} unread bytes"


# ---------------------------------------------------------------------------------------- row 7


@pytest.mark.parametrize(
    "wire",
    [
        F.syn(1) + F.data(1, length=2**32 - 1),
        F.data(1, flags=Flag.SYN, length=2**32 - 1),
        F.data(9, length=2**32 - 1),
        F.syn(1) + F.rst(1) + F.data(1, length=2**32 - 1),
    ],
    ids=["open", "syn", "unknown", "closed"],
)
def test_row7_huge_length_allocates_nothing(wire: bytes) -> None:
    """A 4 GiB Data header is refused from the header: no allocation beyond 64 KiB."""
    conn = Connection(client=False)

    def run() -> None:
        with pytest.raises(RemoteProtocolError):
            conn.receive_data(wire, 0.0)

    _, peak, _ = traced(run)
    assert peak < 64 * KIB
    assert drain_frames(conn)[-1].type == FrameType.GO_AWAY


# ---------------------------------------------------------------------------------------- row 9


def test_row9_a_million_empty_frames_cost_little_cpu(figures) -> None:
    """10^6 empty Data frames: GoAway after about `glitch_burst` of them; the rest is never
    parsed; CPU well under 2 s."""
    conn = Connection(client=False)
    conn.receive_data(F.syn(1), 0.0)
    chunk = F.data(1, b"") * 10_000
    started = time.process_time()
    parsed_chunks = 0
    with pytest.raises(RemoteProtocolError):
        for _ in range(100):
            conn.receive_data(chunk, 0.0)
            parsed_chunks += 1
    for _ in range(100 - parsed_chunks - 1):
        assert conn.receive_data(chunk, 0.0) == []
    cpu = time.process_time() - started
    figures.record("core row 9: 10^6 empty Data frames", cpu_s=cpu, chunks_parsed=parsed_chunks)
    assert parsed_chunks == conn.config.glitch_burst // 10_000
    assert conn.terminated == GoAwayCode.PROTOCOL_ERROR
    assert cpu < 2.0


# ---------------------------------------------------------------------------------------- row 13


@pytest.mark.anyio
async def test_row13_granted_windows_but_a_carrier_that_never_drains(figures) -> None:
    """The peer grants 16 MiB of window on 100 streams, then stops reading the carrier. Our
    writers keep pushing. What we buffer is bounded per stream (`stream_send_buffer_bytes`
    plus one write), the session gives up `write_timeout_s` after the stall, and every writer
    then fails (no clean end). An honest session in the same process keeps answering."""
    streams, chunk = 100, 64 * KIB
    config = QUIET.replace(write_timeout_s=1.0)
    bound = streams * (config.stream_send_buffer_bytes + chunk) + 4 * config.write_batch_bytes
    with anyio.fail_after(30):
        async with (
            session_and_raw_peer(config, capacity=64 * KIB) as (session, peer),
            session_pair("memory", QUIET) as (honest_client, _),
        ):
            await peer.send(*(F.syn(2 * i + 1) for i in range(streams)))
            ours = [await session.accept_stream() for _ in range(streams)]
            await peer.send(*(F.window_update(2 * i + 1, 16 * MIB) for i in range(streams)))
            await anyio.sleep(0.05)
            failures: list[BaseException] = []
            rtts: list[float] = []
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                started = anyio.current_time()

                async def push(stream: MuxStream) -> None:
                    try:
                        for _ in range(1000):
                            await stream.send(b"p" * chunk)
                    except anyio.BrokenResourceError as exc:
                        failures.append(exc)

                async def honest() -> None:
                    while True:
                        rtts.append(await honest_client.ping())
                        await anyio.sleep(0.01)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(honest)
                    async with anyio.create_task_group() as writers:
                        for stream in ours:
                            writers.start_soon(push, stream)
                    closed_after = anyio.current_time() - started
                    tg.cancel_scope.cancel()
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
    figures.record(
        "session row 13: windows granted, carrier never drained",
        peak_mib=round(peak / MIB, 1),
        bound_mib=round(bound / MIB, 1),
        closed_s=round(closed_after, 2),
        honest_p99_ms=round(1000 * sorted(rtts)[int(0.99 * (len(rtts) - 1))], 2),
    )
    assert len(failures) == streams
    assert all(isinstance(f, SessionClosed) for f in failures)
    assert "stalled" in (session.close_reason or "")
    assert closed_after < config.write_timeout_s + 2.0
    assert peak < bound
    assert len(rtts) > 20 and max(rtts) < 0.5


# ---------------------------------------------------------------------------------------- row 14


def test_row14_window_dribble_is_bounded(figures) -> None:
    """With 1 MiB queued and the window used up, the peer grants 1 byte at a time, 20 000 times:
    we emit at most 1000 Data frames, or the glitch limiter ends the session first."""
    conn = Connection(client=True)
    stream_id = conn.open_stream()
    conn.send_data(stream_id, b"d" * MIB)
    drain_frames(conn, 16 * MIB)  # the initial window's worth leaves
    assert conn.send_window(stream_id) == 0
    emitted = 0
    try:
        for i in range(20_000):  # each update in a read of its own, as a patient peer sends them
            conn.receive_data(F.window_update(stream_id, 1), i / 1000)
            emitted += sum(1 for f in drain_frames(conn) if f.type == FrameType.DATA)
    except RemoteProtocolError:
        pass
    figures.record("core row 14: 20 000 one-byte window updates", data_frames=emitted)
    assert emitted <= 1000 or (
        conn.terminated is not None and emitted <= conn.config.glitch_burst + 1000
    ), f"{emitted} one-byte Data frames emitted"


# ---------------------------------------------------------------------------------------- row 15


def _tiny_and_bulk(tiny: int) -> tuple[Connection, list[int], int]:
    config = MuxConfig(max_streams=tiny + 8, session_receive_budget_bytes=(tiny + 8) * WINDOW)
    conn = Connection(client=True, config=config)
    ids = [conn.open_stream() for _ in range(tiny)]
    bulk = conn.open_stream()
    conn.data_to_send()
    conn.receive_data(F.window_update(bulk, 64 * MIB), 0.0)
    return conn, ids, bulk


def test_row15_tiny_streams_do_not_starve_a_bulk_stream(figures) -> None:
    """1000 streams writing one byte each turn beside one bulk stream: the bulk stream keeps
    most of every write batch, and every tiny stream's byte leaves within one batch."""
    conn, ids, bulk = _tiny_and_bulk(1000)
    conn.send_data(bulk, b"B" * (32 * MIB))
    bulk_bytes = tiny_bytes = 0
    for _ in range(20):
        for stream_id in ids:
            conn.send_data(stream_id, b"t")
        frames = drain_frames(conn)
        tiny_left = sum(conn.send_buffered(i) for i in ids)
        bulk_bytes += sum(f.length for f in frames if f.stream_id == bulk)
        tiny_bytes += sum(f.length for f in frames if f.stream_id != bulk)
        assert tiny_left == 0, "a tiny stream waited more than one batch"
    share = bulk_bytes / (bulk_bytes + tiny_bytes)
    figures.record("core row 15: 1000 tiny streams + bulk", bulk_share=round(share, 3))
    assert share >= 0.5


def test_row15_cost_per_frame_is_flat_in_the_number_of_streams(figures) -> None:
    """Emitting one frame per ready stream costs about the same with 10 or 10 000 streams."""

    def per_frame_us(tiny: int) -> float:
        best = float("inf")
        for _ in range(3):
            conn, ids, _ = _tiny_and_bulk(tiny)
            rounds = max(1, 20_000 // tiny)
            started = time.perf_counter()
            for _ in range(rounds):
                for stream_id in ids:
                    conn.send_data(stream_id, b"t")
                conn.data_to_send(16 * MIB)
            best = min(best, (time.perf_counter() - started) / (rounds * tiny))
        return best * 1e6

    small, large = per_frame_us(10), per_frame_us(10_000)
    figures.record("core row 15: cost per frame", us_10_streams=small, us_10000_streams=large)
    assert large < 3 * small + 2.0


# ---------------------------------------------------------------------------------------- row 16

CLOSE_STEPS = ("fin_client", "fin_server", "rst_client", "rst_server", "data_client", "data_server")


class CloseOrders(RuleBasedStateMachine):
    """Streams ended in every order, with frames in flight both ways at once.

    Rules open streams from either side, accept, write, half-close or reset from either side,
    and move bytes one direction at a time (so FIN and RST frames cross on the wire). Once a
    stream has ended both ways or been reset on either side, it must leave both stream tables
    after the bytes in flight are delivered; when all streams have, both tables and receive
    budgets are empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pair = ConnectionPair(MuxConfig(max_streams=8), auto_accept=False, auto_read=True)
        self.sides = {"client": self.pair.client, "server": self.pair.server}
        self.streams: dict[int, dict[str, bool]] = {}

    def _live(self) -> list[int]:
        return [s for s, st_ in self.streams.items() if not st_["done"]]

    @rule(side=st.sampled_from(["client", "server"]))
    def open(self, side: str) -> None:
        conn = self.sides[side]
        if conn.stream_count >= conn.config.max_streams or len(self.streams) > 40:
            return
        stream_id = conn.open_stream(b"hello")
        self.streams[stream_id] = {
            "fin_client": False, "fin_server": False, "rst": False, "done": False,
        }  # fmt: skip

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, 40), step=st.sampled_from(CLOSE_STEPS))
    def act(self, pick: int, step: str) -> None:
        live = self._live()
        stream_id = live[pick % len(live)]
        state = self.streams[stream_id]
        side = step.split("_")[1]
        conn = self.sides[side]
        if not conn.has_stream(stream_id):
            return
        if step.startswith("data") and not state[f"fin_{side}"]:
            conn.send_data(stream_id, b"x" * 100)
        elif step.startswith("fin") and not state[step]:
            conn.send_eof(stream_id)
            state[step] = True
        elif step.startswith("rst"):
            conn.reset_stream(stream_id)
            state["rst"] = True
        if state["rst"] or (state["fin_client"] and state["fin_server"]):
            state["done"] = True

    @rule()
    def accept_all(self) -> None:
        for conn in self.sides.values():
            for stream_id in list(conn.stream_ids()):
                conn.accept_stream(stream_id)

    @rule(side=st.sampled_from(["client", "server"]))
    def deliver_one_way(self, side: str) -> None:
        self.pair.step(self.sides[side])

    @invariant()
    def table_bounded(self) -> None:
        for conn in self.sides.values():
            assert conn.stream_count <= conn.config.max_streams
            assert conn.terminated is None

    def teardown(self) -> None:
        # End what is still open (from whichever side knows of it), deliver everything, and
        # check that both tables are empty.
        for _ in range(3):
            self.pair.pump()
            for conn in self.sides.values():
                for stream_id in conn.stream_ids():
                    if not self.streams.get(stream_id, {}).get("done", True):
                        conn.reset_stream(stream_id)
            self.accept_all()
        self.pair.pump()
        for conn in self.sides.values():
            assert conn.stream_count == 0, conn.stream_ids()
            assert conn.budget_used == 0
            assert conn.unaccepted == 0 and conn.unacked == 0


CloseOrders.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
test_row16_close_orders = CloseOrders.TestCase


@pytest.mark.parametrize(
    "frames",
    [
        [F.frame(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.RST, 1)],
        [F.frame(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.FIN, 1), "fin"],
        [F.data(1, b"x", Flag.SYN | Flag.FIN | Flag.RST)],
        [F.syn(1), F.fin(1), "fin"],
        [F.syn(1), "fin", F.fin(1)],
        [F.syn(1), F.fin(1), F.rst(1)],
        [F.syn(1), "rst", F.fin(1)],
        [F.syn(1), "fin", F.rst(1)],
        [F.syn(1), "rst", F.rst(1)],
    ],
    ids=["syn|rst", "syn|fin", "data syn|fin|rst", "fin-fin", "ours-first", "fin-rst",
         "rst-crossing-fin", "fin-crossing-rst", "rst-both"],
)  # fmt: skip
def test_row16_odd_close_orders_leave_nothing(frames: list) -> None:
    """Frames from a peer (bytes) and our own actions ("fin", "rst") in odd orders: the stream
    leaves the table and the budget returns to zero."""
    conn = Connection(client=False)
    for item in frames:
        if item == "fin":
            if conn.has_stream(1):
                conn.accept_stream(1)
                conn.send_eof(1)
        elif item == "rst":
            conn.reset_stream(1)
        else:
            conn.receive_data(item, 0.0)
    conn.data_to_send()
    assert conn.stream_count == 0, conn.stream_ids()
    assert conn.budget_used == 0 and conn.unaccepted == 0


def test_row16_open_close_cycles_keep_memory_flat(figures) -> None:
    """20 000 streams opened and closed (by FIN both ways, by either side's RST, SYN|RST):
    what the core holds after the first 2 000 does not grow over the next 18 000."""
    conn = Connection(client=False)

    def cycle(first: int, count: int) -> None:
        for n in range(first, first + count):
            stream_id = 2 * n + 1
            kind = n % 4
            if kind == 0:
                conn.receive_data(F.syn(stream_id, b"q") + F.fin(stream_id), 0.0)
                conn.accept_stream(stream_id)
                conn.stream_read(stream_id, 1, 0.0)
                conn.send_data(stream_id, b"a")
                conn.send_eof(stream_id)
            elif kind == 1:
                conn.receive_data(F.syn(stream_id) + F.rst(stream_id), n / 33)
            elif kind == 2:
                conn.receive_data(F.syn(stream_id), 0.0)
                conn.reset_stream(stream_id)
            else:
                conn.receive_data(
                    F.frame(FrameType.WINDOW_UPDATE, Flag.SYN | Flag.RST, stream_id), n / 33
                )
            conn.data_to_send()

    cycle(0, 2000)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        cycle(2000, 18_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    figures.record("core row 16: 20 000 open/close cycles", grown_kib=round(grown / KIB, 1))
    assert conn.stream_count == 0 and conn.budget_used == 0
    assert conn.terminated is None
    assert grown < 64 * KIB


# ---------------------------------------------------------------------------------------- resets


def test_resets_of_accepted_streams_do_not_end_the_session() -> None:
    """The peer opens 3000 streams one after another; each is accepted, carries data, and is
    then reset by the peer (as a visitor's RST reaches `up`, or an evicted UDP flow). That is
    normal traffic, not rapid reset: the session must survive."""
    conn = Connection(client=False)
    for n in range(3000):
        stream_id = 2 * n + 1
        events = conn.receive_data(F.syn(stream_id, b"GET /"), n * 0.001)
        assert StreamOpened(stream_id) in events
        conn.accept_stream(stream_id)
        conn.stream_read(stream_id, 5, n * 0.001)
        conn.send_data(stream_id, b"200 OK")
        conn.data_to_send()
        conn.receive_data(F.rst(stream_id), n * 0.001)
    assert conn.terminated is None


def test_peer_refusing_our_streams_does_not_end_the_session() -> None:
    conn = Connection(client=False)
    for n in range(3000):
        stream_id = conn.open_stream(b"visitor header")
        conn.data_to_send()
        refusal = F.frame(FrameType.WINDOW_UPDATE, Flag.ACK | Flag.RST, stream_id)
        conn.receive_data(refusal, n * 0.001)
    assert conn.terminated is None


# ------------------------------------------------------------------------------------ first read


@pytest.mark.anyio
async def test_protocol_error_in_the_first_read_ends_only_the_session() -> None:
    async with tcp_stream_pair() as (ours, theirs):
        await theirs.send(F.syn(2))
        with anyio.fail_after(5):
            async with Session(ours, client=False, config=MuxConfig()) as session:
                await session.wait_closed()
    assert "protocol error" in (session.close_reason or "")
