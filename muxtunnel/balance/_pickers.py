"""The load-balancing policies: which usable member gets the next visitor.

Each picker sees every member in join order and a predicate saying which ones may be chosen
now (healthy, weight above 0, circuit allowing, not excluded by a retry); it never chooses one
the predicate refuses, and returns None when the predicate refuses them all.

- `RoundRobin`: the next usable member after the last one chosen, in join order. Weights other
  than 0 do not matter.
- `LeastConnections`: fewest open visitors per unit of weight (nginx's `least_conn`); ties go
  round robin, so equal members share a burst of short visitors evenly.
- `Random`: uniform over usable members, from a seedable generator.
- `Weighted`: nginx's smooth weighted round robin. Every pick adds each usable member's weight to
  its running total, chooses the highest total and takes the sum of weights off it: over any
  run of sum(weights) picks each member gets exactly its weight, interleaved (5:1:1 gives
  a a b a c a a, not a a a a a b c).
- `Rendezvous`: weighted rendezvous hashing (HRW). Each member scores a key with
  `weight / -ln(u)`, `u` uniform in (0, 1) from a hash of (member id, key); the highest score
  wins. A key's member changes only when that member stops being usable (or a new member
  outscores it), so when one of N members leaves only its keys move (about 1/N of them), and a
  key whose member comes back returns to it. The weighting is exact: member i wins a fraction
  w_i / sum(w) of keys (Schindelhauer and Schomaker, "Weighted distributed hash tables", 2005).
  Without a key (no such header) a visitor goes round robin.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from muxtunnel.balance.member import Member
from muxtunnel.balance.settings import Policy, PolicyKind

__all__ = ["Picker", "make_picker", "rendezvous_score"]

Usable = Callable[[Member[Any]], bool]


class Picker(Protocol):
    """Chooses a member; told when a member leaves so rotations stay fair."""

    def choose(
        self, members: Sequence[Member[Any]], usable: Usable, key: bytes | None
    ) -> Member[Any] | None: ...

    def removed(self, index: int) -> None: ...


class _Rotation:
    """A cursor over the members in join order, kept in place when one before it leaves."""

    def __init__(self) -> None:
        self._next = 0

    def _in_turn(self, members: Sequence[Member[Any]]) -> Iterator[tuple[int, Member[Any]]]:
        """Every member once, starting at the cursor."""
        count = len(members)
        for step in range(count):
            index = (self._next + step) % count
            yield index, members[index]

    def _chose(self, index: int, members: Sequence[Member[Any]]) -> Member[Any]:
        self._next = (index + 1) % len(members)
        return members[index]

    def removed(self, index: int) -> None:
        if index < self._next:
            self._next -= 1


class RoundRobin(_Rotation):
    """The next usable member after the last one chosen."""

    def choose(
        self, members: Sequence[Member[Any]], usable: Usable, key: bytes | None
    ) -> Member[Any] | None:
        for index, member in self._in_turn(members):
            if usable(member):
                return self._chose(index, members)
        return None


class LeastConnections(_Rotation):
    """Fewest open visitors per unit of weight; ties round robin."""

    def choose(
        self, members: Sequence[Member[Any]], usable: Usable, key: bytes | None
    ) -> Member[Any] | None:
        best: Member[Any] | None = None
        best_index = 0
        for index, member in self._in_turn(members):
            if not usable(member):
                continue
            # a/w < b/v without division: exact for integers.
            if (
                best is None
                or member.open_visitors * best.weight < best.open_visitors * member.weight
            ):
                best, best_index = member, index
        return None if best is None else self._chose(best_index, members)


class Random:
    """Uniform over the usable members."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(
        self, members: Sequence[Member[Any]], usable: Usable, key: bytes | None
    ) -> Member[Any] | None:
        candidates = [member for member in members if usable(member)]
        return self._rng.choice(candidates) if candidates else None

    def removed(self, index: int) -> None:
        pass


class Weighted:
    """nginx's smooth weighted round robin (ngx_http_upstream_get_peer)."""

    def choose(
        self, members: Sequence[Member[Any]], usable: Usable, key: bytes | None
    ) -> Member[Any] | None:
        total = 0
        best: Member[Any] | None = None
        for member in members:
            if not usable(member):
                continue
            member.swrr_current += member.weight
            total += member.weight
            if best is None or member.swrr_current > best.swrr_current:
                best = member
        if best is not None:
            best.swrr_current -= total
        return best

    def removed(self, index: int) -> None:
        pass


def rendezvous_score(member: Member[Any], key: bytes) -> float:
    """HRW score of `key` on `member`: higher wins."""
    digest = hashlib.blake2b(member.hash_prefix + key, digest_size=8).digest()
    # 53 bits: exactly representable, so x is uniform in [0, 1) and -log1p(-x) = -ln(1 - x).
    x = (int.from_bytes(digest, "big") >> 11) * 2.0**-53
    distance = -math.log1p(-x)
    return member.weight / distance if distance > 0 else math.inf


class Rendezvous:
    """Weighted rendezvous hashing: the usable member with the highest score for the key."""

    def __init__(self) -> None:
        self._keyless = RoundRobin()

    def choose(
        self, members: Sequence[Member[Any]], usable: Usable, key: bytes | None
    ) -> Member[Any] | None:
        if key is None:
            return self._keyless.choose(members, usable, None)
        best: Member[Any] | None = None
        best_score = -1.0
        for member in members:
            if not usable(member):
                continue
            score = rendezvous_score(member, key)
            # Ties (a 2**-53 event) go to the smaller id, so the choice never depends on order.
            if score > best_score or (
                score == best_score and best is not None and member.member_id < best.member_id
            ):
                best, best_score = member, score
        return best

    def removed(self, index: int) -> None:
        self._keyless.removed(index)


def make_picker(policy: Policy, rng: random.Random) -> Picker:
    """A fresh picker for `policy`."""
    kind = policy.kind
    if kind is PolicyKind.ROUND_ROBIN:
        return RoundRobin()
    if kind is PolicyKind.LEAST_CONNECTIONS:
        return LeastConnections()
    if kind is PolicyKind.RANDOM:
        return Random(rng)
    if kind is PolicyKind.WEIGHTED:
        return Weighted()
    return Rendezvous()
