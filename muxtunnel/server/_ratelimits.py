"""The rate limits on new visitors of the server's service names (`server.services[]`'s
`rate_limit` and `per_source`): one `balance.VisitorLimiter` per name that has them.

A limiter outlives registrations (its counts are a name's, as its traffic is) and a reload that
drops its limits: it then admits everyone, and its counts of refusals stay for the metrics.
"""

from __future__ import annotations

from muxtunnel.balance.ratelimit import VisitorLimiter
from muxtunnel.group_status import AdmissionRow
from muxtunnel.model import ServicePolicy

__all__ = ["RateLimits"]


class RateLimits:
    """Service name -> its visitor limiter."""

    def __init__(self, policies: tuple[ServicePolicy, ...]) -> None:
        self.by_name: dict[str, VisitorLimiter] = {}
        self.update(policies)

    def of(self, name: str) -> VisitorLimiter | None:
        """The limiter of `name`, if it has limits in force (None: admit everyone)."""
        limiter = self.by_name.get(name)
        if limiter is None or (limiter.rate_limit is None and limiter.per_source is None):
            return None
        return limiter

    def update(self, policies: tuple[ServicePolicy, ...]) -> None:
        """Put the limits of (reloaded) policies in force; buckets keep their tokens."""
        by_name = {policy.name: policy for policy in policies}
        for name in self.by_name.keys() | by_name.keys():
            policy = by_name.get(name)
            rate, per_source = (policy.rate_limit, policy.per_source) if policy else (None, None)
            limiter = self.by_name.get(name)
            if limiter is not None:
                limiter.update(rate, per_source)
            elif rate is not None or per_source is not None:
                self.by_name[name] = VisitorLimiter(name, rate, per_source)

    def rows(self) -> tuple[AdmissionRow, ...]:
        """Every limiter's counts, by name."""
        snapshots = (limiter.snapshot() for _, limiter in sorted(self.by_name.items()))
        return tuple(
            AdmissionRow(s.service, s.admitted_total, dict(s.refused), s.sources_tracked)
            for s in snapshots
        )
