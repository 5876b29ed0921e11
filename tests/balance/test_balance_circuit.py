"""The circuit breaker on a fake clock: closed -> open -> half open -> closed or open again."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.balance import (
    PROBE_TIMEOUT_S,
    CircuitBreaker,
    CircuitSettings,
    CircuitState,
)

from .helpers import make_group

FAST = CircuitSettings(failures=3, window_s=10.0, cooldown_s=5.0, max_cooldown_s=30.0)


def _trip(breaker: CircuitBreaker, now: float) -> None:
    for _ in range(breaker.settings.failures - 1):
        assert not breaker.failed(now)
    assert breaker.failed(now)


def test_failures_within_the_window_open_the_circuit_for_the_cooldown() -> None:
    breaker = CircuitBreaker(FAST)
    assert not breaker.failed(0.0)
    assert not breaker.failed(4.0)
    assert breaker.state(9.0) is CircuitState.CLOSED
    assert breaker.failed(9.0)  # third within 10 s
    assert breaker.state(9.0) is CircuitState.OPEN
    assert not breaker.allows(13.9)
    snap = breaker.snapshot(12.0)
    assert snap.state is CircuitState.OPEN and snap.until == 14.0 and snap.remaining_s == 2.0
    assert snap.opened_total == 1 and snap.cooldown_s == 5.0
    assert breaker.state(14.0) is CircuitState.HALF_OPEN


def test_failures_spread_wider_than_the_window_keep_it_closed() -> None:
    breaker = CircuitBreaker(FAST)
    for at in range(0, 200, 6):  # one failure every 6 s: never 3 within 10 s
        assert not breaker.failed(float(at))
    assert breaker.state(200.0) is CircuitState.CLOSED
    assert breaker.snapshot(200.0).recent_failures <= 2


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes() -> None:
    breaker = CircuitBreaker(FAST)
    _trip(breaker, 0.0)
    assert breaker.allows(5.0)
    assert breaker.picked(5.0)  # the probe
    assert not breaker.allows(5.0) and not breaker.allows(6.0)
    assert breaker.snapshot(6.0).probing
    assert breaker.succeeded(6.0, probe=True)
    assert breaker.state(6.0) is CircuitState.CLOSED
    assert breaker.allows(6.0) and not breaker.picked(6.0)


def test_a_failed_probe_reopens_for_a_doubled_cooldown_up_to_the_cap() -> None:
    breaker = CircuitBreaker(FAST)
    _trip(breaker, 0.0)
    now, cooldowns = 0.0, []
    for _ in range(6):
        now += breaker.cooldown_s
        assert breaker.state(now) is CircuitState.HALF_OPEN
        assert breaker.picked(now)
        assert breaker.failed(now, probe=True)
        cooldowns.append(breaker.cooldown_s)
    assert cooldowns == [10.0, 20.0, 30.0, 30.0, 30.0, 30.0]
    assert breaker.opened_total == 7


def test_a_trip_soon_after_closing_doubles_and_a_late_one_starts_over() -> None:
    breaker = CircuitBreaker(FAST)
    _trip(breaker, 0.0)
    assert breaker.picked(5.0) and breaker.succeeded(5.0, probe=True)
    _trip(breaker, 7.0)  # 2 s after closing, within the 5 s cooldown: same bad member
    assert breaker.cooldown_s == 10.0
    assert breaker.picked(17.0) and breaker.succeeded(17.0, probe=True)
    _trip(breaker, 100.0)  # long after: a new incident
    assert breaker.cooldown_s == 5.0


def test_outcomes_of_visitors_that_are_not_the_probe_do_not_move_the_circuit() -> None:
    breaker = CircuitBreaker(FAST)
    _trip(breaker, 0.0)
    assert not breaker.failed(1.0)  # a visitor picked before the trip, failing late
    assert breaker.snapshot(1.0).until == 5.0  # not extended
    assert not breaker.succeeded(2.0)
    assert breaker.state(2.0) is CircuitState.OPEN
    assert breaker.picked(5.0)
    assert not breaker.failed(5.5)  # not the probe
    assert not breaker.succeeded(5.5)
    assert breaker.state(5.5) is CircuitState.HALF_OPEN


def test_an_abandoned_probe_frees_the_slot_and_a_silent_one_times_out() -> None:
    breaker = CircuitBreaker(FAST)
    _trip(breaker, 0.0)
    assert breaker.picked(5.0)
    breaker.probe_abandoned()
    assert breaker.allows(5.1)
    assert breaker.picked(5.1)
    assert not breaker.allows(5.1 + PROBE_TIMEOUT_S - 0.1)
    assert breaker.allows(5.1 + PROBE_TIMEOUT_S)


def test_new_settings_apply_to_the_next_failures() -> None:
    breaker = CircuitBreaker(FAST)
    breaker.failed(0.0)
    breaker.failed(0.0)
    breaker.update(CircuitSettings(failures=2, window_s=10.0, cooldown_s=1.0))
    assert breaker.state(0.0) is CircuitState.CLOSED
    assert breaker.failed(1.0)
    assert breaker.cooldown_s == 1.0


events = st.lists(
    st.tuples(st.sampled_from(["fail", "ok", "pick", "abandon"]), st.floats(0, 20)),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=events)
def test_cooldown_stays_within_bounds_and_memory_stays_bounded(
    steps: list[tuple[str, float]],
) -> None:
    breaker = CircuitBreaker(FAST)
    now = 0.0
    probe = False
    for action, delta in steps:
        now += delta
        if action == "pick" and breaker.allows(now):
            probe = breaker.picked(now)
        elif action == "fail":
            breaker.failed(now, probe=probe)
            probe = False
        elif action == "ok":
            breaker.succeeded(now, probe=probe)
            probe = False
        elif action == "abandon" and probe:
            breaker.probe_abandoned()
            probe = False
        assert FAST.cooldown_s <= breaker.cooldown_s <= FAST.max_cooldown_s
        assert len(breaker._failures) < FAST.failures
        state = breaker.state(now)
        assert breaker.allows(now) == (
            state is CircuitState.CLOSED
            or (state is CircuitState.HALF_OPEN and not breaker.snapshot(now).probing)
        )


def test_group_skips_an_open_member_and_probes_it_with_one_visitor() -> None:
    group = make_group("round_robin", circuit=FAST)
    for _ in range(3):
        visit = group.pick(0.0, exclude={"m0", "m2"})
        assert visit is not None and visit.handle == "m1"
        visit.failed(0.0)
    snap = group.snapshot(1.0)
    assert snap.members[1].circuit.state is CircuitState.OPEN
    assert not snap.members[1].available and snap.members[1].dial_failures_total == 3
    handles = [group.pick(1.0).handle for _ in range(10)]  # type: ignore[union-attr]
    assert "m1" not in handles
    # Cooldown over: one probe visitor goes to m1, the next ones do not until it answers.
    got = [group.pick(5.0) for _ in range(6)]
    probes = [v for v in got if v is not None and v.handle == "m1"]
    assert len(probes) == 1 and probes[0].probe
    assert all(not v.probe for v in got if v is not None and v.handle != "m1")
    probing = group.snapshot(5.2).members[1]
    assert probing.circuit.state is CircuitState.HALF_OPEN and probing.circuit.probing
    assert not probing.available
    probes[0].succeeded(5.5)
    closed = group.snapshot(5.5).members[1]
    assert closed.circuit.state is CircuitState.CLOSED and closed.available
    handles = [group.pick(6.0).handle for _ in range(6)]  # type: ignore[union-attr]
    assert handles.count("m1") == 2


def test_a_failed_probe_visit_reopens_and_the_retry_goes_elsewhere() -> None:
    group = make_group("round_robin", circuit=FAST)
    for _ in range(3):
        group.pick(0.0, exclude={"m0", "m2"}).failed(0.0)  # type: ignore[union-attr]
    probe = group.pick(5.0, exclude={"m0", "m2"})
    assert probe is not None and probe.probe
    probe.failed(5.0)
    retry = group.pick(5.0, exclude={probe.member.member_id})
    assert retry is not None and retry.handle != "m1" and not retry.probe
    circuit = group.snapshot(5.0).members[1].circuit
    assert circuit.state is CircuitState.OPEN and circuit.cooldown_s == 10.0


def test_every_member_open_means_no_member() -> None:
    group = make_group("weighted", (1, 2), circuit=CircuitSettings(failures=1, cooldown_s=5.0))
    for _ in range(2):
        group.pick(0.0).failed(0.0)  # type: ignore[union-attr]
    assert group.pick(1.0) is None
    assert group.snapshot(1.0).unavailable_total == 1


@pytest.mark.parametrize("policy", ["least_connections", "random", "hash_source"])
def test_an_abandoned_probe_visit_lets_the_next_visitor_probe(policy: str) -> None:
    group = make_group(policy, (1,), circuit=CircuitSettings(failures=1, cooldown_s=5.0))
    group.pick(0.0, key="k").failed(0.0)  # type: ignore[union-attr]
    probe = group.pick(5.0, key="k")
    assert probe is not None and probe.probe
    assert group.pick(5.0, key="k") is None
    probe.close()  # the visitor went away before the dial answered
    again = group.pick(5.0, key="k")
    assert again is not None and again.probe
