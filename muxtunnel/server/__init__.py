"""`muxtunnel listen`: the public side of the tunnel.

Modules: `_server` (accepts carriers, owns the state, `apply_config`, `status`), `_session`
(one client: control channel, authentication, registrations), `_services` (public sockets and
their visitors), `_registry` (live services), `_admission` (the pre-auth gate), `_host` (what a
session may use of its server), `_groups` (load-balancing groups: members joining and leaving,
the group's socket), `_group_visitors` (a group's TCP visitors, its status rows), `_balanced`
(a visitor's stream to a member, retried once on a failed dial; UDP flows by admission and
pick), `_web` with `_web_names` and `_web_upstream` (the shared web ports).
"""

from muxtunnel.server._server import Server

__all__ = ["Server"]
