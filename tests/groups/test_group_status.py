"""Groups and rate limits in the status document, `muxtunnel status` and the metrics."""

from __future__ import annotations

import json

from rich.console import Console

from muxtunnel.status import (
    AdmissionRow,
    ClientStatus,
    GroupRow,
    MemberRow,
    ServerStatus,
    ServiceRow,
)
from muxtunnel.statusview import print_status
from muxtunnel.web.metrics import StatusCollector, render


def server_status() -> ServerStatus:
    members = (
        MemberRow("host-a/shop-a", "shop-a", 1, 2, True, True, 3, 120, 0, "closed"),
        MemberRow(
            "host-b/shop-b", "shop-b", 2, 1, False, False, 0, 40, 7, "open",
            circuit_remaining_s=12.5, circuit_opened_total=2,
            health_detail="connect: Connection refused",
        ),
    )  # fmt: skip
    return ServerStatus(
        version="0",
        bind="0.0.0.0:7835",
        tls=None,
        uptime_s=10,
        auth_failures=0,
        services=(ServiceRow("shop", "tcp", "0.0.0.0:8443", 3, 160, members=2),),
        groups=(GroupRow("shop", "tcp", "0.0.0.0:8443", "least_connections", members, 160, 6, 1),),
        admissions=(AdmissionRow("shop", 160, {"service_rate": 9, "source_connections": 2}, 4),),
    )


def test_the_status_document_has_groups_and_rate_limits() -> None:
    document = json.loads(json.dumps(server_status().to_dict()))
    (group,) = document["groups"]
    assert group["policy"] == "least_connections" and group["retries_total"] == 6
    b = group["members"][1]
    assert (b["id"], b["healthy"], b["circuit"], b["circuit_remaining_s"]) == (
        "host-b/shop-b", False, "open", 12.5
    )  # fmt: skip
    assert document["rate_limits"] == [
        {"name": "shop", "admitted_total": 160,
         "refused": {"service_rate": 9, "source_connections": 2}, "sources_tracked": 4}
    ]  # fmt: skip
    assert document["services"][0]["members"] == 2


def test_muxtunnel_status_shows_every_member() -> None:
    console = Console(record=True, width=200)
    print_status(json.loads(json.dumps(server_status().to_dict())), console)
    text = console.export_text()
    assert "shop (least_connections, 0.0.0.0:8443; retried 6, failed 1)" in text
    assert "host-a/shop-a" in text and "host-b/shop-b" in text
    assert "unhealthy: connect: Connection refused" in text
    assert "open 12s" in text and "closed" in text
    assert "service_rate 9 source_connections 2" in text


def test_a_clients_members_show_their_group_and_health() -> None:
    status = ClientStatus(
        version="0",
        server="tunnel:7835",
        reconnects=0,
        services=(
            ServiceRow(
                "shop-a",
                "tcp",
                "tunnel:8443",
                local="127.0.0.1:8080",
                group="shop",
                health="unhealthy: HTTP 503",
            ),
            ServiceRow("db", "tcp", "tunnel:8432", local="127.0.0.1:5432"),
        ),
    )
    document = json.loads(json.dumps(status.to_dict()))
    assert document["services"][0]["group"] == "shop"
    assert "group" not in document["services"][1]
    console = Console(record=True, width=200)
    print_status(document, console)
    assert "unhealthy: HTTP 503" in console.export_text()
    metrics = render(StatusCollector(lambda: status)).decode()
    assert 'muxtunnel_member_healthy{group="shop",service="shop-a"} 0.0' in metrics


def test_metrics_of_groups() -> None:
    text = render(StatusCollector(server_status)).decode()
    expected = [
        'muxtunnel_group_members{group="shop"} 2.0',
        'muxtunnel_group_retries_total{group="shop"} 6.0',
        'muxtunnel_group_failed_visitors_total{group="shop"} 1.0',
        'muxtunnel_group_member_healthy{group="shop",member="host-b/shop-b"} 0.0',
        'muxtunnel_group_member_weight{group="shop",member="host-a/shop-a"} 2.0',
        'muxtunnel_group_member_open_connections{group="shop",member="host-a/shop-a"} 3.0',
        'muxtunnel_group_member_circuit_state{group="shop",member="host-b/shop-b",'
        'state="open"} 1.0',
        'muxtunnel_group_member_circuit_state{group="shop",member="host-b/shop-b",'
        'state="closed"} 0.0',
        'muxtunnel_group_member_dial_failures_total{group="shop",member="host-b/shop-b"} 7.0',
        'muxtunnel_rate_limit_refusals_total{reason="service_rate",service="shop"} 9.0',
    ]
    for line in expected:
        assert line in text, line
