"""A `muxtunnel visit` session on the server: its grants, and the streams its visitor opens.

A visitor session proves a visitor token per private service (`Visit`, checked against the
keys of `_private.PrivateBook`); from its first grant on, the server takes the streams it
opens (`Session.allow_streams`; before that every one is refused, as a provider's are).

Each stream starts with a `VisitorHeader` (the service, and the visitor's own local peer,
which the server replaces with the visit session's address). It is admitted against the
provider's limits exactly as a visitor of a public port is (`_visitors.refusal`: visitors per
service and per source address, the service's share of its session's streams, compression
memory), then a new stream is opened on the provider's session, its header riding in the SYN,
and the two are spliced: two mux hops, no new TCP connection, and no hop waits for an ACK
before the visitor's bytes follow (the first byte costs no extra round trip). TCP goes through
`forward` (metered, throttled by the service's limiter, idle-timed, half-close and reset end
to end): spliced by callbacks (`splice.Splice`) when neither hop is compressed nor throttled,
piped by a task per direction otherwise; a UDP flow is relayed datagram by datagram
(`udpflow.relay_flow`), counted in the service's UDP counters. Each splice runs in a cancel
scope that both the service (when it ends) and the grant (when it is revoked) can cut. In a
cluster, a private service another node holds is checked and admitted there
(`_cluster_private`, `_visit_elsewhere`).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc
import structlog

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.balance.ratelimit import Refusal
from muxtunnel.compress import stream_memory_bytes
from muxtunnel.control import Error, Presence, Visit, Visited, VisitorHeader
from muxtunnel.forward import forward, guarded, relayable
from muxtunnel.quota import Quota
from muxtunnel.server import _services
from muxtunnel.server._host import Host
from muxtunnel.server._private import Grant, RemoteVisit, key_id
from muxtunnel.server._registry import ActiveService
from muxtunnel.server._visit_elsewhere import serve_elsewhere
from muxtunnel.server._visitors import REFUSED, admit, proxy_preamble, refusal
from muxtunnel.specs import format_host_port
from muxtunnel.udpflow import relay_flow
from muxtunnel.visitauth import match_key, visit_server_tag

__all__ = ["HEADER_TIMEOUT_S", "VisitorSide"]

log = structlog.get_logger("muxtunnel.server")

#: How long a visitor may take to send a stream's header after opening it.
HEADER_TIMEOUT_S = 10.0


class VisitorSide:
    """The visits of one session (see the module doc)."""

    def __init__(
        self,
        host: Host,
        session: Session,
        session_id: int,
        peer: tuple[str, int],
        source: str,
        binding: bytes,
        channel: MuxStream,
        task_group: anyio.abc.TaskGroup,
        local: tuple[str, int] = ("0.0.0.0", 0),
    ) -> None:
        self.host = host
        self.session = session
        self.id = session_id
        self.peer = peer
        self.source = source
        self.binding = binding
        self.channel = channel
        #: The server's end of the visit session's carrier (a PROXY protocol header's target).
        self.local = local
        self.grants: dict[str, Grant] = {}
        #: Compression memory of the visitor's own compressed streams.
        self.compression = Quota(host.config.compression_budget_bytes)
        #: Why the session ended, when this side ended it (its last grant revoked).
        self.close_reason: str | None = None
        self._tg = task_group
        self._serving = False

    def authenticate(self, request: Visit, nonces: tuple[bytes, bytes]) -> bytes | None:
        """The key `request` proves for its service, or None (as much work either way)."""
        keys = self.host.private.keys(request.service)
        return match_key(keys, request.tag, request.service, request.type, *nonces, self.binding)

    async def grant(
        self,
        request: Visit,
        key: bytes,
        nonces: tuple[bytes, bytes],
        elsewhere: RemoteVisit | None = None,
    ) -> None:
        """Let the visitor reach `request.service` with `key` (or as the provider's node
        said, `elsewhere`), and say so."""
        host, name = self.host, request.service
        limit = host.config.max_services_per_session
        refused = None
        if name in self.grants:
            refused = Error(control.BAD_REQUEST, f"{name!r} is granted already", name)
        elif len(self.grants) >= limit:
            message = f"this session visits {limit} services already (max_services_per_session)"
            refused = Error(control.LIMIT_REACHED, message, name)
        if refused is not None:
            host.refusals.refuse("visit_refused", "visit refused", session=self.id,
                                 service=name, detail=refused.message)  # fmt: skip
            await control.send_message(self.channel, refused)
            return
        compression, level = _services.compression(host, request, name)
        grant = Grant(
            name, request.type, key, self.id, self._presence_of(name), self._revoke,
            compression, level, elsewhere.key_id if elsewhere else key_id(key),
        )  # fmt: skip
        self.grants[name] = grant
        self.compression.share(name)
        host.private.add(grant)
        if elsewhere is not None:
            online, tag = elsewhere.online, elsewhere.server_tag
        else:
            online = self._provider(name, request.type) is not None
            tag = visit_server_tag(key, name, request.type, *nonces, self.binding)
        await control.send_message(
            self.channel, Visited(name, request.type, tag, online, compression, level)
        )
        log.info("visit granted", session=self.id, peer=_address(self.peer), service=name,
                 online=online, compression=compression)  # fmt: skip
        if not self._serving:
            self._serving = True
            self.session.allow_streams()
            self._tg.start_soon(self._serve_streams)

    def close(self) -> None:
        """The session ended: its grants go."""
        for grant in self.grants.values():
            self.host.private.remove(grant)
        self.grants.clear()

    # --- the book's callbacks ---

    def _presence_of(self, name: str) -> Callable[[bool], bool]:
        def presence(online: bool) -> bool:
            return self._tell(Presence(name, online))

        return presence

    def _tell(self, message: Presence | Error) -> bool:
        """Queue a control message now (the book calls from sync code); False if it cannot."""
        try:
            return self.channel.send_nowait(control.encode_message(message))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return True  # the session is ending anyway

    def _revoke(self, grant: Grant, reason: str) -> None:
        if self.grants.get(grant.name) is not grant:
            return
        del self.grants[grant.name]
        self.compression.leave(grant.name)
        self.host.private.remove(grant)
        for scope in list(grant.splices):
            scope.cancel()
        self.host.refusals.refuse("visit_revoked", "visit revoked", session=self.id,
                                  peer=_address(self.peer), service=grant.name,
                                  why=reason)  # fmt: skip
        message = f"visitor token revoked for {grant.name!r}: {reason}"
        self._tell(Error(control.ACCESS_REVOKED, message, grant.name))
        if not self.grants:
            self.close_reason = f"visit revoked: {reason}"
            self._tg.start_soon(self._close_session)

    async def _close_session(self) -> None:
        await anyio.sleep(0)  # let the notice be queued first: aclose flushes what is queued
        await self.session.aclose()

    # --- streams ---

    def _provider(self, name: str, type: str) -> ActiveService | None:
        service = self.host.registry.by_name.get(name)
        if service is None or not service.private or service.type != type:
            return None
        return service

    async def _serve_streams(self) -> None:
        try:
            while True:
                stream = await self.session.accept_stream()
                self._tg.start_soon(self._serve_guarded, stream)
        except anyio.BrokenResourceError:
            pass  # the session ended

    async def _serve_guarded(self, stream: MuxStream) -> None:
        await guarded(self._serve(stream), stream, session=self.id, stream=stream.stream_id)

    async def _serve(self, stream: MuxStream) -> None:
        host = self.host
        try:
            with anyio.fail_after(HEADER_TIMEOUT_S):
                header = await control.read_visitor_header(stream)
        except (TimeoutError, control.ControlError, anyio.EndOfStream, anyio.BrokenResourceError):
            host.refusals.refuse("visit_bad_stream", "visitor stream without a valid header",
                                 session=self.id, peer=_address(self.peer))  # fmt: skip
            stream.reset()
            return
        name = header.service
        grant = self.grants.get(name)
        if grant is None or grant.type != header.type:
            host.refusals.refuse("visit_not_granted", "visitor stream for a service not granted",
                                 session=self.id, service=name)  # fmt: skip
            stream.reset()
            return
        service = self._provider(name, header.type)
        if service is None and host.cluster is not None:  # held by another node?
            await serve_elsewhere(
                host, grant, stream, header.compressed, self.peer, self.compression, self.id
            )
            return
        if service is None or service.provider is None:
            host.refusals.refuse("provider_offline", "visitor refused: its provider is offline",
                                 session=self.id, service=name)  # fmt: skip
            stream.reset()
            return
        with anyio.CancelScope() as scope:
            grant.splices.add(scope)
            service.splices.add(scope)
            try:
                if header.type == "udp":
                    await self._relay_flow(service, stream)
                else:
                    await self._splice(grant, service, stream, header.compressed)
            finally:
                grant.splices.discard(scope)
                service.splices.discard(scope)
        if scope.cancelled_caught:  # cut from outside: both ends see a failure
            stream.reset()

    async def _relay_flow(self, service: ActiveService, stream: MuxStream) -> None:
        assert service.provider is not None
        if not service.streams.take():
            self.host.refusals.refuse("stream_quota", REFUSED["stream_quota"],
                                      service=service.name, source=self.source)  # fmt: skip
            stream.reset()
            return
        try:
            header = VisitorHeader(service.name, "udp", *self.peer)
            try:
                target = await service.provider.open_stream(control.encode_visitor_header(header))
            except anyio.BrokenResourceError:
                stream.reset()
                return
            service.udp.flows_opened += 1
            await relay_flow(stream, target, service.udp, idle_s=self.host.config.udp_flow_idle_s)
        finally:
            service.streams.give_back()

    async def _splice(
        self, grant: Grant, service: ActiveService, stream: MuxStream, compressed: bool
    ) -> None:
        host, provider = self.host, service.provider
        assert provider is not None
        reason = refusal(host, service, provider, self.source)
        if reason is None and not service.streams.take():
            reason = "stream_quota"
        if reason is not None:
            if reason in REFUSED:
                host.refusals.refuse(reason, REFUSED[reason], service=service.name,
                                     source=self.source)  # fmt: skip
            stream.reset()
            return
        admission = admit(host, service.name, self.source)  # its rate limits, if any
        if isinstance(admission, Refusal):  # counted and logged by the rate limiter
            service.streams.give_back()
            stream.reset()
            return
        service.sources[self.source] += 1
        # The visitor's hop: compressed if its grant agreed and its header says so.
        inbound = stream if not (grant.compression and compressed) else None
        visitor_memory = 0
        if inbound is None:
            visitor_memory = stream_memory_bytes(grant.compression_level)
            if not self.compression.try_take(service.name, visitor_memory):
                visitor_memory = 0
        # The provider's hop: as for a visitor of a public port.
        memory = stream_memory_bytes(service.compression_level) if service.compression else 0
        provider_compressed = bool(memory) and service.compression_memory.take(memory)
        try:
            if inbound is None and not visitor_memory:
                host.refusals.refuse("compression_budget", REFUSED["compression_budget"],
                                     service=service.name, source=self.source)  # fmt: skip
                stream.reset()
                return
            if memory and not provider_compressed and not service.compression_fallback:
                host.refusals.refuse("compression_budget", REFUSED["compression_budget"],
                                     service=service.name, source=self.source)  # fmt: skip
                stream.reset()
                return
            await self._pipe(grant, service, stream, inbound is None, provider_compressed)
        finally:
            if admission is not None:
                admission.release()
            service.streams.give_back()
            if provider_compressed:
                service.compression_memory.give_back(memory)
            if visitor_memory:
                self.compression.give_back(service.name, visitor_memory)
            service.sources[self.source] -= 1
            if not service.sources[self.source]:
                del service.sources[self.source]

    async def _pipe(
        self,
        grant: Grant,
        service: ActiveService,
        stream: MuxStream,
        visitor_compressed: bool,
        provider_compressed: bool,
    ) -> None:
        from muxtunnel.compress import CompressedStream

        assert service.provider is not None
        visitor: anyio.abc.ByteStream = stream
        if visitor_compressed:
            visitor = CompressedStream(stream, grant.compression_level)
        peer_host, peer_port = self.peer
        preamble = b""
        if service.proxy_protocol is not None:
            preamble = proxy_preamble(service.proxy_protocol, self.peer, self.local)
        plain = bool(service.compression) and not provider_compressed
        header = VisitorHeader(service.name, "tcp", peer_host, peer_port, compressed=not plain)
        first = control.encode_visitor_header(header)
        level = service.compression_level if provider_compressed else None
        limiter = self.host.limiter_of(service.name)
        if not visitor_compressed and relayable(level, limiter):
            first += preamble  # spliced as they come: the PROXY header may ride the SYN too
            preamble = b""
        with service.in_flight.track():
            try:
                target = await service.provider.open_stream(first)
            except anyio.BrokenResourceError:
                stream.reset()
                return
            await forward(
                visitor,
                target,
                visitor_side=True,
                service=service.name,
                peer=_address(self.peer),
                traffic=self.host.traffic_of(service.name),
                compression_level=level,
                limiter=limiter,
                preamble=preamble,
                session=service.session_id,
                visitor_session=self.id,
            )


def _address(peer: tuple[str, int]) -> str:
    return format_host_port(*peer)
