"""A group's membership, visits, transparent retries, health and snapshots."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.balance import (
    CircuitSettings,
    CircuitState,
    DuplicateMember,
    Group,
    GroupSettings,
    Visit,
    parse_policy,
)

from .helpers import make_group


def test_a_visit_counts_as_open_until_closed_once() -> None:
    group = make_group()
    visit = group.pick(0.0)
    assert visit is not None and visit.member.open_visitors == 1
    visit.succeeded(0.0)
    visit.close()
    visit.close()
    visit.failed(0.0)  # too late: changes nothing
    assert visit.closed and visit.member.open_visitors == 0
    assert visit.member.dial_failures_total == 0


def test_a_failed_dial_ends_the_visit_and_counts_against_the_member() -> None:
    group = make_group()
    visit = group.pick(0.0)
    assert visit is not None
    visit.failed(0.0)
    visit.close()
    assert visit.closed and visit.member.open_visitors == 0
    assert visit.member.dial_failures_total == 1
    visit.succeeded(1.0)  # an outcome after the first one is ignored
    assert group.snapshot(1.0).members[0].circuit.recent_failures == 1


def _serve(group: Group[str], broken: set[str], now: float) -> tuple[str | None, int]:
    """One TCP visitor with the transparent retry: where it landed, and dials that failed."""
    visit = group.pick(now, key="203.0.113.7")
    failures = 0
    for _ in range(2):  # the first dial and one retry
        if visit is None:
            return None, failures
        if visit.handle not in broken:
            visit.succeeded(now)
            visit.close()
            return visit.handle, failures
        visit.failed(now)
        failures += 1
        visit = group.pick(now, key="203.0.113.7", exclude={visit.member.member_id})
    return None, failures


@pytest.mark.parametrize("policy", ["round_robin", "least_connections", "weighted", "random"])
def test_retry_on_another_member_hides_a_dead_member_and_its_circuit_opens(policy: str) -> None:
    circuit = CircuitSettings(failures=3, window_s=10.0, cooldown_s=30.0)
    group = make_group(policy, circuit=circuit)
    landed, failed_dials = [], 0
    for step in range(300):
        where, failures = _serve(group, {"m1"}, now=step * 0.01)
        assert where is not None  # no visitor sees an error
        landed.append(where)
        failed_dials += failures
    assert "m1" not in landed
    assert failed_dials == 3  # then the circuit keeps visitors off m1
    assert group.snapshot(3.0).members[1].circuit.state is CircuitState.OPEN


def test_hash_source_retry_goes_to_the_next_member_for_that_key() -> None:
    group = make_group("hash_source")
    owner = group.pick(0.0, key="203.0.113.7")
    assert owner is not None
    owner.failed(0.0)
    retry = group.pick(0.0, key="203.0.113.7", exclude={owner.member.member_id})
    assert retry is not None and retry.handle != owner.handle
    group.remove_member(owner.member.member_id)
    # Without the owner, the key lands where the retry went: HRW's second choice.
    again = group.pick(0.0, key="203.0.113.7")
    assert again is not None and again.handle == retry.handle


def test_excluding_every_member_gives_none() -> None:
    group = make_group()
    assert group.pick(0.0, exclude={"m0", "m1", "m2"}) is None


def test_health_stops_new_visitors_but_never_cuts_open_ones() -> None:
    group = make_group("round_robin")
    held = [group.pick(0.0) for _ in range(6)]
    assert group.set_health("m0", False)
    assert not group.set_health("m0", False)  # no change
    assert group.member("m0").open_visitors == 2
    for _ in range(10):
        visit = group.pick(0.0)
        assert visit is not None and visit.handle != "m0"
        visit.close()
    assert group.member("m0").open_visitors == 2  # still there
    for visit in held:
        assert visit is not None
        visit.close()
    assert group.snapshot(0.0).open_visitors == 0
    group.set_health("m0", True)
    assert {group.pick(0.0).handle for _ in range(3)} == {"m0", "m1", "m2"}  # type: ignore[union-attr]


def test_a_member_leaving_with_open_visits_lets_them_close() -> None:
    group = make_group("round_robin")
    visits = [group.pick(0.0) for _ in range(3)]
    gone = group.remove_member("m1")
    assert gone is not None and "m1" not in group and len(group) == 2
    assert group.remove_member("m1") is None
    for visit in visits:
        assert visit is not None
        visit.close()
    assert gone.open_visitors == 0
    handles = [group.pick(0.0).handle for _ in range(4)]  # type: ignore[union-attr]
    assert sorted(handles) == ["m0", "m0", "m2", "m2"]


def test_round_robin_stays_fair_when_a_member_before_the_cursor_leaves() -> None:
    group = make_group("round_robin", (1, 1, 1, 1))
    assert [group.pick(0.0).handle for _ in range(3)] == ["m0", "m1", "m2"]  # type: ignore[union-attr]
    group.remove_member("m0")
    assert [group.pick(0.0).handle for _ in range(3)] == ["m3", "m1", "m2"]  # type: ignore[union-attr]


def test_weight_0_drains_a_member_and_bad_weights_are_refused() -> None:
    group = make_group("weighted", (2, 1))
    group.set_weight("m0", 0)
    assert {group.pick(0.0).handle for _ in range(5)} == {"m1"}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="weight"):
        group.set_weight("m1", -1)
    with pytest.raises(ValueError, match="weight"):
        group.add_member("m9", "m9", weight=True)
    with pytest.raises(DuplicateMember, match="m1"):
        group.add_member("m1", "again")


def test_a_new_policy_on_reload_takes_effect_and_circuits_keep_their_state() -> None:
    group = make_group("round_robin", circuit=CircuitSettings(failures=1, cooldown_s=9.0))
    group.pick(0.0, exclude={"m1", "m2"}).failed(0.0)  # type: ignore[union-attr]
    group.update(
        GroupSettings(parse_policy("weighted"), CircuitSettings(failures=1, cooldown_s=9.0))
    )
    group.set_weight("m1", 3)
    counts = {"m1": 0, "m2": 0}
    for _ in range(8):
        visit = group.pick(1.0)
        assert visit is not None and visit.handle != "m0"
        counts[visit.handle] += 1
    assert counts == {"m1": 6, "m2": 2}
    assert group.snapshot(1.0).policy == "weighted"
    assert group.snapshot(1.0).members[0].circuit.state is CircuitState.OPEN


def test_snapshots_are_frozen_and_complete() -> None:
    group = make_group("hash_header:X-User", (2, 1))
    visit = group.pick(0.0, key="bob")
    assert visit is not None
    snap = group.snapshot(0.0)
    assert snap.name == "svc" and snap.policy == "hash_header:x-user"
    assert snap.picked_total == 1 and snap.open_visitors == 1
    member = next(m for m in snap.members if m.member_id == visit.handle)
    assert member.open_visitors == 1 and member.picked_total == 1 and member.available
    assert member.circuit.state is CircuitState.CLOSED and member.circuit.until is None
    assert [m.weight for m in snap.members] == [2, 1]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.members[0].weight = 5  # type: ignore[misc]
    visit.close()
    assert snap.open_visitors == 1  # a snapshot does not follow the live group


ops = st.lists(
    st.tuples(st.sampled_from(["pick", "ok", "fail", "close", "sick", "well"]), st.integers(0, 9)),
    max_size=100,
)


@settings(max_examples=200, deadline=None)
@given(steps=ops, policy=st.sampled_from(["round_robin", "least_connections", "weighted"]))
def test_open_visitor_counts_stay_exact_whatever_the_order_of_calls(
    steps: list[tuple[str, int]], policy: str
) -> None:
    group = make_group(policy, circuit=CircuitSettings(failures=2, window_s=5.0, cooldown_s=1.0))
    visits: list[Visit[str]] = []
    now = 0.0
    for action, index in steps:
        now += 0.25
        if action == "pick":
            visit = group.pick(now)
            if visit is not None:
                visits.append(visit)
        elif action in ("sick", "well"):
            group.set_health(f"m{index % 3}", action == "well")
        elif visits:
            visit = visits[index % len(visits)]
            if action == "ok":
                visit.succeeded(now)
            elif action == "fail":
                visit.failed(now)
            else:
                visit.close()
        live = {m.member_id: 0 for m in group.members}
        for visit in visits:
            if not visit.closed:
                live[visit.member.member_id] += 1
        assert live == {m.member_id: m.open_visitors for m in group.members}
