"""One visitor stream the server opened: read its header, then serve a UDP flow or a TCP visitor.

A TCP visitor gets a connection to the local service and is forwarded (`muxtunnel.forward`); a
UDP flow gets a connected UDP socket (`muxtunnel.udpflow.serve_flow`). HTTP and HTTPS visitor
streams are TCP visitors here: the server already routed them (and wrote any PROXY protocol
header first on the stream), so the client pipes their bytes as they come. A stream for a
service the client does not know, or whose header is late or malformed, is reset.

A group member's streams ask for a confirmation (`VisitorHeader.confirm`): the first byte back
is `control.DIAL_CONFIRMED`, sent once the local dial succeeded and before any visitor byte is
written to the service, so that the server can replay a visitor whose dial failed (the stream
is reset then) to another member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc
import structlog

from mux import MuxStream
from muxtunnel import control
from muxtunnel.client._state import CONTROL_TIMEOUT_S, HEADER_TIMEOUT_S, ServiceState
from muxtunnel.forward import Visitors, forward, forward_to, guarded
from muxtunnel.limits import ServiceTraffic
from muxtunnel.log import Refusals
from muxtunnel.model import ClientConfig
from muxtunnel.specs import format_host_port
from muxtunnel.transport import TransportError, abort, connect
from muxtunnel.udpflow import serve_flow

if TYPE_CHECKING:
    from muxtunnel.captures import Captures
    from muxtunnel.httptap import Tap

__all__ = ["Host", "serve"]

log = structlog.get_logger("muxtunnel.client")


class Host(Protocol):
    """The client, as its visitors see it (`Client` is the one implementation)."""

    @property
    def config(self) -> ClientConfig:
        """The config in force now."""
        ...

    @property
    def services(self) -> Mapping[str, ServiceState]:
        """The services by name."""
        ...

    @property
    def visitors(self) -> Visitors:
        """TCP visitors in flight: a graceful stop waits for it to drain."""
        ...

    @property
    def refusals(self) -> Refusals:
        """What the client refused or failed per visitor, by reason (logged doubling)."""
        ...

    def traffic_of(self, name: str) -> ServiceTraffic:
        """Byte totals and live meters of a service."""
        ...

    def dial_slots(self, name: str) -> anyio.Semaphore:
        """Visitors of service `name` that may connect to it at once (see `DIALS_PER_SERVICE`)."""
        ...

    @property
    def captures(self) -> Captures | None:
        """Where http requests are recorded while the inspector is on (None: not tapped)."""
        ...


async def serve(host: Host, stream: MuxStream) -> None:
    """Serve one visitor stream; a bug here costs this visitor only, never the session."""
    await guarded(_serve(host, stream), stream, stream=stream.stream_id)


async def _serve(host: Host, stream: MuxStream) -> None:
    try:
        with anyio.fail_after(HEADER_TIMEOUT_S):
            header = await control.read_visitor_header(stream)
    except (TimeoutError, control.ControlError, anyio.EndOfStream, anyio.BrokenResourceError):
        stream.reset()
        return
    state = host.services.get(header.service)
    if state is None or state.spec.type != header.type:
        host.refusals.refuse(
            "unknown_service", "visitor for an unknown service", service=header.service
        )
        stream.reset()
        return
    spec, config = state.spec, host.config
    if spec.type == "udp":
        # At most udp_max_flows per service: the oldest flow makes room for a new one.
        while len(state.flows) >= config.udp_max_flows:
            state.flows.popitem(last=False)[1].reset()
        state.flows[stream.stream_id] = stream
        state.udp.flows_opened += 1  # the server counts its flows in its forwarder
        try:
            await serve_flow(
                stream,
                (spec.local_host, spec.local_port),
                state.udp,
                idle_s=config.udp_flow_idle_s,
                dial_slots=host.dial_slots(spec.name),
            )
        finally:
            state.flows.pop(stream.stream_id, None)
        return
    peer = format_host_port(header.peer_host, header.peer_port)
    compressed = state.compression is not None and header.compressed
    # While the inspector is on, an http service's bytes pass its tap: the relay's observer,
    # or a stream wrapper on the general path.
    tap: Tap | None = None
    if host.captures is not None and spec.type == "http":
        from muxtunnel.httptap import Tap  # h11: only once the inspector is on

        tap = Tap(host.captures, spec.name, peer)
    target: anyio.abc.ByteStream
    try:
        if not compressed:  # relayed by callbacks from the connect on (`forward_to`)
            with host.visitors.track():
                await forward_to(
                    spec.local_host,
                    spec.local_port,
                    stream,
                    service=spec.name,
                    peer=peer,
                    traffic=host.traffic_of(spec.name),
                    connect_timeout_s=CONTROL_TIMEOUT_S,
                    dial_slots=host.dial_slots(spec.name),
                    greeting=control.DIAL_CONFIRMED if header.confirm else b"",
                    observer=tap,
                )
            return
        async with host.dial_slots(spec.name):
            target = await connect(spec.local_host, spec.local_port, timeout_s=CONTROL_TIMEOUT_S)
    except TransportError as exc:
        # One line per visitor while the service is down would let visitors write our log.
        host.refusals.refuse(
            "local_unreachable",
            "local service unreachable",
            service=spec.name,
            local=spec.local,
            error=str(exc),
            peer=peer,
        )
        stream.reset()
        return
    if header.confirm:
        try:
            await stream.send(control.DIAL_CONFIRMED)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            await abort(target)  # the visitor went meanwhile: the service must see it fail
            return
    if tap is not None:
        from muxtunnel.relay import ObservedStream

        target = ObservedStream(target, tap)
    with host.visitors.track():
        await forward(
            target,
            stream,
            visitor_side=False,
            service=spec.name,
            peer=peer,
            traffic=host.traffic_of(spec.name),
            compression_level=state.compression_level if compressed else None,
        )
