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

When the provider's node revokes a key (a reload of the provider or of the server), it cuts
the visitor streams of that key it serves and tells each node it granted a visit with it:

    -> peer_revoke  {service, key_ids, reason}

and that node revokes those grants as its own (the visitor is told `access_revoked`).
Likewise when the provider goes offline or comes back, each node that granted a visit of
the name is told, and tells its visitors as a single server does:

    -> peer_presence  {service, online}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import structlog

from mux import MuxStream, Session
from muxtunnel.cluster import ClaimKey, RegistryError, RegistryStore
from muxtunnel.control import Visit
from muxtunnel.framing import ControlError, frame, receive_frame, unpack_map
from muxtunnel.log import Refusals
from muxtunnel.server._cluster_plan import Plan
from muxtunnel.server._host import Host
from muxtunnel.server._peers import HANDSHAKE_TIMEOUT_S, PeerLinks, PeerUnavailable
from muxtunnel.server._private import RemoteVisit, key_id
from muxtunnel.server._registry import ActiveService
from muxtunnel.transport import abort
from muxtunnel.visitauth import match_key, visit_server_tag

log = structlog.get_logger("muxtunnel.cluster")

__all__ = [
    "CHECK",
    "PRESENCE",
    "PRIVATE",
    "REVOKE",
    "RemoteVisit",
    "VisitsElsewhere",
    "admit_private",
    "answer_check",
    "check_request",
    "key_id",
    "private_request",
    "read_check_answer",
    "revoke_request",
    "take_presence",
    "take_revoke",
]

#: How soon a name the registry did not know is read again for a visit: a quarter of the
#: sync interval's second, so a provider registering elsewhere is found within about that.
LOOKUP_AGAIN_S = 0.25
#: Names remembered as missed (then forgotten all at once): bounds the memory a visitor
#: asking for made-up names can take.
MISSES_KEPT = 1024
CHECK, PRIVATE = "peer_visit_check", "peer_private"
REVOKE, PRESENCE = "peer_revoke", "peer_presence"
_OK, _NO = "peer_visit_ok", "peer_visit_no"


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
    host.private.granted_elsewhere(service.name, key, peer)
    await stream.send(
        frame({"kind": _OK, "server_tag": server_tag, "key_id": key_id(key), "online": online})
    )
    await stream.aclose()


def admit_private(
    host: Host, data: dict[str, Any], peer: str
) -> tuple[ActiveService, Session, tuple[str, int], bytes] | None:
    """A visitor stream of a private service held here, from a visit at another node: the
    service, its provider's session, the visitor's address and the key id that let it in, or
    None (refused, counted)."""
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
    assert isinstance(found, bytes)
    return service, service.provider, (str(peer_host), int(str(peer_port))), found


def revoke_request(name: str, key_ids: set[bytes], reason: str) -> bytes:
    """The first frame of a `peer_revoke` stream."""
    return frame({"kind": REVOKE, "service": name, "key_ids": sorted(key_ids),
                  "reason": reason[:200]})  # fmt: skip


def take_revoke(host: Host, data: dict[str, Any], peer: str) -> None:
    """The provider's node `peer` revoked keys of a name it holds: grants made here with them go."""
    name, key_ids, reason = data.get("service"), data.get("key_ids"), data.get("reason")
    if not isinstance(name, str) or not isinstance(key_ids, list) or not isinstance(reason, str):
        host.refusals.refuse("cluster_forward_unknown", "malformed revocation from another node",
                             peer_node=peer)  # fmt: skip
        return
    found = {k for k in key_ids if isinstance(k, bytes)}
    revoked = host.private.revoke_remote(name, found, reason)
    log.info("visits revoked by the provider's node", service=name, node=peer, grants=revoked)


def take_presence(host: Host, data: dict[str, Any], peer: str) -> None:
    """The provider of a name `peer` holds came or went: the visitors here are told."""
    name, online = data.get("service"), data.get("online")
    if not isinstance(name, str) or not isinstance(online, bool):
        host.refusals.refuse("cluster_forward_unknown", "malformed presence from another node",
                             peer_node=peer)  # fmt: skip
        return
    if name in host.private.grants:
        host.private.presence(name, online)


class VisitsElsewhere:
    """The visitor's node's side: proofs passed on, streams sent to the provider's node."""

    def __init__(
        self,
        node_id: str,
        links: PeerLinks,
        addresses: Mapping[str, str],
        refusals: Refusals,
        store: RegistryStore | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.node_id = node_id
        self.links = links
        self.addresses = addresses
        self.refusals = refusals
        #: Service name -> the node holding it alone (the cluster node's last sync).
        self.holders: dict[str, str] = {}
        #: Read on a miss for the node holding a name now: a visit of a name the last sync
        #: did not know (registered since) is not refused for that.
        self._store = store
        self._timeout_s = timeout_s
        #: Name -> when the registry last said nobody holds it (a visitor's streams to an
        #: offline provider cost one registry read per `LOOKUP_AGAIN_S`, not one each).
        self._missed: dict[str, float] = {}

    async def _find(self, name: str) -> tuple[str, str] | None:
        found = self._node(name)
        now = anyio.current_time()
        last_miss = self._missed.get(name)
        if (
            found is None
            and self._store is not None
            and (last_miss is None or now - last_miss >= LOOKUP_AGAIN_S)
        ):
            if len(self._missed) >= MISSES_KEPT:
                self._missed.clear()
            self._missed[name] = now
            node = await self._holder(self._store, name)
            if node is not None:
                self._missed.pop(name, None)
                self.holders[name] = node
                found = self._node(name)
        return found

    def _node(self, name: str) -> tuple[str, str] | None:
        node = self.holders.get(name)
        advertise = self.addresses.get(node) if node is not None else None
        if node is None or node == self.node_id or advertise is None:
            return None
        return node, advertise

    async def _holder(self, store: RegistryStore, name: str) -> str | None:
        """The node holding service `name` now (None: none, or the registry did not answer)."""
        key = ClaimKey.service(name)
        try:
            with anyio.fail_after(self._timeout_s):
                holding = (await store.lookup([key])).get(key)
        except (RegistryError, TimeoutError, ValueError):
            return None
        if holding is None:
            return None
        return Plan.of([(key, holding)], self.node_id, self.addresses).holders.get(name)

    async def check(
        self, request: Visit, nonces: tuple[bytes, bytes], binding: bytes
    ) -> RemoteVisit | None:
        """The provider's node's answer to a visitor's proof (None: refused, or the name is
        not held on another node)."""
        found = await self._find(request.service)
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

    async def tell_revoked(self, name: str, by_node: dict[str, set[bytes]], reason: str) -> None:
        """Tell each node the keys of `name` it granted visits with that were revoked here."""
        for node, key_ids in by_node.items():
            await self._tell(node, name, revoke_request(name, key_ids, reason))

    async def tell_presence(self, name: str, nodes: set[str], online: bool) -> None:
        """Tell each node that granted visits of `name` that its provider came or went."""
        first = frame({"kind": PRESENCE, "service": name, "online": online})
        for node in sorted(nodes):
            await self._tell(node, name, first)

    async def _tell(self, node: str, name: str, first: bytes) -> None:
        advertise = self.addresses.get(node)
        if advertise is None or node == self.node_id:
            return
        try:
            with anyio.fail_after(HANDSHAKE_TIMEOUT_S):
                stream = await self.links.open(node, advertise, first)
                await stream.aclose()
        except (PeerUnavailable, TimeoutError, anyio.BrokenResourceError) as exc:
            self.refusals.refuse(
                "cluster_forward_failed", "a private service's change not told: the node is "
                "unreachable (its visitor streams here are cut already)", service=name,
                node=node, error=str(exc) or "timeout",
            )  # fmt: skip

    async def open(
        self, name: str, type: str, key: bytes, peer: tuple[str, int]
    ) -> MuxStream | None:
        """A stream to the node holding private service `name` for one visitor stream of a
        visit granted with key id `key` (None: no such node now, or unreachable)."""
        found = await self._find(name)
        if found is None:
            return None
        try:
            return await self.links.open(*found, private_request(name, type, key, peer))
        except PeerUnavailable:
            return None
