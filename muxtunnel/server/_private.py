"""Who may visit each private service: its visitor keys, and the visits granted with them.

Where visitor tokens live, and how a revocation takes effect:

- The provider's config holds a private service's visitor tokens; their keys reach the server
  sealed in the registration (`muxtunnel.visitauth`) and, after a reload of the provider, in a
  `VisitorKeys` message: the service and its visitors stay up, only the keys change.
- The server's operator may list visitor tokens for a name too (`services[].visitor_token`),
  changed by the server's reload. A visitor is let in with a token from either list.
- The keys a provider sent are kept after its session ends (until the name is pruned), so
  a provider's restart neither locks out nor lets in anyone new, and its visitors' sessions stay
  up, told it is offline (`Presence`).
- Whenever a name's keys change, every visit granted with a key no longer in them is revoked at
  once: its visitor is told (`Error(access_revoked)`), its spliced connections are cut, and a
  visitor session left with no grant is closed. New visits are checked against the new keys
  from the same moment.
- On a cluster node, visits of a name held here may be granted at other nodes (the proof is
  checked here, `_cluster_private`). This book remembers which nodes were granted which key
  (by fingerprint, `key_id`) and the visitor streams they sent here; a revocation cuts those
  streams at once and tells those nodes (`on_remote_revoked`), which revoke their grants as
  this node revokes its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio
import structlog

from muxtunnel.model import ServerConfig, ServiceType
from muxtunnel.visitauth import visitor_key

__all__ = ["Grant", "PrivateBook", "RemoteVisit", "key_id"]

log = structlog.get_logger("muxtunnel.server")


def key_id(key: bytes) -> bytes:
    """A visitor key's fingerprint: names the key between nodes without revealing it."""
    return hashlib.sha256(b"muxtunnel visitor key id\0" + key).digest()[:16]


@dataclass(frozen=True, slots=True)
class RemoteVisit:
    """A visit the provider's node (another node of a cluster) let in: where, with which key
    (its fingerprint, `_cluster_private.key_id`), what to answer the visitor."""

    node_id: str
    server_tag: bytes
    key_id: bytes
    online: bool


@dataclass(eq=False)
class Grant:
    """One visitor session's right to visit one private service, proven with `key`."""

    name: str
    type: ServiceType
    key: bytes
    session_id: int
    #: Tell the visitor that the provider came or went (True: queued).
    presence: Callable[[bool], bool]
    #: Revoke this grant: tell the visitor, cut its connections, maybe end its session.
    revoke: Callable[[Grant, str], None]
    #: Agreed compression of the visitor's own streams (None: none) and its level.
    compression: str | None = None
    compression_level: int = 0
    #: Which key let it in, between nodes (`_cluster_private.key_id`); a visit checked by
    #: another node (its provider's) has only this, and `key` empty.
    key_id: bytes = b""
    #: The scopes of its spliced connections (cut when it is revoked).
    splices: set[anyio.CancelScope] = field(default_factory=set)
    started: float = field(default_factory=anyio.current_time)


class PrivateBook:
    """Visitor keys and grants of every private service name (see the module doc)."""

    def __init__(self, config: ServerConfig) -> None:
        #: Keys the provider of each name sent last (kept while it is away).
        self.provider_keys: dict[str, frozenset[bytes]] = {}
        #: Keys of the server policy's visitor tokens.
        self.policy_keys: dict[str, frozenset[bytes]] = {}
        #: Live grants by name.
        self.grants: dict[str, set[Grant]] = {}
        #: Visits of names held here granted at other nodes: name -> key id -> node ids.
        self.remote_grants: dict[str, dict[bytes, set[str]]] = {}
        #: Visitor streams other nodes sent here: name -> the scope serving each -> key id.
        self.remote_streams: dict[str, dict[anyio.CancelScope, bytes]] = {}
        #: Told (name, {node id: key ids revoked}, reason) when visits granted elsewhere are.
        self.on_remote_revoked: Callable[[str, dict[str, set[bytes]], str], object] | None = None
        #: Told (name, node ids, online) when the provider of a name visited from other nodes
        #: comes or goes.
        self.on_remote_presence: Callable[[str, set[str], bool], object] | None = None
        self.apply(config)

    def keys(self, name: str) -> frozenset[bytes]:
        """The keys that let a visitor of `name` in now."""
        return self.provider_keys.get(name, frozenset()) | self.policy_keys.get(name, frozenset())

    def visitor_sessions(self, name: str) -> int:
        """Visitor sessions holding a grant for `name`."""
        return len(self.grants.get(name, ()))

    def apply(self, config: ServerConfig) -> None:
        """The server's config changed: new policy keys; grants they no longer cover revoked."""
        before = self.policy_keys
        self.policy_keys = {
            policy.name: frozenset(visitor_key(token) for token in policy.visitor_tokens)
            for policy in config.services
            if policy.visitor_tokens
        }
        for name in before.keys() | self.policy_keys.keys():
            if before.get(name) != self.policy_keys.get(name):
                self._revoke_stale(name, "the server's config no longer lists its visitor token")

    def provider_keys_changed(self, name: str, keys: frozenset[bytes]) -> None:
        """The provider of `name` registered (or reloaded) with `keys`."""
        self.provider_keys[name] = keys
        self._revoke_stale(name, "its provider no longer lists its visitor token")

    def add(self, grant: Grant) -> None:
        self.grants.setdefault(grant.name, set()).add(grant)

    def remove(self, grant: Grant) -> None:
        """Forget a grant (its session ended, or it was revoked)."""
        grants = self.grants.get(grant.name)
        if grants is not None:
            grants.discard(grant)
            if not grants:
                del self.grants[grant.name]

    def presence(self, name: str, online: bool) -> None:
        """Tell the visitors of `name` that its provider came online or went offline (here,
        and at the nodes that granted visits of it)."""
        log.info("private service " + ("online" if online else "offline"), service=name,
                 visitor_sessions=self.visitor_sessions(name))  # fmt: skip
        for grant in list(self.grants.get(name, ())):
            if not grant.presence(online):  # its visitor does not read its control channel
                grant.revoke(grant, "its visitor does not read its control channel")
        if not online:
            for scope in list(self.remote_streams.get(name, {})):
                scope.cancel()
        nodes = set().union(*self.remote_grants.get(name, {}).values())
        if nodes and self.on_remote_presence is not None:
            self.on_remote_presence(name, nodes, online)

    def forget(self, names: Iterable[str]) -> None:
        """Drop the kept keys of `names` (pruned: unregistered for a while), unless a visitor
        session still holds a grant for one of them."""
        for name in names:
            if name not in self.grants:
                self.provider_keys.pop(name, None)

    def granted_elsewhere(self, name: str, key: bytes, node_id: str) -> None:
        """Node `node_id` let a visitor of `name` in with `key` (checked here)."""
        self.remote_grants.setdefault(name, {}).setdefault(key_id(key), set()).add(node_id)

    def revoke_remote(self, name: str, key_ids: Iterable[bytes], reason: str) -> int:
        """The provider's node revoked keys of `name`: grants here made with them go; how many."""
        gone = set(key_ids)
        revoked = [g for g in self.grants.get(name, ()) if not g.key and g.key_id in gone]
        for grant in revoked:
            grant.revoke(grant, reason)
        return len(revoked)

    def _revoke_stale(self, name: str, reason: str) -> None:
        keys = self.keys(name)
        for grant in list(self.grants.get(name, ())):
            if grant.key and grant.key not in keys:
                grant.revoke(grant, reason)
        live = {key_id(key) for key in keys}
        for scope, found in list(self.remote_streams.get(name, {}).items()):
            if found not in live:
                scope.cancel()
        granted = self.remote_grants.get(name, {})
        stale = {found: granted.pop(found) for found in list(granted) if found not in live}
        if not granted:
            self.remote_grants.pop(name, None)
        by_node: dict[str, set[bytes]] = {}
        for found, nodes in stale.items():
            for node in nodes:
                by_node.setdefault(node, set()).add(found)
        if by_node and self.on_remote_revoked is not None:
            self.on_remote_revoked(name, by_node, reason)
