"""Frame-level attacks (rows 1-12, 17) against a real `listen`, before authentication.

Every TCP connection to the control port gets a mux session at once, so an unauthenticated
peer can send any frame. Each case: a raw attacker (from 127.0.0.2) opens a carrier, sends its
opening frames, floods for up to a couple of seconds without reading, then reads until the
server closes the carrier. Asserted for every case:

- the server closes the attacker's carrier within the case's bound (GoAway with the expected
  code where a limit or a protocol rule ends it; the authentication deadline otherwise);
- the server's RSS grows by less than `RSS_GROWTH_MIB`, its log by at most `MAX_LOG_LINES`
  lines (no line per frame: log flooding is an attack of its own);
- the honest session through the same server keeps answering: no error, p99 round trip below
  `HONEST_P99_MS`, no gap over 2 s.

The same limits are tested precisely, frame by frame, against the core in `tests/mux/` and
`test_core_attacks.py`; this file shows they hold in the running server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from e2e.harness import Harness
from stress.live import RawCarrier, log_lines
from stress_report import ProcMeter, up_figures

from mux import FrameType, GoAwayCode
from mux.testing import FrameBuilder

from .conftest import AUTH_TIMEOUT_S, LiveTunnel

pytestmark = pytest.mark.stress

F = FrameBuilder()
RSS_GROWTH_MIB = 24.0
MAX_LOG_LINES = 10
#: Generous: attack windows are short (p99 is about the worst sample) and the machine shared;
#: the figures table shows the real numbers.
HONEST_P99_MS = 1000.0
PROTOCOL_ERROR = GoAwayCode.PROTOCOL_ERROR
#: Frames per flood chunk.
BATCH = 2000


def repeat(frame: bytes) -> Callable[[int], bytes]:
    chunk = frame * BATCH
    return lambda n: chunk


def fresh_syns(
    extra: Callable[[int], bytes] = lambda i: b"", first: int = 3
) -> Callable[[int], bytes]:
    """Chunks of SYNs on new odd ids (plus `extra(id)` after each), never reusing an id."""

    def chunk(n: int) -> bytes:
        base = first + 2 * BATCH * n
        return b"".join(F.syn(i) + extra(i) for i in range(base, base + 2 * BATCH, 2))

    return chunk


@dataclass(frozen=True)
class Attack:
    row: str
    name: str
    opening: bytes
    flood: Callable[[int], bytes] | None = None
    #: The server must have closed the carrier this long after the attack began.
    closed_within_s: float = 3.0
    #: GoAway code the server must send (None: none required, e.g. a deadline ends it).
    go_away: int | None = PROTOCOL_ERROR
    #: The flood never reads (the attack is about that): the server's replies and its GoAway
    #: back up behind our full receive window, and its close (with our bytes unread, a reset)
    #: discards them, so the GoAway cannot be required. Other floods read as they go.
    never_reads: bool = False
    #: Waits out the authentication deadline: run by `make stress` only.
    slow: bool = False


ATTACKS = [
    Attack("1", "ping flood, never reading", b"", repeat(F.ping(7)), never_reads=True),
    Attack(
        "2",
        "SYN and ping flood sharing the reply budget",
        F.syn(1),
        fresh_syns(lambda i: F.ping(i)),
        never_reads=True,  # the replies it solicits must pile up for the budget to bind
    ),
    Attack(
        "3+5",
        "SYN flood of client streams, never reading",
        F.syn(1),
        fresh_syns(),
        closed_within_s=AUTH_TIMEOUT_S + 3,
        go_away=None,
        never_reads=True,
    ),
    Attack("4", "rapid reset: SYN with data, then RST", F.syn(1), fresh_syns(lambda i: F.rst(i))),
    Attack("7", "4 GiB Data length", F.syn(1) + F.data(1, length=2**32 - 1), closed_within_s=2),
    Attack(
        "8",
        "window update overflow",
        F.syn(1) + F.window_update(1, 2**32 - 1) * 2,
        closed_within_s=2,
    ),
    Attack("9", "empty Data flood", F.syn(1), repeat(F.data(1, b""))),
    Attack(
        "10", "Data for a closed stream", F.syn(1) + F.syn(3) + F.rst(3), repeat(F.data(3, b"x"))
    ),
    Attack("10", "Data for a never-opened stream", F.syn(1) + F.data(99, b"x"), closed_within_s=2),
    Attack("11", "SYN with the server's parity", F.syn(2), closed_within_s=2),
    Attack(
        "11",
        "SYN reusing a closed id",
        F.syn(1) + F.syn(3) + F.rst(3) + F.syn(3),
        closed_within_s=2,
    ),
    Attack(
        "12",
        "control message longer than 4 KiB",
        F.syn(1, b"\xff\xff" + b"x" * 100),
        closed_within_s=2,
        go_away=None,
    ),
    Attack(  # also covered, with the default run's deadline test, in row 19
        "12",
        "control message stalled mid-way",
        F.syn(1, b"\x00\x80" + b"x" * 10),
        closed_within_s=AUTH_TIMEOUT_S + 3,
        go_away=None,
        slow=True,
    ),
    Attack(
        "17",
        "GoAway with an unknown code, then a GoAway on a stream",
        F.syn(1) + F.go_away(77) + F.syn(3) + F.go_away(0, stream_id=1),
        closed_within_s=2,
    ),
    Attack(
        "17", "GoAway, then SYNs anyway", F.syn(1) + F.go_away(0), fresh_syns(lambda i: F.rst(i))
    ),
]


def _param(attack: Attack) -> object:
    marks = [pytest.mark.slow] if attack.slow else []
    return pytest.param(attack, id=f"row{attack.row}-{attack.name}", marks=marks)


@pytest.mark.parametrize("attack", [_param(a) for a in ATTACKS])
def test_frame_attack_on_a_live_server(live: LiveTunnel, attack: Attack, figures) -> None:
    live.check_alive()
    lines_before = log_lines(live.listen)
    started = time.monotonic()
    with (
        ProcMeter(live.listen.pid) as meter,
        ProcMeter(live.up.pid) as up_meter,
        live.probe.window() as honest,
    ):
        carrier = RawCarrier(live.control)
        try:
            # The server's keepalive pings first thing; waiting for that ping keeps these tests
            # about the limits (the race with the first ping is tested on its own, in
            # test_core_attacks.py).
            carrier.wait_frame(lambda f: f.type == FrameType.PING)
            carrier.send(attack.opening)
            sent = len(attack.opening)
            if attack.flood is not None:
                reading = not attack.never_reads
                sent += carrier.flood(attack.flood, duration_s=2.0, reading=reading)
            left = attack.closed_within_s - (time.monotonic() - started)
            closed, _, codes = carrier.read_until_closed(max(left, 0.1) + 1.0)
            closed_after = time.monotonic() - started
        finally:
            carrier.close()
        time.sleep(0.2)  # the honest probe keeps going a little after the attack
    log_growth = log_lines(live.listen) - lines_before
    figures.record(
        f"attack row {attack.row}: {attack.name}",
        **meter.figures(),
        **up_figures(up_meter),
        **honest.figures(),
        attacker_mib=round(sent / 2**20, 2),
        closed_s=round(closed_after, 2),
        log_lines=log_growth,
    )
    assert closed, f"the server still held the carrier after {attack.closed_within_s} s"
    assert closed_after < attack.closed_within_s + 0.5
    if attack.go_away is not None and not attack.never_reads:
        assert codes[-1:] == [attack.go_away], codes
    elif attack.go_away is not None:  # see `Attack.never_reads`: a GoAway seen must be right
        assert codes[-1:] in ([], [attack.go_away]), codes
    assert meter.rss_growth_mib < RSS_GROWTH_MIB
    assert log_growth <= MAX_LOG_LINES, f"{log_growth} log lines for one attacker"
    honest.assert_healthy(p99_ms=HONEST_P99_MS)
    live.check_alive()



def test_one_bad_frame_first_thing_does_not_stop_the_server(harness: Harness) -> None:
    """A raw connection whose very first frame breaks the protocol (a SYN with the server's
    parity), ten times over: each session ends, the server keeps running."""
    listen = harness.listen()
    for _ in range(10):
        carrier = RawCarrier((listen.host, listen.port))
        carrier.send(F.syn(2))
        carrier.read_until_closed(2.0)
        carrier.close()
    time.sleep(0.3)
    assert listen.running(), listen.describe()
