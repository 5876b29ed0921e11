"""What a client session may use of the server that accepted it.

`Server` is the one implementation; sessions see it through this protocol so that they neither
import it (no circle) nor assign to its fields: they read the config in force (a reload reaches
live sessions), use the shared tables, and report through methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from muxtunnel.admission import AdmissionGate
from muxtunnel.auth import FailureLimiter, TokenBook
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ServerConfig
from muxtunnel.server._registry import Registry

if TYPE_CHECKING:  # loaded only by a server with web ports
    from muxtunnel.server._web import WebFront

__all__ = ["Host"]


class Host(Protocol):
    """The server, as its sessions see it."""

    @property
    def config(self) -> ServerConfig:
        """The config in force now."""
        ...

    @property
    def tokens(self) -> TokenBook:
        """The service tokens in force now."""
        ...

    @property
    def failures(self) -> FailureLimiter:
        """Failed authentications per source address."""
        ...

    @property
    def preauth(self) -> AdmissionGate:
        """Connections that have not authenticated yet."""
        ...

    @property
    def registry(self) -> Registry:
        """Live services of all sessions."""
        ...

    @property
    def web(self) -> WebFront | None:
        """The shared web ports (None: the server serves no http/https services)."""
        ...

    @property
    def visitors(self) -> Visitors:
        """TCP visitors in flight, all sessions (each service's tracker counts into it)."""
        ...

    @property
    def refusals(self) -> Refusals:
        """Every refusal of the server, by reason (counted for the metrics, logged doubling)."""
        ...

    def admit_session(self, source: str) -> bool:
        """Count one more authenticated session from `source`; False if it has its maximum."""
        ...

    def prune(self) -> None:
        """Forget the per-name state (traffic, limits) of names gone for longer than a while."""
        ...

    def traffic_of(self, name: str) -> ServiceTraffic:
        """Byte totals and live meters of a service name (kept across registrations)."""
        ...

    def limiter_of(self, name: str) -> ServiceLimiter:
        """The limits enforced on a service name (kept across registrations)."""
        ...

    def auth_failed(self, source: str, now: float) -> None:
        """Count a failed authentication from `source`."""
        ...
