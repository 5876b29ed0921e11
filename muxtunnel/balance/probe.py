"""Health checks of a member's local target (client side), and the loop that runs them.

- `probe_tcp`: healthy when a TCP connection to the target succeeds.
- `probe_http`: healthy when `GET path` answers 2xx or 3xx (the status line is enough: the body
  is not read). h11 writes the request and parses the response, so what counts as an HTTP
  answer is what a real client would accept, not our own guess.
- `HealthMonitor`: runs a probe every `interval_s` (start times do not drift with the probe's
  duration), each bounded by `timeout_s`, feeds the results to a `HealthTracker` and awaits
  `on_change` for each transition. It never touches visitors: open ones are never cut.
"""

from __future__ import annotations

import errno as errno_module
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import h11
import structlog

from muxtunnel.balance.health import HealthChange, HealthTracker
from muxtunnel.balance.settings import HealthSettings
from muxtunnel.balance.snapshot import HealthSnapshot

__all__ = ["HealthMonitor", "Probe", "ProbeResult", "make_probe", "probe_http", "probe_tcp"]

log = structlog.get_logger("muxtunnel.balance")

#: Bytes read per receive while waiting for the status line; h11 caps the whole response head
#: at its default 16 KiB (`max_incomplete_event_size`).
_READ_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One check: did the target answer as a healthy one, and what was seen."""

    ok: bool
    detail: str


Probe = Callable[[], Awaitable[ProbeResult]]


def _describe(exc: BaseException) -> str:
    """The most specific reason in an exception chain (anyio wraps per-address failures)."""
    seen: BaseException | None = exc
    while seen is not None:
        code = getattr(seen, "errno", None)
        if isinstance(code, int) and code in errno_module.errorcode:
            return os.strerror(code)
        seen = seen.__cause__
    return str(exc) or type(exc).__name__


async def probe_tcp(host: str, port: int, timeout_s: float) -> ProbeResult:
    """Healthy when a TCP connection to `host:port` succeeds within `timeout_s`."""
    with anyio.move_on_after(timeout_s):
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError as exc:
            return ProbeResult(False, f"connect: {_describe(exc)}")
        await stream.aclose()
        return ProbeResult(True, "connected")
    return ProbeResult(False, f"connect: no answer within {timeout_s:g} s")


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def probe_http(host: str, port: int, path: str, timeout_s: float) -> ProbeResult:
    """Healthy when `GET path` on `host:port` answers 2xx or 3xx within `timeout_s`."""
    with anyio.move_on_after(timeout_s):
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError as exc:
            return ProbeResult(False, f"connect: {_describe(exc)}")
        async with stream:
            try:
                return await _exchange(stream, _host_header(host, port), path)
            except (OSError, anyio.BrokenResourceError) as exc:
                return ProbeResult(False, f"HTTP: connection lost: {_describe(exc)}")
            except h11.ProtocolError as exc:
                return ProbeResult(False, f"HTTP: not a valid response: {exc}")
    return ProbeResult(False, f"HTTP: no answer within {timeout_s:g} s")


async def _exchange(stream: anyio.abc.SocketStream, host: str, path: str) -> ProbeResult:
    connection = h11.Connection(h11.CLIENT)
    headers = [("Host", host), ("User-Agent", "muxtunnel-health"), ("Connection", "close")]
    request = h11.Request(method="GET", target=path, headers=headers)
    await stream.send(connection.send(request) + (connection.send(h11.EndOfMessage()) or b""))
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive(_READ_BYTES)
            except anyio.EndOfStream:
                data = b""
            connection.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            return ProbeResult(200 <= status < 400, f"HTTP {status}")
        return ProbeResult(False, f"HTTP: unexpected {type(event).__name__}")


def make_probe(settings: HealthSettings, host: str, port: int) -> Probe:
    """The check `settings` asks for, aimed at the target `host:port`."""
    if settings.type == "http":
        path = settings.path

        async def http() -> ProbeResult:
            return await probe_http(host, port, path, settings.timeout_s)

        return http

    async def tcp() -> ProbeResult:
        return await probe_tcp(host, port, settings.timeout_s)

    return tcp


OnChange = Callable[[HealthChange], Awaitable[None]]


class HealthMonitor:
    """Checks one target every `interval_s` and reports each change of its health."""

    def __init__(
        self, settings: HealthSettings, probe: Probe, on_change: OnChange, *, name: str = ""
    ) -> None:
        self.settings = settings
        self.name = name
        self._probe = probe
        self._on_change = on_change
        self.tracker = HealthTracker(settings.unhealthy_after, settings.healthy_after)

    @property
    def healthy(self) -> bool | None:
        """The target's health now; None before the first check has answered."""
        return self.tracker.healthy

    def snapshot(self) -> HealthSnapshot:
        """Counters and the last result, for status."""
        return self.tracker.snapshot()

    async def check_once(self) -> HealthChange | None:
        """One check, bounded by `timeout_s`; reports and returns the change it caused."""
        timeout_s = self.settings.timeout_s
        result = ProbeResult(False, f"no answer within {timeout_s:g} s")
        with anyio.move_on_after(timeout_s):
            result = await self._probe()
        change = self.tracker.observe(result.ok, result.detail)
        if change is not None:
            emit = log.info if change.healthy else log.warning
            emit("health of the local target changed", service=self.name,
                 healthy=change.healthy, detail=change.detail)  # fmt: skip
            await self._on_change(change)
        return change

    async def run(self) -> None:
        """Check until cancelled: the first check at once, then one every `interval_s`.

        `on_change` is awaited for every change, the first one included (unknown to healthy or
        unhealthy). It must not raise: an exception from it ends the loop.
        """
        interval_s = self.settings.interval_s
        next_at = anyio.current_time()
        while True:
            await self.check_once()
            next_at += interval_s
            now = anyio.current_time()
            if next_at < now:  # a slow callback: skip the missed checks, don't burst them
                next_at = now
            await anyio.sleep(next_at - now)
