"""A member whose local service dies: health checks take it out of the rotation within their
bound, the circuit breaker ejects it on failed dials alone, and the transparent retry keeps
every visitor whole meanwhile."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

from testenv import within_load

from .cluster import Cluster, VisitFailed, open_visitor, visit, visit_many

HEALTH = {"type": "tcp", "interval_s": 0.2, "timeout_s": 0.1, "unhealthy_after": 2,
          "healthy_after": 2}  # fmt: skip
#: `HealthSettings.detection_bound_s`: interval x unhealthy_after + timeout.
DOWN_BOUND_S = 0.2 * 2 + 0.1
UP_BOUND_S = 0.2 * 2 + 0.1


class Visitors:
    """Visitors one after another from two threads until stopped: when, and who served them."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.results: list[tuple[float, str | VisitFailed]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                outcome: str | VisitFailed = visit(self.cluster.host, self.cluster.port)
            except VisitFailed as exc:
                outcome = exc
            self.results.append((at, outcome))
            time.sleep(0.005)

    def stop(self) -> list[tuple[float, str | VisitFailed]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return self.results


def baseline_visit_s(cluster: Cluster) -> float:
    """How long one visitor takes on this machine now (the unit of `within_load`)."""
    times = []
    for _ in range(10):
        started = time.monotonic()
        visit(cluster.host, cluster.port)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def test_an_unhealthy_member_gets_no_new_visitors_and_no_visitor_fails(
    cluster: Cluster, figures: Any
) -> None:
    # A circuit that needs many failures: the health checks alone take the member out here.
    cluster.server(lb="round_robin", circuit={"failures": 1000, "window_s": 1})
    for index in range(3):
        cluster.member(index, health=HEALTH)
    held: list[tuple[socket.socket, str]] = []
    try:
        baseline_s = baseline_visit_s(cluster)
        while not held or held[-1][1] != "web-1":  # a long-lived visitor on web-1
            held.append(open_visitor(cluster))
        open_on_web1 = held[-1][0]
        visitors = Visitors(cluster)
        time.sleep(0.5)
        killed_at = time.monotonic()
        cluster.echoes[1].stop()
        # A visitor that started between `killed_at` and here may have been served by web-1
        # (stop() serves what its listen queue holds): "after the kill" starts once it is down.
        down_at = time.monotonic()
        cluster.wait_status(lambda m: not m["web-1"]["healthy"], "web-1 reported unhealthy")
        failover_s = time.monotonic() - killed_at
        picked_when_unhealthy = cluster.members()["web-1"]["visitors_total"]
        time.sleep(1.0)
        results = visitors.stop()
        members = cluster.members()
        # Nothing picked it since it was reported: the group stopped sending visitors there.
        assert members["web-1"]["visitors_total"] == picked_when_unhealthy
        assert "connect" in members["web-1"]["health_detail"], members["web-1"]
        # Open visitors are not cut: the one on web-1 still has its service.
        open_on_web1.sendall(b"still there")
        assert open_on_web1.recv(64) == b"still there"
        assert members["web-1"]["connections"] == 1
        failed = [outcome for _, outcome in results if isinstance(outcome, VisitFailed)]
        assert not failed, failed[:5]  # the picks of web-1 meanwhile were retried elsewhere
        after_kill = [o for at, o in results if at > down_at]
        assert after_kill and "web-1" not in after_kill
        group = cluster.group()
        assert group["failed_total"] == 0
        assert failover_s <= within_load(DOWN_BOUND_S + 0.2, baseline_s), failover_s
        # Back: healthy again after healthy_after good checks, and visited again.
        restarted_at = time.monotonic()
        cluster.echoes[1].start()
        cluster.wait_status(lambda m: m["web-1"]["available"], "web-1 healthy again")
        recovery_s = time.monotonic() - restarted_at
        assert recovery_s <= within_load(UP_BOUND_S + 0.2, baseline_s), recovery_s
        assert "web-1" in visit_many(cluster.host, cluster.port, 9).served
        figures.record(
            "groups: failover by health check", seconds=round(failover_s, 3),
            bound_s=DOWN_BOUND_S, recovery_s=round(recovery_s, 3), visitors=len(results),
            during_failover=sum(1 for at, _ in results if killed_at <= at <= killed_at
                                + failover_s),
            retried=group["retries_total"], failed=len(failed),
        )  # fmt: skip
    finally:
        for sock, _ in held:
            sock.close()
        cluster.echoes[1].stop()
        cluster.echoes[1].start()
        for index in range(3):
            cluster.member(index)
        cluster.server(lb="round_robin")


def test_the_circuit_opens_half_opens_and_closes_again(cluster: Cluster, figures: Any) -> None:
    window_s = 2.0
    cluster.server(lb="round_robin", circuit={"failures": 3, "window_s": window_s, "cooldown_s": 1})
    time.sleep(window_s)  # failed dials of earlier tests fall out of the window
    start = cluster.members()["web-1"]
    retries_before = cluster.group()["retries_total"]
    cluster.echoes[1].stop()
    try:
        # Closed -> open: three failed dials in the window, each visitor retried elsewhere. One
        # visitor at a time: concurrent ones could pick the member while its third dial fails.
        tally = visit_many(cluster.host, cluster.port, 30, workers=1)
        assert not tally.failures, tally.failures[:5]
        assert "web-1" not in tally.served
        member = cluster.members()["web-1"]
        failures = member["dial_failures"] - start["dial_failures"]
        assert (member["circuit"], failures) == ("open", 3), member
        opened = member["circuit_opened_total"] - start["circuit_opened_total"]
        assert opened == 1 and not member["available"]
        assert member["healthy"]  # no health check here: the dials alone ejected it
        frozen = member["visitors_total"]
        assert not visit_many(cluster.host, cluster.port, 12).failures
        assert cluster.members()["web-1"]["visitors_total"] == frozen  # no picks while open
        # Open -> half open after the cooldown; its one probe visitor fails: open again, for
        # twice as long.
        cluster.wait_status(lambda m: m["web-1"]["circuit"] == "half_open", "half open", 10)
        tally = visit_many(cluster.host, cluster.port, 6)
        assert not tally.failures, tally.failures[:5]
        member = cluster.members()["web-1"]
        opened = member["circuit_opened_total"] - start["circuit_opened_total"]
        assert member["circuit"] == "open" and opened == 2, member
        assert member["visitors_total"] == frozen + 1  # exactly one probe
        assert 1.0 < member["circuit_remaining_s"] <= 2.0, member
        # The service comes back: the next probe gets through and closes the circuit.
        cluster.echoes[1].start()
        cluster.wait_status(lambda m: m["web-1"]["circuit"] == "half_open", "half open", 10)
        tally = visit_many(cluster.host, cluster.port, 30)
        assert not tally.failures, tally.failures[:5]
        assert tally.served["web-1"] >= 5, tally.served
        member = cluster.members()["web-1"]
        assert member["circuit"] == "closed" and member["available"], member
        figures.record(
            "groups: circuit breaker (3 failures, cooldown 1 s)",
            opened=member["circuit_opened_total"] - start["circuit_opened_total"],
            dial_failures=member["dial_failures"] - start["dial_failures"],
            retried=cluster.group()["retries_total"] - retries_before,
        )
    finally:
        cluster.echoes[1].stop()
        cluster.echoes[1].start()
        cluster.server(lb="round_robin")


def test_a_visitor_fails_only_when_every_member_it_was_given_failed(cluster: Cluster) -> None:
    """Two members down: a visitor picked for one of them is retried once, on the other
    when round robin says so; if that one fails too, the visitor sees a reset (never an
    empty success), and it is counted."""
    cluster.server(lb="round_robin")
    before = cluster.group()["failed_total"]
    cluster.echoes[0].stop()
    cluster.echoes[1].stop()
    try:
        tally = visit_many(cluster.host, cluster.port, 30)
        assert set(tally.served) <= {"web-2"}
        assert tally.failures  # some were given web-0 then web-1
        assert cluster.group()["failed_total"] - before == len(tally.failures)
    finally:
        for index in (0, 1):
            cluster.echoes[index].start()
