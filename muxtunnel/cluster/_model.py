"""What the cluster registry records: keys, owners, leases, holdings, node records, errors.

Everything here is a frozen value, validated when built, so a store never sees a name it could
not write back unchanged. Three kinds of lease exist, and every store method takes them mixed:

- `Claim`: one owner (a node and what holds the name there, e.g. a client session) holds a key
  alone. Exclusive: a second claimant anywhere is refused while the lease lives.
- `Membership`: a key held by a load-balancing group; any number of members, on any nodes, each
  with a lease of its own. The key stays the group's while at least one member's lease lives.
  Each member carries its health as its node last wrote it (`healthy`), so that every node
  can send a group's visitors to nodes whose members can take them.
- `NodeRecord`: a `listen` process announcing itself (node id, node-to-node address, start time).
  Each process start has its own `incarnation`, so two processes given one node id collide.

Names are compared byte for byte: normalise before building a key (the HTTP layer lowercases and
IDNA-encodes hosts).
"""

from __future__ import annotations

import enum
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = [
    "MAX_LEASE_S",
    "MIN_LEASE_S",
    "Claim",
    "ClaimKey",
    "ClaimKind",
    "ClaimOutcome",
    "Exclusive",
    "Grouped",
    "Holding",
    "Lease",
    "Lost",
    "Member",
    "Membership",
    "NodeIdInUse",
    "NodeRecord",
    "Owner",
    "RegistryError",
    "RegistryUnavailable",
    "lease_ms",
    "validate_group",
    "validate_node_id",
]

#: Node ids appear in keys, log lines and metric labels: short, plain, no separators we use.
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Holders and group names: printable ASCII without spaces (a space separates fields in a stored
#: owner). 200 characters fit a session id with a client name and keep a key small.
_TOKEN = re.compile(r"[!-~]{1,200}")
#: Claimed names: printable ASCII without spaces; 512 fits an IDNA host (253) plus a path prefix.
_NAME = re.compile(r"[!-~]{1,512}")
#: Advertised node-to-node address: HOST:PORT or [IPv6]:PORT.
_ADVERTISE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})")

#: Leases shorter than this cannot be renewed reliably (a renewal every lease/3 = 33 ms).
MIN_LEASE_S = 0.1
#: A day: beyond that a dead node would hold its names far too long to be useful.
MAX_LEASE_S = 86_400.0


class RegistryError(Exception):
    """The registry refused or could not do an operation; the message says why."""


class RegistryUnavailable(RegistryError):
    """The store could not be reached or did not answer in time; nothing was changed, or the
    change is unknown and will be settled by lease expiry."""


class NodeIdInUse(RegistryError):
    """Another live `listen` process holds this node id."""


def lease_ms(lease_s: float) -> int:
    """`lease_s` in whole milliseconds (the unit of Redis expiry), checked for range."""
    if not MIN_LEASE_S <= lease_s <= MAX_LEASE_S:
        raise ValueError(f"lease_s must be within {MIN_LEASE_S}..{MAX_LEASE_S}, not {lease_s!r}")
    return round(lease_s * 1000)


def _check(pattern: re.Pattern[str], value: object, what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: expected {pattern.pattern}")


def validate_node_id(node_id: str) -> str:
    """`node_id` if it is valid: letters, digits, `.`, `_`, `-`, at most 64, not starting with
    punctuation."""
    _check(_NODE_ID, node_id, "node id")
    return node_id


class ClaimKind(enum.StrEnum):
    """The name spaces of the cluster; a name is unique within its kind."""

    SERVICE = "service"  #: a service name
    HTTP = "http"  #: an HTTP route: normalised host, then the location prefix ("a.example/api")
    HTTPS = "https"  #: an HTTPS host routed by SNI (normalised)
    TCP_PORT = "tcp"  #: a fixed public TCP port, in decimal
    UDP_PORT = "udp"  #: a fixed public UDP port, in decimal


@dataclass(frozen=True, order=True)
class ClaimKey:
    """One name in one name space."""

    kind: ClaimKind
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, ClaimKind):
            object.__setattr__(self, "kind", ClaimKind(self.kind))
        _check(_NAME, self.name, f"{self.kind.value} name")

    @classmethod
    def service(cls, name: str) -> ClaimKey:
        """A service name."""
        return cls(ClaimKind.SERVICE, name)

    @classmethod
    def http(cls, host: str, location: str = "/") -> ClaimKey:
        """An HTTP route: `host` already normalised, `location` a path prefix starting with /."""
        if not location.startswith("/"):
            raise ValueError(f"an HTTP location starts with '/': {location!r}")
        if "/" in host:
            raise ValueError(f"an HTTP host has no '/': {host!r}")
        return cls(ClaimKind.HTTP, host + location)

    @classmethod
    def https(cls, host: str) -> ClaimKey:
        """An HTTPS host (SNI), already normalised."""
        return cls(ClaimKind.HTTPS, host)

    @classmethod
    def port(cls, protocol: str, port: int) -> ClaimKey:
        """A fixed public port: `protocol` is "tcp" or "udp"."""
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is outside 1..65535")
        return cls(ClaimKind(protocol), str(port))

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.name}"


@dataclass(frozen=True, order=True)
class Owner:
    """Who holds a key: the node, and what holds it on that node (opaque to the registry)."""

    node_id: str
    holder: str

    def __post_init__(self) -> None:
        validate_node_id(self.node_id)
        _check(_TOKEN, self.holder, "holder")

    def token(self) -> str:
        """The stored form; splits back with `Owner.parse`."""
        return f"{self.node_id} {self.holder}"

    @classmethod
    def parse(cls, token: str) -> Owner:
        """The inverse of `token`."""
        node_id, _, holder = token.partition(" ")
        return cls(node_id, holder)

    def __str__(self) -> str:
        return f"{self.holder}@{self.node_id}"


def validate_group(group: str) -> str:
    """`group` if it is a valid group name (printable ASCII, no spaces, at most 200)."""
    _check(_TOKEN, group, "group name")
    return group


@dataclass(frozen=True)
class Claim:
    """A lease: `owner` holds `key` alone."""

    key: ClaimKey
    owner: Owner


@dataclass(frozen=True)
class Membership:
    """A lease: `member` is one of the members of `group`, which holds `key`."""

    key: ClaimKey
    group: str
    member: Owner
    #: Can the member take visitors (health check passing, circuit not open)? Not part of
    #: who holds the key: a renewal writes it, a change is the same lease with a new value.
    healthy: bool = True

    def __post_init__(self) -> None:
        validate_group(self.group)


@dataclass(frozen=True)
class NodeRecord:
    """A lease: one `listen` process of the cluster, as `muxtunnel status` lists it."""

    node_id: str
    #: HOST:PORT where other nodes reach this one (node-to-node sessions).
    advertise: str
    #: Wall-clock start time (Unix seconds): for people reading status, never for timing.
    started_at: float
    #: Random per process start: tells a restarted or duplicate process from this one.
    incarnation: str

    def __post_init__(self) -> None:
        validate_node_id(self.node_id)
        match = _ADVERTISE.fullmatch(self.advertise) if isinstance(self.advertise, str) else None
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"invalid advertise address {self.advertise!r}: expected HOST:PORT")
        _check(_TOKEN, self.incarnation, "incarnation")

    @classmethod
    def new(cls, node_id: str, advertise: str) -> NodeRecord:
        """The record of a process starting now."""
        return cls(node_id, advertise, round(time.time(), 3), secrets.token_hex(8))

    def encode(self) -> str:
        """The stored form: compact JSON with sorted keys, so one record always encodes alike."""
        fields = {
            "node_id": self.node_id,
            "advertise": self.advertise,
            "started_at": self.started_at,
            "incarnation": self.incarnation,
        }
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> NodeRecord:
        """The inverse of `encode`; unknown fields (from a newer version) are ignored."""
        try:
            data: Any = json.loads(text)
            if not isinstance(data, Mapping):
                raise TypeError("not an object")
            return cls(
                str(data["node_id"]),
                str(data["advertise"]),
                float(data["started_at"]),
                str(data["incarnation"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise RegistryError(f"unreadable node record {text[:200]!r}: {exc}") from None


#: Anything a node holds under a lease and renews.
Lease: TypeAlias = Claim | Membership | NodeRecord


@dataclass(frozen=True)
class Exclusive:
    """A key held by one owner."""

    owner: Owner
    expires_in_s: float

    @property
    def node_ids(self) -> frozenset[str]:
        """The nodes that hold the key."""
        return frozenset({self.owner.node_id})


@dataclass(frozen=True)
class Member:
    """One member of a group, with what is left of its own lease."""

    owner: Owner
    expires_in_s: float
    #: As its node last wrote it (see `Membership.healthy`).
    healthy: bool = True


@dataclass(frozen=True)
class Grouped:
    """A key held by a group: its live members, ordered by owner."""

    group: str
    members: tuple[Member, ...]
    expires_in_s: float

    @property
    def node_ids(self) -> frozenset[str]:
        """The nodes that hold at least one member."""
        return frozenset(m.owner.node_id for m in self.members)


#: Who holds a key now.
Holding: TypeAlias = Exclusive | Grouped


@dataclass(frozen=True)
class Lost:
    """A lease that could not be taken or renewed, and what holds its key now (None: nothing,
    the lease ran out)."""

    lease: Lease
    holder: Holding | NodeRecord | None

    def reason(self) -> str:
        """A sentence for a log line or a refused registration."""
        what = _describe_lease(self.lease)
        if self.holder is None:
            return f"{what}: the lease ran out"
        if isinstance(self.holder, NodeRecord):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.holder.started_at))
            return (
                f"{what}: node id in use by another process (advertise {self.holder.advertise},"
                f" started {started} UTC)"
            )
        if isinstance(self.holder, Exclusive):
            return f"{what}: held by {self.holder.owner}"
        nodes = ", ".join(sorted(self.holder.node_ids)) or "no live member"
        return f"{what}: held by group {self.holder.group!r} (members on {nodes})"


def _describe_lease(lease: Lease) -> str:
    if isinstance(lease, Claim):
        return str(lease.key)
    if isinstance(lease, Membership):
        return f"{lease.key} (group {lease.group!r})"
    return f"node {lease.node_id}"


@dataclass(frozen=True)
class ClaimOutcome:
    """What `acquire` did: everything asked for was taken (`won`), or `lost` says what was not
    and why (all or nothing: then nothing was taken)."""

    lost: tuple[Lost, ...] = ()

    @property
    def won(self) -> bool:
        """True when every lease asked for is now held."""
        return not self.lost

    def reason(self) -> str:
        """Why, in one line ("" when won)."""
        return "; ".join(lost.reason() for lost in self.lost)
