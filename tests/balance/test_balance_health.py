"""Health: the pure tracker, the probes against real loopback servers, and the monitor loop."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel.balance import (
    HealthChange,
    HealthMonitor,
    HealthSettings,
    HealthTracker,
    ProbeResult,
    make_probe,
    probe_http,
    probe_tcp,
)
from muxtunnel.balance.probe import _host_header

pytestmark = pytest.mark.anyio

# Room for a loaded 2-core machine on top of a computed bound (timers fire late, not early).
SLACK_S = 2.0


def test_the_first_result_decides_then_runs_of_results_move_it() -> None:
    tracker = HealthTracker(unhealthy_after=3, healthy_after=2)
    assert tracker.healthy is None
    first = tracker.observe(True, "connected")
    assert first == HealthChange(healthy=True, previous=None, detail="connected")
    assert tracker.observe(False) is None
    assert tracker.observe(False) is None
    assert tracker.observe(True) is None  # the run is broken
    assert tracker.observe(False) is None
    assert tracker.observe(False) is None
    down = tracker.observe(False, "connection refused")
    assert down == HealthChange(healthy=False, previous=True, detail="connection refused")
    assert tracker.observe(True) is None
    assert tracker.observe(True) == HealthChange(healthy=True, previous=False, detail="")
    snap = tracker.snapshot()
    assert (snap.healthy, snap.checks_total, snap.changes_total) == (True, 9, 3)
    starts_down = HealthTracker(1, 1)
    assert starts_down.observe(False, "x") == HealthChange(False, None, "x")


@settings(max_examples=300, deadline=None)
@given(
    results=st.lists(st.booleans(), max_size=60),
    down_after=st.integers(1, 4),
    up_after=st.integers(1, 4),
)
def test_a_transition_needs_its_run_of_results(
    results: list[bool], down_after: int, up_after: int
) -> None:
    tracker = HealthTracker(down_after, up_after)
    history: list[bool] = []
    for ok in results:
        before = tracker.healthy
        change = tracker.observe(ok)
        history.append(ok)
        if change is None:
            continue
        assert change.previous == before and change.healthy == ok == tracker.healthy
        if before is not None:
            need = up_after if ok else down_after
            assert len(history) >= need and all(r == ok for r in history[-need:])


@asynccontextmanager
async def _serve(handler: Any, port: int = 0) -> AsyncIterator[tuple[int, anyio.abc.TaskGroup]]:
    """A loopback TCP server running `handler` per connection until the block ends."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
    bound = listener.extra(anyio.abc.SocketAttribute.local_port)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, handler)
            try:
                yield bound, group
            finally:
                group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):  # closed even when the caller was cancelled
            await listener.aclose()


async def _accept_and_close(stream: anyio.abc.SocketStream) -> None:
    await stream.aclose()


class HttpTarget:
    """Answers every GET with `status`; or with garbage, or not at all."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.mode = "answer"
        self.requests: list[bytes] = []

    async def __call__(self, stream: anyio.abc.SocketStream) -> None:
        async with stream:
            head = b""
            with anyio.move_on_after(5):
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    try:
                        head += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
            self.requests.append(head)
            if self.mode == "silent":
                await anyio.sleep(30)
            elif self.mode == "garbage":
                await stream.send(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
            elif self.mode == "hang_up":
                return
            else:
                await stream.send(
                    f"HTTP/1.1 {self.status} Whatever\r\nContent-Length: 2\r\n"
                    "Connection: close\r\n\r\nok".encode()
                )


async def _free_port() -> int:
    async with _serve(_accept_and_close) as (port, _):
        return port


async def test_probe_tcp_up_and_down() -> None:
    with anyio.fail_after(10):
        async with _serve(_accept_and_close) as (port, _):
            assert await probe_tcp("127.0.0.1", port, 1.0) == ProbeResult(True, "connected")
        down = await probe_tcp("127.0.0.1", port, 1.0)
        assert not down.ok and down.detail == "connect: Connection refused"


@pytest.mark.parametrize(
    ("status", "ok"), [(200, True), (204, True), (301, True), (404, False), (503, False)]
)
async def test_probe_http_counts_2xx_and_3xx_as_healthy(status: int, ok: bool) -> None:
    target = HttpTarget(status)
    with anyio.fail_after(10):
        async with _serve(target) as (port, _):
            result = await probe_http("127.0.0.1", port, "/healthz?deep=1", 2.0)
    assert result == ProbeResult(ok, f"HTTP {status}")
    request = target.requests[0]
    assert request.startswith(b"GET /healthz?deep=1 HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{port}\r\n".encode() in request.lower()


@pytest.mark.parametrize(
    ("mode", "detail"),
    [
        ("garbage", "HTTP: not a valid response"),
        ("hang_up", "HTTP: not a valid response"),
        ("silent", "HTTP: no answer within 0.3 s"),
    ],
)
async def test_probe_http_bad_days(mode: str, detail: str) -> None:
    target = HttpTarget()
    target.mode = mode
    with anyio.fail_after(10):
        async with _serve(target) as (port, _):
            started = anyio.current_time()
            result = await probe_http("127.0.0.1", port, "/", 0.3)
            elapsed = anyio.current_time() - started
    assert not result.ok and result.detail.startswith(detail), result
    assert elapsed < 0.3 + SLACK_S


async def test_probe_http_refused() -> None:
    port = await _free_port()
    result = await probe_http("127.0.0.1", port, "/", 1.0)
    assert result == ProbeResult(False, "connect: Connection refused")


def test_host_header_brackets_ipv6() -> None:
    assert _host_header("::1", 80) == "[::1]:80"
    assert _host_header("localhost", 8080) == "localhost:8080"


class Changes:
    """The monitor's callback: every change with its time, read back in order by `next`."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, HealthChange]] = []
        self._read = 0
        self._arrived = anyio.Event()

    async def __call__(self, change: HealthChange) -> None:
        self.seen.append((anyio.current_time(), change))
        self._arrived.set()

    async def next(self, timeout_s: float) -> tuple[float, HealthChange]:
        with anyio.fail_after(timeout_s):
            while self._read >= len(self.seen):
                self._arrived = anyio.Event()
                await self._arrived.wait()
        self._read += 1
        return self.seen[self._read - 1]


async def _outage_and_recovery(
    settings_: HealthSettings, start: Any, stop: Any, figures: Any, label: str
) -> None:
    """Start the target, see it healthy; stop it, see it unhealthy within the bound; start it,
    see it healthy within its bound. `start`/`stop` are async callables."""
    changes = Changes()
    port = await start()
    monitor = HealthMonitor(settings_, make_probe(settings_, "127.0.0.1", port), changes, name="t")
    down_bound_s = settings_.detection_bound_s
    up_bound_s = settings_.interval_s * settings_.healthy_after + settings_.timeout_s
    async with anyio.create_task_group() as group:
        group.start_soon(monitor.run)
        _, first = await changes.next(settings_.timeout_s + SLACK_S)
        assert first.healthy and first.previous is None
        checks_before = monitor.snapshot().checks_total
        stopped_at = anyio.current_time()
        await stop()
        at, down = await changes.next(down_bound_s + SLACK_S)
        down_s = at - stopped_at
        assert not down.healthy and down_s <= down_bound_s + SLACK_S
        # Exactly unhealthy_after failed checks, whatever the timing.
        assert monitor.snapshot().consecutive_failed == settings_.unhealthy_after
        assert monitor.snapshot().checks_total - checks_before <= settings_.unhealthy_after + 1
        started_at = anyio.current_time()
        await start(port)
        at, up = await changes.next(up_bound_s + SLACK_S)
        up_s = at - started_at
        assert up.healthy and monitor.snapshot().consecutive_ok == settings_.healthy_after
        group.cancel_scope.cancel()
    figures.record(label, down_s=round(down_s, 3), down_bound_s=down_bound_s,
                   up_s=round(up_s, 3), up_bound_s=up_bound_s)  # fmt: skip


class Switchable:
    """A loopback server that a test stops and starts again on the same port."""

    def __init__(self, group: anyio.abc.TaskGroup, handler: Any) -> None:
        self.group = group
        self.handler = handler
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()

    async def start(self, port: int = 0) -> int:
        ready = anyio.Event()
        bound: list[int] = []
        self._stopped = stopped = anyio.Event()

        async def run() -> None:
            try:
                with anyio.CancelScope() as self._scope:
                    async with _serve(self.handler, port) as (real, _):
                        bound.append(real)
                        ready.set()
                        await anyio.sleep_forever()
            finally:
                stopped.set()

        self.group.start_soon(run)
        await ready.wait()
        return bound[0]

    async def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()
        await self._stopped.wait()


async def test_monitor_sees_a_tcp_target_stop_and_start_within_its_bounds(figures: Any) -> None:
    health = HealthSettings(interval_s=0.2, timeout_s=0.2, unhealthy_after=2, healthy_after=2)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            target = Switchable(group, _accept_and_close)
            await _outage_and_recovery(
                health, target.start, target.stop, figures, "balance: tcp health"
            )
            await target.stop()


async def test_monitor_sees_an_http_target_fail_stop_and_recover(figures: Any) -> None:
    health = HealthSettings(
        type="http", path="/healthz", interval_s=0.2, timeout_s=0.2,
        unhealthy_after=2, healthy_after=2,
    )  # fmt: skip
    target = HttpTarget(200)
    changes = Changes()
    with anyio.fail_after(30):
        async with _serve(target) as (port, _):
            monitor = HealthMonitor(health, make_probe(health, "127.0.0.1", port), changes)
            async with anyio.create_task_group() as group:
                group.start_soon(monitor.run)
                assert (await changes.next(SLACK_S))[1].healthy
                flipped_at = anyio.current_time()
                target.status = 503
                at, down = await changes.next(health.detection_bound_s + SLACK_S)
                assert not down.healthy and down.detail == "HTTP 503"
                assert at - flipped_at <= health.detection_bound_s + SLACK_S
                target.status = 302
                assert (await changes.next(SLACK_S + 1))[1].healthy
                group.cancel_scope.cancel()
    assert all(r.startswith(b"GET /healthz HTTP/1.1") for r in target.requests)
    # And a whole outage of the HTTP server, on its port.
    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            server = Switchable(group, target)
            await _outage_and_recovery(
                health, server.start, server.stop, figures, "balance: http health"
            )
            await server.stop()


async def test_a_probe_that_hangs_is_a_failure_after_timeout_s() -> None:
    async def hang() -> ProbeResult:
        await anyio.sleep_forever()
        raise AssertionError

    reported: list[HealthChange] = []

    async def on_change(change: HealthChange) -> None:
        reported.append(change)

    health = HealthSettings(interval_s=0.5, timeout_s=0.1)
    monitor = HealthMonitor(health, hang, on_change)
    with anyio.fail_after(5):
        change = await monitor.check_once()
    assert change == HealthChange(False, None, "no answer within 0.1 s")
    assert reported == [change]


async def test_the_loop_keeps_its_pace_and_never_bursts() -> None:
    calls: list[float] = []

    async def probe() -> ProbeResult:
        calls.append(anyio.current_time())
        return ProbeResult(True, "fine")

    async def on_change(change: HealthChange) -> None:
        await anyio.sleep(0.35)  # a slow report: the missed checks are skipped, not bunched

    health = HealthSettings(interval_s=0.1, timeout_s=0.1)
    monitor = HealthMonitor(health, probe, on_change)
    started = anyio.current_time()
    with anyio.move_on_after(1.0):
        await monitor.run()
    elapsed = anyio.current_time() - started
    assert calls[0] - started < 0.1  # the first check at once
    assert len(calls) <= elapsed / 0.1 - 3 + 2  # 0.35 s lost to the report, no catch-up
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert all(gap >= 0.09 for gap in gaps), gaps
