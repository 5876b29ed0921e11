"""`muxtunnel up`: keep one session to the server, register services, serve visitors.

When the carrier breaks, a resumable session (`_resume`) goes on over a new one and its
visitors never notice. When the session ends the client reconnects (at once if the session had
been up a while, then with exponential backoff and jitter) and registers again. Failures a
retry cannot fix (a wrong token, a port the server does not allow) end the client instead:
retrying them forever would only hide them. The client owns every field below: a reload
reaches them through `apply_config`, and whoever shows state through `status()`, a snapshot.
"""

from __future__ import annotations

import secrets

import anyio
import anyio.abc
import structlog

from mux import GoAwayCode, MuxStream, Session
from muxtunnel import __version__, control
from muxtunnel.captures import Captures
from muxtunnel.client import _visitors
from muxtunnel.client._carrier import closed_early, open_carrier
from muxtunnel.client._health import HealthChecks
from muxtunnel.client._paths import Paths
from muxtunnel.client._resume import ResumeStats, start_resuming
from muxtunnel.client._session import Control
from muxtunnel.client._state import (
    CONTROL_TIMEOUT_S,
    Announce,
    FatalError,
    RetryableError,
    ServiceState,
    backoff_s,
)
from muxtunnel.fields import INSTANCE_BYTES
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ClientConfig, Secret, ServiceSpec
from muxtunnel.reload import ReloadError, client_changes
from muxtunnel.specs import format_host_port
from muxtunnel.status import ClientStatus, SessionRow
from muxtunnel.tls import TlsError, client_context

__all__ = ["Client", "backoff_s"]

log = structlog.get_logger("muxtunnel.client")

#: Visitors of one service that connect to it at once. Streams are accepted as they come (so
#: the server can open the next, for any service); their connects wait per service, so that a
#: flood of one service's visitors never queues another's behind it.
DIALS_PER_SERVICE = 16
#: A session that had been up this long is reconnected at once when it ends (the end is news;
#: a session that keeps ending sooner than this gets the backoff, never a tight loop).
SETTLED_SESSION_S = 10.0


#: Why the session ended when the server said GoAway first (it shuts down or restarts).
SERVER_WENT_AWAY = "the server went away (it is shutting down or restarting)"


class Client:
    """The service side: one session to the server, carrying every visitor of every service."""

    def __init__(self, config: ClientConfig, announce: Announce | None = None) -> None:
        if not config.services:
            raise FatalError("no services to expose: give --tcp/--udp or client.services")
        self.config = config
        self.services = {spec.name: ServiceState(spec) for spec in config.services}
        self.announce: Announce = announce or (lambda state: None)
        self.session: Session | None = None
        self.connected = anyio.Event()
        self.reconnects = 0
        #: Built once, so a bad certificate file is reported at start (exit 2), not per retry.
        self.tls_context = client_context(config.tls) if config.tls else None
        self.traffic: dict[str, ServiceTraffic] = {}
        #: TCP visitors in flight: a graceful stop waits for it to drain.
        self.visitors = Visitors()
        #: What this side refused or failed per visitor, by reason (logged doubling).
        self.refusals = Refusals(log)
        self._dials: dict[str, anyio.Semaphore] = {}
        #: The live session's control channel, for registrations after a reload.
        self._control: Control | None = None
        self._session_started = 0.0
        #: This process among the members of a group (a reconnect takes its place back).
        self.instance = secrets.token_bytes(INSTANCE_BYTES)
        self.checks = HealthChecks(self._report_health)
        #: Where the http services' requests are recorded while the inspector is on (None: off).
        self.captures: Captures | None = None
        #: Resumes of this client's sessions, and failures by reason.
        self.resume_stats = ResumeStats()
        #: The ways to reach the server (`client.paths`), measured and chosen (None: one).
        self.paths = Paths(self) if config.paths else None

    def traffic_of(self, name: str) -> ServiceTraffic:
        """Byte totals and live meters of a service."""
        return self.traffic.setdefault(name, ServiceTraffic())

    def dial_slots(self, name: str) -> anyio.Semaphore:
        """Visitors of service `name` that may connect to it at once (`DIALS_PER_SERVICE`)."""
        slots = self._dials.get(name)
        if slots is None:
            slots = self._dials[name] = anyio.Semaphore(DIALS_PER_SERVICE)
        return slots

    @property
    def server(self) -> str:
        """The server's control address."""
        return format_host_port(self.config.server_host, self.config.server_port)

    @property
    def online(self) -> bool:
        """A session is up and its services were registered: the one "online" rule."""
        session = self.session
        return session is not None and not session.closed and self.connected.is_set()

    # --- running ---

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled; raises `FatalError` for failures a retry cannot fix.

        Reports through `task_status` at once: there is nothing to wait for before the first
        connection attempt. Health checks run beside it, across sessions.
        """
        fatal: FatalError | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(self.checks.run)
            for state in self.services.values():
                self.checks.start(state)
            task_status.started()
            try:
                await self._reconnect_loop()
            except FatalError as exc:  # raised as itself, not in the task group's group
                fatal = exc
                tg.cancel_scope.cancel()
        if fatal is not None:
            raise fatal

    async def _reconnect_loop(self) -> None:
        attempt = 0
        first = True
        while True:
            settled = False
            try:
                await self._session_once(first)
                attempt = 0
                reason = self.session.close_reason if self.session else "closed"
                said = self.session.conn.remote_go_away if self.session else None
                if said == GoAwayCode.NORMAL:  # it said GoAway first: not a network failure
                    reason = SERVER_WENT_AWAY
                log.warning("session ended", server=self.server, reason=reason)
                settled = anyio.current_time() - self._session_started >= SETTLED_SESSION_S
            except RetryableError as exc:
                log.warning("connection failed", server=self.server, error=str(exc))
            finally:
                self.connected = anyio.Event()
            first = False
            self.reconnects += 1
            delay = 0.0
            if not settled:
                delay = backoff_s(attempt, self.config.reconnect_min_s, self.config.reconnect_max_s)
                attempt += 1
            log.info("reconnecting", server=self.server, in_s=round(delay, 2), attempt=attempt)
            await anyio.sleep(delay)

    async def stop(self) -> None:
        """Graceful end: GoAway, let live visitors finish (`drain_timeout_s` at most), then close.

        The caller then cancels `run`.
        """
        session = self.session
        if session is None or session.closed:
            return
        await session.go_away()
        with anyio.move_on_after(self.config.drain_timeout_s):
            await self.visitors.drained()
        await session.aclose()

    async def _session_once(self, first: bool) -> None:
        config, paths = self.config, self.paths
        if paths is not None:
            carrier = await paths.open_first()
        else:
            carrier = await open_carrier(config, self.tls_context)
        try:
            async with Session(
                carrier.stream, client=True, config=config.mux, resumable=config.resume
            ) as session:
                self.session = session
                stream = await session.open_stream()
                channel = Control(stream, config, carrier.binding, self.announce, self.instance)
                with anyio.fail_after(CONTROL_TIMEOUT_S):
                    await channel.hello()
                    if not channel.resume_id:  # the server does not resume sessions
                        session.disable_resume()
                    for state in list(self.services.values()):
                        await channel.register(state, self._token(state.spec), first=first)
                if carrier.remember is not None:
                    carrier.remember()  # the server proved the token: its certificate is it
                log.info("session opened", server=self.server, services=len(self.services),
                         resumable=channel.ticket is not None)  # fmt: skip
                self._control, self._session_started = channel, anyio.current_time()
                self.connected.set()
                async with anyio.create_task_group() as tg:

                    async def watch() -> None:
                        await channel.watch(self._service_closed)
                        tg.cancel_scope.cancel()  # the control channel's end ends the session

                    tg.start_soon(watch)
                    if channel.ticket is not None and paths is not None:
                        tg.start_soon(paths.run, session, channel.ticket)
                    elif channel.ticket is not None:
                        start_resuming(tg, session, channel.ticket, self)
                    elif paths is not None:
                        log.warning("the server does not resume sessions: one path only")
                    try:
                        while True:
                            tg.start_soon(self._on_stream, await session.accept_stream())
                    except anyio.BrokenResourceError:
                        tg.cancel_scope.cancel()
        except TimeoutError:
            raise RetryableError("the server did not answer in time") from None
        except control.ControlError as exc:
            raise RetryableError(f"bad message from the server: {exc}") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if self.connected.is_set():
                return  # a session that was up ended: the caller reconnects
            raise await closed_early(self.config, exc) from None
        finally:
            self._control = None
            for state in self.services.values():
                state.public = None

    async def _on_stream(self, stream: MuxStream) -> None:
        await _visitors.serve(self, stream)

    async def _report_health(self, state: ServiceState) -> None:
        """A group member's health changed: tell the server now, if the session is up."""
        channel = self._control
        if channel is not None and state.public is not None:
            await channel.member_update(state)

    def _token(self, spec: ServiceSpec) -> Secret | None:
        return spec.token or self.config.token

    def _service_closed(self, name: str | None) -> None:
        state = self.services.get(name or "")
        if state is not None:
            state.public = None

    # --- changes and status ---

    async def apply_config(self, new: ClientConfig) -> None:
        """Put a new config in force (see `muxtunnel.reload`); `ReloadError` rejects it."""
        changes = client_changes(self.config, new)
        tls_context = None
        if changes.config.tls is not None:
            try:
                tls_context = client_context(changes.config.tls)
            except TlsError as exc:
                raise ReloadError(str(exc)) from None
        self.config, self.tls_context = changes.config, tls_context
        if changes.reconnect:
            # The services are registered anew on the new session anyway.
            self._replace_services(changes.config.services)
            log.info("config reloaded; reconnecting", server=self.server)
            if self.session is not None and not self.session.closed:
                await self.session.aclose()  # `run` reconnects after a short wait
            return
        diff = changes.services
        for name in diff.removed:
            await self._remove_service(name)
        for spec in diff.local_only:
            state = self.services.get(spec.name)
            if state is not None:  # None: refused at its last registration
                await self._change_in_place(state, spec)
        for spec in diff.changed:
            await self._remove_service(spec.name)
            await self._add_service(spec)
        for spec in diff.visitor_tokens:
            await self._new_visitor_tokens(spec)
        for spec in diff.added:
            await self._add_service(spec)
        log.info(
            "config reloaded",
            added=[spec.name for spec in diff.added],
            removed=list(diff.removed),
            restarted=[spec.name for spec in diff.changed],
            local_changed=[spec.name for spec in diff.local_only],
            visitor_tokens_changed=[spec.name for spec in diff.visitor_tokens],
        )

    async def _change_in_place(self, state: ServiceState, spec: ServiceSpec) -> None:
        """A new local address, or a group member's new weight or health check."""
        old, state.spec = state.spec, spec
        if old.local != spec.local:
            log.info("service local address changed", service=spec.name, local=spec.local)
        old_health = old.group.health if old.group is not None else None
        new_health = spec.group.health if spec.group is not None else None
        if old_health != new_health or old.local != spec.local:
            self.checks.stop(state)
            self.checks.start(state)
        old_weight = old.group.weight if old.group is not None else None
        if spec.group is not None and spec.group.weight != old_weight:
            log.info("group member weight changed", service=spec.name, weight=spec.group.weight)
            await self._report_health(state)

    async def _add_service(self, spec: ServiceSpec) -> None:
        """Start exposing `spec`: at once on a live session, else with the next one."""
        state = self.services[spec.name] = ServiceState(spec)
        self.checks.start(state)
        channel = self._control
        if channel is None:
            return  # registered with the others when the session (re)starts
        try:
            await channel.register_later(state, self._token(spec))
        except (FatalError, RetryableError, control.ControlError, TimeoutError) as exc:
            log.error("service refused; left out until the next reload", error=str(exc))
            self.services.pop(spec.name, None)
        except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
            pass  # the session ended: the next one registers the service

    async def _new_visitor_tokens(self, spec: ServiceSpec) -> None:
        """A private service's visitor tokens changed: the server gets their keys at once (or
        with the next registration); it revokes visits whose token was dropped."""
        state = self.services.get(spec.name)
        if state is None:
            return
        state.spec = spec
        channel = self._control
        if channel is None or state.public is None:
            return  # registered with them when the session (re)starts
        try:
            await channel.update_visitor_keys(state, self._token(spec))
        except (FatalError, RetryableError, control.ControlError, TimeoutError) as exc:
            log.error("new visitor tokens refused; registering the service again", error=str(exc))
            await self._remove_service(spec.name)
            await self._add_service(spec)
        except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError):
            pass  # the session ended: the next one registers the service with them

    async def _remove_service(self, name: str) -> None:
        """Stop exposing `name`; the server closes its public port and its visitors."""
        state = self.services.pop(name, None)
        if state is not None:
            self.checks.stop(state)
        channel = self._control
        if state is None or channel is None or state.public is None:
            return
        await channel.unregister(name)
        log.info("service removed", service=name)

    def _replace_services(self, specs: tuple[ServiceSpec, ...]) -> None:
        """Take `specs` as the services to register on the next session."""
        old = self.services
        self.services = {}
        for state in old.values():
            self.checks.stop(state)
        for spec in specs:
            state = self.services[spec.name] = ServiceState(spec)
            self.checks.start(state)
            if spec.name in old and old[spec.name].spec.remote_port == spec.remote_port:
                state.remote_port = old[spec.name].remote_port

    def status(self) -> ClientStatus:
        """What the client is doing now, as an immutable snapshot."""
        now = anyio.current_time()
        sessions: tuple[SessionRow, ...] = ()
        session = self.session
        if self.online and session is not None:
            registered = tuple(name for name, state in self.services.items() if state.public)
            age_s = now - self._session_started
            row = SessionRow(
                0, self.server, age_s, session.rtt_s, session.stream_count, registered,
                suspended=session.suspended, resumes=session.resumes,
            )  # fmt: skip
            sessions = (row,)
        services = tuple(state.row(self.traffic.get(name)) for name, state in self.services.items())
        connections = [row for t in self.traffic.values() for row in t.connection_rows(now)]
        connections.sort(key=lambda row: -row.age_s)
        server, resume = self.resume_stats.rows(self.server, self.online, self.reconnects, session)
        if self.paths is not None:
            server = self.paths.server_row(server, self.online and not server.suspended)
        return ClientStatus(
            version=__version__,
            server=self.server,
            reconnects=self.reconnects,
            sessions=sessions,
            services=services,
            connections=tuple(connections),
            traffic=tuple(row.traffic() for row in services),
            refusals=dict(self.refusals.counts),
            resume=resume,
            servers=(server,),
        )
