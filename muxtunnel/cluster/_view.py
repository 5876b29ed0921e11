"""The whole cluster as `muxtunnel status` shows it: nodes, and what each one holds.

Built from two listings of the store, which are not one atomic read: a name registered between
them may show under a node whose record is not (yet) listed, which is why a `NodeView` can have
no record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from muxtunnel.cluster._model import ClaimKey, Exclusive, Holding, Member, NodeRecord, Owner
from muxtunnel.cluster._store import RegistryStore

__all__ = ["ClusterView", "NodeView", "read_cluster"]


@dataclass(frozen=True)
class NodeView:
    """One node and what it holds."""

    node_id: str
    #: None: the node holds names but has no live record (it is going away, or just came).
    record: NodeRecord | None
    #: Keys it holds alone, and for whom on that node.
    claims: tuple[tuple[ClaimKey, Owner], ...]
    #: Keys it shares in a group: (key, group, this node's member).
    memberships: tuple[tuple[ClaimKey, str, Member], ...]


@dataclass(frozen=True)
class ClusterView:
    """A snapshot of the registry: every node (by id) and every held key (by key)."""

    nodes: tuple[NodeView, ...]
    holdings: tuple[tuple[ClaimKey, Holding], ...]

    @classmethod
    def build(
        cls, records: Sequence[NodeRecord], holdings: Sequence[tuple[ClaimKey, Holding]]
    ) -> ClusterView:
        """Group `holdings` under the nodes that hold them."""
        claims: dict[str, list[tuple[ClaimKey, Owner]]] = {}
        memberships: dict[str, list[tuple[ClaimKey, str, Member]]] = {}
        for key, holding in holdings:
            if isinstance(holding, Exclusive):
                claims.setdefault(holding.owner.node_id, []).append((key, holding.owner))
            else:
                for member in holding.members:
                    entry = (key, holding.group, member)
                    memberships.setdefault(member.owner.node_id, []).append(entry)
        by_id = {record.node_id: record for record in records}
        node_ids = sorted(by_id.keys() | claims.keys() | memberships.keys())
        nodes = tuple(
            NodeView(
                node_id,
                by_id.get(node_id),
                tuple(sorted(claims.get(node_id, ()))),
                tuple(sorted(memberships.get(node_id, ()), key=lambda e: (e[0], e[2].owner))),
            )
            for node_id in node_ids
        )
        return cls(nodes, tuple(sorted(holdings, key=lambda item: item[0])))

    def node(self, node_id: str) -> NodeView | None:
        """The view of one node, if it is listed."""
        return next((n for n in self.nodes if n.node_id == node_id), None)


async def read_cluster(store: RegistryStore) -> ClusterView:
    """Read the store's nodes and holdings (raises `RegistryUnavailable`)."""
    return ClusterView.build(await store.nodes(), await store.holdings())
