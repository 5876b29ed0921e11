"""`muxtunnel status`: fetch the status document of a running `listen` or `up`, render tables.

It speaks to the admin API over HTTP (`urllib`, no event loop needed) and knows the document
only as JSON, so it works against any version that serves `/api/v1/status`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from muxtunnel.status import STATUS_PATH

__all__ = ["FETCH_TIMEOUT_S", "StatusError", "fetch_status", "print_status", "render_status"]

#: How long `muxtunnel status` waits for the admin API to answer.
FETCH_TIMEOUT_S = 5.0


class StatusError(Exception):
    """`muxtunnel status` could not get an answer; the message is for the user."""


def fetch_status(
    address: str, token: str | None, timeout_s: float = FETCH_TIMEOUT_S
) -> dict[str, Any]:
    """GET the status document from a running `listen` or `up`."""
    request = urllib.request.Request(f"http://{address}{STATUS_PATH}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            data = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401 and token:
            raise StatusError(
                f"{address} refused the admin token: check --admin-token, --admin-token-file "
                "or $MUXTUNNEL_ADMIN_TOKEN against the token of its --admin endpoint"
            ) from None
        if exc.code == 401:
            raise StatusError(
                f"{address} wants a bearer token: give --admin-token, --admin-token-file or "
                "$MUXTUNNEL_ADMIN_TOKEN"
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


def _compression(service: dict[str, Any]) -> str:
    """`zstd`, with what it saved on the carrier once bytes went through (`zstd 31% of 2.0 MiB`)."""
    name = service.get("compression")
    carrier = service.get("carrier_bytes") or {}
    if not name or not carrier.get("plain"):
        return name or "-"
    share = 100 * carrier["compressed"] / carrier["plain"]
    return f"{name} {share:.0f}% of {_size(carrier['plain'])}"


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
        # Text, never markup: names, addresses and peers come from the other side (`[/x]` in a
        # public_host made rich raise MarkupError and `muxtunnel status` exit).
        table.add_row(*(Text(cell) for cell in row))
    if not rows:
        table.add_row(*(["-"] * len(columns)))
    return table


def render_status(data: dict[str, Any]) -> Group:
    """Rich tables for a status document (either role); `StatusError` if it is malformed.

    Every text of the document is shown as it is, never read as rich markup.
    """
    try:
        return _render(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"{type(exc).__name__}: {exc}"
        raise StatusError(f"the status document is malformed ({what})") from None


def _render(data: dict[str, Any]) -> Group:
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
                        ("visits " if s.get("role") == "visitor" else "")
                        + ", ".join(s["services"]),
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
                (f"muxtunnel {data.get('command', 'up')} ", "bold"),
                f"server {data['server']}  {online}{rtt}  reconnects {data['reconnects']}",
            )
        )
    if servers := data.get("servers"):  # up: a row per server it registers with
        parts.append(_servers_table(servers))
        parts.extend(_paths_table(row) for row in servers if row.get("paths"))
    if resume := data.get("resume"):
        failures = ", ".join(f"{k} {v}" for k, v in resume["failures"].items()) or "none"
        parts.append(
            Text(
                f"resumes {resume['resumes']}  failures {failures}  "
                f"suspended {resume['suspended']}  replay {_size(resume['replay_bytes'])} "
                f"(peak {_size(resume['replay_peak_bytes'])})"
            )
        )
    web = data.get("web")
    if web:
        ports = ", ".join(f"{kind} {web[kind]}" for kind in ("http", "https") if web.get(kind))
        refused = sum(web["refusals"].values())
        parts.append(
            Text(
                f"web ports: *.{web['domain']}  {ports}  "
                f"{'tls ends here' if web['terminates_tls'] else 'tls passthrough'}  "
                f"connections {web['connections_total']}  refused {refused}"
            )
        )
    columns = ["service", "type", "public address", "conns", "in", "out", "compression"]
    if data["role"] == "client":
        columns.insert(3, "local")
    if data.get("command") == "visit":  # it serves private services locally
        columns[2:4] = ["served at", "reaches"]
    grouped = data["role"] == "client" and any("group" in s for s in data["services"])
    if grouped:
        columns += ["group", "health"]
    with_requests = any("responses" in s for s in data["services"])
    if with_requests:
        columns.append("responses")
    rows = []
    for s in data["services"]:
        public = s["public"] or "-"
        if data["role"] == "server" and s.get("private"):
            public = f"private, {s['visitor_sessions']} visitor session(s)"
        if s.get("provider_online") is False:
            public += " (provider offline)"
        row = [
            s["name"],
            s["type"],
            public,
            str(s["connections"]),
            _size(s["bytes_in"]),
            _size(s["bytes_out"]),
            _compression(s),
        ]
        if data["role"] == "client":
            row.insert(3, s["local"])
        if grouped:
            row += [s.get("group") or "-", s.get("health") or "-"]
        if with_requests:
            responses = s.get("responses") or {}
            row.append(" ".join(f"{k} {v}" for k, v in responses.items() if v) or "-")
        rows.append(row)
    parts.append(_table("services", columns, rows))
    if data.get("cluster"):
        parts += _cluster_parts(data["cluster"])
    if data.get("groups"):
        parts.append(_groups_table(data["groups"]))
    if data.get("rate_limits"):
        parts.append(_rate_limits_table(data["rate_limits"]))
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


def _cluster_parts(cluster: dict[str, Any]) -> list[Any]:
    """This node's line and the whole cluster's nodes, as the node last read the registry."""
    up = "registry up" if cluster["registry_up"] else "REGISTRY UNREACHABLE"
    line = Text(
        f"cluster node {cluster['node_id']} ({cluster['advertise']})  {up} "
        f"({cluster['registry']}, lease {cluster['lease_s']} s)  "
        f"peers {', '.join(cluster['peers_out']) or '-'}  forwarded {cluster['forwarded_total']}"
        f" (web {cluster.get('web_forwarded_total', 0)},"
        f" to group members {cluster.get('web_spread_total', 0)})"
    )
    rows = [
        [
            node["node_id"] + (" (this node)" if node["node_id"] == cluster["node_id"] else ""),
            node["advertise"] or "(record gone)",
            str(len(node["sessions"])),
            ", ".join(node["services"]) or "-",
            ", ".join(c["key"] for c in node["claims"] if not c["key"].startswith("service:"))
            or "-",
        ]
        for node in cluster["nodes"]
    ]
    columns = ["node", "advertise", "clients", "services", "ports and hosts"]
    return [line, _table("cluster nodes", columns, rows)]


def _servers_table(servers: list[dict[str, Any]]) -> Table:
    def state(row: dict[str, Any]) -> str:
        return "suspended" if row["suspended"] else "online" if row["connected"] else "connecting"

    return _table(
        "servers",
        ["server", "state", "rtt", "reconnects", "resumes", "replay"],
        [
            [
                row["address"],
                state(row),
                f"{row['rtt_ms']} ms" if row["rtt_ms"] is not None else "-",
                str(row["reconnects"]),
                str(row["resumes"]),
                _size(row["replay_bytes"]),
            ]
            for row in servers
        ],
    )


def _paths_table(server: dict[str, Any]) -> Table:
    """The paths to one server (`client.paths`): the active one marked, each one's measures."""
    switches = ", ".join(f"{k} {v}" for k, v in server.get("path_switches", {}).items())

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:g} ms"

    return _table(
        f"paths to {server['address']} (switches: {switches or 'none'})",
        ["", "path", "route", "state", "rtt", "loss", "score", "switched in"],
        [
            [
                "*" if row["state"] == "active" else "",
                row["name"],
                row["route"],
                row["state"] + (f": {row['reason'][:48]}" if row.get("reason") else ""),
                ms(row["rtt_ms"]),
                f"{row['loss'] * 100:.0f} %",
                ms(None if row["score"] is None else round(row["score"] * 1000, 2)),
                str(row["switches_in"]),
            ]
            for row in server["paths"]
        ],
    )


def _circuit(member: dict[str, Any]) -> str:
    state = str(member["circuit"]).replace("_", "-")
    remaining = member.get("circuit_remaining_s")
    return f"{state} {remaining:.0f}s" if remaining is not None else state


def _groups_table(groups: list[dict[str, Any]]) -> Table:
    """One row per member of each load-balancing group."""
    rows = []
    for group in groups:
        head = (
            f"{group['name']} ({group['policy']}, {group['public']}; "
            f"retried {group['retries_total']}, failed {group['failed_total']})"
        )
        for index, member in enumerate(group["members"]):
            health = "healthy" if member["healthy"] else "unhealthy"
            if member.get("health_detail") and not member["healthy"]:
                health += f": {member['health_detail']}"
            rows.append([
                head if index == 0 else "", member["id"], str(member["session"]),
                str(member["weight"]), health, str(member["connections"]),
                str(member["visitors_total"]), str(member["dial_failures"]), _circuit(member),
            ])  # fmt: skip
    columns = ["group", "member", "session", "weight", "health", "conns", "visitors",
               "dial fails", "circuit"]  # fmt: skip
    return _table("groups", columns, rows)


def _rate_limits_table(limits: list[dict[str, Any]]) -> Table:
    rows = [
        [
            row["name"], str(row["admitted_total"]),
            " ".join(f"{reason} {n}" for reason, n in sorted(row["refused"].items())) or "-",
            str(row["sources_tracked"]),
        ]
        for row in limits
    ]  # fmt: skip
    return _table("rate limits", ["service", "admitted", "refused", "sources"], rows)


def print_status(data: dict[str, Any], console: Console | None = None) -> None:
    """Print the tables; wide enough not to cut addresses when piped (rich assumes 80)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    console.print(render_status(data))
