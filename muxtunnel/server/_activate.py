"""Activating a registration: a group member joins its group; any other service opens its
public socket (or its web routes, or its private keys) and enters the registry. On a cluster
node its names are taken cluster-wide first, all or none (`Host.cluster`), handed to the
service once it is active, and given back at once if the activation fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

from mux import Session
from muxtunnel import control
from muxtunnel.control import Register
from muxtunnel.server import _services
from muxtunnel.server._host import Host
from muxtunnel.server._registry import ActiveService, RegistrationError
from muxtunnel.server._services import PublicSocket, SessionQuotas
from muxtunnel.udp import UdpForwarder

if TYPE_CHECKING:  # a cluster's types load only with a cluster (they import redis)
    from muxtunnel.cluster import Claim, Membership

__all__ = ["activate", "client_identity"]

#: Ports picked for a service of a cluster node before giving up: another node holds the
#: first one only when two nodes pick the same free port at once.
CLUSTER_PICK_ATTEMPTS = 3


async def activate(
    host: Host,
    session: Session,
    session_id: int,
    client_name: str,
    request: Register,
    key: bytes,
    quotas: SessionQuotas,
    visitor_keys: frozenset[bytes],
) -> tuple[ActiveService, PublicSocket]:
    """The active service of a registration (and its public socket, if it has one);
    `RegistrationError` if refused."""
    cluster = host.cluster
    # The client, at every node: its token key and process instance (`up --server A --server
    # B` holds its names from both nodes; another client is refused them).
    client = client_identity(key, request.instance) if cluster is not None else ""
    # A group whose first member (on any node) had its port picked, or this client's service
    # registered at another node with a picked port: that port, here too.
    if cluster is not None and (port := await cluster.picked_port(request, client)):
        request = dataclasses.replace(request, remote_port=port)
    leases = (
        await cluster.claim(request, session_id, cluster.keys_for(request), client)
        if cluster is not None
        else []
    )
    sock: PublicSocket = None
    try:
        if request.group is not None:
            shares = (
                quotas.streams.share(request.service),
                quotas.compression.share(request.service),
            )
            service = await host.join_group(session, session_id, client_name, request, key, shares)
            ported = request.type in ("tcp", "udp")  # a web group's port is the web port's
            if cluster is not None and ported and service.port and not cluster.has_port(leases):
                try:  # the group's first member cluster-wide: the port picked is the group's
                    keys = cluster.port_keys(service)
                    leases += await cluster.claim(request, session_id, keys, client)
                except BaseException:
                    service.released = True  # no reservation: the port was never the group's
                    host.leave_group(service)
                    service.streams.leave()
                    service.compression_memory.leave()
                    raise
        else:
            service, sock = await _open_claimed(
                host, session, session_id, request, key, quotas, leases, visitor_keys, client
            )
            host.registry.add(service)
    except BaseException:
        if cluster is not None:
            await cluster.release(leases)
        raise
    if cluster is not None:
        cluster.hold(leases, service)
    return service, sock


async def _open_claimed(
    host: Host,
    session: Session,
    session_id: int,
    request: Register,
    key: bytes,
    quotas: SessionQuotas,
    leases: list[Claim | Membership],
    visitor_keys: frozenset[bytes] = frozenset(),
    client: str = "",
) -> tuple[ActiveService, PublicSocket]:
    """`open_service`, on a cluster node: a port the server picked is claimed cluster-wide
    too, and added to `leases` (the names taken already); if another node holds it, another is
    picked."""
    cluster = host.cluster
    for attempt in range(CLUSTER_PICK_ATTEMPTS):
        service, sock = await _services.open_service(
            host, session, session_id, request, key, quotas, visitor_keys
        )
        if cluster is None or sock is None or cluster.has_port(leases):
            return service, sock
        try:
            mine = await cluster.claim(request, session_id, cluster.port_keys(service), client)
        except RegistrationError as exc:
            await _close_opened(service, sock)
            if exc.code != control.PORT_IN_USE or attempt + 1 == CLUSTER_PICK_ATTEMPTS:
                raise
            continue
        # One client registering at two nodes at once: each picked a port. The pick of the
        # node of its first session (in registry order, the same at every node) is the
        # client's: another node's gives its own up and binds that one.
        first = await cluster.client_port(request, client, service.port) if client else 0
        if not first or first == service.port:
            leases += mine
            return service, sock
        await cluster.release(mine)
        await _close_opened(service, sock)
        request = dataclasses.replace(request, remote_port=first)
        keys = cluster.port_keys(service, first)
        leases += await cluster.claim(request, session_id, keys, client)
        return await _services.open_service(
            host, session, session_id, request, key, quotas, visitor_keys
        )
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _close_opened(service: ActiveService, sock: PublicSocket) -> None:
    """Undo `open_service` of a service that will not be activated."""
    service.streams.leave()
    service.compression_memory.leave()
    if isinstance(sock, UdpForwarder):
        sock.close()
    elif sock is not None:
        await sock.aclose()


def client_identity(key: bytes, instance: bytes) -> str:
    """Who registers, the same at every node: the client's token key and its process's
    instance id, hashed (neither can be read back from the registry). "" (no identity, the
    name held by one session) for a client that sends no instance id."""
    if not instance:
        return ""
    digest = hashlib.sha256(b"muxtunnel client identity\0" + key + b"\0" + instance)
    return digest.hexdigest()[:32]
