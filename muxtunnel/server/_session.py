"""One connected client: its control channel, its authentication, the services it registers.

The client opens the session's first stream as the control channel; every later stream is
opened by the server, one per visitor. Streams a client opens after the control channel are
refused by the mux core itself (`Session.refuse_streams`): RST at once, charged to the
client's reset budget, so a client that keeps opening them loses its session. A client can only
ask, over the control channel, for what its tokens allow.

Until its first successful registration a session is unauthenticated: it holds a place at the
pre-auth gate and must finish within `auth_timeout_s`. A failed authentication ends such a
session; one that has authenticated (a client adding a service after a reload) stays up for its
other services, but every failure counts against its source's rate limit.
"""

from __future__ import annotations

import anyio
import anyio.abc
import structlog

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.admission import Ticket
from muxtunnel.auth import new_nonce, server_tag, verify_client_tag
from muxtunnel.control import (
    Error,
    Hello,
    MemberUpdate,
    Register,
    Registered,
    Unregister,
    Visit,
    VisitorKeys,
)
from muxtunnel.server import _resume, _services
from muxtunnel.server._activate import activate
from muxtunnel.server._auth_steps import AuthSteps
from muxtunnel.server._host import Host
from muxtunnel.server._provider_keys import ProviderKeys
from muxtunnel.server._registry import ActiveService, RegistrationError
from muxtunnel.server._services import SessionQuotas
from muxtunnel.server._visit import VisitorSide
from muxtunnel.sources import address_key
from muxtunnel.specs import format_host_port
from muxtunnel.status import SessionRow

__all__ = ["ClientSession"]

log = structlog.get_logger("muxtunnel.server")

#: How long an Unregister waits for the service's public port to close and its visitors to be
#: cut before the next control message is read anyway: that takes a few loop turns, the bound
#: only keeps a stuck close from stalling the control channel.
UNREGISTER_WAIT_S = 5.0


#: Why a session ends when the server stops (its log line and the status say so).
SHUTTING_DOWN = "server shutting down"


class ClientSession(AuthSteps, ProviderKeys):
    """One connected client: its control channel and the services it registered (or, for a
    `muxtunnel visit`, the private services it may visit: `visits`)."""

    def __init__(
        self,
        host: Host,
        session_id: int,
        peer: tuple[str, int],
        session: Session,
        binding: bytes = b"",
        preauth: Ticket | None = None,
        local: tuple[str, int] = ("0.0.0.0", 0),
    ) -> None:
        self.host = host
        self.id = session_id
        self.session = session
        self.address, self.local = peer, local
        self.peer = format_host_port(peer[0], peer[1])
        self.source = address_key(peer[0])
        #: SHA-256 of the TLS certificate this session was accepted with (b"" without TLS).
        self.binding = binding
        #: Its place among unauthenticated connections, released once it authenticates.
        self.preauth = preauth
        self.started = anyio.current_time()
        self.channel: MuxStream | None = None
        #: What its Hello said it is called (free text: group member ids start with it).
        self.client_name = ""
        self.services: dict[str, ActiveService] = {}
        #: What its services share: streams and compression memory, each a guaranteed share.
        self.quotas = SessionQuotas.for_config(host.config)
        self.authenticated = False
        self.close_reason = "client disconnected"
        #: The server is shutting down (`stop_accepting`): that is why the session ends.
        self.stopping = False
        #: A `muxtunnel visit` session's grants and streams (None: it visits nothing).
        self.visits: VisitorSide | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        #: Resumption (`_resume`): the id its Challenge gave, the key its first registration
        #: proved, the carriers attached besides its own, and one switch at a time.
        self.resume_id = b""
        self.resume_key: bytes | None = None
        self.attached, self.switching = 0, anyio.Lock()

    def row(self, now: float) -> SessionRow | None:
        """The session as a status row; None until it has authenticated."""
        if not self.authenticated:
            return None
        visits = self.visits
        return SessionRow(
            id=self.id,
            peer=self.peer,
            age_s=now - self.started,
            rtt_s=self.session.rtt_s,
            streams=self.session.stream_count,
            services=tuple(visits.grants if visits is not None else self.services),
            suspended=self.session.suspended,
            resumes=self.session.resumes,
            role="visitor" if visits is not None else "client",
        )

    async def run(self) -> None:
        """Serve the control channel until it ends (or the client breaks the protocol)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self._serve_control()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                if self.stopping:  # we ended it: the client did not go anywhere
                    self.close_reason = SHUTTING_DOWN
                elif self.session.closed:  # the mux session's own reason says more
                    self.close_reason = self.session.close_reason or self.close_reason
            except control.ControlError as exc:
                self.close_reason = f"bad control message: {exc}"
                self.host.refusals.refuse(
                    "bad_control_message",
                    "bad control message",
                    session=self.id,
                    peer=self.peer,
                    error=str(exc),
                )
            except TimeoutError:
                self.close_reason = "no authentication in time"
                self.host.refusals.refuse(
                    "auth_timeout",
                    "authentication timeout",
                    session=self.id,
                    peer=self.peer,
                    timeout_s=self.host.config.auth_timeout_s,
                )
            for service in self.services.values():
                service.session_lost = True  # before its task ends: web names wait for it
            _resume.session_ended(self.host, self)
            if self.visits is not None:
                self.visits.close()
                self.close_reason = self.visits.close_reason or self.close_reason
            tg.cancel_scope.cancel()
        if refused := self.session.refused_streams:
            self.host.refusals.refuse(
                "client_streams",
                "streams opened by a client refused",
                n=refused,
                session=self.id,
                peer=self.peer,
                close_reason=self.session.close_reason,
            )

    async def tell(self, message: Error) -> None:
        """Send `message` on the control channel, if there is one still open."""
        if self.channel is None:
            return
        try:
            await control.send_message(self.channel, message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def stop_accepting(self) -> None:
        """Close the public sockets (the server is shutting down); open visitors carry on."""
        self.stopping = True
        self.close_reason = SHUTTING_DOWN
        for service in self.services.values():
            service.listener_scope.cancel()

    def stop_services(self) -> None:
        """Free every public port of this session at once (a reconnect may bind them again)."""
        for service in list(self.services.values()):
            self.host.registry.remove(service)

    # --- the control channel ---

    async def _serve_control(self) -> None:
        assert self._tg is not None
        with anyio.fail_after(self.host.config.auth_timeout_s) as deadline:
            channel = self.channel = await self.session.accept_stream()
            self.session.refuse_streams()
            hello = await control.receive_message(channel)
            if not isinstance(hello, Hello):
                raise control.ControlError(f"expected hello, got {type(hello).__name__}")
            if hello.version != control.PROTOCOL_VERSION:
                await control.send_message(
                    channel,
                    Error(
                        control.VERSION_MISMATCH,
                        f"server speaks protocol {control.PROTOCOL_VERSION}, "
                        f"client {hello.version}",
                    ),
                )
                return
            self.client_name = hello.client_name
            nonces = new_nonce(), hello.client_nonce
            self.resume_id = _resume.grant(hello, self.session, self.host.config)
            challenge = control.Challenge(
                control.PROTOCOL_VERSION,
                nonces[0],
                (control.FEATURE_GROUPS, control.FEATURE_INSTANCE),
                self.resume_id,
            )
            await control.send_message(channel, challenge)
            while not self.authenticated:
                if not await self._handle(channel, nonces):
                    return
            deadline.deadline = float("inf")
        while True:  # authenticated: no deadline any more
            if not await self._handle(channel, nonces):
                return

    async def _handle(self, channel: MuxStream, nonces: tuple[bytes, bytes]) -> bool:
        """Read and answer one control message; False when the session must end."""
        message = await control.receive_message(channel)
        if isinstance(message, Register):
            return await self._register(channel, message, *nonces)
        if isinstance(message, Visit):
            return await self._visit(channel, message, nonces)
        if isinstance(message, Unregister):
            await self._unregister(message.service)
            return True
        if isinstance(message, VisitorKeys) and self.authenticated:
            await self._update_keys(channel, message, nonces)
            return True
        if isinstance(message, MemberUpdate) and self.authenticated:
            service = self.services.get(message.service)
            if service is not None:
                self.host.update_member(service, message)
            return True
        raise control.ControlError(f"unexpected {type(message).__name__} message")

    async def _register(
        self, channel: MuxStream, request: Register, server_nonce: bytes, client_nonce: bytes
    ) -> bool:
        """Handle one registration; False when the session must end (see the module doc)."""
        host, nonces = self.host, (server_nonce, client_nonce)
        if self.visits is not None:
            raise control.ControlError("a visitor session cannot register services")
        if not await self._may_try(channel, request.service):
            return False
        # A group's member is authenticated by its group's name: the name's token, and the
        # group's own token if it has one.
        group = request.group or ""
        key, known = host.tokens.key_for(group or request.service)
        valid = verify_client_tag(
            key, request.tag, request.service, request.type, *nonces, self.binding, group
        )
        if valid and known and group:
            valid = host.group_proof_ok(request, nonces, self.binding)
        if not (valid and known):
            return await self._failed(channel, request.service)
        if not await self._admit(channel, request.service):
            return False
        try:
            keys = frozenset[bytes]()
            if request.private:
                keys = self._open_keys(request.service, request.visitor_keys, key, nonces)
            if not group:
                await _resume.take_over(host, self.id, request.service, key)
            service = await self._activate(request, key, keys)
        except RegistrationError as exc:
            if exc.code == control.AUTH_FAILED:  # a group token that lost a race to another
                host.auth_failed(self.source, anyio.current_time())
            host.refusals.refuse(
                f"register_{exc.code}",
                "registration refused",
                session=self.id,
                service=request.service,
                code=exc.code,
                detail=exc.message,
            )
            await control.send_message(channel, Error(exc.code, exc.message, request.service))
            return True
        await control.send_message(channel, self._registered(service, key, nonces, group))
        _resume.start(host, self, key, request.service, nonces, self.binding)
        return True

    async def _visit(self, channel: MuxStream, request: Visit, nonces: tuple[bytes, bytes]) -> bool:
        """A `muxtunnel visit` asks for a private service; False when the session must end."""
        if self.services:
            raise control.ControlError("a session that registers services cannot visit")
        if self.visits is None:
            assert self._tg is not None
            _resume.never(self)  # no registration derives its key: it would only hoard bytes
            self.visits = VisitorSide(
                self.host, self.session, self.id, self.address, self.source, self.binding,
                channel, self._tg, self.local,
            )  # fmt: skip
        if not await self._may_try(channel, request.service):
            return False
        key = self.visits.authenticate(request, nonces)
        elsewhere = None
        if key is None and self.host.cluster is not None:  # its provider's node checks it
            elsewhere = await self.host.cluster.check_visit(request, nonces, self.binding)
        if key is None and elsewhere is None:
            return await self._failed(channel, request.service)
        if not await self._admit(channel, request.service):
            return False
        await self.visits.grant(request, key or b"", nonces, elsewhere)
        return True

    def _registered(
        self, service: ActiveService, key: bytes, nonces: tuple[bytes, bytes], group: str = ""
    ) -> Registered:
        """The answer to a registration (or to new visitor keys) of `service`."""
        tag = server_tag(key, service.name, service.type, *nonces, self.binding, group)
        public_host, compression = self.host.config.public_host, service.compression
        level = service.compression_level if compression else 0
        member = service.member.member_id if service.member is not None else None
        return Registered(
            service.name, service.type, public_host, service.port, tag, compression,
            service.urls, level, member, service.private,
        )  # fmt: skip

    async def _activate(
        self, request: Register, key: bytes, visitor_keys: frozenset[bytes]
    ) -> ActiveService:
        host = self.host
        limit = host.config.max_services_per_session
        if len(self.services) >= limit:
            raise RegistrationError(
                control.LIMIT_REACHED,
                f"this session has {limit} services already (max_services_per_session)",
            )
        if request.service in self.services:
            raise RegistrationError(
                control.BAD_REQUEST, f"service {request.service!r} is already registered"
            )
        service, sock = await activate(
            host, self.session, self.id, self.client_name, request, key, self.quotas, visitor_keys
        )
        self.services[service.name] = service
        private = self.host.private
        if service.private or service.name in private.provider_keys:
            private.provider_keys_changed(service.name, service.visitor_keys)
        if service.private:
            private.presence(service.name, True)
        assert self._tg is not None
        self._tg.start_soon(self._serve_service, service, sock)
        public = format_host_port(host.config.public_host, service.port)
        log.info(
            "service opened",
            session=self.id,
            service=service.name,
            type=service.type,
            public="private" if service.private else service.urls[0] if service.urls else public,
            group=request.group,
            member=service.member.member_id if service.member is not None else None,
        )
        return service

    async def _serve_service(self, service: ActiveService, sock: _services.PublicSocket) -> None:
        try:
            await _services.serve(self.host, self.session, self.id, service, sock)
        finally:
            # Its session ended (or the socket failed): the port stays its own for a while.
            self.host.registry.remove(service, self.host.config.port_reservation_s)
            self.host.prune()
            if self.host.cluster is not None:
                await self.host.cluster.ended(service)
            if self.services.get(service.name) is service:
                del self.services[service.name]
            service.ended.set()
            if service.private and self.host.registry.by_name.get(service.name) is None:
                self.host.private.presence(service.name, False)
            log.info(
                "service closed",
                session=self.id,
                service=service.name,
                duration_s=round(anyio.current_time() - service.started, 3),
                visitors=service.in_flight.total,
            )

    async def _unregister(self, name: str) -> None:
        """Close a service; returns once its public port is free (the client may re-register)."""
        service = self.services.get(name)
        if service is not None:
            service.released = True  # given up on purpose: no reservation
            self.host.registry.remove(service)
            with anyio.move_on_after(UNREGISTER_WAIT_S):
                await service.ended.wait()
