"""What a cluster node reads and writes in the registry for its services beyond their names:
the health of its group members (`health_changes`), and the public port a TCP/UDP service
asking for none has cluster-wide (`picked_port`, `client_port`).

A picked port is one per name cluster-wide: a group's is its first member's pick, and one
client's service registered at several nodes (`up --server A --server B`) binds the first
node's pick everywhere. Both are held in the registry like the name (a membership of the
port's key), so every node finds them there. When two nodes of one client pick at the same
moment, neither sees the other's pick before claiming its own; the pick of the node of the
client's first session (members sort by node id, the same list at every node) wins, and the
other node gives its own up (`_activate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import anyio

from muxtunnel.balance import CircuitState
from muxtunnel.cluster import Claim, ClaimKey, Grouped, Membership, RegistryError, RegistryStore
from muxtunnel.control import Register
from muxtunnel.model import ServerConfig
from muxtunnel.server._cluster_plan import CLIENT_GROUP, service_of
from muxtunnel.server._groups import Groups
from muxtunnel.server._registry import ActiveService, MemberHandle
from muxtunnel.server._services import pinned_ports

__all__ = ["CLIENT_PORT_POLL_S", "CLIENT_PORT_WAIT_S", "client_port", "health_changes",
           "picked_port"]  # fmt: skip

#: How long a node that picked a port for one client's service at the same moment as another
#: node waits to see the other's pick (a bind and one registry write: milliseconds), and how
#: often it looks (a scan of the registry each time).
CLIENT_PORT_WAIT_S = 2.0
CLIENT_PORT_POLL_S = 0.1
_PORTS = ("tcp", "udp")


def health_changes(
    held: Mapping[Claim | Membership, ActiveService], groups: Groups, now: float
) -> list[tuple[Membership, Membership]]:
    """Memberships held here whose member's health is not what their lease says: (old, new)."""
    changes = []
    for lease, service in held.items():
        if not isinstance(lease, Membership) or service.member is None:
            continue
        healthy = _able(groups, service.member, now)
        if healthy is not None and healthy != lease.healthy:
            changes.append((lease, dataclasses.replace(lease, healthy=healthy)))
    return changes


def _able(groups: Groups, handle: MemberHandle, now: float) -> bool | None:
    """Can this member take visitors (healthy, weighted, circuit not open)? None: gone."""
    group = groups.by_name.get(handle.group)
    if group is None or handle.member_id not in group.group:
        return None
    member = group.group.member(handle.member_id)
    if member.handle is not handle:
        return None
    circuit_open = member.circuit.state(now) is CircuitState.OPEN
    return member.healthy and member.weight > 0 and not circuit_open


async def picked_port(
    store: RegistryStore, config: ServerConfig, request: Register, client: str, exclude: int = 0
) -> int:
    """The public port a TCP/UDP service asking for none has cluster-wide (0: none yet):
    a group's (picked by its first member's node), or that of this client's service of the
    same name registered at another node (picked there); the lowest if several, `exclude`
    left out. A scan of the registry, as a sync does: only for a group, or a client already
    holding the name elsewhere. Raises `RegistryError`."""
    name = request.group or request.service
    if request.type not in _PORTS or request.remote_port or pinned_ports(config).get(name):
        return 0
    group = request.group or (CLIENT_GROUP + client if client else "")
    if not group:
        return 0
    if request.group is None:  # held by this client at another node?
        key = ClaimKey.service(name)
        held = (await store.lookup([key])).get(key)
        if not isinstance(held, Grouped) or held.group != group:
            return 0
    ports = [
        int(key.name)
        for key, holding in await store.holdings()
        if key.kind.value == request.type
        and int(key.name) != exclude
        and isinstance(holding, Grouped)
        and holding.group == group
        and (
            request.group is not None
            or any(service_of(m.owner) == name for m in holding.members)
        )
    ]
    return min(ports, default=0)


async def client_port(
    store: RegistryStore,
    node_id: str,
    config: ServerConfig,
    request: Register,
    client: str,
    picked: int,
) -> int:
    """The port of `client`'s service, which node `node_id` picked and claimed as `picked`:
    if the client's first session is at another node, that node's pick, once it shows in
    the registry (within `CLIENT_PORT_WAIT_S`; past that, or on a registry error, `picked`)."""
    key = ClaimKey.service(request.service)
    with anyio.move_on_after(CLIENT_PORT_WAIT_S):
        while True:
            try:
                held = (await store.lookup([key])).get(key)
                if not isinstance(held, Grouped) or held.group != CLIENT_GROUP + client:
                    return picked
                if held.members[0].owner.node_id == node_id:
                    return picked
                port = await picked_port(store, config, request, client, exclude=picked)
            except RegistryError:
                return picked
            if port:
                return port
            await anyio.sleep(CLIENT_PORT_POLL_S)
    return picked
