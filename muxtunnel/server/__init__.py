"""`muxtunnel listen`: the public side of the tunnel.

Modules: `_server` (accepts carriers, owns the state, `apply_config`, `status`), `_session`
(one client: control channel, authentication, registrations), `_services` (public sockets and
what a session's services share), `_visitors` (a TCP service's visitors: admission, idle
timeout, forwarding), `_web` with `_web_names` and `_web_upstream` (the shared web ports),
`_registry` (live services and reserved ports), `_host` (what a session may use of its
server), `_groups` (load-balancing groups: members joining and leaving, the group's socket),
`_group_visitors` (a group's TCP visitors, its status rows), `_balanced` (a visitor's stream
to a member, retried once on a failed dial), `_admitted_udp` (UDP flows admitted by rate
limits, given to a member), `_ratelimits` (rate limits per service name). The pre-auth gate is
`muxtunnel.admission`, shared with the HTTP endpoints. A cluster node (`listen --cluster`) adds
`_cluster` (its names in the registry), `_peers` (node-to-node sessions), `_mirror` (the
ports and routes of names other nodes hold) and `_forwarded` (visitors other nodes hand over).
"""

from muxtunnel.server._registry import ClusterError
from muxtunnel.server._server import Server

__all__ = ["ClusterError", "Server", "join_cluster"]


def join_cluster(server: Server) -> Server:
    """`server`, given its place in a cluster when its config has one (`ClusterError` for bad
    settings); the cluster's modules, and redis, load only then."""
    if server.config.cluster is not None:
        from muxtunnel.server._cluster import ClusterNode

        server.cluster = ClusterNode(server, server.config.cluster)
    return server
