"""The HTTP endpoints of `listen` and `up`: the admin API and the Prometheus metrics.

Modules: `httpd` (a tiny HTTP/1.1 server), `admin` (routes, fed by a status callable),
`metrics` (the Prometheus collector, fed by the same callable). Nothing here imports the server
or the client: they are seen only through `muxtunnel.status` snapshots.
"""

from muxtunnel.web.admin import run_endpoints

__all__ = ["run_endpoints"]
