"""A cluster node's settings, from the server's config: the registry's, the node-to-node
port's TLS, the cluster secret."""

from __future__ import annotations

from muxtunnel.cluster import ClusterSettings, default_node_id
from muxtunnel.model import ClusterConfig, ServerConfig, ServerTls
from muxtunnel.server._registry import ClusterError
from muxtunnel.specs import format_host_port
from muxtunnel.tls import ServerTlsContext

__all__ = ["cluster_settings", "peer_tls", "secret"]

_WILDCARDS = ("0.0.0.0", "::", "")


def cluster_settings(config: ServerConfig, cluster: ClusterConfig) -> ClusterSettings:
    """The registry settings of a node (`ClusterError` for bad ones)."""
    advertise = cluster.advertise
    if advertise is None:
        if config.bind_host in _WILDCARDS:
            raise ClusterError(
                "a cluster node bound on a wildcard address needs --advertise HOST:PORT "
                "(where the other nodes reach it)"
            )
        advertise = format_host_port(config.bind_host, config.bind_port + 1)
    node_id = cluster.node_id or default_node_id(config.bind_port)
    try:
        return ClusterSettings(cluster.url, node_id, advertise, cluster.lease_s, cluster.prefix)
    except ValueError as exc:
        raise ClusterError(f"cluster settings: {exc}") from None


def peer_tls(config: ServerConfig) -> ServerTlsContext | None:
    """The node-to-node port's TLS: the control port's certificate, no client CA (peers prove
    the cluster secret instead); None when the control port is plaintext."""
    if config.tls is None:
        return None
    return ServerTlsContext.load(ServerTls(config.tls.cert, config.tls.key))


def secret(config: ServerConfig, cluster: ClusterConfig) -> str:
    """The cluster secret nodes prove to each other (`ClusterError` if there is none)."""
    if cluster.secret is not None:
        return cluster.secret
    if config.token is not None:
        return "token:" + config.token.value  # never the token itself on the node-to-node port
    raise ClusterError("a cluster needs a secret: server.cluster.secret or a server token")
