"""Rate limits on new visitors (per service, per source address) and the group token gate."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from e2e.harness import Harness, free_port

from .cluster import Cluster, NamedEcho, VisitFailed, visit

#: The issue's bound for rate limits: within ±10% of the configured rate.
RATE_TOLERANCE = 0.10


#: How a refused TCP visitor ends: a reset, seen on connect, send, shutdown (ENOTCONN: the
#: reset came first) or receive; never a clean EOF.
RESETS = ("ConnectionResetError", "BrokenPipeError", "OSError: [Errno 107]")


def hammer(
    cluster: Cluster, seconds: float, source: str | None = None, threads: int = 4
) -> tuple[int, int, float]:
    """Visitors as fast as `threads` threads can make them for `seconds`: (admitted, refused,
    the seconds from the first to the last attempt). Every refused one must see a reset."""
    admitted = refused = 0
    not_reset: list[str] = []
    lock = threading.Lock()
    first = last = 0.0
    started = time.monotonic()

    def run() -> None:
        nonlocal admitted, refused, first, last
        while time.monotonic() - started < seconds:
            at = time.monotonic()
            try:
                visit(cluster.host, cluster.port, source=source, timeout_s=10)
                ok = True
            except VisitFailed as exc:
                ok = False
                if not str(exc).startswith(RESETS):
                    not_reset.append(str(exc))
            with lock:
                first = first or at
                last = max(last, at)
                admitted += ok
                refused += not ok

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 30)
    assert not not_reset, not_reset[:5]
    return admitted, refused, last - first


def test_the_service_rate_limit_admits_its_rate_and_resets_the_rest(
    cluster: Cluster, figures: Any
) -> None:
    rate, burst = 40.0, 4
    cluster.server(rate_limit={"new_per_s": rate, "burst": burst})
    try:
        time.sleep(burst / rate)  # a full bucket to start from
        before = cluster.status()["rate_limits"][0]
        admitted, refused, seconds = hammer(cluster, 3.0)
        expected = burst + rate * seconds
        assert abs(admitted - expected) <= expected * RATE_TOLERANCE, (admitted, expected)
        assert refused > admitted  # the rest got a reset, and were counted as refused
        after = cluster.status()["rate_limits"][0]
        assert after["admitted_total"] - before["admitted_total"] == admitted
        assert (
            after["refused"]["service_rate"] - before["refused"].get("service_rate", 0) == refused
        )
        figures.record("groups: service rate limit 40/s", admitted=admitted,
                       expected=round(expected, 1), refused=refused,
                       seconds=round(seconds, 2))  # fmt: skip
    finally:
        cluster.server(lb="round_robin")


def test_per_source_limits_hold_each_source_to_its_own_rate(cluster: Cluster, figures: Any) -> None:
    rate = 10.0
    cluster.server(per_source={"new_per_s": rate})
    try:
        results: dict[str, tuple[int, int, float]] = {}

        def run(source: str) -> None:
            results[source] = hammer(cluster, 2.0, source=source, threads=2)

        workers = [threading.Thread(target=run, args=(s,)) for s in ("127.0.0.2", "127.0.0.3")]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert set(results) == {"127.0.0.2", "127.0.0.3"}  # both hammers ran to their end
        for source, (admitted, refused, seconds) in results.items():
            expected = rate + rate * seconds  # the burst is one second's worth
            assert abs(admitted - expected) <= expected * RATE_TOLERANCE, (source, admitted)
            assert refused > 0
        figures.record("groups: per-source rate limit 10/s, two sources",
                       admitted={s: r[0] for s, r in results.items()})  # fmt: skip
    finally:
        cluster.server(lb="round_robin")


def test_per_source_max_connections(cluster: Cluster) -> None:
    cluster.server(per_source={"max_connections": 2})
    held: list[socket.socket] = []
    try:
        for _ in range(2):
            sock = socket.create_connection((cluster.host, cluster.port), timeout=20)
            assert sock.recv(16).startswith(b"web-")
            held.append(sock)
        with pytest.raises(VisitFailed):  # a third from the same address: reset
            visit(cluster.host, cluster.port, timeout_s=10)
        assert visit(cluster.host, cluster.port, source="127.0.0.5").startswith("web-")
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the closed one frees a place (once the server has seen it end)
            try:
                visit(cluster.host, cluster.port, timeout_s=10)
                break
            except VisitFailed:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        refused = cluster.status()["rate_limits"][0]["refused"]
        assert refused.get("source_connections", 0) >= 1
    finally:
        for sock in held:
            sock.close()
        cluster.server(lb="round_robin")


def test_refusals_are_in_the_metrics(harness: Harness) -> None:
    """Counted refusals reach Prometheus: rate_limit_refusals_total by reason, and the
    group's members by health, weight and circuit state."""
    metrics = free_port()
    config = harness.write(
        "server.yaml",
        "server:\n  services:\n    - {name: web, rate_limit: {new_per_s: 1, burst: 1}}\n",
    )
    listen = harness.listen("--config", config, "--metrics", f"127.0.0.1:{metrics}")
    echo = NamedEcho("a")
    try:
        up = harness.up(listen, tcp=[f"a={echo.port}"], extra=["--group", "web"])
        host, port = up.public("a")
        assert visit(host, port) == "a"
        with pytest.raises(VisitFailed):
            visit(host, port)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        assert 'muxtunnel_rate_limit_refusals_total{reason="service_rate",service="web"} 1.0' in (
            text
        ), text
        assert 'muxtunnel_rate_limit_admitted_total{service="web"} 1.0' in text
        assert 'muxtunnel_group_members{group="web"} 1.0' in text
        member = [line for line in text.splitlines() if "group_member_circuit_state" in line]
        assert any('state="closed"' in line and line.endswith(" 1.0") for line in member)
        assert 'muxtunnel_group_member_visitors_total{group="web",member=' in text
    finally:
        echo.stop()


# --- the group token ---


def start_member(
    harness: Harness, listen: Any, echo: NamedEcho, name: str, *flags: str, wait: bool = True
) -> Any:
    return harness.up(
        listen, tcp=[f"{name}={echo.port}"], extra=["--group", "web", *flags], wait=wait
    )


def test_a_member_with_a_wrong_group_token_is_refused(harness: Harness) -> None:
    config = harness.write(
        "server.yaml", "server:\n  services:\n    - {name: web, group_token: right-token-01}\n"
    )
    admin = free_port()
    listen = harness.listen("--config", config, "--admin", f"127.0.0.1:{admin}")
    echoes = [NamedEcho(name) for name in ("a", "b", "c")]
    try:
        good = start_member(harness, listen, echoes[0], "a", "--group-token", "right-token-01")
        host, port = good.public("a")
        wrong = start_member(
            harness, listen, echoes[1], "b", "--group-token", "wrong-token-01", wait=False
        )
        assert wrong.wait_exit(20) == 1
        assert any("authentication failed" in line for line in wrong.error_lines())
        stranger = start_member(harness, listen, echoes[2], "c", wait=False)  # no token at all
        assert stranger.wait_exit(20) == 1
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/api/v1/status") as reply:
            status = json.load(reply)
        assert status["auth_failures"] == 2
        (group,) = status["groups"]
        assert [m["service"] for m in group["members"]] == ["a"]
        assert all(visit(host, port) == "a" for _ in range(5))  # the group serves on
    finally:
        for echo in echoes:
            echo.stop()


def test_without_a_configured_token_the_first_member_sets_it(harness: Harness) -> None:
    listen = harness.listen()
    echoes = [NamedEcho(name) for name in ("a", "b", "c", "d")]
    try:
        first = start_member(harness, listen, echoes[0], "a", "--group-token", "team-secret-01")
        host, port = first.public("a")
        second = start_member(harness, listen, echoes[1], "b", "--group-token", "team-secret-01")
        assert second.public("b") == (host, port)
        other = start_member(
            harness, listen, echoes[2], "c", "--group-token", "guessed-secret", wait=False
        )
        assert other.wait_exit(20) == 1
        bare = start_member(harness, listen, echoes[3], "d", wait=False)
        assert bare.wait_exit(20) == 1
        assert {visit(host, port) for _ in range(6)} == {"a", "b"}
        # The group ends with its last member: its token goes with it.
        first.stop()
        second.stop()
        deadline = time.monotonic() + 20
        while True:
            try:
                visit(host, port, timeout_s=2)
            except VisitFailed:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for echo in echoes:
            echo.stop()


def test_a_group_name_held_by_a_plain_service_is_taken(harness: Harness) -> None:
    listen = harness.listen()
    echo = NamedEcho("a")
    try:
        harness.up(listen, tcp=[f"web={echo.port}"])  # not in a group
        member = start_member(harness, listen, echo, "b", wait=False)
        assert member.wait_exit(20) == 1
        assert any("outside any group" in line for line in member.error_lines())
    finally:
        echo.stop()
