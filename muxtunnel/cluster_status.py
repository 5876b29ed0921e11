"""The cluster in a server's status snapshot: this node, and the whole cluster as the registry
listed it at the node's last sync (so `muxtunnel status` against any node shows every node).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ClusterNodeRow", "ClusterRow"]


@dataclass(frozen=True, slots=True)
class ClusterNodeRow:
    """One node of the cluster and the names it holds."""

    node_id: str
    #: Where other nodes reach it (None: it holds names but its record is gone: it died, or
    #: is just starting).
    advertise: str | None
    #: Wall-clock start (Unix seconds), from its record.
    started_at: float | None
    #: What it holds alone: "service:NAME", "tcp:PORT", "http:HOST/PATH" ... with the holder
    #: on that node ("SESSION/SERVICE").
    claims: tuple[tuple[str, str], ...] = ()
    #: Group memberships: (key, group, member holder).
    memberships: tuple[tuple[str, str, str], ...] = ()

    @property
    def services(self) -> tuple[str, ...]:
        """The service names it holds."""
        return tuple(key.partition(":")[2] for key, _ in self.claims if key.startswith("service:"))

    @property
    def sessions(self) -> tuple[str, ...]:
        """Its client sessions holding names (session ids on that node)."""
        holders = {holder.partition("/")[0] for _, holder in self.claims}
        holders |= {holder.partition("/")[0] for _, _, holder in self.memberships}
        return tuple(sorted(holders))

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "advertise": self.advertise,
            "started_at": self.started_at,
            "sessions": list(self.sessions),
            "services": list(self.services),
            "claims": [{"key": key, "holder": holder} for key, holder in self.claims],
            "memberships": [
                {"key": key, "group": group, "holder": holder}
                for key, group, holder in self.memberships
            ],
        }


@dataclass(frozen=True, slots=True)
class ClusterRow:
    """This node's place in the cluster, and the cluster as last read."""

    node_id: str
    advertise: str
    #: The registry, without its password.
    registry: str
    lease_s: float
    #: The last renewal reached the registry.
    registry_up: bool
    #: Seconds since the node last read the whole cluster (None: never yet).
    view_age_s: float | None
    #: Nodes this one has a session to, and nodes with a session to this one.
    peers_out: tuple[str, ...] = ()
    peers_in: tuple[str, ...] = ()
    #: Ports this node binds for names other nodes hold ("tcp:PORT").
    mirrored: tuple[str, ...] = ()
    #: Visitors this node handed to another node.
    forwarded_total: int = 0
    #: Web requests (and TLS connections by SNI) handed to another node: to the node holding
    #: their route, and those of a group with members here that took a member's slot there.
    web_forwarded_total: int = 0
    web_spread_total: int = 0
    nodes: tuple[ClusterNodeRow, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "advertise": self.advertise,
            "registry": self.registry,
            "lease_s": self.lease_s,
            "registry_up": self.registry_up,
            "view_age_s": None if self.view_age_s is None else round(self.view_age_s, 3),
            "peers_out": list(self.peers_out),
            "peers_in": list(self.peers_in),
            "mirrored": list(self.mirrored),
            "forwarded_total": self.forwarded_total,
            "web_forwarded_total": self.web_forwarded_total,
            "web_spread_total": self.web_spread_total,
            "nodes": [node.to_dict() for node in self.nodes],
        }
