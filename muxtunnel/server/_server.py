"""`muxtunnel listen`: accept clients' carriers, run a session on each, apply config changes.

One carrier per client, one mux session on it (`ClientSession`). The server owns every field
below: sessions reach them through the `Host` protocol, a reload through `apply_config`, and
whoever shows state through `status()`, a snapshot.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control, resume
from muxtunnel.admission import AdmissionGate, Ticket
from muxtunnel.auth import TokenBook
from muxtunnel.balance.ratelimit import VisitorLimiter
from muxtunnel.control import Error, MemberUpdate, Register
from muxtunnel.forward import Visitors
from muxtunnel.limits import ServiceLimiter, ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ServerConfig
from muxtunnel.quota import Share
from muxtunnel.reload import ReloadError, server_changes
from muxtunnel.server._groups import Groups
from muxtunnel.server._private import PrivateBook
from muxtunnel.server._ratelimits import RateLimits
from muxtunnel.server._registry import ActiveService, Registry
from muxtunnel.server._resume import ResumableSessions, drain, read_preamble, serve_resume
from muxtunnel.server._session import ClientSession
from muxtunnel.server._status import server_status
from muxtunnel.sources import FailureLimiter, address_key
from muxtunnel.specs import format_host_port
from muxtunnel.status import ServerStatus
from muxtunnel.tls import CLIENT_SPEAKS_TLS, ServerTlsContext, TlsError
from muxtunnel.transport import abort, listen_tcp, local_address, local_port, peer_address
from muxtunnel.trust import load_server_tls

if TYPE_CHECKING:  # the web ports (and h11), the cluster (and redis): only when configured
    from muxtunnel.server._cluster import ClusterNode
    from muxtunnel.server._web import WebFront

__all__ = ["Server"]

log = structlog.get_logger("muxtunnel.server")
#: How the multiplexer names a TLS hello (its first byte, 0x16, read as a frame's version).
_TLS_HELLO = "unsupported protocol version 22"

#: Per-name state (traffic totals, limiter) of a name that is no longer registered is kept this
#: long, so a client that reconnects finds its totals; and for at most this many such names,
#: so names registered and dropped in a loop cost bounded memory (about 290 B and four metric
#: series each).
RETIRED_NAME_GRACE_S = 300.0
MAX_RETIRED_NAMES = 1024


class Server:
    """The public side: accepts clients, authenticates their services, binds public ports."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tokens = TokenBook.from_config(config)
        self.failures = FailureLimiter(config.auth_failures_burst, config.auth_failures_per_min)
        #: Every refusal, by reason: counted for the metrics, logged at doubling counts.
        self.refusals = Refusals(log)
        #: Connections that have not authenticated yet (bounded per address and in all).
        self.preauth = AdmissionGate(self.refusals)
        #: Authenticated sessions per source address.
        self.sources: Counter[str] = Counter()
        self.registry = Registry()
        #: Visitor keys and visits of private services.
        self.private = PrivateBook(config)
        self.sessions: dict[int, ClientSession] = {}
        #: TCP visitors in flight, all sessions: a graceful stop waits for it to drain.
        self.visitors = Visitors()
        #: TLS on the control port (None: plain TCP); swapped by a reload.
        self.tls: ServerTlsContext | None = None
        #: The path of a self-signed certificate made by this process (to say so once).
        self.tls_created: str | None = None
        if config.tls is not None:
            self.tls, created = load_server_tls(config.tls)
            self.tls_created = config.tls.cert if created else None
        #: Per service name, kept across registrations: byte totals and enforced limits.
        self.traffic: dict[str, ServiceTraffic] = {}
        self.limiters = {policy.name: ServiceLimiter(policy) for policy in config.services}
        #: Rate limits on new visitors, per service name.
        self.rate_limits = RateLimits(config.services)
        #: Load-balancing groups, by name.
        self.groups = Groups(self)
        #: The shared HTTP/HTTPS ports (None: not configured); imported only when configured.
        self.web: WebFront | None = None
        if config.http is not None:
            from muxtunnel.server._web import WebFront

            self.web = WebFront(
                config, self.registry, self.traffic_of, self.limiter_of,
                self.visitor_limiter, self.groups.by_name, self.refusals,
            )  # fmt: skip
        self.cluster: ClusterNode | None = None  #: set by `join_cluster` (listen --cluster)
        self.auth_failures, self.started = 0, 0.0
        #: Sessions that may go on over a new carrier (`_resume`), by id.
        self.resumable = ResumableSessions()
        #: The bound control port, once running.
        self.port: int | None = None
        self._session_ids, self._accepting = itertools.count(1), anyio.CancelScope()

    def traffic_of(self, name: str) -> ServiceTraffic:
        """Byte totals and live meters of a service name (kept across registrations)."""
        return self.traffic.setdefault(name, ServiceTraffic())

    def limiter_of(self, name: str) -> ServiceLimiter:
        """The limits enforced on a service name (kept across registrations)."""
        return self.limiters.setdefault(name, ServiceLimiter())

    def auth_failed(self, source: str, now: float) -> None:
        """Count a failed authentication from `source` (against its rate limit too)."""
        self.failures.record_failure(source, now)
        self.auth_failures += 1

    def admit_session(self, source: str) -> bool:
        """Count one more authenticated session from `source`; False if it has its maximum."""
        if self.sources[source] >= self.config.max_sessions_per_source:
            return False
        self.sources[source] += 1
        return True

    def _session_ended(self, source: str) -> None:
        self.sources[source] -= 1
        if self.sources[source] <= 0:
            del self.sources[source]

    def prune(self) -> None:
        """Forget the traffic and limiter of names unregistered long ago (see RETIRED_NAME_*).

        Names still registered, configured with a policy, or with a live connection are kept.
        """
        registry = self.registry
        registry.expire()
        retired = registry.retired
        now = anyio.current_time()
        # A visitor that outlived its service may have made its name's state anew: retire it.
        policies = {policy.name for policy in self.config.services}
        orphans = self.traffic.keys() | (self.limiters.keys() - policies)
        for name in orphans - registry.by_name.keys() - self.groups.by_name.keys():
            retired.setdefault(name, now)
        horizon = now - RETIRED_NAME_GRACE_S
        excess = len(retired) - MAX_RETIRED_NAMES
        for name, since in list(retired.items()):  # oldest first
            if since > horizon and excess <= 0:
                break
            traffic = self.traffic.get(name)
            if traffic is not None and traffic.live:
                continue  # its last visitors are on their way out; next time
            del retired[name]
            excess -= 1
            self.private.forget((name,))
            self.traffic.pop(name, None)
            if self.web is not None:  # a web service's response counters
                self.web.engine.counters.services.pop(name, None)
            if name not in policies:
                self.limiters.pop(name, None)

    def visitor_limiter(self, name: str) -> VisitorLimiter | None:
        """The rate limits on new visitors of a service name (None: it has none)."""
        return self.rate_limits.of(name)

    # --- load-balancing groups (`Host`'s side of `_groups.Groups`) ---

    def is_group(self, name: str) -> bool:
        """Is `name` a live load-balancing group?"""
        return name in self.groups.by_name

    def group_proof_ok(
        self, request: Register, nonces: tuple[bytes, bytes], binding: bytes
    ) -> bool:
        """Does a member's registration prove its group's token (if the group has one)?"""
        return self.groups.proof_ok(request, nonces, binding)

    async def join_group(
        self,
        session: Session,
        session_id: int,
        client_name: str,
        request: Register,
        key: bytes,
        shares: tuple[Share, Share],
    ) -> ActiveService:
        """A member's registration, in its group (`RegistrationError` if refused)."""
        return await self.groups.join(session, session_id, client_name, request, key, shares)

    def leave_group(self, service: ActiveService) -> None:
        """A member's registration ended: it leaves its group, its visitors are cut."""
        self.groups.leave(service)

    def update_member(self, service: ActiveService, update: MemberUpdate) -> None:
        """A member's client reported its health or weight."""
        self.groups.update(service, update)

    # --- running ---

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled, or until `shutdown` has stopped accepting and sessions ended.

        Reports the bound control port through `task_status`.
        """
        self.started = anyio.current_time()
        listener = await listen_tcp(
            self.config.bind_host, self.config.bind_port, name="control", refusals=self.refusals
        )
        self.port = local_port(listener)
        if self.tls is not None and self.tls_created is not None:
            log.info(
                "tls certificate created",
                cert=self.tls_created,
                fingerprint=self.tls.fingerprint,
                hint="clients trust it on first use and refuse another one later; to pin it: "
                f"up --server-fingerprint {self.tls.fingerprint}",
            )
        log.info(
            "listening",
            bind=format_host_port(self.config.bind_host, self.port),
            allow_ports=str(self.config.allow_ports),
            tls=self.tls.fingerprint if self.tls else None,
        )
        # Carriers run in a group outside the accepting scope: stopping to accept new clients
        # (shutdown) must not cancel the sessions that are draining.
        async with anyio.create_task_group() as carriers:
            await carriers.start(self.groups.run)
            if self.web is not None:
                await carriers.start(self.web.run)
            if self.cluster is not None:
                await carriers.start(self.cluster.run)
            task_status.started(self.port)
            async with listener:
                with self._accepting:
                    await listener.serve(self._on_carrier, task_group=carriers)

    async def shutdown(self) -> None:
        """Graceful stop: no new clients or visitors, GoAway, wait for transfers, then close.

        Visitor connections still open after `drain_timeout_s` are reset with their sessions
        (a session whose carrier is lost ends at once: see `drain`)."""
        self._accepting.cancel()
        self.groups.stop_accepting()
        if self.web is not None:
            self.web.stop_accepting()
        sessions = list(self.sessions.values())
        for client in sessions:
            client.stop_accepting()
            if not client.session.closed:
                await client.session.go_away()
        await drain([c.session for c in sessions], self.visitors, self.config.drain_timeout_s)
        for client in sessions:
            await client.session.aclose()

    async def _on_carrier(self, stream: anyio.abc.SocketStream) -> None:
        address = peer_address(stream)
        if address is None:  # reset before we got to it
            await abort(stream)
            return
        ticket = self.preauth.admit(
            address_key(address[0]),
            self.config.max_preauth_connections,
            self.config.max_preauth_per_source,
        )
        if ticket is None:
            await abort(stream)
            return
        try:
            with ticket.scope:
                await self._serve_carrier(stream, address, ticket)
            if ticket.scope.cancelled_caught:  # evicted: maybe before a session owned it
                await abort(stream)
        finally:
            self.preauth.release(ticket)

    async def _serve_carrier(
        self, stream: anyio.abc.SocketStream, address: tuple[str, int], ticket: Ticket
    ) -> None:
        session_id = next(self._session_ids)
        started = anyio.current_time()
        carrier: anyio.abc.ByteStream = stream
        binding = b""
        if self.tls is not None:
            tls = self.tls  # this handshake's certificate, even if a reload swaps it meanwhile
            try:
                with anyio.fail_after(self.config.auth_timeout_s):
                    carrier = await tls.accept(stream)
            except (TlsError, TimeoutError) as exc:
                self._tls_failed(address, str(exc))
                await abort(stream)
                return
            binding = tls.binding
        first = await read_preamble(carrier, self.config.auth_timeout_s)
        if first == resume.MAGIC:
            await serve_resume(self, carrier, binding, address, ticket)
            return
        if first is None:  # closed before a byte
            await abort(carrier)
            return
        client: ClientSession | None = None
        resumable = self.config.resume
        try:
            async with Session(
                carrier, client=False, config=self.config.mux, resumable=resumable, prefix=first
            ) as session:
                local = local_address(stream) or ("0.0.0.0", 0)
                client = ClientSession(self, session_id, address, session, binding, ticket, local)
                self.sessions[session_id] = client
                await client.run()
        finally:
            if client is not None:
                del self.sessions[session_id]
                client.stop_services()
            if client is not None and client.authenticated:
                self._session_ended(client.source)
                log.info(
                    "session closed",
                    session=session_id,
                    peer=client.peer,
                    duration_s=round(anyio.current_time() - started, 3),
                    reason=client.close_reason,
                )
            elif client is not None and _TLS_HELLO in (client.session.close_reason or ""):
                self._tls_failed(address, f"a TLS hello on a plaintext port: {CLIENT_SPEAKS_TLS}")

    def _tls_failed(self, address: tuple[str, int], error: str) -> None:
        """Count a failed TLS handshake; log it at doubling counts (a flood is not a log)."""
        self.refusals.refuse(
            "tls_failed", "tls handshake failed", peer=format_host_port(*address), error=error
        )

    # --- changes and status ---

    async def apply_config(self, new: ServerConfig) -> None:
        """Put a new config in force (see `muxtunnel.reload`); `ReloadError` rejects it.

        Tokens, policies, allowed ports, timeouts and the TLS certificate are swapped in place;
        a live service whose token changed or whose port is no longer allowed is closed, and
        its client told.
        """
        changes = server_changes(self.config, new)
        try:
            tls = load_server_tls(changes.config.tls)[0] if changes.config.tls else None
            web_tls = self.web.load_tls(changes.config.https) if self.web is not None else None
        except TlsError as exc:
            raise ReloadError(str(exc)) from None
        new = changes.config
        self.config, self.tokens, self.tls = new, changes.tokens, tls
        self.failures.burst = new.auth_failures_burst
        self.failures.per_s = new.auth_failures_per_min / 60.0
        policies = {policy.name: policy for policy in new.services}
        for name in set(self.limiters) | set(policies):
            self.limiter_of(name).update(policies.get(name))
        self.rate_limits.update(new.services)
        self.private.apply(new)  # visits its visitor tokens no longer cover are revoked
        closed = []
        for service in list(self.registry.by_name.values()):
            reason = changes.close_reason(service.name, service.port, service.type, service.private)
            if reason is not None:
                closed.append(service.name)
                await self.close_service(service, reason)
        for group, reason in self.groups.apply(changes):
            closed.append(group.name)
            for member in group.group.members:
                await self.close_service(member.handle.service, reason)
        if self.web is not None:
            for service in self.web.apply(new, web_tls):
                if self.registry.by_name.get(service.name) is service:
                    closed.append(service.name)
                    reason = "one of its custom domains is no longer allowed"
                    await self.close_service(service, reason)
        log.info(
            "config reloaded",
            services_with_policy=len(policies),
            allow_ports=str(new.allow_ports),
            closed=closed,
            tls=tls.fingerprint if tls else None,
        )

    async def close_service(self, service: ActiveService, reason: str) -> None:
        """Close a live service (its visitors too) and tell its client why."""
        log.warning("service closed by the server", service=service.name, reason=reason)
        service.released = True  # the server's decision: no reservation of its port
        self.registry.remove(service)
        client = self.sessions.get(service.session_id)
        if client is not None:
            await client.tell(Error(control.SERVICE_CLOSED, reason, service.name))

    def status(self) -> ServerStatus:
        """What the server is doing now, as an immutable snapshot."""
        return server_status(self)
