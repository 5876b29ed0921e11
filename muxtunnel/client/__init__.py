"""`muxtunnel up`: the service side of the tunnel.

Modules: `_client` (the reconnect loop, owns the state, `apply_config`, `status`), `_session`
(the carrier and the control channel of one session), `_visitors` (one visitor stream),
`_state` (what is known of each service; errors; timeouts), `_multi` (one `Client` per
server of `client.servers`, shown as one). `muxtunnel visit` is here too, on
the same carrier code: `_visit` (its session and local sockets), `_visit_control` (its visits).
"""

from muxtunnel.client._client import Client, backoff_s
from muxtunnel.client._multi import Clients
from muxtunnel.client._state import FatalError, RetryableError, ServiceState
from muxtunnel.client._visit import Visitor
from muxtunnel.client._visit_control import VisitState

__all__ = [
    "Client",
    "Clients",
    "FatalError",
    "RetryableError",
    "ServiceState",
    "VisitState",
    "Visitor",
    "backoff_s",
]
