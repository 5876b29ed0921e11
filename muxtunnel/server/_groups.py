"""Load-balancing groups on the server: members of several clients behind one public name.

A member registers its own service name with `group: NAME`; the group is the public service:
its name is what visitors, metrics, status and the server's `services[]` policy (`lb`,
`circuit`, `rate_limit`, `per_source`, `group_token`, the limits) know, and the tokens checked
are the group name's. The first member creates the group (binds its port, or its web routes);
later ones join it; the last one to leave closes it. Each visitor (TCP connection, UDP flow,
HTTP request) is admitted by the rate limits, then given to the member the group's policy
picks (`muxtunnel.balance.Group`), through a `BalancedStream` that retries a failed dial once.

Group tokens (`auth.group_proof`): a group token configured for the name
(`server.services[].group_token`) is the group's for good; without one, the group takes the
public key of its first member's token (or none, if that member gave none), and keeps it while
it has members. Every later member must prove the same token; one that cannot is refused as a
wrong service token is (`auth_failed`, counted against its source).

Member ids are `CLIENT-NAME/SERVICE`: the same after a reconnect, so hashed keys come back to
the member. A registration with an id already in the group takes its place if it comes from
the same client process (`Register.instance`: a reconnect that beat the old session's end),
else it gets the first free `#2`, `#3`, ... suffix.

Invariants: `by_name[name]` is a group with at least one member, its (type, port) in the
registry's ports, its listener task running; a `MemberHandle` is in its group's engine iff its
registration is live; a member leaving resets the visitor streams open on it.
"""

from __future__ import annotations

import hmac

import anyio
import anyio.abc
import structlog

from mux import Session
from muxtunnel import control
from muxtunnel.auth import verify_group_proof
from muxtunnel.balance.group import Group
from muxtunnel.balance.settings import GroupSettings, PolicyKind
from muxtunnel.control import MemberUpdate, Register
from muxtunnel.forward import Visitors
from muxtunnel.model import WEB_TYPES
from muxtunnel.quota import Share
from muxtunnel.reload import ServerChanges
from muxtunnel.server import _services
from muxtunnel.server._admitted_udp import AdmittedUdp
from muxtunnel.server._group_visitors import serve_tcp
from muxtunnel.server._host import Host
from muxtunnel.server._registry import (
    ActiveService,
    GroupService,
    MemberHandle,
    RegistrationError,
    Reservation,
)
from muxtunnel.sources import address_key
from muxtunnel.specs import format_host_port
from muxtunnel.transport import local_port
from muxtunnel.udp import UdpForwarder

__all__ = ["Groups"]

log = structlog.get_logger("muxtunnel.server")

#: A member id's client-name part: host names are at most 64 characters in practice
#: (HOST_NAME_MAX), and the whole id must fit a control message's 255-character text field.
_CLIENT_NAME_CHARS = 128


class Groups:
    """The live groups of a server, by name; registrations join and leave them here."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.by_name: dict[str, GroupService] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._accepting = True
        #: Creating a group binds its socket: one at a time, so two first members of one
        #: group cannot both bind one.
        self._creating = anyio.Lock()

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Hold the task group the groups' sockets are served in, until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def stop_accepting(self) -> None:
        """Close every group's public socket; visitors already in carry on."""
        self._accepting = False
        for group in self.by_name.values():
            group.listener_scope.cancel()

    # --- membership ---

    def settings(self, name: str) -> GroupSettings:
        """What the server's config says about group `name` (defaults without a policy)."""
        policy = next((p for p in self.host.config.services if p.name == name), None)
        if policy is None:
            return GroupSettings()
        return GroupSettings(policy.lb, policy.circuit)

    def proof_ok(self, request: Register, nonces: tuple[bytes, bytes], binding: bytes) -> bool:
        """Does `request` prove the token of its group: the configured one, else the live
        group's, else (a new group) its own? See the module docstring."""
        name = request.group
        assert name is not None
        configured = self.host.tokens.group_keys.get(name)
        live = self.by_name.get(name)
        expected = configured
        if expected is None:
            expected = live.key if live is not None else (request.group_key or None)
        if expected is None:
            return not request.group_key
        if not request.group_key or not hmac.compare_digest(request.group_key, expected):
            return False
        return verify_group_proof(
            expected, request.group_proof, request.service, name, *nonces, binding
        )

    async def join(
        self,
        session: Session,
        session_id: int,
        client_name: str,
        request: Register,
        key: bytes,
        shares: tuple[Share, Share],
    ) -> ActiveService:
        """Add a member (creating its group if it is the first); `RegistrationError` if the
        registration does not fit the group. `key` is the group name's key the member proved
        (the group's port is reserved for it, see `_registry`)."""
        name = request.group
        assert name is not None
        if name in self.host.registry.by_name:
            raise RegistrationError(
                control.SERVICE_TAKEN,
                f"service {name!r} is served by a client outside any group",
            )
        group = self.by_name.get(name)
        if group is None:
            async with self._creating:
                group = self.by_name.get(name) or await self._create(name, request, key)
        self._check_fits(group, request)
        member_id, replaced = self._member_id(group, session, client_name, request)
        streams, memory = shares
        service = ActiveService(
            request.service, request.type, group.port, session_id, Visitors(), key=key,
            streams=streams, compression_memory=memory,
        )  # fmt: skip
        service.compression, service.compression_level = _services.compression(
            self.host, request, name
        )
        service.compression_fallback = request.compression_fallback
        service.proxy_protocol = request.proxy_protocol if request.type == "tcp" else None
        service.urls = group.urls
        handle = MemberHandle(session, service, member_id, name, request.instance)
        service.member = handle
        group.group.add_member(member_id, handle, weight=request.weight, healthy=request.healthy)
        if replaced is not None:
            reason = "the same client registered it again on a new session"
            await self.host.close_service(replaced.service, reason)
        return service

    def _check_fits(self, group: GroupService, request: Register) -> None:
        if request.type != group.type:
            raise RegistrationError(
                control.BAD_REQUEST, f"group {group.name!r} is a {group.type} service"
            )
        if request.remote_port and request.remote_port != group.port:
            raise RegistrationError(
                control.PORT_IN_USE,
                f"group {group.name!r} listens on port {group.port}: ask for it, or for 0",
            )
        given = request.group_key or None
        if not group.configured and given != group.key:  # two first members raced
            raise RegistrationError(control.AUTH_FAILED, "authentication failed")

    def _member_id(
        self, group: GroupService, session: Session, client_name: str, request: Register
    ) -> tuple[str, MemberHandle | None]:
        """The new member's id, and the member it replaces (a reconnect), if any."""
        base = f"{client_name[:_CLIENT_NAME_CHARS] or 'client'}/{request.service}"
        engine = group.group
        if base not in engine:
            return base, None
        old = engine.member(base).handle
        if old.session is session:
            raise RegistrationError(
                control.BAD_REQUEST, f"{base} is already a member of {group.name!r}"
            )
        if request.instance and hmac.compare_digest(old.instance, request.instance):
            engine.remove_member(base)  # the same process, back before its old session ended
            log.info("group member replaced by its reconnect", group=group.name, member=base)
            return base, old
        number = 2
        while f"{base}#{number}" in engine:
            number += 1
        return f"{base}#{number}", None

    def leave(self, service: ActiveService) -> None:
        """A member's registration ended: its visitors are cut, an empty group closes."""
        handle = service.member
        if handle is None:
            return
        for stream in list(handle.streams):
            stream.reset()
        handle.streams.clear()
        group = self.by_name.get(handle.group)
        if group is None or handle.member_id not in group.group:
            return
        if group.group.member(handle.member_id).handle is not handle:
            return  # replaced by a reconnect of the same process
        group.group.remove_member(handle.member_id)
        if not len(group.group):
            self._close(group)
            if not service.released and group.type not in WEB_TYPES:  # its session was lost
                # The port stays the group's a while, as a plain service's does: its members
                # reconnect and ask for it, and nobody else may take it meanwhile.
                until = anyio.current_time() + self.host.config.port_reservation_s
                reservation = Reservation(group.name, service.key, until)
                self.host.registry.reserved[(group.type, group.port)] = reservation

    def update(self, service: ActiveService, update: MemberUpdate) -> None:
        """A member's client reported its target's health, or a new weight."""
        handle = service.member
        group = self.by_name.get(handle.group) if handle is not None else None
        if handle is None or group is None or handle.member_id not in group.group:
            return
        if group.group.member(handle.member_id).handle is not handle:
            return
        handle.detail = update.detail
        group.group.set_health(handle.member_id, update.healthy)
        if group.group.member(handle.member_id).weight != update.weight:
            group.group.set_weight(handle.member_id, update.weight)
            log.info("group member weight changed", group=group.name,
                     member=handle.member_id, weight=update.weight)  # fmt: skip

    def apply(self, changes: ServerChanges) -> list[tuple[GroupService, str]]:
        """Put a reloaded config in force: new policies and circuits at once; the groups whose
        members must go (their name's token, or their configured group token, changed)."""
        closing = []
        for name, group in self.by_name.items():
            group.group.update(self.settings(name))
            reason = changes.close_reason(name, group.port, group.type)
            configured = changes.tokens.group_keys.get(name)
            if configured is None:
                group.configured = False  # the members proved the key they hold: it stays
            elif group.key is None or not hmac.compare_digest(configured, group.key):
                reason = reason or "its group token changed in the server's config"
            else:
                group.configured = True
            if reason is not None:
                closing.append((group, reason))
        return closing

    # --- the group's public socket ---

    async def _create(self, name: str, request: Register, key: bytes) -> GroupService:
        host = self.host
        if self._tg is None or not self._accepting:
            raise RegistrationError(control.INTERNAL_ERROR, "the server is not serving groups")
        port = 0 if request.type in WEB_TYPES else _services.port_for(host, request, key, name)
        engine: Group[MemberHandle] = Group(name, self.settings(name))
        configured = host.tokens.group_keys.get(name)
        group_key = configured if configured is not None else (request.group_key or None)
        if request.type in WEB_TYPES:
            return self._create_web(name, request, engine, group_key, configured is not None)

        def forwarder() -> UdpForwarder:
            config = host.config
            return AdmittedUdp(
                name, idle_s=config.udp_flow_idle_s, max_flows=config.udp_max_flows,
                limiter=lambda: host.visitor_limiter(name), group=engine, key_of=address_key,
                refusals=host.refusals,
            )  # fmt: skip

        sock = await _services.bind(host, name, request.type, port, forwarder)
        port = sock.port if isinstance(sock, UdpForwarder) else local_port(sock)
        group = GroupService(
            name, request.type, port, engine, group_key, configured is not None,
            Visitors(parent=host.visitors),
        )  # fmt: skip
        if isinstance(sock, UdpForwarder):
            sock.counters = group.udp
        if engine.settings.policy.kind is PolicyKind.HASH_HEADER:
            log.warning("a hash_header policy needs HTTP requests: visitors go round robin",
                        group=name, type=request.type)  # fmt: skip
        self._start(group, sock)
        return group

    def _create_web(
        self,
        name: str,
        request: Register,
        engine: Group[MemberHandle],
        key: bytes | None,
        configured: bool,
    ) -> GroupService:
        web = self.host.web
        if web is None:
            raise RegistrationError(
                control.UNSUPPORTED,
                "this server serves no http or https services (it needs listen --domain with "
                "--http-bind or --https-bind)",
            )
        group = GroupService(
            name, request.type, web.public_port(request.type), engine, key, configured,
            Visitors(parent=self.host.visitors),
        )  # fmt: skip
        web.register_group(group, request)
        self._start(group, None)
        return group

    def _start(self, group: GroupService, sock: _services.PublicSocket) -> None:
        assert self._tg is not None
        name, host = group.name, self.host
        self.by_name[name] = group
        if sock is not None:
            host.registry.ports.add((group.type, group.port))
        self._tg.start_soon(self._serve, group, sock)
        public = group.urls[0] if group.urls else format_host_port(
            host.config.public_host, group.port
        )  # fmt: skip
        log.info("group opened", group=name, type=group.type, public=public,
                 policy=str(group.group.settings.policy))  # fmt: skip

    def _close(self, group: GroupService) -> None:
        if self.by_name.get(group.name) is group:
            del self.by_name[group.name]
            if group.type in WEB_TYPES:
                if self.host.web is not None:
                    self.host.web.release_group(group)
            else:
                self.host.registry.ports.discard((group.type, group.port))
        group.scope.cancel()

    async def _serve(self, group: GroupService, sock: _services.PublicSocket) -> None:
        try:
            with group.scope:
                if sock is None:  # web routes: they live until the group closes
                    await anyio.sleep_forever()
                if isinstance(sock, UdpForwarder):
                    with group.listener_scope:  # datagrams have nothing to drain
                        await sock.run()
                    return
                assert sock is not None
                await serve_tcp(self.host, group, sock)
        finally:
            self._close(group)
            for member in group.group.members:  # the socket failed under them: they end too
                self.host.registry.remove(member.handle.service)
            group.ended.set()
            log.info("group closed", group=group.name,
                     duration_s=round(anyio.current_time() - group.started, 3),
                     visitors=group.in_flight.total)  # fmt: skip
