"""Visitors another node of a cluster hands over: each arrives on a stream of that node's
session to this one, its `VisitorHeader` first, and is served as a visitor of what is held
here: a TCP service (admitted by its limits, metered, idle-timed as any other), a UDP flow
(piped to the client as its own flows are), a load-balancing group (its group picks the
member), or an HTTP/HTTPS request (this node's engine routes it again, with the route's own
options); or a visit of a private service held here (`_cluster_private`: a visitor's proof to
check, or a granted visitor's stream). What is not held here (any more) gets a reset, counted.
"""

from __future__ import annotations

import anyio

from mux import MuxStream, Session
from muxtunnel import control
from muxtunnel.control import VisitorHeader, encode_visitor_header
from muxtunnel.framing import receive_frame, unpack_map
from muxtunnel.proxy import pipe
from muxtunnel.server import _cluster_private as _private
from muxtunnel.server import _group_visitors, _visitors
from muxtunnel.server._mirror import NodeServer
from muxtunnel.server._registry import ActiveService, GroupService
from muxtunnel.sources import address_key
from muxtunnel.transport import abort

__all__ = ["serve_forwarded"]


async def serve_forwarded(server: NodeServer, stream: MuxStream, peer: str) -> None:
    """A visitor another node handed over (its header first): served as a visitor of the
    service held here, or refused with a reset if it is not held here (any more)."""
    try:
        with anyio.fail_after(server.config.auth_timeout_s):
            data = unpack_map(await receive_frame(stream))
            kind = data.get("kind")
            if kind == _private.CHECK:  # a visit at that node, of a private service here
                await _private.answer_check(server, stream, data, peer)
                return
            if kind in (_private.REVOKE, _private.PRESENCE):
                if kind == _private.REVOKE:
                    _private.take_revoke(server, data, peer)
                else:
                    _private.take_presence(server, data, peer)
                await stream.aclose()
                return
            if kind == _private.PRIVATE:
                admitted = _private.admit_private(server, data, peer)
            else:
                header = control.decode_visitor_header_map(data)
    except (control.ControlError, TimeoutError, anyio.EndOfStream,
            anyio.BrokenResourceError, anyio.ClosedResourceError):  # fmt: skip
        await abort(stream)
        return
    if kind == _private.PRIVATE:
        await _serve_private(server, stream, admitted)
        return
    address = (header.peer_host, header.peer_port)
    if header.type in ("http", "https"):
        if server.web is None:
            await abort(stream)
            return
        await server.web.serve_forwarded(
            stream, address, tls=header.type == "https", handed_on=header.handed_on
        )
        return
    group = server.groups.by_name.get(header.service)
    if group is not None and group.type == header.type == "tcp":
        await _group_visitors.serve_visitor_from(server, group, stream, address)
        return
    if group is not None and group.type == header.type == "udp":
        await _forward_udp_to_member(group, stream, address)
        return
    service = server.registry.by_name.get(header.service)
    found = server.sessions.get(service.session_id) if service is not None else None
    client = found.session if found is not None else None
    if service is None or client is None or service.type != header.type:
        server.refusals.refuse(
            "cluster_forward_unknown", "forwarded visitor refused: not served here",
            service=header.service, peer_node=peer,
        )  # fmt: skip
        await abort(stream)
        return
    if header.type == "tcp":
        await _visitors.serve_visitor(server, client, service.session_id, service, stream, address)
        return
    await _forward_udp(service, client, stream, header)


async def _serve_private(
    server: NodeServer,
    stream: MuxStream,
    admitted: tuple[ActiveService, Session, tuple[str, int], bytes] | None,
) -> None:
    """A visitor stream of a visit at another node, to the private service's provider."""
    if admitted is None:  # refused, counted
        await abort(stream)
        return
    private, provider, address, found = admitted
    streams = server.private.remote_streams.setdefault(private.name, {})
    with anyio.CancelScope() as scope:  # cancelled when `found` is revoked here
        streams[scope] = found
        try:
            if private.type == "udp":
                header = VisitorHeader(private.name, "udp", *address)
                await _forward_udp(private, provider, stream, header)
            else:
                await _visitors.serve_visitor(
                    server, provider, private.session_id, private, stream, address
                )
        finally:
            streams.pop(scope, None)
            if not streams and server.private.remote_streams.get(private.name) is streams:
                del server.private.remote_streams[private.name]
    if scope.cancelled_caught:
        stream.reset()


async def _forward_udp(
    service: ActiveService, session: Session, stream: MuxStream, header: VisitorHeader
) -> None:
    """A UDP flow from another node: its stream goes to the client as a flow's would."""
    if not service.streams.take():
        await abort(stream)
        return
    try:
        try:
            upstream = await session.open_stream(encode_visitor_header(header))
        except anyio.BrokenResourceError:
            await abort(stream)
            return
        service.udp.flows_opened += 1
        await pipe(stream, upstream)
    finally:
        service.streams.give_back()


async def _forward_udp_to_member(
    group: GroupService, stream: MuxStream, address: tuple[str, int]
) -> None:
    """A UDP flow from another node for a group held here: to the member the group picks."""
    now = anyio.current_time()
    visit = group.group.pick(now, key=address_key(address[0]))
    if visit is None:  # counted and logged by the group
        await abort(stream)
        return
    handle = visit.handle
    if not handle.service.streams.take():
        visit.close()
        await abort(stream)
        return
    try:
        header = VisitorHeader(handle.service.name, "udp", *address)
        try:
            upstream = await handle.session.open_stream(encode_visitor_header(header))
        except anyio.BrokenResourceError:
            visit.failed(now)
            await abort(stream)
            return
        visit.succeeded(now)
        handle.streams.add(upstream)  # reset when the member leaves
        try:
            await pipe(stream, upstream)
        finally:
            handle.streams.discard(upstream)
    finally:
        handle.service.streams.give_back()
        visit.close()
