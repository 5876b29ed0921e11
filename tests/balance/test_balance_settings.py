"""Parsing of `lb:` values and validation of every settings block, with the user's message."""

from __future__ import annotations

import pytest

from muxtunnel.balance import (
    CircuitSettings,
    HealthSettings,
    PerSourceLimit,
    Policy,
    PolicyKind,
    RateLimit,
    parse_policy,
)


@pytest.mark.parametrize(
    ("text", "kind", "header"),
    [
        ("round_robin", PolicyKind.ROUND_ROBIN, None),
        ("least_connections", PolicyKind.LEAST_CONNECTIONS, None),
        ("random", PolicyKind.RANDOM, None),
        ("weighted", PolicyKind.WEIGHTED, None),
        (" hash_source ", PolicyKind.HASH_SOURCE, None),
        ("hash_header:X-User", PolicyKind.HASH_HEADER, "x-user"),
        ("hash_header: X-Forwarded-For", PolicyKind.HASH_HEADER, "x-forwarded-for"),
    ],
)
def test_every_policy_parses(text: str, kind: PolicyKind, header: str | None) -> None:
    policy = parse_policy(text)
    assert policy == Policy(kind, header)
    assert parse_policy(str(policy)) == policy
    assert policy.hashes == (kind in (PolicyKind.HASH_SOURCE, PolicyKind.HASH_HEADER))
    assert policy.needs_http == (kind is PolicyKind.HASH_HEADER)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("roundrobin", "unknown load-balancing policy 'roundrobin'; use one of round_robin"),
        ("", "unknown load-balancing policy ''"),
        ("hash_header", "hash_header needs a header name, e.g. hash_header:X-User"),
        ("hash_header:", "hash_header needs a header name"),
        ("hash_header:X User", "invalid header name 'X User'"),
        ("hash_header:X:Y", "invalid header name 'X:Y'"),
        ("random:3", "random takes no argument"),
        ("hash_source:x", "hash_source takes no argument"),
    ],
)
def test_bad_policies_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_policy(text)


def test_a_policy_built_by_hand_is_checked_too() -> None:
    with pytest.raises(ValueError, match="header name goes with hash_header"):
        Policy(PolicyKind.ROUND_ROBIN, "x-user")
    with pytest.raises(ValueError, match="header name goes with hash_header"):
        Policy(PolicyKind.HASH_HEADER)
    with pytest.raises(ValueError, match="invalid header name"):
        Policy(PolicyKind.HASH_HEADER, "X-User")  # not lower case


def test_circuit_defaults_and_cap() -> None:
    circuit = CircuitSettings()
    assert (circuit.failures, circuit.window_s, circuit.cooldown_s) == (5, 10.0, 30.0)
    assert circuit.max_cooldown_s == 300.0
    assert CircuitSettings(cooldown_s=2.0).max_cooldown_s == 20.0
    with pytest.raises(ValueError, match=r"circuit.failures must be a whole number"):
        CircuitSettings(failures=0)
    with pytest.raises(ValueError, match=r"circuit.window_s must be a positive number"):
        CircuitSettings(window_s=float("nan"))
    with pytest.raises(ValueError, match=r"circuit.cooldown_s must be a positive number"):
        CircuitSettings(cooldown_s=-1)
    with pytest.raises(ValueError, match="max_cooldown_s must be at least"):
        CircuitSettings(cooldown_s=10, max_cooldown_s=5)


def test_rate_limits() -> None:
    assert RateLimit(new_per_s=2.5).burst == 3  # one second's worth, rounded up
    assert RateLimit(new_per_s=0.2).burst == 1
    assert RateLimit(new_per_s=10, burst=40).burst == 40
    with pytest.raises(ValueError, match=r"rate_limit.new_per_s must be a positive number"):
        RateLimit(new_per_s=0)
    with pytest.raises(ValueError, match=r"rate_limit.burst must be a whole number"):
        RateLimit(new_per_s=1, burst=-2)
    assert PerSourceLimit(new_per_s=4).burst == 4
    assert PerSourceLimit(max_connections=3).burst == 0
    with pytest.raises(ValueError, match="per_source needs max_connections, new_per_s or both"):
        PerSourceLimit()
    with pytest.raises(ValueError, match=r"per_source.max_connections must be a whole number"):
        PerSourceLimit(max_connections=0)
    with pytest.raises(ValueError, match=r"per_source.new_per_s must be a positive number"):
        PerSourceLimit(new_per_s=float("inf"))


def test_health_settings() -> None:
    health = HealthSettings()
    assert (health.type, health.interval_s, health.timeout_s) == ("tcp", 10.0, 3.0)
    assert (health.unhealthy_after, health.healthy_after) == (3, 2)
    assert health.detection_bound_s == 33.0
    assert HealthSettings(type="http", path="/healthz?full=1").path == "/healthz?full=1"
    cases = [
        ({"type": "udp"}, "health.type must be tcp or http"),
        ({"path": "/x"}, "health.path applies to http checks only"),
        ({"type": "http", "path": "healthz"}, "health.path must start with /"),
        ({"type": "http", "path": "/a b"}, "health.path must start with /"),
        ({"interval_s": 0}, "health.interval_s must be a positive number"),
        ({"interval_s": 1, "timeout_s": 2}, "health.timeout_s must not exceed"),
        ({"unhealthy_after": 0}, "health.unhealthy_after must be a whole number"),
        ({"healthy_after": 1.5}, "health.healthy_after must be a whole number"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            HealthSettings(**fields)  # type: ignore[arg-type]
