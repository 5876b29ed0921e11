"""`up --server A --server B`: every service on every server, each server its own session.

Two real `listen` processes and one `up` registered with both: visitors of B keep going with
zero errors while A is killed (and come back through A once it is restarted); the admin API
shows a row per server. The config side (`client.servers`) is in test_config.py's style here.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
from stress.visitors import EchoExact, summarize, wait_all

from muxtunnel.config import ConfigError, load_client_config

from .harness import Harness, Listen, TcpEchoServer, echo_works, free_port, split_host_port

MIB = 1 << 20


def opened_port(listen: Listen, count: int = 1) -> int:
    """The public port of the `count`-th service `listen` opened."""
    listen.wait_event("service opened", count=count)
    return split_host_port(listen.events("service opened")[count - 1]["public"])[1]


def admin_status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/status", timeout=5) as answer:
        document: dict[str, object] = json.loads(answer.read())
    return document


def test_one_server_killed_leaves_the_other_serving(
    harness: Harness, tcp_echo: TcpEchoServer, figures
) -> None:
    a, b = harness.listen(), harness.listen()
    admin = free_port()
    up = harness.up(
        a,
        tcp=[f"echo={tcp_echo.port}"],
        extra=["--server", b.address, "--admin", f"127.0.0.1:{admin}"],
        wait=False,
    )
    up.wait_announced(2)
    port_a, port_b = opened_port(a), opened_port(b)
    assert echo_works("127.0.0.1", port_a) and echo_works("127.0.0.1", port_b)
    rows = admin_status(admin)["servers"]
    assert [(row["address"], row["connected"]) for row in rows] == [  # type: ignore[index, union-attr]
        (a.address, True),
        (b.address, True),
    ]

    # B's visitors: a bulk echo and two slow ones that span A's death.
    through_b = ("127.0.0.1", port_b)
    visitors = [EchoExact(through_b, 16 * MIB, seed=1, timeout_s=60)]
    visitors += [
        EchoExact(through_b, 256 * 1024, seed=2 + i, rate_bps=1_000_000, timeout_s=60)
        for i in range(2)
    ]
    for visitor in visitors:
        visitor.start()
    time.sleep(0.3)
    a.kill()
    up.wait_event("session ended")  # A's, and only A's
    assert not wait_all(visitors, 60), summarize(visitors)
    assert summarize(visitors) == {"ok": 3}, summarize(visitors)
    assert echo_works("127.0.0.1", port_b)
    ended = {event.get("server") for event in up.events("session ended")}
    assert ended == {a.address}, ended
    rows = admin_status(admin)["servers"]
    assert [(row["address"], row["connected"]) for row in rows] == [  # type: ignore[index, union-attr]
        (a.address, False),
        (b.address, True),
    ]

    shown = harness.run("status", "--admin", f"127.0.0.1:{admin}").stdout()
    lines = {line.split()[1]: line for line in shown.splitlines() if line.count(":") == 1}
    assert "connecting" in lines.get(a.address, "") and "online" in lines.get(b.address, ""), (
        shown
    )

    # A comes back (same port): up registers there again; B was never touched.
    again = harness.listen(port=a.port)
    port_again = opened_port(again)
    deadline = time.monotonic() + 10
    while not echo_works("127.0.0.1", port_again) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert echo_works("127.0.0.1", port_again)
    assert len(b.events("session closed")) == 0
    figures.record(
        "two servers, one killed",
        visitors_of_the_other=" ".join(f"{k}={v}" for k, v in summarize(visitors).items()),
        max_stall_s=round(max(v.max_stall_s for v in visitors), 2),
    )


def test_servers_in_the_config(tmp_path: Path) -> None:
    path = tmp_path / "client.yaml"
    path.write_text("client:\n  servers: [a.example:7000, 'b.example']\n  token: " + "t" * 32)
    config = load_client_config(path)
    assert (config.server_host, config.server_port) == ("a.example", 7000)
    assert config.servers == (("a.example", 7000), ("b.example", 7835))
    assert [(c.server_host, c.server_port, c.servers) for c in config.per_server()] == [
        ("a.example", 7000, ()),
        ("b.example", 7835, ()),
    ]
    # The command line's --server (one or several) replaces the file's list.
    one = load_client_config(path, {"server": "c.example:1", "servers": ("c.example:1",)})
    assert (one.server_host, one.server_port, one.servers) == ("c.example", 1, ())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("servers: [a.example, a.example:7835]", "listed twice"),
        ("server: x.example\n  servers: [a.example, b.example]", "not both"),
        ("servers: [a.example:99999]", "port"),
        ("servers: a.example", "expected a list"),
    ],
)
def test_bad_servers_are_refused_with_their_place(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "client.yaml"
    path.write_text(f"client:\n  {text}\n  token: " + "t" * 32)
    with pytest.raises(ConfigError, match=error):
        load_client_config(path)
