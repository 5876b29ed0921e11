"""The settings of a group, its circuit breakers, its rate limits and a member's health check.

Field names are the configuration keys of the contract (`lb`, `rate_limit: {new_per_s, burst}`,
`per_source: {max_connections, new_per_s}`, `circuit: {failures, window_s, cooldown_s}`,
`health: {type, path, interval_s, timeout_s, unhealthy_after, healthy_after}`), so a config loader
maps YAML onto them one to one. Every constructor validates and raises `ValueError` with a message
meant for the user; the loader adds the file and key path in front.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = [
    "DEFAULT_CIRCUIT",
    "DEFAULT_POLICY",
    "CircuitSettings",
    "GroupSettings",
    "HealthSettings",
    "PerSourceLimit",
    "Policy",
    "PolicyKind",
    "RateLimit",
    "parse_policy",
]


class PolicyKind(StrEnum):
    """How a group picks a member for a new visitor."""

    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    RANDOM = "random"
    WEIGHTED = "weighted"
    HASH_SOURCE = "hash_source"
    HASH_HEADER = "hash_header"


# RFC 9110 section 5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_POLICY_NAMES = ", ".join(kind.value for kind in PolicyKind if kind is not PolicyKind.HASH_HEADER)


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed `lb:` value. `header` is the lower-cased header name of `hash_header:NAME`."""

    kind: PolicyKind = PolicyKind.ROUND_ROBIN
    header: str | None = None

    def __post_init__(self) -> None:
        if (self.kind is PolicyKind.HASH_HEADER) != (self.header is not None):
            raise ValueError("a header name goes with hash_header, and only with it")
        if self.header is not None and (
            not _TOKEN.fullmatch(self.header) or self.header != self.header.lower()
        ):
            raise ValueError(f"invalid header name {self.header!r}")

    @property
    def hashes(self) -> bool:
        """True when picks follow a key (source address or header), so keys stay on a member."""
        return self.kind in (PolicyKind.HASH_SOURCE, PolicyKind.HASH_HEADER)

    @property
    def needs_http(self) -> bool:
        """True for `hash_header`: only an HTTP service has headers to hash."""
        return self.kind is PolicyKind.HASH_HEADER

    def __str__(self) -> str:
        return f"hash_header:{self.header}" if self.header is not None else self.kind.value


DEFAULT_POLICY = Policy()


def parse_policy(text: str) -> Policy:
    """Parse an `lb:` value: a policy name, or `hash_header:NAME`."""
    name, colon, argument = text.strip().partition(":")
    name = name.strip()
    if name == PolicyKind.HASH_HEADER:
        header = argument.strip()
        if not colon or not header:
            raise ValueError("hash_header needs a header name, e.g. hash_header:X-User")
        if not _TOKEN.fullmatch(header):
            raise ValueError(f"invalid header name {header!r} in {text!r}")
        return Policy(PolicyKind.HASH_HEADER, header.lower())
    try:
        kind = PolicyKind(name)
    except ValueError:
        raise ValueError(
            f"unknown load-balancing policy {text!r}; use one of {_POLICY_NAMES}"
            " or hash_header:NAME"
        ) from None
    if colon:
        raise ValueError(f"{name} takes no argument (got {text!r})")
    return Policy(kind)


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number (got {value!r})")


def _at_least_one(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1 (got {value!r})")


#: Ejection cap, in multiples of `cooldown_s`: Envoy's outlier detection defaults
#: (base_ejection_time 30 s, max_ejection_time 300 s) cap the growth at 10 times the base.
COOLDOWN_CAP_FACTOR = 10


@dataclass(frozen=True, slots=True)
class CircuitSettings:
    """`failures` dial failures within `window_s` open a member's circuit for `cooldown_s`.

    Defaults from Envoy's outlier detection: 5 consecutive failures (`consecutive_5xx`),
    analysed over 10 s (`interval`, also nginx's `fail_timeout`), ejected 30 s at first
    (`base_ejection_time`), growing on repeat up to `max_cooldown_s` (`max_ejection_time` 300 s).
    """

    failures: int = 5
    window_s: float = 10.0
    cooldown_s: float = 30.0
    max_cooldown_s: float = field(default=0.0)  # 0: COOLDOWN_CAP_FACTOR x cooldown_s

    def __post_init__(self) -> None:
        _at_least_one("circuit.failures", self.failures)
        _positive("circuit.window_s", self.window_s)
        _positive("circuit.cooldown_s", self.cooldown_s)
        if self.max_cooldown_s == 0:
            object.__setattr__(self, "max_cooldown_s", self.cooldown_s * COOLDOWN_CAP_FACTOR)
        _positive("circuit.max_cooldown_s", self.max_cooldown_s)
        if self.max_cooldown_s < self.cooldown_s:
            raise ValueError("circuit.max_cooldown_s must be at least circuit.cooldown_s")


DEFAULT_CIRCUIT = CircuitSettings()


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """What the server's configuration says about one group: its policy and circuit breaker."""

    policy: Policy = field(default_factory=Policy)
    circuit: CircuitSettings = DEFAULT_CIRCUIT


def _default_burst(rate_per_s: float) -> int:
    """One second's worth of the rate (at least 1): nginx's `limit_req` without `burst` allows a
    single request above the rate, which refuses the normal jitter of a client opening a few
    connections at once; one second of slack does not."""
    return max(1, math.ceil(rate_per_s))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """`rate_limit: {new_per_s, burst}`: new visitors of a service, all sources together.

    `burst` is how many may arrive at once after a quiet spell; left out (or 0) it is one
    second's worth of `new_per_s`.
    """

    new_per_s: float
    burst: int = 0

    def __post_init__(self) -> None:
        _positive("rate_limit.new_per_s", self.new_per_s)
        if self.burst == 0:
            object.__setattr__(self, "burst", _default_burst(self.new_per_s))
        _at_least_one("rate_limit.burst", self.burst)


@dataclass(frozen=True, slots=True)
class PerSourceLimit:
    """`per_source: {max_connections, new_per_s}`: what one source address may hold and open.

    The burst of `new_per_s` is one second's worth of it (the contract has no key for it).
    """

    max_connections: int | None = None
    new_per_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_connections is None and self.new_per_s is None:
            raise ValueError("per_source needs max_connections, new_per_s or both")
        if self.max_connections is not None:
            _at_least_one("per_source.max_connections", self.max_connections)
        if self.new_per_s is not None:
            _positive("per_source.new_per_s", self.new_per_s)

    @property
    def burst(self) -> int:
        """The bucket size of `new_per_s`."""
        return _default_burst(self.new_per_s) if self.new_per_s is not None else 0


HealthType = Literal["tcp", "http"]
# A request target we send as is: absolute path, visible ASCII, no spaces.
_PATH = re.compile(r"/[!-~]*")


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """`health:` of a client service: how its `up` checks the local target.

    Defaults: interval 10 s and timeout 3 s are frp's (`healthCheck.intervalSeconds`,
    `timeoutSeconds`); 3 failures down and 2 successes up are HAProxy's `fall` and `rise`.
    A member leaves the rotation at most `interval_s * unhealthy_after + timeout_s` after its
    target stops answering (the last check may need its whole timeout to fail).
    """

    type: HealthType = "tcp"
    path: str = "/"
    interval_s: float = 10.0
    timeout_s: float = 3.0
    unhealthy_after: int = 3
    healthy_after: int = 2

    def __post_init__(self) -> None:
        if self.type not in ("tcp", "http"):
            raise ValueError(f"health.type must be tcp or http (got {self.type!r})")
        if self.type == "tcp" and self.path != "/":
            raise ValueError("health.path applies to http checks only")
        if not isinstance(self.path, str) or not _PATH.fullmatch(self.path):
            raise ValueError(
                f"health.path must start with / and hold no spaces or control characters"
                f" (got {self.path!r})"
            )
        _positive("health.interval_s", self.interval_s)
        _positive("health.timeout_s", self.timeout_s)
        if self.timeout_s > self.interval_s:
            raise ValueError("health.timeout_s must not exceed health.interval_s")
        _at_least_one("health.unhealthy_after", self.unhealthy_after)
        _at_least_one("health.healthy_after", self.healthy_after)

    @property
    def detection_bound_s(self) -> float:
        """Longest time from a target going down to this member reported unhealthy."""
        return self.interval_s * self.unhealthy_after + self.timeout_s
