"""Several paths to one server (`client.paths`): a standby carrier on every path the session
does not run on, round trips measured on all of them, the session moved to the best one by
resumption (`_resume`), so that no visitor notices (the rules of choice: `_pathscore`).

While a resumable session lives, `Paths.run` keeps these tasks:
- a keeper per path: while the path is not the active one it keeps a carrier attached to the
  session (TLS and the resume proof, as for a resume; the server's name resolved anew at each
  connect) and probes it every `probe_interval_s`; a carrier that breaks or stalls is closed
  and made again, with backoff.
- the pinger: mux pings on the active carrier (the same round trips, queued with the data).
- the chooser: every `_TICK_S`, `Chooser.decide`; it makes the switch decided.
- the watcher: the active carrier broke (a reset, `ss -K`, the mux keepalive): at once onto the
  best live standby; none live: a fresh carrier over each path in turn, with backoff, until
  the session is back or `resume_timeout_s` ends it (as `keep_resuming` does with one path).

Invariants:
1. One switch at a time (`_switching`, taken by the chooser and the watcher). A switch of ours
   detaches the session, which wakes the watcher; it finds the session resumed and waits on.
2. A standby carrier is probed by its keeper only, and never once the session took it
   (`Attached.taken`); the active path's keeper holds no carrier.
3. Every switch is logged once ("path switch", from, to, reason) and counted by reason.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections import Counter
from dataclasses import dataclass, field

import anyio
import anyio.abc
import structlog

from mux import Session, SessionClosed
from muxtunnel.client._carrier import Carrier, open_carrier
from muxtunnel.client._pathscore import Chooser, PathScore
from muxtunnel.client._resume import (
    Attached,
    ProbeTimeout,
    ResumeRefused,
    ResumeStats,
    Resuming,
    attach,
)
from muxtunnel.client._state import FatalError, RetryableError, ServerGone, backoff_s
from muxtunnel.model import ClientConfig
from muxtunnel.path_config import PathSpec
from muxtunnel.resilience_status import PathRow, ServerRow
from muxtunnel.resume import Ticket
from muxtunnel.specs import format_host_port
from muxtunnel.transport import CONNECT_TIMEOUT_S

__all__ = ["Paths", "route"]

log = structlog.get_logger("muxtunnel.client")

#: How often the chooser looks (a dead active path is left within a tick of `stall_s`).
_TICK_S = 0.05
#: A standby's connect and TLS handshake: a blackholed path is retried this often (the
#: session's own first connect keeps the usual, longer timeout).
_STANDBY_CONNECT_S = 3.0


def route(spec: PathSpec, config: ClientConfig) -> str:
    """Where a path connects from and to, for status ("10.0.0.5 -> server:7835")."""
    source = spec.bind or "*"
    if spec.interface is not None:
        source = f"{spec.interface}" + (f" ({spec.bind})" if spec.bind else "")
    host, port = spec.server or (config.server_host, config.server_port)
    return f"{source} -> {format_host_port(host, port)}"


@dataclass
class _Path:
    spec: PathSpec
    score: PathScore
    route: str
    #: The carrier attached to the session on this path, while it is a standby.
    standby: Attached | None = None
    switches_in: int = 0
    #: Woken when the session leaves or takes this path.
    changed: anyio.Event = field(default_factory=anyio.Event)


class Paths:
    """The paths of one client to its server, measured and chosen across its sessions."""

    def __init__(self, client: Resuming) -> None:
        #: Whose config, TLS context and resume counts these are (they change with a reload;
        #: the paths themselves and their tuning are kept until a restart, `reload`).
        self.client = client
        config = client.config
        tuning = config.path_tuning
        self.paths = [
            _Path(spec, PathScore(tuning.stall_s, tuning.loss_penalty_s), route(spec, config))
            for spec in config.paths
        ]
        self.chooser = Chooser(tuning)
        #: Switches made, by reason ("down", "stalled", "better", "preferred").
        self.switches: Counter[str] = Counter()
        self._switching = anyio.Lock()

    @property
    def config(self) -> ClientConfig:
        return self.client.config

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        return self.client.tls_context

    @property
    def stats(self) -> ResumeStats:
        return self.client.resume_stats

    @property
    def active(self) -> str:
        return self.paths[self.chooser.active].spec.name

    def rows(self, online: bool) -> tuple[PathRow, ...]:
        """Each path's status row (`online`: the session runs on the active one)."""
        now = anyio.current_time()
        rows = []
        for i, path in enumerate(self.paths):
            score = path.score
            state = "standby" if score.alive(now) else "down"
            if i == self.chooser.active:
                state = "active" if online else "down"
            rtt = score.srtt_s if state != "down" else None
            value = score.score(now) if state != "down" else None
            why = score.dead_reason(now) if state == "down" else None
            rows.append(
                PathRow(
                    path.spec.name, path.route, state, rtt, score.loss, value, path.switches_in, why
                )
            )
        return tuple(rows)

    def server_row(self, row: ServerRow, online: bool) -> ServerRow:
        """The server's status row, with its paths and the switches between them."""
        return dataclasses.replace(row, paths=self.rows(online), path_switches=dict(self.switches))

    async def open_first(self) -> Carrier:
        """A fresh session's carrier: over each path in list order, the first that connects."""
        failed: list[RetryableError] = []
        for i, path in enumerate(self.paths):
            try:
                carrier = await self._connect(i)
            except RetryableError as exc:
                path.score.carrier_down(str(exc))
                failed.append(exc)
                continue
            self.chooser.switched(i)
            path.score.carrier_up()
            return carrier
        text = "; ".join(f"{p.spec.name}: {exc}" for p, exc in zip(self.paths, failed, strict=True))
        gone = all(isinstance(exc, ServerGone) for exc in failed)  # refused on every path
        raise (ServerGone if gone else RetryableError)(f"no path connects ({text})")

    async def _connect(self, i: int) -> Carrier:
        """A carrier over path `i`, trying the paths in turn: a dead route is given up on
        sooner while another path is left to try."""
        timeout_s = _STANDBY_CONNECT_S if i < len(self.paths) - 1 else CONNECT_TIMEOUT_S
        spec = self.paths[i].spec
        return await open_carrier(self.config, self.tls_context, spec, connect_timeout_s=timeout_s)

    async def run(self, session: Session, ticket: Ticket) -> None:
        """Keep every path measured and the session on the best, until it ends."""
        session.enable_resume()
        try:
            async with anyio.create_task_group() as tg:
                for i in range(len(self.paths)):
                    tg.start_soon(self._keep, i, session, ticket)
                tg.start_soon(self._ping_active, session)
                tg.start_soon(self._choose, session)
                tg.start_soon(self._watch, session, ticket)
                await session.wait_closed()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                for path in self.paths:
                    path.score.carrier_down("the session ended")
                    if path.standby is not None:
                        await path.standby.aclose()
                        path.standby = None

    # ------------------------------------------------------------------ measuring

    async def _keep(self, i: int, session: Session, ticket: Ticket) -> None:
        """Path `i`'s standby carrier: made, probed, made again (invariant 2)."""
        path, attempt, failures = self.paths[i], 0, 0
        while not session.closed:
            config = self.config  # a reload's, from the next connect on
            if i == self.chooser.active:
                await path.changed.wait()
                continue
            try:
                carrier = await open_carrier(
                    config, self.tls_context, path.spec, connect_timeout_s=_STANDBY_CONNECT_S
                )
                attached = await attach(carrier, ticket)
            except ResumeRefused as exc:  # the server forgot the session: it is over
                log.warning("resume refused on a standby path", path=path.spec.name, error=str(exc))
                self.stats.failures[exc.reason] += 1
                await session.aclose()
                return
            except (RetryableError, FatalError) as exc:
                path.score.carrier_down(str(exc))
                failures += 1
                if failures & (failures - 1) == 0:  # 1, 2, 4, ...: a dead path is not a flood
                    log.warning("path unreachable", path=path.spec.name, error=str(exc),
                                failures=failures)  # fmt: skip
                await anyio.sleep(
                    backoff_s(attempt, config.reconnect_min_s, config.reconnect_max_s)
                )
                attempt += 1
                continue
            if i == self.chooser.active:  # the session came here meanwhile, by a fresh carrier
                await attached.aclose()
                continue
            log.info("path up", path=path.spec.name, route=path.route, after=path.score.down_reason)
            attempt = 0
            path.standby = attached
            path.score.carrier_up()
            try:
                await self._probe(path, attached, config.path_tuning.probe_interval_s)
            finally:
                if path.standby is attached:
                    path.standby = None
                if not attached.taken:
                    with anyio.CancelScope(shield=True):
                        await attached.aclose()
                    if path.score.down_reason is not None:  # it failed (else: the session ended)
                        log.info("path down", path=path.spec.name, reason=path.score.down_reason)

    async def _probe(self, path: _Path, attached: Attached, interval_s: float) -> None:
        """Probe a standby until it breaks, stalls, or the session takes it."""
        score = path.score
        while path.standby is attached and not attached.taken:  # not the session's path now
            score.sent(anyio.current_time())
            try:
                score.answered(await attached.probe(score.stall_s / 2))
            except ProbeTimeout:
                score.lost()
                if score.stalled(anyio.current_time()):
                    score.carrier_down(score.dead_reason(anyio.current_time()))
                    return
            except RetryableError as exc:
                if not attached.taken:
                    score.carrier_down(str(exc))
                return
            await anyio.sleep(interval_s)

    async def _ping_active(self, session: Session) -> None:
        """Round trips on the active carrier, credited to the active path."""
        interval_s = self.config.path_tuning.probe_interval_s
        while not session.closed:
            i = self.chooser.active
            score = self.paths[i].score
            if session.suspended or not score.up:
                await anyio.sleep(interval_s)
                continue
            score.sent(anyio.current_time())
            rtt_s: float | None = None
            with anyio.move_on_after(2 * score.stall_s):  # stalled long before: see `_choose`
                try:
                    rtt_s = await session.ping()
                except SessionClosed:
                    return
            if i == self.chooser.active and not session.suspended:  # not moved meanwhile
                if rtt_s is None or rtt_s > score.stall_s / 2:  # as late as a lost probe
                    score.lost()
                    if rtt_s is not None:
                        score.heard()
                else:
                    score.answered(rtt_s)
            await anyio.sleep(interval_s)

    # ------------------------------------------------------------------ switching

    async def _choose(self, session: Session) -> None:
        """Make the switches `Chooser.decide` asks for."""
        scores = [path.score for path in self.paths]
        while not session.closed:
            await anyio.sleep(_TICK_S)
            if session.suspended or self._switching.locked():
                continue
            decision = self.chooser.decide(anyio.current_time(), scores)
            if decision is None:
                continue
            async with self._switching:
                if not session.suspended and not session.closed:
                    await self._switch(session, decision.to, decision.reason, decision.detail)

    async def _watch(self, session: Session, ticket: Ticket) -> None:
        """The active carrier broke: move the session on at once (invariant 1)."""
        while True:
            try:
                reason = await session.wait_carrier_lost()
            except SessionClosed:
                return
            async with self._switching:
                if session.suspended and not session.closed:
                    await self._fail_over(session, ticket, reason)

    async def _switch(self, session: Session, to: int, reason: str, detail: str) -> bool:
        """Move the session onto path `to`'s standby; False if that carrier failed (the
        session is then suspended, for the watcher)."""
        target, left = self.paths[to], self.paths[self.chooser.active]
        attached = target.standby
        if attached is None:
            target.score.carrier_down("no standby carrier")
            return False
        try:
            await attached.switch(session, f"path switch to {target.spec.name}")
        except RetryableError as exc:
            target.score.carrier_down(str(exc))
            target.standby = None
            return False
        self._switched(to, reason, detail, left)
        return True

    def _switched(self, to: int, reason: str, detail: str, left: _Path) -> None:
        target = self.paths[to]
        if target is not left:
            left.score.carrier_down(
                f"left: {detail}" if reason in ("better", "preferred") else detail
            )
            target.switches_in += 1
            self.switches[reason] += 1
            log.warning(
                "path switch",
                from_path=left.spec.name,
                to_path=target.spec.name,
                reason=reason,
                detail=detail,
            )
        target.standby = None
        target.score.carrier_kept()
        self.chooser.switched(to, reason)
        for path in (left, target):
            path.changed.set()
            path.changed = anyio.Event()

    async def _fail_over(self, session: Session, ticket: Ticket, reason: str) -> None:
        """The session is suspended: onto the best live standby, else a fresh carrier."""
        left = self.paths[self.chooser.active]
        left.score.carrier_down(reason)
        scores = [path.score for path in self.paths]
        attempt = 0
        while session.suspended and not session.closed:
            while (to := self.chooser.best_live(anyio.current_time(), scores)) is not None:
                if await self._switch(session, to, "down", reason):
                    self.stats.resumes += 1
                    return
            gone = 0
            for i, path in enumerate(self.paths):
                try:
                    carrier = await self._connect(i)
                    attached = await attach(carrier, ticket, session)
                    await attached.switch(session, reason)
                except ResumeRefused as exc:  # the server forgot the session: it is over
                    self.stats.failures[exc.reason] += 1
                    log.warning("resume refused; registering afresh", error=str(exc))
                    await session.aclose()
                    return
                except (RetryableError, FatalError) as exc:  # this path's; another may do
                    gone += isinstance(exc, ServerGone)
                    path.score.carrier_down(str(exc))
                    continue
                except SessionClosed:
                    return
                self.stats.resumes += 1
                path.score.carrier_up()
                self._switched(i, "down", reason, left)
                log.info("session resumed", path=path.spec.name, resumes=session.resumes)
                return
            if gone == len(self.paths):  # every path refused: the server process is gone
                self.stats.failures["server_gone"] += 1
                log.warning("resume refused; registering afresh", error="the server is gone")
                await session.aclose()
                return
            self.stats.failures["unreachable"] += 1
            config = self.config
            await anyio.sleep(backoff_s(attempt, config.reconnect_min_s, config.reconnect_max_s))
            attempt += 1
