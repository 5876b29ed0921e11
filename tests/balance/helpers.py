"""Builders shared by the balance tests."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from muxtunnel.balance import CircuitSettings, Group, GroupSettings, parse_policy


def make_group(
    policy: str = "round_robin",
    weights: Sequence[int] = (1, 1, 1),
    *,
    circuit: CircuitSettings | None = None,
    seed: int = 1,
) -> Group[str]:
    """A group of members `m0`, `m1`, ... whose handle is their id."""
    settings = GroupSettings(parse_policy(policy), circuit or CircuitSettings())
    group: Group[str] = Group("svc", settings, rng=random.Random(seed))
    for index, weight in enumerate(weights):
        group.add_member(f"m{index}", f"m{index}", weight=weight)
    return group


def pick_many(group: Group[str], count: int, *, now: float = 0.0) -> Counter[str]:
    """`count` short visitors (each closed at once): how many each member got."""
    got: Counter[str] = Counter()
    for _ in range(count):
        visit = group.pick(now)
        assert visit is not None
        got[visit.handle] += 1
        visit.succeeded(now)
        visit.close()
    return got


def shares(counts: Counter[str], total: int) -> dict[str, float]:
    """Each member's fraction of `total`, rounded for a readable figure."""
    return {name: round(n / total, 4) for name, n in sorted(counts.items())}
