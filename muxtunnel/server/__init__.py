"""`muxtunnel listen`: the public side of the tunnel.

Modules: `_server` (accepts carriers, owns the state, `apply_config`, `status`), `_session`
(one client: control channel, authentication, registrations), `_services` (public sockets and
their visitors), `_registry` (live services), `_admission` (the pre-auth gate), `_host` (what a
session may use of its server).
"""

from muxtunnel.server._server import Server

__all__ = ["Server"]
