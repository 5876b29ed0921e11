"""The admin API (JSON over HTTP), the metrics endpoint, and `muxtunnel status`.

`GET /api/v1/status` returns what a `listen` or `up` process is doing right now: sessions,
services with their public addresses, and open visitor connections with peer, age and bytes.
`muxtunnel status` fetches it and renders tables. Both endpoints are off unless configured; the
config loader refuses a non-loopback address without a bearer token.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from muxtunnel import __version__
from muxtunnel.httpd import Response, Route, serve_http
from muxtunnel.limits import ConnectionMeter
from muxtunnel.metrics import CONTENT_TYPE, ClientCollector, ServerCollector, render
from muxtunnel.model import Endpoint

if TYPE_CHECKING:
    from muxtunnel.client import Client
    from muxtunnel.server import Server

__all__ = [
    "STATUS_PATH",
    "StatusError",
    "client_status",
    "fetch_status",
    "render_status",
    "run_endpoints",
    "server_status",
]

STATUS_PATH = "/api/v1/status"
#: Where `muxtunnel status` looks when not told (the admin port people tend to pick).
DEFAULT_ADMIN = "127.0.0.1:7836"


class StatusError(Exception):
    """`muxtunnel status` could not get an answer; the message is for the user."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _connections(meters: Iterable[ConnectionMeter], now: float) -> list[dict[str, Any]]:
    return [
        {
            "service": meter.service,
            "peer": meter.peer,
            "age_s": round(now - meter.started, 3),
            "bytes_in": meter.bytes_in,
            "bytes_out": meter.bytes_out,
        }
        for meter in sorted(meters, key=lambda m: m.started)
    ]


def server_status(server: Server) -> dict[str, Any]:
    now = anyio.current_time()
    sessions = []
    for session in server.sessions.values():
        if not session.authenticated or not session.has_session:
            continue
        sessions.append(
            {
                "id": session.id,
                "peer": session.peer,
                "age_s": round(now - session.started, 3),
                "rtt_ms": _ms(session.session.rtt_s),
                "streams": session.session.stream_count,
                "services": sorted(session.services),
            }
        )
    services, live = [], []
    for name, service in sorted(server.registry.by_name.items()):
        traffic = server.traffic.get(name)
        limiter = server.limiters.get(name)
        udp = service.type == "udp"
        services.append(
            {
                "name": name,
                "type": service.type,
                "public": _address(server.config.public_host, service.port),
                "session": service.session_id,
                "connections": service.udp.flows_opened if udp else service.visitors,
                "bytes_in": service.udp.bytes_in if udp else (traffic.bytes_in if traffic else 0),
                "bytes_out": (
                    service.udp.bytes_out if udp else (traffic.bytes_out if traffic else 0)
                ),
                "compression": service.compression,
                "limits": limiter.describe() if limiter else {},
                "udp_dropped": service.udp.dropped() if udp else None,
            }
        )
        if traffic is not None:
            live.extend(traffic.live)
    return {
        "role": "server",
        "version": __version__,
        "bind": _address(server.config.bind_host, server.port or server.config.bind_port),
        "tls": server.tls.fingerprint if server.tls else None,
        "uptime_s": round(now - server.started, 3),
        "auth_failures": server.auth_failures,
        "sessions": sessions,
        "services": services,
        "connections": _connections(live, now),
    }


def client_status(client: Client) -> dict[str, Any]:
    now = anyio.current_time()
    session = client.session
    online = session is not None and not session.closed and client.connected.is_set()
    services, live = [], []
    for name, state in client.services.items():
        traffic = client.traffic_of(name)
        udp = state.spec.type == "udp"
        services.append(
            {
                "name": name,
                "type": state.spec.type,
                "local": state.spec.local,
                "public": state.public,
                "connections": state.udp.flows_opened if udp else len(traffic.live),
                "bytes_in": 0 if udp else traffic.bytes_in,
                "bytes_out": state.udp.bytes_in if udp else traffic.bytes_out,
                "compression": state.compression,
            }
        )
        live.extend(traffic.live)
    return {
        "role": "client",
        "version": __version__,
        "server": client.server,
        "connected": online,
        "rtt_ms": _ms(session.rtt_s) if online and session is not None else None,
        "reconnects": client.reconnects,
        "services": services,
        "connections": _connections(live, now),
    }


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _json(data: dict[str, Any]) -> Response:
    return Response(200, json.dumps(data, indent=1).encode() + b"\n")


async def run_endpoints(
    metrics: Endpoint | None,
    admin: Endpoint | None,
    target: Server | Client,
    *,
    task_status: anyio.abc.TaskStatus[dict[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the metrics endpoint and the admin API of `target` (either may be None)."""
    from muxtunnel.server import Server

    if isinstance(target, Server):
        collector: ServerCollector | ClientCollector = ServerCollector(target)
        status = server_status
    else:
        collector = ClientCollector(target)
        status = client_status  # type: ignore[assignment]

    def metrics_route() -> Response:
        return Response(200, render(collector), CONTENT_TYPE)

    def status_route() -> Response:
        return _json(status(target))  # type: ignore[arg-type]

    ports: dict[str, int] = {}
    async with anyio.create_task_group() as tg:
        if metrics is not None:
            routes: dict[str, Route] = {"/metrics": metrics_route, "/": metrics_route}
            ports["metrics"] = await tg.start(_serve, metrics, routes, "metrics")
        if admin is not None:
            routes = {STATUS_PATH: status_route, "/metrics": metrics_route}
            ports["admin"] = await tg.start(_serve, admin, routes, "admin api")
        task_status.started(ports)


async def _serve(
    endpoint: Endpoint,
    routes: dict[str, Route],
    name: str,
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    await serve_http(endpoint, routes, name=name, task_status=task_status)


# --- muxtunnel status ---


def fetch_status(address: str, token: str | None, timeout_s: float = 5.0) -> dict[str, Any]:
    """GET the status document from a running `listen` or `up`."""
    request = urllib.request.Request(f"http://{address}{STATUS_PATH}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            data = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise StatusError(
                f"{address} wants a bearer token: give --admin-token or $MUXTUNNEL_ADMIN_TOKEN"
            ) from None
        raise StatusError(f"{address} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(f"cannot reach the admin API at {address}: {reason}") from None
    except ValueError:
        raise StatusError(f"{address} did not answer with JSON") from None
    if not isinstance(data, dict) or data.get("role") not in ("server", "client"):
        raise StatusError(f"{address} is not a muxtunnel admin API")
    return data


def _size(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    if not rows:
        table.add_row(*(["-"] * len(columns)))
    return table


def render_status(data: dict[str, Any]) -> Group:
    """Rich tables for a status document (either role)."""
    parts: list[Any] = []
    if data["role"] == "server":
        tls = f"  tls {data['tls']}" if data.get("tls") else ""
        parts.append(
            Text.assemble(
                ("muxtunnel listen ", "bold"),
                f"{data['bind']}  up {_age(data['uptime_s'])}  "
                f"auth failures {data['auth_failures']}{tls}",
            )
        )
        parts.append(
            _table(
                "sessions",
                ["id", "peer", "age", "rtt", "streams", "services"],
                [
                    [
                        str(s["id"]),
                        s["peer"],
                        _age(s["age_s"]),
                        f"{s['rtt_ms']} ms" if s["rtt_ms"] is not None else "-",
                        str(s["streams"]),
                        ", ".join(s["services"]),
                    ]
                    for s in data["sessions"]
                ],
            )
        )
    else:
        online = "online" if data["connected"] else "connecting"
        rtt = f"  rtt {data['rtt_ms']} ms" if data.get("rtt_ms") is not None else ""
        parts.append(
            Text.assemble(
                ("muxtunnel up ", "bold"),
                f"server {data['server']}  {online}{rtt}  reconnects {data['reconnects']}",
            )
        )
    columns = ["service", "type", "public address", "conns", "in", "out", "compression"]
    if data["role"] == "client":
        columns.insert(3, "local")
    rows = []
    for s in data["services"]:
        row = [
            s["name"],
            s["type"],
            s["public"] or "-",
            str(s["connections"]),
            _size(s["bytes_in"]),
            _size(s["bytes_out"]),
            s.get("compression") or "-",
        ]
        if data["role"] == "client":
            row.insert(3, s["local"])
        rows.append(row)
    parts.append(_table("services", columns, rows))
    parts.append(
        _table(
            "connections",
            ["service", "peer", "age", "in", "out"],
            [
                [
                    c["service"],
                    c["peer"],
                    _age(c["age_s"]),
                    _size(c["bytes_in"]),
                    _size(c["bytes_out"]),
                ]
                for c in data["connections"]
            ],
        )
    )
    return Group(*parts)


def print_status(data: dict[str, Any], console: Console | None = None) -> None:
    """Print the tables; wide enough not to cut addresses when piped (rich assumes 80)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    console.print(render_status(data))
