"""Private services across a cluster: `muxtunnel visit` at one node, the provider at another.

Where the visitor token is checked: at the provider's node, which holds the keys (its
provider sent them sealed in its registration; they never leave that node). The visitor's
node has only the visitor's proof, and passes that on over its node-to-node session:

    -> peer_visit_check  {service, type, tag, nonces, binding}
    <- peer_visit_ok     {server_tag, key_id, online}   (or peer_visit_no)

`tag` is the visitor's HMAC over the service, both nonces and the channel binding of its own
session (`visitauth`); the provider's node checks it against its keys (`match_key`, the same
constant work as on a single server) and answers with the server's tag, which the visitor's
node relays, and `key_id`, a SHA-256 fingerprint of the key that matched. No token and no
key travels, only HMAC tags and a hash, so a node-to-node link without TLS gives nothing
away either.

Each visitor stream then goes to the provider's node on a stream of its own, starting with

    peer_private  {service, type, key_id, peer_host, peer_port}

and the provider's node checks again that `key_id` is one of the name's keys now (a token
revoked meanwhile refuses new streams there), then admits it as a visitor of the provider
(its limits, rate limits, metering). The visitor's node keeps the grant, its compression and
its session's limits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import anyio

from mux import MuxStream, Session
from muxtunnel.control import Visit
from muxtunnel.framing import ControlError, frame, receive_frame, unpack_map
from muxtunnel.log import Refusals
from muxtunnel.server._host import Host
from muxtunnel.server._peers import HANDSHAKE_TIMEOUT_S, PeerLinks, PeerUnavailable
from muxtunnel.server._private import RemoteVisit
from muxtunnel.server._registry import ActiveService
from muxtunnel.transport import abort
from muxtunnel.visitauth import match_key, visit_server_tag

__all__ = [
    "CHECK",
    "PRIVATE",
    "RemoteVisit",
    "VisitsElsewhere",
    "admit_private",
    "answer_check",
    "check_request",
    "key_id",
    "private_request",
    "read_check_answer",
]

CHECK, PRIVATE = "peer_visit_check", "peer_private"
_OK, _NO = "peer_visit_ok", "peer_visit_no"


def key_id(key: bytes) -> bytes:
    """A visitor key's fingerprint: names the key between nodes without revealing it."""
    return hashlib.sha256(b"muxtunnel visitor key id\0" + key).digest()[:16]


def check_request(request: Visit, nonces: tuple[bytes, bytes], binding: bytes) -> bytes:
    """The first frame of a `peer_visit_check` stream."""
    return frame({"kind": CHECK, "service": request.service, "type": request.type,
                  "tag": request.tag, "nonces": list(nonces), "binding": binding})  # fmt: skip


async def read_check_answer(stream: MuxStream, node_id: str) -> RemoteVisit | None:
    """The provider's node's answer (None: refused, or no valid answer)."""
    try:
        data = unpack_map(await receive_frame(stream))
    except (ControlError, anyio.EndOfStream, anyio.BrokenResourceError):
        return None
    server_tag, found, online = data.get("server_tag"), data.get("key_id"), data.get("online")
    if data.get("kind") != _OK or not isinstance(server_tag, bytes):
        return None
    if not isinstance(found, bytes) or not isinstance(online, bool):
        return None
    return RemoteVisit(node_id, server_tag, found, online)


def private_request(name: str, type: str, key: bytes, peer: tuple[str, int]) -> bytes:
    """The first frame of a `peer_private` stream (a visitor's stream, `key` its key id)."""
    return frame({"kind": PRIVATE, "service": name, "type": type, "key_id": key,
                  "peer_host": peer[0], "peer_port": peer[1]})  # fmt: skip


def _provider(host: Host, name: object, type: object) -> ActiveService | None:
    service = host.registry.by_name.get(name) if isinstance(name, str) else None
    if service is None or not service.private or service.type != type:
        return None
    return service


async def answer_check(host: Host, stream: MuxStream, data: dict[str, Any], peer: str) -> None:
    """Check a visitor's proof another node passed on, against the keys held here."""
    name, type, tag = data.get("service"), data.get("type"), data.get("tag")
    nonces, binding = data.get("nonces"), data.get("binding")
    service = _provider(host, name, type)
    key = None
    well_formed = (
        isinstance(tag, bytes) and isinstance(binding, bytes) and isinstance(nonces, list)
        and len(nonces) == 2 and all(isinstance(n, bytes) for n in nonces)
    )  # fmt: skip
    if service is not None and well_formed:
        assert isinstance(nonces, list) and isinstance(binding, bytes) and isinstance(tag, bytes)
        keys = host.private.keys(service.name)
        key = match_key(keys, tag, service.name, service.type, nonces[0], nonces[1], binding)
    if key is None:
        host.refusals.refuse(
            "cluster_visit_refused", "visit from another node refused: no such private "
            "service here, or no valid visitor token", service=str(name)[:64], peer_node=peer,
        )  # fmt: skip
        await stream.send(frame({"kind": _NO}))
        await stream.aclose()
        return
    assert service is not None and isinstance(nonces, list) and isinstance(binding, bytes)
    server_tag = visit_server_tag(key, service.name, service.type, nonces[0], nonces[1], binding)
    online = service.provider is not None
    await stream.send(
        frame({"kind": _OK, "server_tag": server_tag, "key_id": key_id(key), "online": online})
    )
    await stream.aclose()


def admit_private(
    host: Host, data: dict[str, Any], peer: str
) -> tuple[ActiveService, Session, tuple[str, int]] | None:
    """A visitor stream of a private service held here, from a visit at another node: the
    service, its provider's session and the visitor's address, or None (refused, counted)."""
    name, type, found = data.get("service"), data.get("type"), data.get("key_id")
    peer_host, peer_port = data.get("peer_host"), data.get("peer_port")
    service = _provider(host, name, type)
    allowed = (
        service is not None and isinstance(found, bytes)
        and any(key_id(key) == found for key in host.private.keys(service.name))
        and isinstance(peer_host, str) and isinstance(peer_port, int)
    )  # fmt: skip
    if not allowed or service is None or service.provider is None:
        host.refusals.refuse(
            "cluster_visit_refused", "visitor stream from another node refused: provider "
            "offline here, or its visitor token no longer valid",
            service=str(name)[:64], peer_node=peer,
        )  # fmt: skip
        return None
    return service, service.provider, (str(peer_host), int(str(peer_port)))


class VisitsElsewhere:
    """The visitor's node's side: proofs passed on, streams sent to the provider's node."""

    def __init__(
        self, node_id: str, links: PeerLinks, addresses: Mapping[str, str], refusals: Refusals
    ) -> None:
        self.node_id = node_id
        self.links = links
        self.addresses = addresses
        self.refusals = refusals
        #: Service name -> the node holding it alone (the cluster node's last sync).
        self.holders: dict[str, str] = {}

    def _node(self, name: str) -> tuple[str, str] | None:
        node = self.holders.get(name)
        advertise = self.addresses.get(node) if node is not None else None
        if node is None or node == self.node_id or advertise is None:
            return None
        return node, advertise

    async def check(
        self, request: Visit, nonces: tuple[bytes, bytes], binding: bytes
    ) -> RemoteVisit | None:
        """The provider's node's answer to a visitor's proof (None: refused, or the name is
        not held on another node)."""
        found = self._node(request.service)
        if found is None:
            return None
        node, advertise = found
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                first = check_request(request, nonces, binding)
                stream = await self.links.open(node, advertise, first)
                try:
                    return await read_check_answer(stream, node)
                finally:
                    await abort(stream)
        except (PeerUnavailable, TimeoutError) as exc:
            self.refusals.refuse(
                "cluster_forward_failed", "visit not checked: its provider's node is unreachable",
                service=request.service, node=node, error=str(exc) or "timeout",
            )  # fmt: skip
            return None

    async def open(
        self, name: str, type: str, key: bytes, peer: tuple[str, int]
    ) -> MuxStream | None:
        """A stream to the node holding private service `name` for one visitor stream of a
        visit granted with key id `key` (None: no such node now, or unreachable)."""
        found = self._node(name)
        if found is None:
            return None
        try:
            return await self.links.open(*found, private_request(name, type, key, peer))
        except PeerUnavailable:
            return None
