"""`pick_node`: which node's member takes a web request of a group spanning nodes."""

from __future__ import annotations

import random
from collections import Counter

from muxtunnel.balance.settings import PolicyKind
from muxtunnel.server._spread import pick_node


def test_in_turn_each_node_gets_its_members_share() -> None:
    counts = {"b": 1, "a": 2}
    picked = [pick_node(counts, PolicyKind.ROUND_ROBIN, None, turn) for turn in range(30)]
    assert Counter(picked) == {"a": 20, "b": 10}
    assert picked[:3] == ["a", "a", "b"]  # node id order: the same slots on every node


def test_a_hash_key_goes_to_one_node_whatever_node_asks() -> None:
    counts = {"c": 1, "a": 1, "b": 1}
    for key in (b"10.0.0.1", "10.0.0.2", b"session=42"):
        picked = {pick_node(dict(counts), PolicyKind.HASH_SOURCE, key, turn) for turn in range(5)}
        assert len(picked) == 1, key
    spread = {pick_node(counts, PolicyKind.HASH_SOURCE, f"10.0.0.{i}", 0) for i in range(50)}
    assert spread == {"a", "b", "c"}


def test_random_and_no_member() -> None:
    rng = random.Random(7)
    picked = Counter(
        pick_node({"a": 1, "b": 3}, PolicyKind.RANDOM, None, 0, rng) for _ in range(400)
    )
    assert set(picked) == {"a", "b"} and picked["b"] > picked["a"]
    assert pick_node({}, PolicyKind.ROUND_ROBIN, None, 0) is None
    assert pick_node({"a": 0}, PolicyKind.ROUND_ROBIN, None, 0) is None
