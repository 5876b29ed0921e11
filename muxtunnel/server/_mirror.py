"""What this node serves for names other nodes hold: their public ports, bound here too, and
their HTTP routes, added to this node's route table; each visitor is handed to the owning node.

The registry says who holds what (`ClusterNode` reads it every sync interval and calls `sync`
with the names held elsewhere). For each:

- `tcp:PORT`: a listener on this node's public host; each visitor gets a stream to the owner
  (`PeerLinks.open`, its `VisitorHeader` on the SYN) and is piped to it.
- `udp:PORT`: a UDP socket; each flow's first datagram opens a stream to the owner, as a
  client's flow would, and the owner pipes it to its client.
- `http:HOST/LOCATION`: a route owned by `node:ID`; the web front hands its requests' streams
  to the owner (`WebFront.open`), whose own engine serves them (its route options, basic auth
  included, are applied there). `https:HOST` likewise, routed by SNI (`node:ID/tls`): the
  TLS bytes pass through to the owner's engine, which routes them by SNI again.

Invariants: one mirror per port and protocol; a port a local service is about to bind is given
up first (`evict`, after this node won its claim in the registry); a mirror that cannot bind
(the port is busy here) is counted, logged at doubling counts and tried again at the next sync.
Visitors already piped through a mirror that goes away finish on their own.

The other way is `_forwarded`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc
import structlog

from mux import MuxStream, read_ready
from muxtunnel.cluster import ClaimKey, ClaimKind
from muxtunnel.control import VisitorHeader, encode_visitor_header
from muxtunnel.forward import forward, guarded
from muxtunnel.server import _visitors
from muxtunnel.server._groups import Groups
from muxtunnel.server._host import Host
from muxtunnel.server._peers import PeerLinks, PeerUnavailable
from muxtunnel.server._session import ClientSession
from muxtunnel.server._web import NODE_OWNER
from muxtunnel.transport import TransportError, abort, listen_tcp, peer_address, setup_done
from muxtunnel.udp import OnEnd, UdpForwarder, frame
from muxtunnel.vhost import RouteConflict, RouteTarget

__all__ = ["NODE_OWNER", "Mirror", "Remote"]

log = structlog.get_logger("muxtunnel.cluster")


class NodeServer(Host, Protocol):
    """The server, as its cluster node sees it."""

    @property
    def sessions(self) -> Mapping[int, ClientSession]:
        """Connected clients, by session id."""
        ...

    @property
    def groups(self) -> Groups:
        """Live load-balancing groups."""
        ...


#: Routes of an HTTPS service (SNI) of another node are owned by `node:ID/tls`.
TLS_SUFFIX = "/tls"


def _route_owner(key: ClaimKey, remote: Remote) -> tuple[str, str]:
    """(node, service) of a mirrored route: `ID` for HTTP, `ID/tls` for HTTPS by SNI."""
    suffix = TLS_SUFFIX if key.kind is ClaimKind.HTTPS else ""
    return remote.node_id + suffix, remote.service


def _route_pair(key: ClaimKey) -> tuple[str, str]:
    """(host, location) of an HTTP or HTTPS key."""
    if key.kind is ClaimKind.HTTPS:
        return key.name, "/"
    host, slash, location = key.name.partition("/")
    return host, slash + location


@dataclass(frozen=True, slots=True)
class Remote:
    """A name another node holds: which node, where it is reached, which service (or group)."""

    node_id: str
    advertise: str
    service: str
    #: A group's port: every node with members, as (node id, advertise); a visitor goes to one
    #: of them at random (the node's own group then picks the member).
    nodes: tuple[tuple[str, str], ...] = ()

    def pick(self) -> tuple[str, str]:
        """The node (id, advertise) a new visitor goes to."""
        return random.choice(self.nodes) if self.nodes else (self.node_id, self.advertise)

    def order(self) -> list[tuple[str, str]]:
        """Every node a new visitor may go to: the one picked first, then the others (a
        dead node's names outlive it by up to a lease)."""
        first = self.pick()
        return [first, *(node for node in self.nodes if node != first)]


@dataclass(eq=False)
class _Socket:
    remote: Remote
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    #: Set once the public socket is closed (or could not be bound).
    unbound: anyio.Event = field(default_factory=anyio.Event)
    bound: bool = False


class _RemoteUdp(UdpForwarder):
    """A UDP port held by another node: each flow is a stream to that node."""

    def __init__(self, mirror: Mirror, socket: _Socket, idle_s: float, max_flows: int) -> None:
        super().__init__(None, socket.remote.service, idle_s=idle_s, max_flows=max_flows,
                         refusals=mirror.server.refusals)  # fmt: skip
        self._mirror = mirror
        self._socket = socket

    def _open_flow(
        self, address: tuple[str, int], datagram: bytes
    ) -> tuple[MuxStream, OnEnd | None] | None:
        remote = self._socket.remote
        header = encode_visitor_header(VisitorHeader(remote.service, "udp", *address))
        node_id, advertise = remote.pick()
        stream = self._mirror.links.open_nowait(node_id, advertise, header + frame(datagram))
        if stream is None:  # being dialled: this datagram is dropped, as on a lossy path
            self._mirror.server.refusals.refuse(
                "cluster_forward_failed", "visitor not forwarded: no session to its node yet",
                service=remote.service, node=remote.node_id,
            )  # fmt: skip
            return None
        return stream, None


class Mirror:
    """The sockets and routes this node serves for names held by other nodes."""

    def __init__(self, server: NodeServer, links: PeerLinks) -> None:
        self.server = server
        self.links = links
        self._sockets: dict[ClaimKey, _Socket] = {}
        #: Mirrored ports missing from the registry, and since when.
        self._missing: dict[ClaimKey, float] = {}
        self._missing_routes: dict[tuple[str, str], float] = {}
        #: (node id, service) -> its (host, location) routes here.
        self._routes: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        #: Visitors handed to another node (TCP connections; UDP flows count in `refusals`).
        self.forwarded_total = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Hold the mirrors' tasks until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    @property
    def ports(self) -> list[str]:
        """The ports mirrored here and bound, as `tcp:PORT` (for status)."""
        return sorted(str(key) for key, sock in self._sockets.items() if sock.bound)

    def sync(self, wanted: dict[ClaimKey, Remote], grace_s: float = 0.0) -> None:
        """Serve `wanted` (names other nodes hold) from now on; a port no longer wanted is
        closed once it has been missing for `grace_s` (a restarted registry lists nothing
        until the holders have taken their leases again: their visitors must not notice)."""
        now = anyio.current_time()
        for key in [k for k in self._sockets if k not in wanted]:
            since = self._missing.setdefault(key, now)
            if now - since >= grace_s:
                del self._missing[key]
                self._sockets.pop(key).scope.cancel()
        for key in wanted:
            self._missing.pop(key, None)
        routes: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for key, remote in wanted.items():
            if key.kind in (ClaimKind.HTTP, ClaimKind.HTTPS):
                routes.setdefault(_route_owner(key, remote), set()).add(_route_pair(key))
                continue
            if key.kind not in (ClaimKind.TCP_PORT, ClaimKind.UDP_PORT):
                continue
            sock = self._sockets.get(key)
            if sock is not None and sock.unbound.is_set():  # could not bind: try again
                del self._sockets[key]
                sock = None
            if sock is None:
                sock = self._sockets[key] = _Socket(remote)
                assert self._tg is not None
                serve = self._serve_tcp if key.kind is ClaimKind.TCP_PORT else self._serve_udp
                self._tg.start_soon(serve, int(key.name), sock)
            else:
                sock.remote = remote  # same port, another owner (or address): next visitors
        self._sync_routes({k: frozenset(v) for k, v in routes.items()}, now, grace_s)

    async def evict(self, keys: Iterable[ClaimKey]) -> None:
        """Give up the mirrors of `keys` (this node holds them now) and wait for their ports
        to close."""
        for key in keys:
            sock = self._sockets.pop(key, None)
            if sock is not None:
                sock.scope.cancel()
                with anyio.move_on_after(5.0):
                    await sock.unbound.wait()
            if key.kind in (ClaimKind.HTTP, ClaimKind.HTTPS):
                pair = _route_pair(key)
                for (node, service), pairs in list(self._routes.items()):
                    if pair in pairs and node.endswith(TLS_SUFFIX) == (key.kind is ClaimKind.HTTPS):
                        self._drop_route(node, service)

    # --- TCP and UDP ports ---

    async def _serve_tcp(self, port: int, sock: _Socket) -> None:
        server = self.server
        try:
            async with anyio.create_task_group() as visitors:
                with sock.scope:
                    try:
                        listener = await listen_tcp(
                            server.config.public_host, port, name=f"cluster tcp {port}",
                            refusals=server.refusals, reuse_port=server.config.reuse_port,
                        )  # fmt: skip
                    except TransportError as exc:
                        self._bind_failed(sock, "tcp", port, exc)
                        return
                    sock.bound = True
                    async with listener:

                        async def on_visitor(visitor: anyio.abc.SocketStream) -> None:
                            await guarded(self._forward_tcp(sock.remote, visitor), visitor,
                                          service=sock.remote.service)  # fmt: skip

                        await listener.serve(on_visitor, task_group=visitors)
                sock.bound = False
                sock.unbound.set()
        finally:
            sock.bound = False
            sock.unbound.set()

    async def _forward_tcp(self, remote: Remote, visitor: anyio.abc.SocketStream) -> None:
        address = peer_address(visitor)
        if address is None:
            await abort(visitor)
            return
        header = VisitorHeader(remote.service, "tcp", address[0], address[1])
        # What the visitor sent with its connect rides the SYN, after the header.
        early = read_ready(visitor, _visitors.EARLY_BYTES)
        with self.server.visitors.track():
            first = encode_visitor_header(header) + early
            for node_id, advertise in remote.order():
                try:
                    stream = await self.links.open(node_id, advertise, first)
                    break
                except PeerUnavailable as exc:
                    self.server.refusals.refuse(
                        "cluster_forward_failed", "visitor not forwarded: its node is unreachable",
                        service=remote.service, node=node_id, error=str(exc),
                    )  # fmt: skip
            else:
                await abort(visitor)
                return
            setup_done()
            self.forwarded_total += 1
            # Relayed by callbacks (`forward`'s fast path), metered under the service's name
            # on this node too; its limits and idle timeout are the holder's to enforce.
            await forward(
                visitor, stream, visitor_side=True, service=remote.service,
                peer=f"{address[0]}:{address[1]}", traffic=self.server.traffic_of(remote.service),
                sent_early=len(early), node=node_id,
            )  # fmt: skip

    async def _serve_udp(self, port: int, sock: _Socket) -> None:
        config = self.server.config
        udp = _RemoteUdp(self, sock, config.udp_flow_idle_s, config.udp_max_flows)
        try:
            with sock.scope:
                try:
                    await udp.bind(config.public_host, port)
                except TransportError as exc:
                    self._bind_failed(sock, "udp", port, exc)
                    return
                sock.bound = True
                await udp.run()
        finally:
            sock.bound = False
            sock.unbound.set()

    def _bind_failed(self, sock: _Socket, kind: str, port: int, exc: Exception) -> None:
        self.server.refusals.refuse(
            "cluster_mirror_bind", "cannot bind a port another node holds; retrying",
            port=f"{kind}:{port}", node=sock.remote.node_id, error=str(exc),
        )  # fmt: skip

    # --- HTTP routes ---

    def _sync_routes(
        self,
        wanted: dict[tuple[str, str], frozenset[tuple[str, str]]],
        now: float,
        grace_s: float,
    ) -> None:
        web = self.server.web
        if web is None:
            return
        for node, service in [k for k in self._routes if k not in wanted]:
            since = self._missing_routes.setdefault((node, service), now)
            if now - since >= grace_s:
                del self._missing_routes[(node, service)]
                self._drop_route(node, service)
        for key in wanted:
            self._missing_routes.pop(key, None)
        for (node, service), pairs in wanted.items():
            if self._routes.get((node, service)) == pairs:
                continue
            for stale in [k for k in self._missing_routes if self._routes.get(k, set()) & pairs]:
                del self._missing_routes[stale]  # its names moved on: no grace for them
                self._drop_route(*stale)
            hosts = sorted({host for host, _ in pairs})
            locations = sorted({location for _, location in pairs})
            if moved := web.yield_hosts(set(hosts)):  # its client registered there since
                log.info("web names moved to another node", services=moved, node=node)
            target = RouteTarget(service, f"{NODE_OWNER}{node}")
            try:
                if node.endswith(TLS_SUFFIX):  # routed by SNI, passed through
                    web.engine.tls_routes.add(target, hosts)
                else:
                    web.engine.http_routes.add(target, hosts, locations)
            except (RouteConflict, ValueError) as exc:  # a local name in its grace: next sync
                self.server.refusals.refuse(
                    "cluster_mirror_route", "cannot route a name another node holds; retrying",
                    service=service, node=node, error=str(exc),
                )  # fmt: skip
                continue
            self._routes[(node, service)] = pairs

    def _drop_route(self, node: str, service: str) -> None:
        self._routes.pop((node, service), None)
        if self.server.web is not None:
            table = self.server.web.engine.http_routes
            if node.endswith(TLS_SUFFIX):
                table = self.server.web.engine.tls_routes
            table.remove(f"{NODE_OWNER}{node}", service)
