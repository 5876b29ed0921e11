"""`server.cluster` as the config resolves it: vocabulary for the config loader and the
server, kept apart from `model` (which it would take past 400 lines). `muxtunnel.cluster`
checks every value again, fully, when a node starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ClusterConfig"]


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """`server.cluster`: this node's place in a cluster of `listen` processes sharing a registry
    (`muxtunnel.cluster`); validated again, fully, when the node starts."""

    #: The registry: redis://HOST:PORT/DB (rediss://, unix://PATH; memory:// for one node).
    url: str
    #: None: HOSTNAME-CONTROLPORT, stable across restarts, distinct on one machine.
    node_id: str | None = None
    #: HOST:PORT other nodes reach this one at (node-to-node sessions); None: the control
    #: bind host and the control port + 1, when that host is not a wildcard.
    advertise: str | None = None
    #: How long a dead node keeps its names (see `muxtunnel.cluster.DEFAULT_LEASE_S`).
    lease_s: float = 10.0
    #: What nodes prove to each other; None: derived from the server's token (nodes given the
    #: same token set trust each other).
    secret: str | None = field(default=None, repr=False)
    #: Key prefix in Redis, so clusters sharing one Redis keep apart.
    prefix: str = "muxtunnel:"
