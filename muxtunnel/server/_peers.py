"""Node-to-node sessions of a cluster: one mux session per peer node, both ends proven.

A node that must hand a visitor to the node holding its service opens a stream on its session
to that node, the visitor's `VisitorHeader` as the stream's first bytes: they ride the SYN, so
the extra hop costs no extra round trip. Each node dials its own sessions (`PeerLinks`: at most
one per peer, made on first use, reused by every later visitor) and accepts the others'
(`PeerAcceptor`); a session carries streams one way only, from the node that dialled it.

Authentication, on the session's first stream (opened by the dialling node), with
K = HKDF-SHA256(cluster secret, info="muxtunnel cluster"):

    -> peer_hello      {node: FROM, nonce: Nf}
    <- peer_challenge  {node: TO, nonce: Nt, tag: HMAC(K, "peer server" | FROM | TO | Nf | Nt)}
    -> peer_proof      {tag: HMAC(K, "peer client" | FROM | TO | Nf | Nt)}

Both nonces are fresh per handshake, so no transcript can be replayed; tags are compared with
`hmac.compare_digest`. When the nodes run TLS on their control ports, the node-to-node port
speaks TLS too (the node's certificate, without the client CA of mutual TLS), and both tags
cover SHA-256 of the certificate the acceptor presented (channel binding, as `muxtunnel.tls`
does for clients): the dialler accepts any certificate, and a man in the middle who ends TLS
with his own makes the tags disagree. The accepting node takes no visitor stream before the
proof, and a failed proof closes the session and is counted.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from mux import MuxConfig, MuxStream, Session
from muxtunnel.auth import hkdf_sha256, new_nonce
from muxtunnel.framing import ControlError, receive_frame, unpack_map
from muxtunnel.framing import frame as frame_map
from muxtunnel.log import Refusals
from muxtunnel.model import ClientTls
from muxtunnel.specs import parse_host_port
from muxtunnel.tls import ServerTlsContext, TlsError, connect_tls
from muxtunnel.transport import TransportError, abort, connect

__all__ = ["PeerAcceptor", "PeerLinks", "PeerUnavailable", "cluster_key"]

log = structlog.get_logger("muxtunnel.cluster")

#: A handshake is three small messages: on a LAN it takes a millisecond; 5 s (the control
#: port's default auth_timeout_s) bounds a peer that stalls on purpose.
HANDSHAKE_TIMEOUT_S = 5.0
#: After a failed dial, visitors for that node fail at once for this long instead of each
#: dialling again (a dead node's claims outlive it by up to a lease).
REDIAL_AFTER_S = 1.0
_FIELD = struct.Struct(">I")
#: Connections to the node-to-node port in their TLS handshake at once: a cluster has a few
#: nodes, each dialling once; more is someone else (each waits at most HANDSHAKE_TIMEOUT_S).
MAX_PROVING = 64
#: How a node dials a peer's TLS: any certificate, since the proof covers the one seen.
_ANY_CERT = ClientTls(insecure=True)


class PeerUnavailable(Exception):
    """No session to that node now (it could not be reached, or refused our proof)."""


def cluster_key(secret: str) -> bytes:
    """The HMAC key nodes prove to each other."""
    return hkdf_sha256(secret.encode("utf-8"), info=b"muxtunnel cluster")


def _tag(
    key: bytes, label: bytes, dialer: str, acceptor: str, n1: bytes, n2: bytes, binding: bytes
) -> bytes:
    fields = (label, dialer.encode(), acceptor.encode(), n1, n2, binding)
    parts = b"".join(_FIELD.pack(len(x)) + x for x in fields)
    return hmac.digest(key, parts, "sha256")


def _message(kind: str, **fields: Any) -> bytes:
    return frame_map({"kind": kind, **fields})


async def _expect(stream: MuxStream, kind: str, **types: type) -> dict[str, Any]:
    data = unpack_map(await receive_frame(stream))
    if data.get("kind") != kind:
        raise ControlError(f"expected {kind}, got {str(data.get('kind'))[:64]!r}")
    for name, cls in types.items():
        if not isinstance(data.get(name), cls):
            raise ControlError(f"{kind}: {name} must be {cls.__name__}")
    return data


@dataclass(eq=False)
class _Link:
    advertise: str
    ready: anyio.Event = field(default_factory=anyio.Event)
    session: Session | None = None
    error: str | None = None
    failed_at: float | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class PeerLinks:
    """This node's sessions to its peers, one per node id, dialled on first use."""

    def __init__(
        self, node_id: str, key: bytes, mux: MuxConfig, refusals: Refusals, *, tls: bool = False
    ) -> None:
        self.node_id = node_id
        self._key = key
        self._mux = mux
        self._refusals = refusals
        #: Dial with TLS (peers of a node with TLS on its control port speak it too).
        self._tls = tls
        self._links: dict[str, _Link] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self.dials = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Hold the links' tasks until cancelled (which closes every link)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def connected(self) -> list[str]:
        """The node ids with a live session."""
        return sorted(n for n, link in self._links.items() if link.session is not None)

    def forget(self, node_id: str) -> None:
        """Close the session to a node that left the cluster."""
        link = self._links.pop(node_id, None)
        if link is not None:
            link.scope.cancel()

    def _link(self, node_id: str, advertise: str) -> _Link:
        link = self._links.get(node_id)
        now = anyio.current_time()
        if link is not None and link.advertise == advertise:
            if link.error is None or (link.failed_at or now) > now - REDIAL_AFTER_S:
                return link
        if link is not None:
            link.scope.cancel()
        assert self._tg is not None, "PeerLinks.run is not running"
        link = self._links[node_id] = _Link(advertise)
        self._tg.start_soon(self._dial, node_id, link)
        return link

    async def open(self, node_id: str, advertise: str, data: bytes) -> MuxStream:
        """A stream to `node_id` whose first bytes are `data`; `PeerUnavailable` if none."""
        link = self._link(node_id, advertise)
        with anyio.move_on_after(HANDSHAKE_TIMEOUT_S):
            await link.ready.wait()
        session = link.session
        if session is None or session.closed:
            raise PeerUnavailable(f"node {node_id} ({advertise}): {link.error or 'not ready'}")
        try:
            return await session.open_stream(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise PeerUnavailable(f"node {node_id}: {exc}") from None

    def open_nowait(self, node_id: str, advertise: str, data: bytes) -> MuxStream | None:
        """Like `open` without waiting: None while the session is being dialled or full."""
        session = self._link(node_id, advertise).session
        if session is None or session.closed:
            return None
        try:
            return session.open_stream_nowait(data)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return None

    async def _dial(self, node_id: str, link: _Link) -> None:
        self.dials += 1
        with link.scope:
            try:
                host, port = parse_host_port(link.advertise)
                carrier: anyio.abc.ByteStream = await connect(host, port)
                binding = b""
                if self._tls:
                    with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                        # Any certificate: the proof below covers the one we saw (binding).
                        carrier, binding = await connect_tls(carrier, _ANY_CERT, host)
                async with Session(carrier, client=True, config=self._mux) as session:
                    with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                        await self._prove(session, node_id, binding)
                    link.session = session
                    link.ready.set()
                    log.info("cluster peer connected", node=node_id, advertise=link.advertise)
                    await session.wait_closed()
                    link.error = session.close_reason or "session closed"
            except (TransportError, TlsError, ControlError, TimeoutError, PeerUnavailable,
                    ValueError, anyio.EndOfStream, anyio.BrokenResourceError,
                    anyio.ClosedResourceError) as exc:  # fmt: skip
                link.error = str(exc) or type(exc).__name__
                self._refusals.refuse(
                    "cluster_peer_unreachable", "cluster peer unreachable",
                    node=node_id, advertise=link.advertise, error=link.error,
                )  # fmt: skip
        link.session = None
        link.failed_at = anyio.current_time()
        link.error = link.error or "closed"
        link.ready.set()
        if self._links.get(node_id) is link and link.scope.cancel_called:
            del self._links[node_id]

    async def _prove(self, session: Session, node_id: str, binding: bytes) -> None:
        mine = new_nonce()
        stream = await session.open_stream(_message("peer_hello", node=self.node_id, nonce=mine))
        challenge = await _expect(stream, "peer_challenge", node=str, nonce=bytes, tag=bytes)
        theirs: bytes = challenge["nonce"]
        expected = _tag(self._key, b"peer server", self.node_id, node_id, mine, theirs, binding)
        if challenge["node"] != node_id or not hmac.compare_digest(challenge["tag"], expected):
            raise PeerUnavailable(
                f"node {node_id} did not prove the cluster secret (it answered as "
                f"{challenge['node'][:64]!r}): are both nodes given the same secret?"
            )
        proof = _tag(self._key, b"peer client", self.node_id, node_id, mine, theirs, binding)
        await stream.send(_message("peer_proof", tag=proof))


OnStream = Callable[[MuxStream, str], Coroutine[Any, Any, None]]


class PeerAcceptor:
    """Accepts peers' sessions on this node's advertised port, checks their proof, and hands
    each visitor stream to `on_stream(stream, from_node)`."""

    def __init__(
        self,
        node_id: str,
        key: bytes,
        mux: MuxConfig,
        refusals: Refusals,
        on_stream: OnStream,
        tls: ServerTlsContext | None = None,
    ) -> None:
        self.node_id = node_id
        self._tls = tls
        self._key = key
        self._mux = mux
        self._refusals = refusals
        self._on_stream = on_stream
        #: Peers connected now, by node id (a count: a restarted peer may overlap its old self).
        self.peers: dict[str, int] = {}
        self._proving = 0

    async def serve_carrier(self, carrier: anyio.abc.SocketStream) -> None:
        """One peer's session, until it ends."""
        if self._proving >= MAX_PROVING:
            self._refusals.refuse(
                "cluster_peer_flood", "cluster peer refused: too many handshakes at once",
                limit=MAX_PROVING,
            )  # fmt: skip
            await abort(carrier)
            return
        self._proving += 1
        proving = [True]

        def proven_or_not() -> None:
            if proving[0]:
                proving[0] = False
                self._proving -= 1

        try:
            ready = await self._proven(carrier)
            if ready is not None:
                await self._serve(*ready, proven_or_not)
        finally:
            proven_or_not()

    async def _proven(
        self, carrier: anyio.abc.SocketStream
    ) -> tuple[anyio.abc.ByteStream, bytes] | None:
        """The carrier after TLS (if any), and its binding; None if TLS failed. Until the
        proof is in (`_serve`), the connection counts against MAX_PROVING."""
        stream: anyio.abc.ByteStream = carrier
        if self._tls is not None:
            try:
                with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                    stream = await self._tls.accept(carrier)
            except (TlsError, TimeoutError) as exc:
                self._refusals.refuse(
                    "cluster_peer_auth_failed", "cluster peer refused: TLS handshake failed",
                    error=str(exc) or "timeout",
                )  # fmt: skip
                await abort(carrier)
                return None
        return stream, self._tls.binding if self._tls is not None else b""

    async def _serve(
        self, carrier: anyio.abc.ByteStream, binding: bytes, proven: Callable[[], None]
    ) -> None:
        try:
            async with Session(carrier, client=False, config=self._mux) as session:
                try:
                    with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                        peer = await self._check(session, binding)
                except (ControlError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError) as exc:  # fmt: skip
                    self._refusals.refuse(
                        "cluster_peer_auth_failed", "cluster peer refused: no valid proof",
                        error=str(exc) or type(exc).__name__,
                    )  # fmt: skip
                    return
                proven()
                self.peers[peer] = self.peers.get(peer, 0) + 1
                try:
                    async with anyio.create_task_group() as tg:
                        while True:
                            stream = await session.accept_stream()
                            tg.start_soon(self._on_stream, stream, peer)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
                    pass
                finally:
                    self.peers[peer] -= 1
                    if not self.peers[peer]:
                        del self.peers[peer]
        except anyio.BrokenResourceError:
            await abort(carrier)

    async def _check(self, session: Session, binding: bytes) -> str:
        stream = await session.accept_stream()
        hello = await _expect(stream, "peer_hello", node=str, nonce=bytes)
        peer: str = hello["node"][:64]
        theirs: bytes = hello["nonce"]
        mine = new_nonce()
        tag = _tag(self._key, b"peer server", peer, self.node_id, theirs, mine, binding)
        await stream.send(_message("peer_challenge", node=self.node_id, nonce=mine, tag=tag))
        proof = await _expect(stream, "peer_proof", tag=bytes)
        expected = _tag(self._key, b"peer client", peer, self.node_id, theirs, mine, binding)
        if not hmac.compare_digest(proof["tag"], expected):
            raise ControlError(f"node {peer!r} sent a wrong proof (another cluster secret?)")
        return peer
