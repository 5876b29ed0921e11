"""Transfers through a tunnel whose carrier crosses an impaired veth link (network namespaces).

Every transfer is an echo of seeded random bytes, compared by SHA-256; "no stall" means no
wait of more than 10 s between two chunks received; "no spurious teardown" means `up` logged
no session end. The blackhole test runs last: it ends the session on purpose.
"""

from __future__ import annotations

import time

import pytest
from stress.visitors import EchoExact, Streamer, summarize, wait_all

from .conftest import Link

pytestmark = [pytest.mark.netns, pytest.mark.stress]

MIB = 1 << 20
MAX_STALL_S = 10.0


def transfer(link: Link, size: int, count: int = 2, timeout_s: float = 60.0) -> tuple[list, float]:
    visitors = [EchoExact(link.public, size, seed=i, connect=link.connect) for i in range(count)]
    started = time.monotonic()
    for visitor in visitors:
        visitor.start()
    assert not wait_all(visitors, timeout_s), summarize(visitors)
    return visitors, time.monotonic() - started


def check(link: Link, visitors: list, ended_before: int) -> None:
    assert summarize(visitors) == {"ok": len(visitors)}, (summarize(visitors), link.pair.drops())
    stall = max(v.max_stall_s for v in visitors)
    assert stall < MAX_STALL_S, f"a transfer stalled {stall:.1f} s"
    assert link.sessions_ended() == ended_before, "the session was torn down"


@pytest.mark.parametrize("percent", [1, 5])
def test_random_loss(link: Link, percent: int, figures) -> None:
    """`percent` % of the packets dropped in each direction: two 4 MiB echoes arrive intact,
    nothing stalls for 10 s, and the session is not torn down (keepalive 1 s + 3 s)."""
    link.pair.heal()
    ended = link.sessions_ended()
    link.pair.loss(percent)
    try:
        visitors, seconds = transfer(link, 4 * MIB)
        dropped = link.pair.dropped_packets()
    finally:
        link.pair.heal()
    figures.record(
        f"netns: {percent}% loss, 2 x 4 MiB echo",
        seconds=seconds,
        mbit_s=round(2 * 2 * 4 * 8 / seconds, 1),
        max_stall_s=round(max(v.max_stall_s for v in visitors), 2),
        teardowns=link.sessions_ended() - ended,
        packets_dropped=dropped,
    )
    check(link, visitors, ended)
    assert dropped > 0, "the loss rule dropped nothing"


def test_bandwidth_limit(link: Link, figures) -> None:
    """10 Mbit/s each way (tbf): a 2 MiB echo arrives intact and takes about as long as the
    link allows (it cannot be faster than the shaping)."""
    link.pair.heal()
    ended = link.sessions_ended()
    link.pair.bandwidth("10mbit")
    try:
        visitors, seconds = transfer(link, 2 * MIB, count=1)
    finally:
        link.pair.heal()
    rate = 2 * 8 / seconds
    figures.record(
        "netns: 10 Mbit/s tbf, 2 MiB echo",
        seconds=seconds,
        mbit_s_each_way=round(rate, 1),
        max_stall_s=round(visitors[0].max_stall_s, 2),
    )
    check(link, visitors, ended)
    assert rate < 10 * 1.25, f"{rate:.1f} Mbit/s through a 10 Mbit/s link"


def test_blackhole_is_detected_on_both_ends(link: Link, figures) -> None:
    """Everything crossing the link is dropped (no FIN, no RST): both `up` and `listen` end the
    session by keepalive within interval + timeout (1 + 3 s, plus slack), every visitor gets an
    error, and once the link heals `up` reconnects and serves."""
    link.pair.heal()
    visitors = [Streamer(link.public, rate_bps=200_000, connect=link.connect) for _ in range(2)]
    for visitor in visitors:
        visitor.start()
    deadline = time.monotonic() + 10
    while not all(v.received for v in visitors) and time.monotonic() < deadline:
        time.sleep(0.05)
    up_before, listen_before = link.sessions_ended(), len(link.listen.events("session closed"))
    cut = time.monotonic()
    link.pair.blackhole()
    try:
        link.up.wait_event("session ended", timeout_s=15, count=up_before + 1)
        up_detect = time.monotonic() - cut
        link.listen.wait_event("session closed", timeout_s=15, count=listen_before + 1)
        listen_detect = time.monotonic() - cut
        assert not wait_all(visitors, 10), summarize(visitors)
    finally:
        link.pair.heal()
    reason = link.up.events("session ended")[up_before].get("reason", "")
    healed = time.monotonic()
    deadline = healed + 15
    while not link.echo_works() and time.monotonic() < deadline:
        time.sleep(0.2)
    back = time.monotonic() - healed
    figures.record(
        "netns: blackhole (half-open carrier)",
        up_detect_s=round(up_detect, 2),
        listen_detect_s=round(listen_detect, 2),
        visitors=" ".join(f"{k}={v}" for k, v in summarize(visitors).items()),
        serving_again_s=round(back, 2),
    )
    assert "keepalive" in reason, reason
    assert up_detect < 1.0 + 3.0 + 2.0
    assert listen_detect < 1.0 + 3.0 + 2.0
    assert all((v.outcome or "").startswith("error") for v in visitors), summarize(visitors)
    assert back < 10.0
