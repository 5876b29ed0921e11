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
"""

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
