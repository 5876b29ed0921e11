"""The health of a member's target, from the results of its checks (pure: no I/O, no clock).

Rules: the state is unknown until the first check answers, which decides it at once (a member
learns its target's state within one check of starting, so it can say so when it registers).
After that, `unhealthy_after` failed checks in a row turn a healthy target unhealthy and
`healthy_after` successes in a row turn it healthy again; any other result only moves the
counters. Each transition is returned once, as a `HealthChange`.
"""

from __future__ import annotations

from dataclasses import dataclass

from muxtunnel.balance.snapshot import HealthSnapshot

__all__ = ["HealthChange", "HealthTracker"]


@dataclass(frozen=True, slots=True)
class HealthChange:
    """The target became healthy or unhealthy; `detail` is what the deciding check saw."""

    healthy: bool
    previous: bool | None
    detail: str


class HealthTracker:
    """Consecutive results to healthy / unhealthy transitions."""

    def __init__(self, unhealthy_after: int, healthy_after: int) -> None:
        if unhealthy_after < 1 or healthy_after < 1:
            raise ValueError("unhealthy_after and healthy_after must be at least 1")
        self.unhealthy_after = unhealthy_after
        self.healthy_after = healthy_after
        self.healthy: bool | None = None
        self.consecutive_ok = 0
        self.consecutive_failed = 0
        self.checks_total = 0
        self.changes_total = 0
        self.last_detail = ""

    def observe(self, ok: bool, detail: str = "") -> HealthChange | None:
        """One check's result; the transition it causes, if any."""
        self.checks_total += 1
        self.last_detail = detail
        if ok:
            self.consecutive_ok += 1
            self.consecutive_failed = 0
        else:
            self.consecutive_failed += 1
            self.consecutive_ok = 0
        previous = self.healthy
        if previous is None:
            target: bool | None = ok
        elif previous and self.consecutive_failed >= self.unhealthy_after:
            target = False
        elif not previous and self.consecutive_ok >= self.healthy_after:
            target = True
        else:
            target = previous
        if target == previous:
            return None
        self.healthy = target
        self.changes_total += 1
        return HealthChange(healthy=ok, previous=previous, detail=detail)

    def snapshot(self) -> HealthSnapshot:
        """The tracker now."""
        return HealthSnapshot(
            healthy=self.healthy,
            consecutive_ok=self.consecutive_ok,
            consecutive_failed=self.consecutive_failed,
            checks_total=self.checks_total,
            changes_total=self.changes_total,
            last_detail=self.last_detail,
        )
