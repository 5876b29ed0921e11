"""What a client session may use of the server that accepted it.

`Server` is the one implementation; sessions see it through this protocol so that they neither
import it (no circle) nor assign to its fields: they read the config in force (a reload reaches
live sessions), use the shared tables, and report through methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from mux import MuxStream, Session
from muxtunnel.admission import AdmissionGate
from muxtunnel.auth import TokenBook
from muxtunnel.balance.ratelimit import VisitorLimiter
from muxtunnel.control import MemberUpdate, Register, Visit
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ServerConfig
from muxtunnel.quota import Share
from muxtunnel.server._private import PrivateBook, RemoteVisit
from muxtunnel.server._registry import ActiveService, Registry
from muxtunnel.server._resume import ResumableSessions
from muxtunnel.sources import FailureLimiter

if TYPE_CHECKING:  # loaded only by a server with web ports, or in a cluster (redis)
    from muxtunnel.cluster import Claim, ClaimKey, Membership
    from muxtunnel.server._web import WebFront

__all__ = ["ClusterClaims", "Host"]


class ClusterClaims(Protocol):
    """What a session uses of its node's cluster (`_cluster.ClusterNode`): names taken
    cluster-wide before a registration is activated, and given up when it ends."""

    def keys_for(self, request: Register) -> list[ClaimKey]:
        """The names a registration takes cluster-wide."""
        ...

    async def claim(
        self, request: Register, session_id: int, keys: Sequence[ClaimKey], client: str = ""
    ) -> list[Claim | Membership]:
        """Take `keys` for this registration, all or none (`RegistrationError` if refused)."""
        ...

    async def check_visit(
        self, request: Visit, nonces: tuple[bytes, bytes], binding: bytes
    ) -> RemoteVisit | None:
        """A visit of a private service another node holds, checked there (None: refused)."""
        ...

    async def open_private(
        self, name: str, type: str, key: bytes, peer: tuple[str, int]
    ) -> MuxStream | None:
        """A stream to the node holding private service `name`, for one granted visitor."""
        ...

    async def picked_port(self, request: Register, client: str) -> int:
        """The public port a TCP/UDP group, or one client's service, asking for none has
        cluster-wide (0: none yet)."""
        ...

    async def client_port(self, request: Register, client: str, picked: int) -> int:
        """The port of `client`'s service picked at several nodes at once: the first
        session's node's pick (`picked` if that is this node, or none was seen in time)."""
        ...

    def has_port(self, leases: Sequence[Claim | Membership]) -> bool:
        """Do `leases` hold a public port?"""
        ...

    def port_keys(self, service: ActiveService, port: int = 0) -> list[ClaimKey]:
        """The key of the port a service's socket was bound on (or of `port`, of its type)."""
        ...

    def hold(self, leases: Sequence[Claim | Membership], service: ActiveService) -> None:
        """`leases` belong to `service` now."""
        ...

    async def release(self, leases: Sequence[Claim | Membership]) -> None:
        """Give the names up (never raises)."""
        ...

    async def ended(self, service: ActiveService) -> None:
        """`service` ended: its names are free cluster-wide again."""
        ...


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
    def private(self) -> PrivateBook:
        """Visitor keys and grants of private services."""
        ...

    @property
    def web(self) -> WebFront | None:
        """The shared web ports (None: the server serves no http/https services)."""
        ...

    @property
    def cluster(self) -> ClusterClaims | None:
        """This node's place in a cluster (None: a single server)."""
        ...

    @property
    def visitors(self) -> Visitors:
        """TCP visitors in flight, all sessions (each service's tracker counts into it)."""
        ...

    @property
    def refusals(self) -> Refusals:
        """Every refusal of the server, by reason (counted for the metrics, logged doubling)."""
        ...

    @property
    def resumable(self) -> ResumableSessions:
        """Sessions that may go on over a new carrier, by id."""
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

    async def close_service(self, service: ActiveService, reason: str) -> None:
        """Close a live service (its visitors too) and tell its client why."""
        ...

    def visitor_limiter(self, name: str) -> VisitorLimiter | None:
        """The rate limits on new visitors of a service name (None: it has none)."""
        ...

    # --- load-balancing groups (`_groups.Groups`) ---

    def is_group(self, name: str) -> bool:
        """Is `name` a live load-balancing group?"""
        ...

    def group_proof_ok(
        self, request: Register, nonces: tuple[bytes, bytes], binding: bytes
    ) -> bool:
        """Does a member's registration prove its group's token (if the group has one)?"""
        ...

    async def join_group(
        self,
        session: Session,
        session_id: int,
        client_name: str,
        request: Register,
        key: bytes,
        shares: tuple[Share, Share],
    ) -> ActiveService:
        """A member's registration, in its group (`RegistrationError` if refused): `key` is the
        one its client proved (the group name's), `shares` its session's streams and
        compression memory for it."""
        ...

    def leave_group(self, service: ActiveService) -> None:
        """A member's registration ended: it leaves its group, its visitors are cut."""
        ...

    def update_member(self, service: ActiveService, update: MemberUpdate) -> None:
        """A member's client reported its health or weight."""
        ...
