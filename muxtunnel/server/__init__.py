"""`muxtunnel listen`: the public side of the tunnel.

Modules: `_server` (accepts carriers, owns the state, `apply_config`, `status`), `_session`
(one client: control channel, authentication, registrations), `_services` (public sockets and
what a session's services share), `_visitors` (a TCP service's visitors: admission, idle
timeout, forwarding), `_web` (the shared web ports), `_registry` (live services and reserved
ports), `_host` (what a session may use of its server). The pre-auth gate is
`muxtunnel.admission`, shared with the HTTP endpoints.
"""

from muxtunnel.server._server import Server

__all__ = ["Server"]
