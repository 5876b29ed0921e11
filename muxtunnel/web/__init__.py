"""The HTTP endpoints of `listen` and `up`: admin API, metrics, dashboard and inspector pages.

Modules: `httpd` (a tiny HTTP/1.1 server), `admin` (routes, fed by a status callable),
`metrics` (the Prometheus collector, fed by the same callable), `asgi` (uvicorn on our loop, for
the pages), `dashboard` (`listen --dashboard`: live charts and tables of the status snapshots),
`inspector` (`up`'s recent HTTP requests, with replay). Nothing here imports the server or the
client: they are seen only through `muxtunnel.status` snapshots and the capture ring of
`muxtunnel.httptap`. Nothing is imported here either: each page loads only what it uses.
"""
