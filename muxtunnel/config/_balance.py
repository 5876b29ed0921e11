"""The load-balancing keys: a client service's `group` and what goes with it, and the
`server.services[]` keys that say how a group picks members and how visitors are rate limited.

The values are the engine's own settings types (`muxtunnel.balance.settings`), whose checks say
what is wrong; they are reported here against the key's file and line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from muxtunnel.balance.settings import (
    CircuitSettings,
    HealthSettings,
    PerSourceLimit,
    RateLimit,
    parse_policy,
)
from muxtunnel.config import _values as v
from muxtunnel.config._tree import Map, Node, check_keys, fail, present, string
from muxtunnel.model import MAX_WEIGHT, GroupSpec
from muxtunnel.specs import validate_service_name

__all__ = ["GROUP_KEYS", "POLICY_KEYS", "group_spec", "policy_fields"]

#: Keys of a client service entry that make it a group member.
GROUP_KEYS = ("group", "group_token", "weight", "health")
#: Keys of a `server.services[]` entry about groups and rate limits.
POLICY_KEYS = ("group_token", "lb", "rate_limit", "per_source", "circuit")

T = TypeVar("T")
_Readers = Mapping[str, Callable[[Node, Mapping[str, str]], object]]
_HEALTH: _Readers = {
    "type": string,
    "path": string,
    "interval_s": v.positive,
    "timeout_s": v.positive,
    "unhealthy_after": v.count,
    "healthy_after": v.count,
}


def _section(
    node: Node,
    env: Mapping[str, str],
    build: Callable[..., T],
    readers: _Readers,
    required: tuple[str, ...] = (),
) -> T:
    """A mapping of `readers`' keys, given to `build` (whose `ValueError` is reported)."""
    section = v.entry(node)
    check_keys(section, list(readers))
    for key in required:
        if present(section, key) is None:
            fail(section, f"missing required key {key!r}")
    values = v.fields(section, readers, env)
    try:
        return build(**values)
    except ValueError as exc:
        fail(section, str(exc))


def group_spec(entry: Map, env: Mapping[str, str]) -> GroupSpec | None:
    """`group`, `group_token`, `weight` and `health` of one `client.services[]` entry."""
    name_node = present(entry, "group")
    if name_node is None:
        for key in GROUP_KEYS[1:]:
            if found := present(entry, key):
                fail(found, f"{key} is for members of a load-balancing group: set 'group' too")
        return None
    fields: dict[str, Any] = {}
    if found := present(entry, "group_token"):
        fields["token"] = v.token(found, env)
    if found := present(entry, "weight"):
        fields["weight"] = v.integer(found, env, 0, MAX_WEIGHT)
    if found := present(entry, "health"):
        fields["health"] = _section(found, env, HealthSettings, _HEALTH)
    name = v.parsed(name_node, validate_service_name, string(name_node, env))
    return GroupSpec(name, **fields)


def policy_fields(entry: Map, env: Mapping[str, str]) -> dict[str, Any]:
    """The group and rate-limit keys of one `server.services[]` entry, as `ServicePolicy`
    fields."""
    fields: dict[str, Any] = {}
    if found := present(entry, "group_token"):
        fields["group_token"] = v.token(found, env)
    if found := present(entry, "lb"):
        fields["lb"] = v.parsed(found, parse_policy, string(found, env))
    if found := present(entry, "rate_limit"):
        fields["rate_limit"] = _section(
            found, env, RateLimit, {"new_per_s": v.positive, "burst": v.count}, ("new_per_s",)
        )
    if found := present(entry, "per_source"):
        fields["per_source"] = _section(
            found, env, PerSourceLimit, {"max_connections": v.count, "new_per_s": v.positive}
        )
    if found := present(entry, "circuit"):
        fields["circuit"] = _section(
            found,
            env,
            CircuitSettings,
            {"failures": v.count, "window_s": v.positive, "cooldown_s": v.positive},
        )
    return fields
