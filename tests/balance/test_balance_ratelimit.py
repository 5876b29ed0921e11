"""Rate limits on a fake clock: rates within 10%, concurrency caps, a bounded source table."""

from __future__ import annotations

import gc
import random
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.balance import (
    Admission,
    PerSourceLimit,
    RateLimit,
    Refusal,
    RefusalReason,
    TokenBucket,
    VisitorLimiter,
)
from muxtunnel.balance.ratelimit import MAX_SOURCES
from muxtunnel.log import log_doubling


def _offer(limiter: VisitorLimiter, source: str, start: float, end: float, every: float) -> int:
    """Visitors from `source` every `every` seconds in [start, end): how many got in."""
    admitted = 0
    steps = round((end - start) / every)
    for step in range(steps):
        result = limiter.admit(source, start + step * every)
        if isinstance(result, Admission):
            admitted += 1
            result.release()
    return admitted


def test_service_rate_within_10_percent_of_the_configured_rate(figures: Any) -> None:
    limiter = VisitorLimiter("svc", RateLimit(new_per_s=50, burst=10))
    duration_s = 20.0
    admitted = _offer(limiter, "198.51.100.1", 0.0, duration_s, every=0.001)  # 1000/s offered
    rate = (admitted - 10) / duration_s
    assert abs(rate - 50) <= 5, rate
    refused = limiter.snapshot().refused
    assert refused == {"service_rate": 20000 - admitted}
    figures.record("balance: service rate 50/s burst 10", offered_per_s=1000,
                   admitted_per_s=round(rate, 2))  # fmt: skip


def test_service_rate_holds_under_jittered_arrivals_from_many_sources() -> None:
    limiter = VisitorLimiter("svc", RateLimit(new_per_s=20, burst=5))
    rng = random.Random(3)
    now, admitted = 0.0, 0
    while now < 30.0:
        now += rng.expovariate(200)  # Poisson arrivals at 200/s
        if isinstance(limiter.admit(f"10.0.0.{rng.randrange(256)}", now), Admission):
            admitted += 1
    assert abs((admitted - 5) / 30.0 - 20) <= 2


def test_per_source_rate_within_10_percent_and_other_sources_unaffected(figures: Any) -> None:
    limiter = VisitorLimiter("svc", per_source=PerSourceLimit(new_per_s=5))
    greedy = _offer(limiter, "198.51.100.9", 0.0, 10.0, every=0.01)  # 100/s offered
    rate = (greedy - 5) / 10.0  # burst: one second's worth
    assert abs(rate - 5) <= 0.5, rate
    assert isinstance(limiter.admit("198.51.100.10", 10.0), Admission)
    assert limiter.refused == {RefusalReason.SOURCE_RATE: 1000 - greedy}
    figures.record("balance: per-source rate 5/s", offered_per_s=100, admitted_per_s=rate)


def test_per_source_max_connections_and_release() -> None:
    limiter = VisitorLimiter("svc", per_source=PerSourceLimit(max_connections=3))
    held = [limiter.admit("a", 0.0) for _ in range(3)]
    assert all(isinstance(h, Admission) for h in held)
    refusal = limiter.admit("a", 0.0)
    assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.SOURCE_CONNECTIONS
    assert refusal.retry_after_header == "1"
    assert isinstance(limiter.admit("b", 0.0), Admission)  # another source is not affected
    first = held[0]
    assert isinstance(first, Admission)
    first.release()
    first.release()  # idempotent: frees one slot, not two
    assert isinstance(limiter.admit("a", 0.0), Admission)
    assert isinstance(limiter.admit("a", 0.0), Refusal)


def test_a_refused_visitor_costs_no_tokens() -> None:
    limiter = VisitorLimiter("svc", RateLimit(new_per_s=1, burst=1), PerSourceLimit(new_per_s=1))
    assert isinstance(limiter.admit("a", 0.0), Admission)  # service bucket now empty
    refusal = limiter.admit("b", 0.0)
    assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.SERVICE_RATE
    # b's own bucket was not touched by the refusal: b gets in as soon as the service allows.
    assert isinstance(limiter.admit("b", 1.0), Admission)


def test_retry_after_says_when_the_next_token_comes() -> None:
    limiter = VisitorLimiter("svc", RateLimit(new_per_s=2, burst=1))
    assert isinstance(limiter.admit("a", 0.0), Admission)
    refusal = limiter.admit("a", 0.1)
    assert isinstance(refusal, Refusal)
    assert refusal.retry_after_s == pytest.approx(0.4)
    assert refusal.retry_after_header == "1"
    slow = VisitorLimiter("svc", RateLimit(new_per_s=0.1, burst=1))
    slow.admit("a", 0.0)
    late = slow.admit("a", 2.5)
    assert isinstance(late, Refusal) and late.retry_after_header == "8"  # 7.5 s, rounded up


def _flood(limiter: VisitorLimiter, count: int, start: float) -> int:
    """`count` new addresses, one visitor each (released at once): the largest table seen."""
    largest = 0
    for n in range(count):
        result = limiter.admit(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", start + n * 1e-5)
        assert isinstance(result, Admission)
        result.release()
        largest = max(largest, limiter.sources_tracked)
    return largest


def test_a_flood_of_100000_addresses_keeps_the_table_bounded() -> None:
    limiter = VisitorLimiter("svc", per_source=PerSourceLimit(max_connections=2, new_per_s=2))
    honest = [limiter.admit("192.0.2.1", 0.0), limiter.admit("192.0.2.1", 0.0)]
    assert _flood(limiter, 100_000, start=1.0) == MAX_SOURCES
    assert limiter.sources_tracked == MAX_SOURCES
    # The honest source holds two visitors: its entry survived the flood, its count is exact.
    third = limiter.admit("192.0.2.1", 2.0)
    assert isinstance(third, Refusal) and third.reason is RefusalReason.SOURCE_CONNECTIONS
    for held in honest:
        assert isinstance(held, Admission)
        held.release()
    assert isinstance(limiter.admit("192.0.2.1", 3.0), Admission)


def test_a_full_source_table_costs_what_max_sources_says(figures: Any) -> None:
    limiter = VisitorLimiter("svc", per_source=PerSourceLimit(max_connections=2, new_per_s=2))
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        _flood(limiter, MAX_SOURCES, start=0.0)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    per_source = grown / MAX_SOURCES
    assert per_source < 1024, per_source  # the MAX_SOURCES comment says about 300 bytes
    mib = round(grown / 2**20, 2)
    figures.record("balance: full per-source table", sources=MAX_SOURCES,
                   bytes_per_source=round(per_source), table_mib=mib)  # fmt: skip


def test_when_every_tracked_source_holds_visitors_a_new_source_is_refused() -> None:
    limiter = VisitorLimiter(
        "svc", per_source=PerSourceLimit(max_connections=5), max_sources=4
    )  # fmt: skip
    held = [limiter.admit(f"s{i}", 0.0) for i in range(4)]
    refusal = limiter.admit("s9", 0.0)
    assert isinstance(refusal, Refusal) and refusal.reason is RefusalReason.SOURCE_TABLE_FULL
    assert isinstance(limiter.admit("s0", 0.0), Admission)  # a known source still gets in
    first = held[0]
    assert isinstance(first, Admission)
    first.release()  # s0 still holds one
    assert isinstance(limiter.admit("s9", 0.0), Refusal)
    second = held[1]
    assert isinstance(second, Admission)
    second.release()  # s1 is idle now: it can make room
    assert isinstance(limiter.admit("s9", 0.0), Admission)
    assert limiter.sources_tracked == 4


def test_reload_changes_rates_in_place_and_keeps_counts() -> None:
    limiter = VisitorLimiter(
        "svc", RateLimit(new_per_s=1, burst=1), PerSourceLimit(max_connections=1)
    )
    held = limiter.admit("a", 0.0)
    assert isinstance(held, Admission)
    limiter.update(
        RateLimit(new_per_s=100, burst=100), PerSourceLimit(max_connections=2, new_per_s=1)
    )
    assert isinstance(limiter.admit("a", 0.5), Admission)  # cap now 2, service refilled
    assert isinstance(limiter.admit("a", 0.5), Refusal)
    limiter.update(None, None)
    assert all(isinstance(limiter.admit("a", 0.5), Admission) for _ in range(50))
    held.release()  # a visitor admitted under the old limits still releases cleanly
    assert limiter.snapshot().sources_tracked == 1


def test_no_limits_admit_everything_and_track_nothing() -> None:
    limiter = VisitorLimiter("svc")
    for n in range(1000):
        assert isinstance(limiter.admit(f"s{n}", 0.0), Admission)
    snap = limiter.snapshot()
    assert snap.admitted_total == 1000 and snap.refused_total == 0 and snap.sources_tracked == 0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_a_token_bucket_never_admits_more_than_burst_plus_rate_times_time(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    now, taken = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now):
            taken.append(now)
    for i, start in enumerate(taken):
        for j in range(i, len(taken)):
            assert j - i + 1 <= burst + rate * (taken[j] - start) + 1e-9


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=150),
    cap=st.integers(1, 3),
)
def test_open_counts_match_unreleased_admissions(steps: list[tuple[bool, int]], cap: int) -> None:
    limiter = VisitorLimiter("svc", per_source=PerSourceLimit(max_connections=cap), max_sources=3)
    held: list[tuple[str, Admission]] = []
    for is_admit, n in steps:
        if is_admit or not held:
            source = f"s{n}"
            open_now = sum(1 for s, _ in held if s == source)
            result = limiter.admit(source, 0.0)
            if isinstance(result, Admission):
                assert open_now < cap
                held.append((source, result))
            elif result.reason is RefusalReason.SOURCE_CONNECTIONS:
                assert open_now == cap
            else:
                assert result.reason is RefusalReason.SOURCE_TABLE_FULL
                assert len({s for s, _ in held}) == 3 and open_now == 0
        else:
            held.pop(n % len(held))[1].release()
        assert limiter.sources_tracked <= 3


def test_refusals_are_logged_at_doubling_counts_only() -> None:
    warned: list[int] = []

    class Recorder:
        def warning(self, event: str, **context: Any) -> None:
            warned.append(context["count"])

    for count in range(1, 101):
        log_doubling(Recorder(), "refused", count)
    assert warned == [1, 2, 4, 8, 16, 32, 64]
