"""The load-balancing engine per visitor: one pick (and its visit closed), one admission.

Every new TCP connection, UDP flow or HTTP request of a grouped service pays one pick, and one
admission when the service has rate limits; these say what that costs with 3 and 30 members.
"""

from __future__ import annotations

import random

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from muxtunnel.balance import (
    Admission,
    Group,
    GroupSettings,
    PerSourceLimit,
    RateLimit,
    VisitorLimiter,
    parse_policy,
)

POLICIES = ["round_robin", "least_connections", "random", "weighted", "hash_source"]
PICKS = 10_000
KEYS = [f"198.51.{n >> 8 & 255}.{n & 255}" for n in range(PICKS)]


def _group(policy: str, members: int) -> Group[int]:
    group: Group[int] = Group("bench", GroupSettings(parse_policy(policy)), rng=random.Random(1))
    for n in range(members):
        group.add_member(f"member-{n}", n, weight=1 + n % 3)
    return group


def _picks(group: Group[int]) -> None:
    for key in KEYS:
        visit = group.pick(0.0, key=key)
        assert visit is not None
        visit.succeeded(0.0)
        visit.close()


@pytest.mark.parametrize("members", [3, 30])
@pytest.mark.parametrize("policy", POLICIES)
def test_pick(benchmark: BenchmarkFixture, figures: list[str], policy: str, members: int) -> None:
    group = _group(policy, members)
    benchmark.pedantic(_picks, args=(group,), rounds=5, iterations=1, warmup_rounds=1)
    per_pick_us = benchmark.stats.stats.mean / PICKS * 1e6
    figures.append(f"balance pick  {policy:<17} {members:>2} members: {per_pick_us:6.2f} us")


def _admissions(limiter: VisitorLimiter) -> None:
    for n, key in enumerate(KEYS):
        result = limiter.admit(key, n * 1e-4)
        assert isinstance(result, Admission)
        result.release()


def test_admit(benchmark: BenchmarkFixture, figures: list[str]) -> None:
    limiter = VisitorLimiter(
        "bench", RateLimit(new_per_s=1e9, burst=10**9), PerSourceLimit(10, new_per_s=100)
    )
    benchmark.pedantic(_admissions, args=(limiter,), rounds=5, iterations=1, warmup_rounds=1)
    per_admit_us = benchmark.stats.stats.mean / PICKS * 1e6
    figures.append(f"balance admit (service + per-source limits): {per_admit_us:6.2f} us")
