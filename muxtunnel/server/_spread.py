"""Web requests a cluster node hands to other nodes: to the node holding a route
(`WebRemote.open`), and a load-balancing group's to its members on other nodes, cluster-wide
(`WebRemote.spread`, `pick_node`).

The registry lists each member's node and health; a node sees the group as slots, one per
healthy member (every member when none is healthy), in node id order (the same list on every
node). A request takes one slot: by the hash of its
policy's key (hash_source, hash_header), so that every node sends one key to the same node,
whose own group then hashes it to the same member; otherwise in turn (round robin, and the
policies whose inputs, connection counts and weights, only the member's node knows: each
node's share is its number of members); or at random for `random`. The member's node then
picks among its own members by the group's policy (the request arrives marked
`Visitor.from_node`, so it is never handed on again). A member on a node that died stays in
the registry until its lease runs out: a request sent there goes to another member's node
(or stays here) instead of failing. Likewise a request for the name of one client holding it
at several nodes (`up --server A --server B`) goes to the next of them when the first cannot
be reached.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping

import anyio.abc

from muxtunnel.balance.settings import GroupSettings, Policy, PolicyKind
from muxtunnel.control import VisitorHeader, encode_visitor_header
from muxtunnel.model import ServiceType
from muxtunnel.server._peers import PeerLinks, PeerUnavailable
from muxtunnel.server._registry import GroupService
from muxtunnel.server._web import NODE_OWNER
from muxtunnel.server._web_upstream import balance_key
from muxtunnel.vhost import RouteTarget, UpstreamUnavailable, Visitor

__all__ = ["WebRemote", "pick_node"]


def pick_node(
    counts: Mapping[str, int],
    policy: PolicyKind,
    key: str | bytes | None,
    turn: int,
    rng: random.Random | None = None,
) -> str | None:
    """The node whose slot the request takes (None: no member anywhere)."""
    slots = [node for node in sorted(counts) for _ in range(max(0, counts[node]))]
    if not slots:
        return None
    if key is not None:
        data = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
        index = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") % len(slots)
    elif policy is PolicyKind.RANDOM:
        index = (rng or random).randrange(len(slots))
    else:
        index = turn % len(slots)
    return slots[index]


class WebRemote:
    """How this node's web front reaches services and group members on other nodes."""

    def __init__(
        self,
        node_id: str,
        links: PeerLinks,
        addresses: Mapping[str, str],
        settings: Callable[[str], GroupSettings],
    ) -> None:
        self.node_id = node_id
        self.links = links
        #: Node id -> advertised address (the cluster node's, kept up to date by its sync).
        self.addresses = addresses
        self._settings = settings
        #: Group name -> node id -> its members there, from the last sync (this node's too).
        self.group_nodes: dict[str, dict[str, int]] = {}
        #: Service name -> the nodes where its client holds it (a client at several nodes).
        self.client_nodes: dict[str, tuple[str, ...]] = {}
        self._turns: dict[str, int] = {}
        #: Requests handed to the node holding their route; requests of a group with members
        #: here that went to a member's node.
        self.forwarded_total = 0
        self.spread_total = 0

    async def open(self, target: RouteTarget, visitor: Visitor) -> anyio.abc.ByteStream:
        """A stream to the node holding `target` (owned by `node:ID`, `node:ID/tls`)."""
        node, _, tls = target.owner.removeprefix(NODE_OWNER).partition("/")
        counts = self.group_nodes.get(target.service)
        if not counts:  # a service of one client: on its node, or any other where it is held
            failure: UpstreamUnavailable | None = None
            held = self.client_nodes.get(target.service, ())
            for candidate in (node, *(n for n in held if n not in (node, self.node_id))):
                try:
                    stream = await self._open_node(candidate, target.service, bool(tls), visitor)
                except UpstreamUnavailable as exc:  # dead, its lease not run out yet
                    failure = failure or exc
                    continue
                self.forwarded_total += 1
                return stream
            assert failure is not None
            raise failure
        # A group with no member here: the request takes a member's slot, cluster-wide.
        others = {n: c for n, c in counts.items() if n != self.node_id}
        first = self._pick(target.service, others, visitor, self._settings(target.service).policy)
        failure = None
        for candidate in sorted(others, key=lambda n: n != first):
            try:
                stream = await self._open_node(candidate, target.service, bool(tls), visitor)
            except UpstreamUnavailable as exc:
                failure = exc
                continue
            self.forwarded_total += 1
            return stream
        raise failure or UpstreamUnavailable(f"group {target.service!r} has no member left")

    async def spread(
        self, group: GroupService, visitor: Visitor, away: bool = False
    ) -> anyio.abc.ByteStream | None:
        """A request of a group with members here: to the node whose member's slot it takes,
        or None when it is one of this node's (or that node cannot be reached now). `away`:
        none of the members here can take it, whatever the registry says: another node's
        slot. A request another node sent here goes on marked, so that it stays there."""
        counts = self.group_nodes.get(group.name)
        hand_on = visitor.from_node
        if away and counts:
            counts = {node: n for node, n in counts.items() if node != self.node_id}
        if not counts or counts.keys() <= {self.node_id}:
            return None
        node = self._pick(group.name, counts, visitor, group.group.settings.policy)
        if node is None or node == self.node_id:
            return None
        try:
            stream = await self._open_node(
                node, group.name, group.type == "https", visitor, handed_on=hand_on
            )
        except UpstreamUnavailable:
            return None  # a member here takes it
        self.spread_total += 1
        return stream

    def _pick(
        self, name: str, counts: Mapping[str, int], visitor: Visitor, policy: Policy
    ) -> str | None:
        turn = self._turns[name] = self._turns.get(name, -1) + 1
        return pick_node(counts, policy.kind, balance_key(policy, visitor), turn)

    async def _open_node(
        self, node: str, service: str, tls: bool, visitor: Visitor, *, handed_on: bool = False
    ) -> anyio.abc.ByteStream:
        advertise = self.addresses.get(node)
        if advertise is None:
            raise UpstreamUnavailable(f"node {node} holding {service!r} has left")
        kind: ServiceType = "https" if tls else "http"
        header = VisitorHeader(service, kind, visitor.host, visitor.port, handed_on=handed_on)
        try:
            return await self.links.open(node, advertise, encode_visitor_header(header))
        except PeerUnavailable as exc:
            raise UpstreamUnavailable(str(exc)) from None
