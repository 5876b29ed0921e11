"""A `listen` node in a cluster: its names in the shared registry, its peers, its mirrors.

What it does for its server (`Server.cluster`, None on a single server):

- at start, records the node (`NodeRecord`, leased) and serves its node-to-node port (the
  advertised address): peers' visitor streams for services held here (`serve_forwarded`);
- before a registration is activated, claims its names cluster-wide (`claim`: the service name,
  a fixed public port, its HTTP hosts and locations, or a group membership), all or nothing;
  a name held anywhere else is refused with the message a single server gives; a registry that
  cannot be reached refuses the registration (`registry_unavailable`, retryable by the client),
  while sessions and visitors already here carry on;
- renews every lease (`LeaseKeeper`) and releases a service's claims when it ends; a claim
  taken by another node meanwhile (after a partition) closes the local service;
- every sync interval reads who holds what and serves the names held elsewhere (`Mirror`),
  and writes the health of its group members that changed since (`_write_health`: at most
  one write per sync interval, however often a member flaps).

The registry is the only source of truth for ownership; mirrors are a cache of it, rebuilt at
every sync, and a visitor sent on a stale one is refused by the node that no longer holds it.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.abc
import structlog

from mux import MuxStream
from muxtunnel import control
from muxtunnel.cluster import (
    Claim,
    ClaimKey,
    ClaimKind,
    ClusterView,
    LeaseKeeper,
    Lost,
    Membership,
    NodeIdInUse,
    NodeRecord,
    Owner,
    RegistryError,
    open_store,
)
from muxtunnel.cluster_status import ClusterNodeRow, ClusterRow
from muxtunnel.control import Register, Visit
from muxtunnel.forward import guarded
from muxtunnel.model import WEB_TYPES, ClusterConfig
from muxtunnel.server._cluster_claims import client_port, health_changes, picked_port
from muxtunnel.server._cluster_plan import CLIENT_GROUP, Plan
from muxtunnel.server._cluster_private import VisitsElsewhere
from muxtunnel.server._cluster_setup import cluster_settings, peer_tls, secret
from muxtunnel.server._forwarded import serve_forwarded
from muxtunnel.server._mirror import Mirror, NodeServer
from muxtunnel.server._peers import PeerAcceptor, PeerLinks, cluster_key
from muxtunnel.server._private import RemoteVisit
from muxtunnel.server._registry import (
    ActiveService,
    ClusterError,
    RegistrationError,
)
from muxtunnel.server._services import pinned_ports
from muxtunnel.server._spread import WebRemote
from muxtunnel.server._web_names import claimed_hosts
from muxtunnel.specs import parse_host_port
from muxtunnel.transport import TransportError, listen_tcp

__all__ = ["REGISTRY_UNAVAILABLE", "ClusterError", "ClusterNode", "cluster_settings"]

log = structlog.get_logger("muxtunnel.cluster")

#: Error code of a registration refused because the registry cannot be reached (retryable).
REGISTRY_UNAVAILABLE = control.REGISTRY_UNAVAILABLE
#: How often the node reads who holds what. A second: a name registered on one node is served
#: by the others within about a second, and three nodes reading 1000 names each cost Redis
#: about a millisecond per read (SCAN + MGET).
SYNC_INTERVAL_MAX_S = 1.0
_WILDCARDS = ("0.0.0.0", "::", "")
_PORTS = ("tcp", "udp")


class ClusterNode:
    """This server's place in a cluster (see the module docstring)."""

    def __init__(self, server: NodeServer, cluster: ClusterConfig) -> None:
        self.server = server
        self.settings = settings = cluster_settings(server.config, cluster)
        self.node_id = settings.node_id
        self.store = open_store(settings)
        self.keeper = LeaseKeeper(self.store, lease_s=settings.lease_s, on_lost=self._lost)
        self.record = NodeRecord.new(self.node_id, settings.advertise)
        key = cluster_key(secret(server.config, cluster))
        mux, refusals = server.config.mux, server.refusals
        tls = peer_tls(server.config)
        self.links = PeerLinks(self.node_id, key, mux, refusals, tls=tls is not None)
        self.acceptor = PeerAcceptor(self.node_id, key, mux, refusals, self._serve_forwarded, tls)
        self.mirror = Mirror(server, self.links)
        self.sync_interval_s = min(SYNC_INTERVAL_MAX_S, settings.lease_s / 3)
        #: The last registry read (None until the first): status shows the whole cluster.
        self.view: ClusterView | None = None
        self.view_at: float | None = None
        self.sync_failures = 0
        self.sync_failures_in_row = 0
        #: Node id -> advertised address, from the last sync.
        self.addresses: dict[str, str] = {}
        #: Nodes with a session from here that the registry no longer lists, and since when.
        self._absent: dict[str, float] = {}
        #: Web requests to other nodes: routes they hold, a group's members on them.
        self.web = WebRemote(
            self.node_id, self.links, self.addresses, lambda name: server.groups.settings(name)
        )
        if server.web is not None:
            server.web.remote = self.web.open
            server.web.spread = self.web.spread
        self._held: dict[Claim | Membership, ActiveService] = {}
        self._by_service: dict[ActiveService, list[Claim | Membership]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        #: Visits here of private services other nodes hold.
        self.visits = VisitsElsewhere(
            self.node_id, self.links, self.addresses, server.refusals, self.store
        )

    # --- running ---

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Record the node, serve its peers' port, renew, sync; until cancelled."""
        host, port = parse_host_port(self.settings.advertise)
        bind = self.server.config.bind_host if self.server.config.bind_host in _WILDCARDS else host
        try:
            listener = await listen_tcp(bind, port, name="cluster peers",
                                        refusals=self.server.refusals)  # fmt: skip
        except TransportError as exc:
            raise ClusterError(f"the node-to-node port: {exc}") from None
        try:
            await self.keeper.register_node(self.record)
        except NodeIdInUse as exc:
            await listener.aclose()
            raise ClusterError(f"{exc} (give each node its own --node-id)") from None
        except RegistryError as exc:  # unreachable, or an error answer: keep trying
            self.keeper.hold([self.record])  # taken when the registry answers again
            log.warning("cluster registry unreachable at start; serving, retrying", error=str(exc))
        log.info("cluster node up", node=self.node_id, advertise=self.settings.advertise,
                 registry=self.store.description, lease_s=self.settings.lease_s)  # fmt: skip
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                # A revocation or a provider's presence here, told to nodes with its visitors.
                private = self.server.private
                private.on_remote_revoked = lambda *a: tg.start_soon(self.visits.tell_revoked, *a)
                private.on_remote_presence = lambda *a: tg.start_soon(self.visits.tell_presence, *a)
                await tg.start(self.links.run)
                await tg.start(self.mirror.run)
                tg.start_soon(self.keeper.run)
                tg.start_soon(listener.serve, self.acceptor.serve_carrier, tg)
                tg.start_soon(self._sync_loop)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                await self.keeper.release([self.record])
                await self.store.aclose()

    async def _sync_loop(self) -> None:
        while True:
            await self.sync_once()
            await anyio.sleep(self.sync_interval_s)

    async def sync_once(self) -> bool:
        """Read the registry and serve what other nodes hold; False if it did not answer."""
        await self._write_health()
        try:
            with anyio.fail_after(self.settings.timeout_s * 2):
                nodes = await self.store.nodes()
                holdings = await self.store.holdings()
        except (RegistryError, TimeoutError) as exc:
            self.sync_failures += 1
            self.sync_failures_in_row += 1
            self.server.refusals.refuse(
                "cluster_sync_failed", "cluster registry unreadable; keeping the last view",
                error=str(exc) or "timeout",
            )  # fmt: skip
            return False
        self.view = ClusterView.build(nodes, holdings)
        self.view_at = anyio.current_time()
        self.sync_failures_in_row = 0
        # A name or node missing for less than a lease may only be a registry that restarted
        # and is being filled again: its ports, routes and sessions stay until then.
        grace_s, now = self.settings.lease_s, anyio.current_time()
        listed = {record.node_id: record.advertise for record in nodes}
        for node_id in list(self.addresses):
            if node_id in listed:
                self._absent.pop(node_id, None)
            elif now - self._absent.setdefault(node_id, now) >= grace_s:
                del self._absent[node_id], self.addresses[node_id]
                self.links.forget(node_id)
        self.addresses.update(listed)
        plan = Plan.of(holdings, self.node_id, self.addresses)
        self.web.group_nodes = plan.group_nodes
        self.web.client_nodes = plan.client_nodes
        self.visits.holders = plan.holders
        self.mirror.sync(plan.wanted, grace_s)
        return True

    async def _write_health(self) -> None:
        """Members of groups here whose health changed: their leases carry the new value."""
        changes = health_changes(self._held, self.server.groups, anyio.current_time())
        if not changes:
            return
        for old, new in changes:
            service = self._held.pop(old)
            self._held[new] = service
            listed = self._by_service.get(service, [])
            self._by_service[service] = [new if lease == old else lease for lease in listed]
        log.info("group member health written to the registry",
                 members=[f"{new.group}/{new.member.holder}={'up' if new.healthy else 'down'}"
                          for _, new in changes])  # fmt: skip
        await self.keeper.update(changes)

    def row(self) -> ClusterRow:
        """This node and the cluster as last read, for status."""
        view, now = self.view, anyio.current_time()
        nodes: tuple[ClusterNodeRow, ...] = ()
        if view is not None:
            nodes = tuple(
                ClusterNodeRow(
                    node.node_id,
                    node.record.advertise if node.record else None,
                    node.record.started_at if node.record else None,
                    # A client's names held from several nodes show as each node's own.
                    tuple((str(key), owner.holder) for key, owner in node.claims)
                    + tuple(
                        (str(k), m.owner.holder)
                        for k, group, m in node.memberships
                        if group.startswith(CLIENT_GROUP)
                    ),
                    tuple(
                        (str(k), group, m.owner.holder)
                        for k, group, m in node.memberships
                        if not group.startswith(CLIENT_GROUP)
                    ),
                )
                for node in view.nodes
            )
        return ClusterRow(
            node_id=self.node_id,
            advertise=self.settings.advertise,
            registry=self.store.description,
            lease_s=self.settings.lease_s,
            registry_up=self.keeper.status().available and self.sync_failures_in_row == 0,
            view_age_s=None if self.view_at is None else now - self.view_at,
            peers_out=tuple(self.links.connected()),
            peers_in=tuple(sorted(self.acceptor.peers)),
            mirrored=tuple(self.mirror.ports),
            forwarded_total=self.mirror.forwarded_total,
            web_forwarded_total=self.web.forwarded_total,
            web_spread_total=self.web.spread_total,
            nodes=nodes,
        )

    # --- claims ---

    def keys_for(self, request: Register) -> list[ClaimKey]:
        """The names a registration takes cluster-wide before it is activated."""
        config = self.server.config
        name = request.group or request.service
        keys = [ClaimKey.service(name)]
        if request.type in WEB_TYPES:  # a group's hosts too: the group's on every node
            if config.http is None:
                return keys
            hosts = claimed_hosts(config, request, name)
            if request.type == "https":
                return keys + [ClaimKey.https(host) for host in hosts]
            locations = request.locations or ("/",)
            return keys + [ClaimKey.http(h, loc) for h in hosts for loc in locations]
        # Its port too, when fixed (a group's: the group's on every node).
        port = pinned_ports(config).get(name) or request.remote_port
        return keys + (
            [ClaimKey.port(request.type, port)] if port and request.type in _PORTS else []
        )

    async def picked_port(self, request: Register, client: str) -> int:
        """See `_cluster_claims.picked_port`; `RegistrationError` if the registry is down."""
        try:
            return await picked_port(self.store, self.server.config, request, client)
        except RegistryError as exc:
            raise self._unavailable(request, exc) from None

    async def client_port(self, request: Register, client: str, picked: int) -> int:
        """See `_cluster_claims.client_port`."""
        return await client_port(
            self.store, self.node_id, self.server.config, request, client, picked
        )

    @staticmethod
    def has_port(leases: Sequence[Claim | Membership]) -> bool:
        """Do `leases` hold a public port?"""
        return any(lease.key.kind in (ClaimKind.TCP_PORT, ClaimKind.UDP_PORT) for lease in leases)

    @staticmethod
    def port_keys(service: ActiveService, port: int = 0) -> list[ClaimKey]:
        """The key of the port a service's socket was bound on (or of `port`, of its type)."""
        return [ClaimKey.port(service.type, port or service.port)]

    async def claim(
        self, request: Register, session_id: int, keys: Sequence[ClaimKey], client: str = ""
    ) -> list[Claim | Membership]:
        """Take `keys` for this registration, all or none (`RegistrationError` if refused).
        `client`: the registering client's identity (`client_identity`), under which its
        sessions at several nodes hold the names together."""
        owner = Owner(self.node_id, f"{session_id}/{request.service}")
        leases: list[Claim | Membership]
        if request.group is not None:
            leases = [Membership(key, request.group, owner) for key in keys]
        elif client:
            leases = [Membership(key, CLIENT_GROUP + client, owner) for key in keys]
        else:
            leases = [Claim(key, owner) for key in keys]
        try:
            outcome = await self.keeper.acquire(leases)
        except RegistryError as exc:  # unreachable, or an error answer (out of memory...)
            raise self._unavailable(request, exc) from None
        if not outcome.won:
            raise _refusal(outcome.lost[0], request)
        await self.mirror.evict(keys)
        return leases

    def _unavailable(self, request: Register, exc: RegistryError) -> RegistrationError:
        self.server.refusals.refuse(
            "registry_unavailable", "registration refused: the cluster registry is unreachable",
            service=request.service, error=str(exc),
        )  # fmt: skip
        return RegistrationError(
            REGISTRY_UNAVAILABLE, f"the cluster registry is unreachable ({exc}); try again shortly"
        )

    def hold(self, leases: Sequence[Claim | Membership], service: ActiveService) -> None:
        """`leases` belong to `service` now: lost ones close it, its end releases them."""
        for lease in leases:
            self._held[lease] = service
        self._by_service[service] = [*self._by_service.get(service, ()), *leases]

    async def ended(self, service: ActiveService) -> None:
        """`service` ended: its names are free cluster-wide again."""
        await self.release(self._by_service.pop(service, []))

    async def release(self, leases: Sequence[Claim | Membership]) -> None:
        """Give the names up (never raises; unreachable: they run out within a lease)."""
        if not leases:
            return
        for lease in leases:
            self._held.pop(lease, None)
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.settings.timeout_s):
            await self.keeper.release(leases)

    def _lost(self, lost: Lost) -> None:
        lease = lost.lease
        if not isinstance(lease, Claim | Membership):
            return  # the node record: the keeper says so in the log; status shows it
        service = self._held.pop(lease, None)
        if service is not None and self._tg is not None:
            reason = f"another node holds its name now ({lost.reason()})"
            self._tg.start_soon(self.server.close_service, service, reason)

    # --- visitors to and from other nodes ---

    async def check_visit(
        self, request: Visit, nonces: tuple[bytes, bytes], binding: bytes
    ) -> RemoteVisit | None:
        """A visit of a private service another node holds, checked there."""
        return await self.visits.check(request, nonces, binding)

    async def open_private(
        self, name: str, type: str, key: bytes, peer: tuple[str, int]
    ) -> MuxStream | None:
        """A stream to the node holding private service `name`, for one granted visitor."""
        return await self.visits.open(name, type, key, peer)

    async def _serve_forwarded(self, stream: MuxStream, peer: str) -> None:
        await guarded(serve_forwarded(self.server, stream, peer), stream, peer_node=peer)


def _refusal(lost: Lost, request: Register) -> RegistrationError:
    """The answer a single server gives for the same clash."""
    lease = lost.lease
    key = lease.key if isinstance(lease, Claim | Membership) else None
    if key is None or key.kind is ClaimKind.SERVICE:
        name = request.group or request.service
        return RegistrationError(
            control.SERVICE_TAKEN, f"service {name!r} is already served by another client"
        )
    if key.kind in (ClaimKind.TCP_PORT, ClaimKind.UDP_PORT):
        return RegistrationError(
            control.PORT_IN_USE, f"{key.kind.value} port {key.name} is already in use"
        )
    host = key.name.partition("/")[0]
    return RegistrationError(control.DOMAIN_TAKEN, f"{host} is already served by another client")
