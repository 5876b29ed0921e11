"""The cluster registry: one name space for many `listen` nodes, kept in a shared store.

A node registers itself (`NodeRecord`), claims the names its clients register (`Claim`: a
service name, an HTTP route, an HTTPS host, a fixed public port) or joins a load-balancing group
on them (`Membership`), and looks up who holds a name a visitor asks for. Everything is a lease:
a node that stops renewing (it crashed, it lost the network) loses its names within `lease_s`.

- `RegistryStore`: the interface; `RedisStore` (the one shipped for a cluster) and
  `MemoryStore` (one process: tests, a single node) implement it, with the same rules.
- `LeaseKeeper`: the task that renews a node's leases, rides out an unreachable store, and
  reports leases that others took.
- `ClusterSettings` / `open_store`: the `--cluster` settings and the store they name.
- `read_cluster`: the whole cluster for `muxtunnel status`.

This package imports nothing from the rest of muxtunnel but `muxtunnel.log`.
"""

from muxtunnel.cluster._keeper import KeeperStatus, LeaseKeeper
from muxtunnel.cluster._memory import MemoryStore
from muxtunnel.cluster._model import (
    Claim,
    ClaimKey,
    ClaimKind,
    ClaimOutcome,
    Exclusive,
    Grouped,
    Holding,
    Lease,
    Lost,
    Member,
    Membership,
    NodeIdInUse,
    NodeRecord,
    Owner,
    RegistryError,
    RegistryUnavailable,
    validate_group,
    validate_node_id,
)
from muxtunnel.cluster._redis import RedisStore, redact_url
from muxtunnel.cluster._store import RegistryStore
from muxtunnel.cluster._view import ClusterView, NodeView, read_cluster
from muxtunnel.cluster.settings import (
    DEFAULT_LEASE_S,
    MEMORY_URL,
    ClusterSettings,
    default_node_id,
    open_store,
)

__all__ = [
    "DEFAULT_LEASE_S",
    "MEMORY_URL",
    "Claim",
    "ClaimKey",
    "ClaimKind",
    "ClaimOutcome",
    "ClusterSettings",
    "ClusterView",
    "Exclusive",
    "Grouped",
    "Holding",
    "KeeperStatus",
    "Lease",
    "LeaseKeeper",
    "Lost",
    "Member",
    "Membership",
    "MemoryStore",
    "NodeIdInUse",
    "NodeRecord",
    "NodeView",
    "Owner",
    "RedisStore",
    "RegistryError",
    "RegistryStore",
    "RegistryUnavailable",
    "default_node_id",
    "open_store",
    "read_cluster",
    "redact_url",
    "validate_group",
    "validate_node_id",
]
