"""`up` with several paths (`client.paths`) on loopback, where no namespace is needed: a path
whose server address refuses connections is passed over at start, shown down with its reason
and logged at doubling counts; the session runs on the next path (the network-namespace tests,
`tests/netns/test_paths_netns.py`, cut live paths)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from .harness import Harness, TcpEchoServer, echo_works, free_port


def _status(admin: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{admin}/api/v1/status", timeout=5) as answer:
        document: dict[str, Any] = json.loads(answer.read())
    return document


def test_a_dead_first_path_is_passed_over(harness: Harness, tcp_echo: TcpEchoServer) -> None:
    listen = harness.listen()
    dead = free_port("127.0.0.1")  # nothing listens there: connections are refused
    admin = f"127.0.0.1:{free_port('127.0.0.1')}"
    quick = harness.write(
        "client.yaml", "client:\n  reconnect_min_s: 0.1\n  reconnect_max_s: 0.2\n"
    )
    up = harness.up(
        listen,
        tcp=[f"echo={tcp_echo.port}"],
        config=quick,
        extra=[
            "--path", f"one=127.0.0.1@127.0.0.1:{dead}",
            "--path", f"two=127.0.0.1@{listen.address}",
            "--admin", admin,
        ],
    )  # fmt: skip
    assert echo_works(*up.public("echo"))
    deadline = time.monotonic() + 15
    while True:
        rows = {row["name"]: row for row in _status(admin)["servers"][0]["paths"]}
        if rows["one"]["state"] == "down" and rows["two"]["state"] == "active":
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.1)
    assert "cannot connect" in (rows["one"]["reason"] or ""), rows["one"]
    assert rows["two"]["route"] == f"127.0.0.1 -> {listen.address}"
    up.wait_for(lambda: len(up.events("path unreachable")) >= 3, 10, "4 failures of path one")
    failures = [e["failures"] for e in up.events("path unreachable") if e["path"] == "one"]
    assert failures[:3] == [1, 2, 4], failures  # at doubling counts
    assert up.events("path switch") == []  # path one never came up: nothing to move back to
