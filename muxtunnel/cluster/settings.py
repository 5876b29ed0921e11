"""Cluster settings (`listen --cluster URL --node-id ID --advertise HOST:PORT`, config
`server.cluster: {url, node_id, advertise, lease_s}`), validated once, and the store they open.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from muxtunnel.cluster._memory import MemoryStore
from muxtunnel.cluster._model import NodeRecord, lease_ms, validate_node_id
from muxtunnel.cluster._redis import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_PREFIX,
    DEFAULT_TIMEOUT_S,
    RedisStore,
    redact_url,
)
from muxtunnel.cluster._store import RegistryStore

__all__ = ["DEFAULT_LEASE_S", "MEMORY_URL", "ClusterSettings", "default_node_id", "open_store"]

#: How long a dead node keeps its names. Kubernetes leader election uses a 15 s lease renewed
#: every 2 s; etcd and Consul users commonly pick 10 s TTLs. 10 s renewed every 3.3 s survives
#: two lost renewals, and a crashed node's clients can re-register elsewhere within 10 s.
DEFAULT_LEASE_S = 10.0
#: A store in this process only: one node, no Redis (tests, and a cluster of one).
MEMORY_URL = "memory://"
_NOT_NODE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ClusterSettings:
    """Where the registry is, who this node is, how long its leases last."""

    url: str
    node_id: str
    #: HOST:PORT other nodes use to reach this one.
    advertise: str
    lease_s: float = DEFAULT_LEASE_S
    #: Key prefix in Redis: clusters (or other applications) sharing one Redis keep apart.
    prefix: str = DEFAULT_PREFIX
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if self.url != MEMORY_URL and scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"cluster url {redact_url(self.url)!r}: use redis://HOST:PORT/DB, "
                f"rediss://HOST:PORT/DB, unix://PATH or {MEMORY_URL}"
            )
        validate_node_id(self.node_id)
        NodeRecord(self.node_id, self.advertise, 0.0, "check")  # validates the address
        lease_ms(self.lease_s)
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ValueError(f"cluster key prefix {self.prefix!r} must be non-empty, no spaces")
        if self.max_connections < 1:
            raise ValueError("cluster max_connections must be at least 1")

    @property
    def timeout_s(self) -> float:
        """Bound on one registry call: at most a third of a lease, so a renewal that times out
        leaves room for another before the lease runs out."""
        return min(DEFAULT_TIMEOUT_S, self.lease_s / 3)

    def __repr__(self) -> str:
        return (
            f"ClusterSettings(url={redact_url(self.url)!r}, node_id={self.node_id!r}, "
            f"advertise={self.advertise!r}, lease_s={self.lease_s!r}, prefix={self.prefix!r})"
        )


def default_node_id(control_port: int, hostname: str | None = None) -> str:
    """HOSTNAME-PORT: stable across restarts, distinct for several nodes on one machine."""
    host = _NOT_NODE_ID.sub("-", hostname or socket.gethostname()).strip("-._") or "node"
    suffix = f"-{control_port}"
    return validate_node_id(host[: 64 - len(suffix)].rstrip("-._") + suffix)


def open_store(settings: ClusterSettings) -> RegistryStore:
    """The store `settings.url` names (connections open on first use)."""
    if settings.url == MEMORY_URL:
        return MemoryStore()
    return RedisStore.from_url(
        settings.url,
        prefix=settings.prefix,
        timeout_s=settings.timeout_s,
        max_connections=settings.max_connections,
    )
