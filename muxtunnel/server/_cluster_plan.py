"""What a cluster node serves for the names other nodes hold, from one read of the registry.

Pure: `Plan.of(holdings, this node, addresses)` is the whole decision, taken again at every
sync (`ClusterNode.sync_once`):

- a name one session holds at another node (`Exclusive`): its port is bound here and its
  routes added, each visitor handed to that node;
- a name one client holds from sessions at one node or more (`CLIENT_GROUP`, e.g. `up
  --server A --server B`): served where it has a session; elsewhere as above, each visitor
  to one of those nodes;
- a load-balancing group's port or web routes: served by the nodes with members; elsewhere
  each visitor goes to one of those (a web group's requests are spread over the members'
  nodes: `group_nodes`, see `_spread`).

A group's members count only when healthy (as their nodes last wrote it): a node whose
members all fail their health checks (or have an open circuit) gets no visitor from the others
while a healthy member lives anywhere. When none is healthy, all count, as a single server's
group would fail over to nobody either (each member's node then answers as it can).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from muxtunnel.cluster import ClaimKey, ClaimKind, Exclusive, Grouped, Holding, Member, Owner
from muxtunnel.server._mirror import Remote

__all__ = ["CLIENT_GROUP", "Plan"]

#: The pseudo-group under which one client's sessions at several nodes hold its names (group
#: names are service names, which have no ':').
CLIENT_GROUP = "client:"


def service_of(owner: Owner) -> str:
    """The service a holder ("SESSION/SERVICE") registered."""
    return owner.holder.partition("/")[2] or owner.holder


@dataclass
class Plan:
    """What to serve for names held elsewhere, as read from the registry."""

    #: Ports and routes of names held elsewhere, and where their visitors go.
    wanted: dict[ClaimKey, Remote] = field(default_factory=dict)
    #: Group name -> node id -> its members there (this node's too).
    group_nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Service name -> a node holding it (not a group's).
    holders: dict[str, str] = field(default_factory=dict)
    #: Service name -> every node where its client holds it (a client at several nodes).
    client_nodes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        holdings: Sequence[tuple[ClaimKey, Holding]],
        node_id: str,
        addresses: Mapping[str, str],
    ) -> Plan:
        """The plan of node `node_id`; `addresses`: the live nodes' advertised addresses."""
        plan = cls()
        for key, holding in holdings:
            if isinstance(holding, Exclusive):
                owner = holding.owner
                if key.kind is ClaimKind.SERVICE:
                    plan.holders[key.name] = owner.node_id
                    continue
                advertise = addresses.get(owner.node_id)
                if owner.node_id != node_id and advertise is not None:
                    plan.wanted[key] = Remote(owner.node_id, advertise, service_of(owner))
                continue
            healthy = _able(holding)
            members = tuple(
                (node, addresses[node])
                for node in sorted({m.owner.node_id for m in healthy})
                if node in addresses
            )
            elsewhere = bool(members) and node_id not in holding.node_ids
            if holding.group.startswith(CLIENT_GROUP):
                first = holding.members[0].owner
                if key.kind is ClaimKind.SERVICE:
                    plan.holders[key.name] = first.node_id
                    plan.client_nodes[key.name] = tuple(node for node, _ in members)
                elif elsewhere:
                    plan.wanted[key] = Remote(*members[0], service_of(first), members)
            elif key.kind is ClaimKind.SERVICE:
                counts = plan.group_nodes.setdefault(holding.group, {})
                for member in healthy:
                    if member.owner.node_id in addresses:
                        counts[member.owner.node_id] = counts.get(member.owner.node_id, 0) + 1
            elif elsewhere:
                plan.wanted[key] = Remote(*members[0], holding.group, members)
        return plan


def _able(holding: Grouped) -> tuple[Member, ...]:
    """The members that can take visitors: the healthy ones, or all when none is."""
    return tuple(m for m in holding.members if m.healthy) or holding.members
