"""Load-balancing groups: policies, circuit breakers, rate limits and health checks.

The engine is pure (time comes in as `now`, on the caller's monotonic clock) except the health
prober in `probe.py`, which connects to a member's local target.

Server side, per service name:
- `Group`: its members; `pick(now, key=..., exclude=...)` returns a `Visit` for a new visitor,
  on which the server reports `succeeded(now)` / `failed(now)` / `close()`.
- `VisitorLimiter`: `admit(source, now)` returns an `Admission` (release it) or a `Refusal`.

Client side, per service with a `health:` key:
- `HealthMonitor(settings, make_probe(settings, host, port), on_change)`, whose `run()` checks
  the target and awaits `on_change(HealthChange)` on every change.

Status: `Group.snapshot(now)`, `VisitorLimiter.snapshot()`, `HealthMonitor.snapshot()` give
frozen dataclasses (`snapshot.py`).

Each name here loads its module on first use (PEP 562): the resolved configuration
(`muxtunnel.model`) holds the types of `settings.py`, and importing those must load neither the
rest of the engine nor the prober's h11 into every process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from muxtunnel.balance.circuit import PROBE_TIMEOUT_S, CircuitBreaker
    from muxtunnel.balance.group import DuplicateMember, Group
    from muxtunnel.balance.health import HealthChange, HealthTracker
    from muxtunnel.balance.member import Member, Visit
    from muxtunnel.balance.probe import (
        HealthMonitor,
        Probe,
        ProbeResult,
        make_probe,
        probe_http,
        probe_tcp,
    )
    from muxtunnel.balance.ratelimit import (
        Admission,
        Refusal,
        RefusalReason,
        TokenBucket,
        VisitorLimiter,
    )
    from muxtunnel.balance.settings import (
        CircuitSettings,
        GroupSettings,
        HealthSettings,
        PerSourceLimit,
        Policy,
        PolicyKind,
        RateLimit,
        parse_policy,
    )
    from muxtunnel.balance.snapshot import (
        CircuitSnapshot,
        CircuitState,
        GroupSnapshot,
        HealthSnapshot,
        LimiterSnapshot,
        MemberSnapshot,
    )

__all__ = [
    "PROBE_TIMEOUT_S",
    "Admission",
    "CircuitBreaker",
    "CircuitSettings",
    "CircuitSnapshot",
    "CircuitState",
    "DuplicateMember",
    "Group",
    "GroupSettings",
    "GroupSnapshot",
    "HealthChange",
    "HealthMonitor",
    "HealthSettings",
    "HealthSnapshot",
    "HealthTracker",
    "LimiterSnapshot",
    "Member",
    "MemberSnapshot",
    "PerSourceLimit",
    "Policy",
    "PolicyKind",
    "Probe",
    "ProbeResult",
    "RateLimit",
    "Refusal",
    "RefusalReason",
    "TokenBucket",
    "Visit",
    "VisitorLimiter",
    "make_probe",
    "parse_policy",
    "probe_http",
    "probe_tcp",
]

_MODULES = {
    "circuit": ("PROBE_TIMEOUT_S", "CircuitBreaker"),
    "group": ("DuplicateMember", "Group"),
    "health": ("HealthChange", "HealthTracker"),
    "member": ("Member", "Visit"),
    "probe": ("HealthMonitor", "Probe", "ProbeResult", "make_probe", "probe_http", "probe_tcp"),
    "ratelimit": ("Admission", "Refusal", "RefusalReason", "TokenBucket", "VisitorLimiter"),
    "settings": (
        "CircuitSettings", "GroupSettings", "HealthSettings", "PerSourceLimit", "Policy",
        "PolicyKind", "RateLimit", "parse_policy",
    ),
    "snapshot": (
        "CircuitSnapshot", "CircuitState", "GroupSnapshot", "HealthSnapshot", "LimiterSnapshot",
        "MemberSnapshot",
    ),
}  # fmt: skip
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
