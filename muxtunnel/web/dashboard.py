"""`listen --dashboard`: a web page of what the server does, live, fed only by status snapshots.

Once a second the `Sampler` takes one snapshot (`muxtunnel.status`) and keeps, per service, a
bounded ring of points (bytes per second each way, connections), derived from the traffic
counters that never go back; sessions that came and went and refusals that happened are
derived the same way, by comparing a snapshot with the one before. The page gets the whole
document once, then one tick a second over server-sent events (a browser's `EventSource`
reconnects by itself); it renders every list of rows in the snapshot as a table of its keys,
so a new kind of row shows up without a change here.

Invariants: one snapshot per second whatever the number of open pages; each ring holds at most
`RING_POINTS` points, each recent list `RECENT_EVENTS` entries; a page that falls behind gets
the whole document again instead of a backlog.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import anyio
import anyio.abc

from muxtunnel.model import Endpoint
from muxtunnel.status import Status
from muxtunnel.web.asgi import App, serve_app

__all__ = ["RING_POINTS", "Sampler", "make_app", "run_dashboard"]

#: Points per service: five minutes at one a second.
RING_POINTS = 300
#: Sessions opened and closed, refusals: the last this many.
RECENT_EVENTS = 50
SAMPLE_INTERVAL_S = 1.0
#: Open connections a tick carries (the oldest; the rest are counted): a server with
#: thousands of visitors sends its pages the same few KiB a second.
CONNECTIONS_SHOWN = 100

Point = tuple[float, float, float, int]  # time (s since the epoch), in B/s, out B/s, connections


class Sampler:
    """Samples `status` into rings of points and lists of recent events."""

    def __init__(self, status: Callable[[], Status], *, points: int = RING_POINTS) -> None:
        self._status = status
        self._points = points
        self.series: dict[str, deque[Point]] = {}
        #: Totals of the previous sample, per service name: (time, bytes in, bytes out).
        self._totals: dict[str, tuple[float, int, int]] = {}
        self._sessions: dict[int, dict[str, Any]] = {}
        self._refusals: dict[str, int] = {}
        self.sessions_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.refusals_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self.snapshot: dict[str, Any] = {}
        self.latest: dict[str, Point] = {}
        #: How many samples so far; a new `tick` event each time.
        self.seq = 0
        self.tick = anyio.Event()
        self.closed = False

    def sample(self, now: float | None = None) -> None:
        """Take one snapshot; wakes every page waiting for a tick."""
        now = time.time() if now is None else now
        status = self._status()
        totals = {row.name: row for row in status.traffic}
        latest: dict[str, Point] = {}
        for row in status.services:
            traffic = totals.get(row.name)
            total_in = traffic.bytes_in if traffic else row.bytes_in
            total_out = traffic.bytes_out if traffic else row.bytes_out
            before = self._totals.get(row.name)
            in_bytes_per_s = out_bytes_per_s = 0.0
            if before is not None and now > before[0]:
                elapsed_s = now - before[0]
                in_bytes_per_s = max(0, total_in - before[1]) / elapsed_s
                out_bytes_per_s = max(0, total_out - before[2]) / elapsed_s
            self._totals[row.name] = (now, total_in, total_out)
            rates = round(in_bytes_per_s, 1), round(out_bytes_per_s, 1)
            point = (round(now, 3), *rates, row.connections)
            self.series.setdefault(row.name, deque(maxlen=self._points)).append(point)
            latest[row.name] = point
        for gone in set(self.series) - set(latest):  # the service went away: its chart too
            del self.series[gone]
            self._totals.pop(gone, None)
        self._diff_sessions(status, now)
        self._diff_refusals(status, now)
        self.snapshot = status.to_dict()
        connections = self.snapshot.get("connections", [])
        if len(connections) > CONNECTIONS_SHOWN:  # a page a second, whatever the visitors do
            self.snapshot["connections"] = connections[:CONNECTIONS_SHOWN]
            self.snapshot["connections_not_shown"] = len(connections) - CONNECTIONS_SHOWN
        self.latest = latest
        self.seq += 1
        self.tick.set()
        self.tick = anyio.Event()

    def _diff_sessions(self, status: Status, now: float) -> None:
        current = {row.id: row.to_dict() for row in status.sessions}
        for session_id, row in current.items():
            if session_id not in self._sessions:
                self.sessions_recent.appendleft({"time": now, "event": "opened", **row})
        for session_id, row in self._sessions.items():
            if session_id not in current:
                self.sessions_recent.appendleft({"time": now, "event": "closed", **row})
        self._sessions = current

    def _diff_refusals(self, status: Status, now: float) -> None:
        for reason, count in sorted(status.refusals.items()):
            new = count - self._refusals.get(reason, 0)
            if new > 0 and self.seq > 0:  # the first sample sets the baseline
                self.refusals_recent.appendleft(
                    {"time": now, "reason": reason, "new": new, "total": count}
                )
        self._refusals = dict(status.refusals)

    def document(self) -> dict[str, Any]:
        """Everything a page shows: the snapshot, every ring, the recent events."""
        return {
            "seq": self.seq,
            "interval_s": SAMPLE_INTERVAL_S,
            "status": self.snapshot,
            "series": {name: list(points) for name, points in self.series.items()},
            **self._recent(),
        }

    def tick_document(self) -> dict[str, Any]:
        """What changed with the latest sample: the snapshot, one point per service."""
        return {"seq": self.seq, "status": self.snapshot, "points": self.latest, **self._recent()}

    def _recent(self) -> dict[str, Any]:
        return {
            "sessions_recent": list(self.sessions_recent),
            "refusals_recent": list(self.refusals_recent),
        }

    def close(self) -> None:
        """Pages stop waiting: their event streams end (so a shutdown need not wait)."""
        self.closed = True
        self.tick.set()

    async def run(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        """Sample every `interval_s` until cancelled."""
        try:
            while True:
                self.sample()
                await anyio.sleep(interval_s)
        finally:
            self.close()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _events(sampler: Sampler) -> AsyncIterator[bytes]:
    """One page's event stream: the whole document, then a tick per sample."""
    seq = sampler.seq
    yield _event("full", sampler.document())
    while not sampler.closed:
        if sampler.seq == seq:  # else a sample came while this page was being sent one
            await sampler.tick.wait()
        if sampler.closed:
            return
        missed, seq = sampler.seq != seq + 1, sampler.seq
        if missed:  # the whole document again, never a backlog
            yield _event("full", sampler.document())
        else:
            yield _event("tick", sampler.tick_document())


def static_dir() -> str:
    """The page's files (HTML, script, styles, the vendored chart library)."""
    return str(resources.files("muxtunnel.web") / "static")


def make_app(sampler: Sampler, page: str = "dashboard.html") -> App:
    """The dashboard's routes: the page, its files, the document, the event stream."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    folder = static_dir()

    async def index(request: Any) -> Any:
        return FileResponse(f"{folder}/{page}", headers={"cache-control": "no-store"})

    async def document(request: Any) -> Any:
        return JSONResponse(sampler.document())

    async def events(request: Any) -> Any:
        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(_events(sampler), media_type="text/event-stream", headers=headers)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/dashboard", document),
            Route("/api/events", events),
            Mount("/static", StaticFiles(directory=folder)),
        ]
    )


async def run_dashboard(
    endpoint: Endpoint,
    status: Callable[[], Status],
    *,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard on `endpoint` until cancelled; reports the bound port."""
    sampler = Sampler(status)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        port = await tg.start(lambda task_status: serve_app(
            make_app(sampler), endpoint, name="dashboard", task_status=task_status))  # fmt: skip
        task_status.started(port)
