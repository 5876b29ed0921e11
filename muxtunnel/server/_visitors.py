"""The TCP visitors of a service's public socket: admission, idle timeout, forwarding.

A visitor is checked against its service's limits before it costs anything beyond its socket:
visitors per service, per source address (per /64 for IPv6), its rate limits (`rate_limit`,
`per_source`: `admit`), and the service's share of its session's streams (`muxtunnel.quota`);
each refusal is counted and logged at doubling counts.
Then it gets a mux stream (whose first bytes are its `VisitorHeader`, then a PROXY protocol
header if the service asked for one), compressed if agreed and the session's compression
budget has room (uncompressed beyond it, if the client can take that), and is forwarded
(`muxtunnel.forward`). A visitor with no byte either way for the idle timeout is closed. At
most `SETTING_UP` visitors of a service are between their accept and their stream's opening.
"""

from __future__ import annotations

import anyio
import anyio.abc

from mux import Session, read_ready
from muxtunnel import control
from muxtunnel.balance.ratelimit import Admission, Refusal
from muxtunnel.compress import stream_memory_bytes
from muxtunnel.control import VisitorHeader
from muxtunnel.forward import forward, guarded, relayable
from muxtunnel.server._host import Host
from muxtunnel.server._registry import ActiveService
from muxtunnel.sources import address_key
from muxtunnel.specs import format_host_port
from muxtunnel.transport import (
    Address,
    TcpListener,
    abort,
    local_address,
    peer_address,
    setup_done,
)

__all__ = [
    "REFUSED", "SETTING_UP", "admit", "close_idle_visitors", "idle_timeout_s", "proxy_header",
    "proxy_preamble", "refusal", "serve_tcp", "serve_visitor",
]  # fmt: skip

#: Idle visitors are looked for every quarter of the timeout, but at least this often.
IDLE_CHECK_MAX_S = 5.0
#: Visitors of one service between their accept and their stream's opening: a flood of new
#: visitors waits in the kernel's accept queue rather than filling the event loop (with the
#: client's DIALS_PER_SERVICE, 1100 visitors of one service in 0.1 s left the neighbour
#: service's worst round trip under 70 ms; without either, 100-230 ms).
SETTING_UP = 16
#: Most bytes a visitor sent with its connect that ride its stream's SYN (well within the
#: stream's initial 256 KiB window); anything beyond follows as usual.
EARLY_BYTES = 64 * 1024


async def serve_tcp(
    host: Host, session: Session, session_id: int, service: ActiveService, sock: TcpListener
) -> None:
    """Serve a TCP service's public socket until its listener scope is cancelled, then let the
    visitors already in finish (idle ones are still cut)."""
    async with anyio.create_task_group() as visitors:
        sweeper = anyio.CancelScope()

        async def sweep() -> None:
            with sweeper:
                await close_idle_visitors(host, service.name)

        visitors.start_soon(sweep)
        with service.listener_scope:
            async with sock:

                async def on_visitor(visitor: anyio.abc.SocketStream) -> None:
                    await guarded(
                        _serve_visitor(host, session, session_id, service, visitor),
                        visitor,
                        session=session_id,
                        service=service.name,
                    )

                await sock.serve(on_visitor, task_group=visitors, setting_up=SETTING_UP)
        # No new visitors (a graceful stop): the open ones may finish, idle ones still cut.
        await service.in_flight.drained()
        sweeper.cancel()


def idle_timeout_s(host: Host, name: str) -> float:
    """The idle timeout of a service's visitors (0: none): its policy's, or the server's."""
    own = host.limiter_of(name).idle_timeout_s
    return host.config.visitor_idle_timeout_s if own is None else own


async def close_idle_visitors(host: Host, name: str) -> None:
    """Close the visitors of service `name` that moved no byte either way for the idle
    timeout (a plain service's, or a group's); runs until cancelled."""
    traffic = host.traffic_of(name)
    while True:
        timeout_s = idle_timeout_s(host, name)
        await anyio.sleep(min(timeout_s / 4, IDLE_CHECK_MAX_S) if timeout_s else IDLE_CHECK_MAX_S)
        timeout_s = idle_timeout_s(host, name)  # a reload may have changed it
        if not timeout_s:
            continue
        now = anyio.current_time()
        for meter in list(traffic.live):
            if meter.scope is not None and not meter.idle_closed:
                if now - meter.last_active >= timeout_s:
                    meter.idle_closed = True
                    meter.scope.cancel()
                    host.refusals.refuse(
                        "visitor_idle",
                        "visitor closed: no bytes either way for the idle timeout",
                        service=name,
                        peer=meter.peer,
                        timeout_s=timeout_s,
                    )


def refusal(host: Host, service: ActiveService, session: Session, source: str) -> str | None:
    """Why a new visitor of `service` from `source` must be refused (None: it may come in)."""
    config = host.config
    limiter = host.limiter_of(service.name)
    if limiter.max_connections is not None and service.visitors >= limiter.max_connections:
        return "max_connections"  # the service's own limit (server.services[].max_connections)
    if service.visitors >= config.max_visitors_per_service:
        return "visitors_per_service"
    if service.sources[source] >= config.max_visitors_per_source:
        return "visitors_per_source"
    if session.closed:
        return "session_closed"
    return None


REFUSED = {
    "max_connections": "visitor refused: its service has max_connections open",
    "visitors_per_service": "visitor refused: its service has max_visitors_per_service",
    "visitors_per_source": "visitor refused: its address has max_visitors_per_source",
    "stream_quota": "visitor refused: its service has its share of the session's streams",
    "compression_budget": "visitor refused: the session's compression budget is spent",
}


async def _serve_visitor(
    host: Host,
    session: Session,
    session_id: int,
    service: ActiveService,
    visitor: anyio.abc.SocketStream,
) -> None:
    address = peer_address(visitor)
    if address is None:  # reset before we got to it
        await abort(visitor)
        return
    await serve_visitor(host, session, session_id, service, visitor, address)


async def serve_visitor(
    host: Host,
    session: Session,
    session_id: int,
    service: ActiveService,
    visitor: anyio.abc.ByteStream,
    address: tuple[str, int],
) -> None:
    """Admit one visitor from `address` (its own socket, or a stream from another node of a
    cluster) and forward it to the service's client."""
    source = address_key(address[0])
    reason = refusal(host, service, session, source)
    if reason is None and not service.streams.take():
        reason = "stream_quota"
    if reason is not None:
        if reason in REFUSED:
            host.refusals.refuse(reason, REFUSED[reason], service=service.name, source=source)
        await abort(visitor)
        return
    admission = admit(host, service.name, source)
    if isinstance(admission, Refusal):  # counted and logged by the rate limiter
        service.streams.give_back()
        await abort(visitor)
        return
    service.sources[source] += 1
    memory = stream_memory_bytes(service.compression_level) if service.compression else 0
    compressed = bool(memory) and service.compression_memory.take(memory)
    try:
        if memory and not compressed:
            if not service.compression_fallback:  # its client knows no other way
                host.refusals.refuse(
                    "compression_budget",
                    REFUSED["compression_budget"],
                    service=service.name,
                    source=source,
                )
                await abort(visitor)
                return
            host.refusals.refuse(
                "compression_fallback",
                "visitor stream uncompressed: the session's compression budget is spent",
                service=service.name,
            )
        await _forward_visitor(host, session, session_id, service, visitor, address, compressed)
    finally:
        if admission is not None:
            admission.release()
        service.streams.give_back()
        if compressed:
            service.compression_memory.give_back(memory)
        service.sources[source] -= 1
        if not service.sources[source]:
            del service.sources[source]


async def _forward_visitor(
    host: Host,
    session: Session,
    session_id: int,
    service: ActiveService,
    visitor: anyio.abc.ByteStream,
    address: tuple[str, int],
    compressed: bool,
) -> None:
    peer_host, peer_port = address
    preamble = b""
    if service.proxy_protocol is not None:
        preamble = proxy_header(service.proxy_protocol, address, visitor)
    compression_level = service.compression_level if compressed else None
    limiter = host.limiter_of(service.name)
    with service.in_flight.track():
        plain = bool(service.compression) and not compressed
        header = VisitorHeader(service.name, "tcp", peer_host, peer_port, compressed=not plain)
        first = control.encode_visitor_header(header)
        early = b""
        if relayable(compression_level, limiter):
            # What the visitor sent with its connect rides the SYN: no frame of its own.
            early = read_ready(visitor, EARLY_BYTES)
            first += preamble + early
            preamble = b""
        try:
            stream = await session.open_stream(first)
        except anyio.BrokenResourceError:
            await abort(visitor)
            return
        setup_done()
        await forward(
            visitor,
            stream,
            visitor_side=True,
            service=service.name,
            peer=format_host_port(peer_host, peer_port),
            traffic=host.traffic_of(service.name),
            compression_level=compression_level,
            limiter=limiter,
            preamble=preamble,
            sent_early=len(early),
            session=session_id,
        )


def admit(host: Host, name: str, source: str) -> Admission | Refusal | None:
    """A new visitor's admission by the rate limits of `name` (None: it has none); a refusal
    is counted and logged by the limiter."""
    limiter = host.visitor_limiter(name)
    if limiter is None:
        return None
    return limiter.admit(source, anyio.current_time())


def proxy_header(version: str, peer: Address, visitor: anyio.abc.ByteStream) -> bytes:
    """The PROXY protocol header telling the local service who the visitor is."""
    # A visitor from another node of a cluster arrives on a stream: no socket address of ours.
    own = local_address(visitor) if isinstance(visitor, anyio.abc.SocketStream) else None
    return proxy_preamble(version, peer, own or ("0.0.0.0", 0))


def proxy_preamble(version: str, peer: Address, local: Address) -> bytes:
    """The PROXY protocol header of a visitor from `peer` that came in at `local`."""
    from muxtunnel.vhost import encode_proxy_header  # only for services that ask for it

    return encode_proxy_header("v1" if version == "v1" else "v2", peer, local)
