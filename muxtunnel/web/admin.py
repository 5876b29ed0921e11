"""The admin API (JSON over HTTP) and the metrics endpoint of `listen` and `up`.

`GET /api/v1/status` returns what the process is doing right now (`muxtunnel.status`): sessions,
services with their public addresses, and open visitor connections with peer, age and bytes;
`muxtunnel status` fetches and renders it. `/metrics` is the Prometheus exposition. Both are
off unless configured; the config loader refuses a non-loopback address without a bearer token.

Both are fed by one callable returning a status snapshot: they never see a live object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import anyio
import anyio.abc

from muxtunnel.log import Refusals
from muxtunnel.model import Endpoint
from muxtunnel.status import STATUS_PATH, Status
from muxtunnel.web.httpd import Response, Route, serve_http
from muxtunnel.web.metrics import CONTENT_TYPE, StatusCollector, render

__all__ = ["run_endpoints"]


async def run_endpoints(
    metrics: Endpoint | None,
    admin: Endpoint | None,
    status: Callable[[], Status],
    *,
    refusals: Refusals | None = None,
    task_status: anyio.abc.TaskStatus[dict[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the metrics endpoint and the admin API (either may be None) until cancelled.

    Reports the bound ports ({"metrics": ..., "admin": ...}, of those configured) once both
    listen; raises `TransportError` if one cannot bind. What the endpoints refuse is counted
    in `refusals`: the process's own, which its status snapshot (and so the metrics) shows.
    """
    collector = StatusCollector(status)

    def metrics_route() -> Response:
        return Response(200, render(collector), CONTENT_TYPE)

    def status_route() -> Response:
        return Response(200, json.dumps(status().to_dict(), indent=1).encode() + b"\n")

    ports: dict[str, int] = {}
    async with anyio.create_task_group() as tg:
        if metrics is not None:
            routes: dict[str, Route] = {"/metrics": metrics_route, "/": metrics_route}
            serve = partial(serve_http, name="metrics", refusals=refusals)
            ports["metrics"] = await tg.start(serve, metrics, routes)
        if admin is not None:
            routes = {STATUS_PATH: status_route, "/metrics": metrics_route}
            serve = partial(serve_http, name="admin api", refusals=refusals)
            ports["admin"] = await tg.start(serve, admin, routes)
        task_status.started(ports)
