"""`muxtunnel up`: the service side of the tunnel.

Modules: `_client` (the reconnect loop, owns the state, `apply_config`, `status`), `_session`
(the carrier and the control channel of one session), `_visitors` (one visitor stream),
`_state` (what is known of each service; errors; timeouts).
"""

from muxtunnel.client._client import Client, backoff_s
from muxtunnel.client._state import FatalError, RetryableError, ServiceState

__all__ = ["Client", "FatalError", "RetryableError", "ServiceState", "backoff_s"]
