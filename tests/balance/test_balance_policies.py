"""Distribution of visitors over members by each policy, and what no policy may ever pick."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.balance import Visit

from .helpers import make_group, pick_many, shares

POLICIES = ["round_robin", "least_connections", "random", "weighted", "hash_source"]


def _within(counts: Counter[str], expected: dict[str, float], tolerance: float) -> None:
    for name, want in expected.items():
        assert abs(counts[name] - want) <= tolerance * want, (name, counts, expected)


def test_round_robin_shares_3000_visitors_within_5_percent(figures: Any) -> None:
    group = make_group("round_robin")
    counts = pick_many(group, 3000)
    _within(counts, {"m0": 1000, "m1": 1000, "m2": 1000}, 0.05)
    figures.record("balance: round_robin 3000 picks", shares=shares(counts, 3000))


def test_round_robin_takes_turns_in_join_order() -> None:
    group = make_group("round_robin")
    order = []
    for _ in range(6):
        visit = group.pick(0.0)
        assert visit is not None
        order.append(visit.handle)
    assert order == ["m0", "m1", "m2", "m0", "m1", "m2"]


def test_weighted_3_1_1_within_5_percent_and_interleaved(figures: Any) -> None:
    group = make_group("weighted", (3, 1, 1))
    sequence = []
    for _ in range(3000):
        visit = group.pick(0.0)
        assert visit is not None
        sequence.append(visit.handle)
        visit.close()
    counts = Counter(sequence)
    _within(counts, {"m0": 1800, "m1": 600, "m2": 600}, 0.05)
    # Smooth: every run of sum(weights) picks holds each member exactly weight times.
    for start in range(0, 3000, 5):
        assert Counter(sequence[start : start + 5]) == {"m0": 3, "m1": 1, "m2": 1}
    assert sequence[:5] != ["m0", "m0", "m0", "m1", "m2"]  # not in bursts
    figures.record("balance: weighted 3:1:1 3000 picks", shares=shares(counts, 3000))


def test_random_is_roughly_uniform_with_a_fixed_seed(figures: Any) -> None:
    group = make_group("random", seed=20240611)
    counts = pick_many(group, 30000)
    # 5% of 10 000 is about 6 standard deviations of a fair draw, and the seed is fixed.
    _within(counts, {"m0": 10000, "m1": 10000, "m2": 10000}, 0.05)
    figures.record("balance: random 30000 picks", shares=shares(counts, 30000))


def test_least_connections_fills_the_least_loaded_members_first(figures: Any) -> None:
    group = make_group("least_connections")
    held: list[Visit[str]] = []
    # Uneven long-lived visitors: m0 holds 10, m1 holds 5, m2 none (m1 and m2 drained theirs).
    for name, count in (("m0", 10), ("m1", 5)):
        for _ in range(count):
            visit = group.pick(0.0, exclude={m for m in ("m0", "m1", "m2") if m != name})
            assert visit is not None and visit.handle == name
            held.append(visit)
    new: Counter[str] = Counter()
    for _ in range(30):
        visit = group.pick(0.0)
        assert visit is not None
        new[visit.handle] += 1
        held.append(visit)
    assert new == {"m0": 5, "m1": 10, "m2": 15}
    assert [m.open_visitors for m in group.members] == [15, 15, 15]
    # Short visitors on a level group take turns.
    short = pick_many(group, 300)
    assert short == {"m0": 100, "m1": 100, "m2": 100}
    figures.record("balance: least_connections 10/5/0 held + 30 new", new=dict(sorted(new.items())))


def test_least_connections_counts_per_unit_of_weight() -> None:
    group = make_group("least_connections", (2, 1))
    for _ in range(30):
        assert group.pick(0.0) is not None  # held open
    assert [m.open_visitors for m in group.members] == [20, 10]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 50)), min_size=1, max_size=120),
    weights=st.lists(st.integers(1, 4), min_size=1, max_size=5),
)
def test_least_connections_always_picks_a_least_loaded_member(
    ops: list[tuple[bool, int]], weights: list[int]
) -> None:
    group = make_group("least_connections", weights)
    open_visits: list[Visit[str]] = []
    for is_pick, index in ops:
        if is_pick or not open_visits:
            loads = {m.member_id: m.open_visitors / m.weight for m in group.members}
            visit = group.pick(0.0)
            assert visit is not None
            assert loads[visit.handle] == min(loads.values())
            open_visits.append(visit)
        else:
            open_visits.pop(index % len(open_visits)).close()
    assert sum(m.open_visitors for m in group.members) == len(open_visits)


member_states = st.lists(
    st.tuples(st.integers(0, 5), st.booleans()),  # (weight, healthy)
    min_size=1,
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from([*POLICIES, "hash_header:x-user"]),
    states=member_states,
    keys=st.lists(st.binary(max_size=8) | st.none(), min_size=1, max_size=30),
    excluded=st.sets(st.integers(0, 5)),
)
def test_no_policy_picks_a_weight_0_unhealthy_or_excluded_member(
    policy: str, states: list[tuple[int, bool]], keys: list[bytes | None], excluded: set[int]
) -> None:
    group = make_group(policy, [weight for weight, _ in states], seed=7)
    for index, (_, healthy) in enumerate(states):
        group.set_health(f"m{index}", healthy)
    exclude = {f"m{i}" for i in excluded}
    allowed = {
        f"m{i}" for i, (weight, healthy) in enumerate(states) if weight > 0 and healthy
    } - exclude
    for key in keys:
        visit = group.pick(0.0, key=key, exclude=exclude)
        if not allowed:
            assert visit is None
        else:
            assert visit is not None and visit.handle in allowed
            visit.close()


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 7), min_size=1, max_size=6), rounds=st.integers(1, 4))
def test_weighted_gives_each_member_exactly_its_weight_per_cycle(
    weights: list[int], rounds: int
) -> None:
    total = sum(weights)
    group = make_group("weighted", weights)
    for _ in range(rounds):
        counts = pick_many(group, total) if total else Counter()
        assert counts == {f"m{i}": w for i, w in enumerate(weights) if w}
    if total == 0:
        assert group.pick(0.0) is None


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_skips_an_unhealthy_member_and_comes_back_to_it(policy: str) -> None:
    group = make_group(policy)
    group.set_health("m1", False)
    keys = [f"127.0.0.{i}" for i in range(60)]
    for key in keys:
        visit = group.pick(0.0, key=key)
        assert visit is not None and visit.handle != "m1"
        visit.close()
    group.set_health("m1", True)
    seen = set()
    for key in keys:
        visit = group.pick(0.0, key=key)
        assert visit is not None
        seen.add(visit.handle)
        visit.close()
    assert "m1" in seen


def test_no_member_at_all_is_none_and_counted() -> None:
    group = make_group("round_robin", ())
    assert group.pick(0.0) is None
    assert group.pick(0.0) is None
    assert group.snapshot(0.0).unavailable_total == 2


def _random_sequence(seed: int) -> list[str]:
    group = make_group("random", seed=seed)
    sequence = []
    for _ in range(50):
        visit = group.pick(0.0)
        assert visit is not None
        sequence.append(visit.handle)
    return sequence


def test_random_policy_follows_its_seeded_generator() -> None:
    assert _random_sequence(5) == _random_sequence(5)
    assert _random_sequence(5) != _random_sequence(6)
