"""The registry store in Redis (`redis://HOST:PORT/DB`, `rediss://` for TLS, `unix://PATH`).

Layout, every key under a prefix (default "muxtunnel:") so one Redis can serve several clusters
or other applications:

    PREFIX claim:KIND:NAME    string "x NODE HOLDER" (exclusive) or "g GROUP", expiring (PX)
    PREFIX members:KIND:NAME  sorted set of "NODE HOLDER" scored by lease end (ms, server clock)
    PREFIX health:KIND:NAME   hash of the members last written unhealthy ("NODE HOLDER" -> "0")
    PREFIX node:ID            string: the node record's JSON, expiring (PX)

Every write is one Lua script (`_lua.py`) run through EVALSHA, falling back to loading it when
the server does not know it (after a restart). Listing walks keys with SCAN, which costs in
proportion to the whole database: fine for status, never used on a visitor's path.

Server requirements: Redis 5 or newer (scripts replicate their effects, so they may read
`TIME` before writing; tested with Debian 12's 7.0), one primary (Redis Cluster is not
supported: one script touches keys of many slots), and, with ACLs, on keys under the prefix:
EVALSHA, SCRIPT LOAD, MGET, SCAN, CLIENT SETNAME and what the scripts run (GET, SET, DEL,
PEXPIRE, PTTL, TIME, ZADD, ZREM, ZSCORE, ZRANGE, ZRANGEBYSCORE, ZREMRANGEBYSCORE, HSET,
HDEL, HEXISTS). Nothing
needs persistence: after a restart that lost the data, every node's lease keeper takes its
leases again within about one renewal interval.

Failure: each call runs under `timeout_s` as a whole (connecting, waiting for a pooled
connection, the command); a refused connection, a timeout, a server still loading its data or a
read-only replica become `RegistryUnavailable`. Connections come from a blocking pool of at
most `max_connections`: a burst waits for a free connection (within the timeout) rather than
opening more.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript

from muxtunnel.cluster import _lua
from muxtunnel.cluster._model import (
    Claim,
    ClaimKey,
    ClaimKind,
    ClaimOutcome,
    Exclusive,
    Grouped,
    Holding,
    Lease,
    Lost,
    Member,
    Membership,
    NodeRecord,
    Owner,
    RegistryError,
    RegistryUnavailable,
    lease_ms,
)
from muxtunnel.cluster._store import check_distinct

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT_S",
    "RedisStore",
    "redact_url",
]

DEFAULT_PREFIX = "muxtunnel:"
#: Bound on one call. Redis answers in well under a millisecond on a LAN; 2 s rides out a slow
#: network or a busy server, and stays under a third of the default 10 s lease, so a renewal
#: that times out leaves time for another before the lease ends.
DEFAULT_TIMEOUT_S = 2.0
#: A node's registry traffic is one renewal loop, registrations and lookups of visitors'
#: owners: 16 concurrent calls is plenty, and 100 nodes stay far below Redis's 10 000 clients.
DEFAULT_MAX_CONNECTIONS = 16
#: Leases per script call: a 500-lease script runs about a millisecond on the server, so one
#: batch never stalls Redis for the other nodes (Redis runs one script at a time).
_BATCH = 500
#: Keys per SCAN step when listing.
_SCAN_COUNT = 1000
_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """`url` with any password replaced by ***, fit for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore:
    """A `RegistryStore` in Redis; build with `RedisStore.from_url`."""

    def __init__(self, client: Redis, *, description: str, prefix: str, timeout_s: float) -> None:
        self.description = description
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._client = client
        self._acquire: AsyncScript = client.register_script(_lua.ACQUIRE)
        self._renew: AsyncScript = client.register_script(_lua.RENEW)
        self._release: AsyncScript = client.register_script(_lua.RELEASE)
        self._lookup: AsyncScript = client.register_script(_lua.LOOKUP)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> RedisStore:
        """A store on the Redis at `url`; connects on first use (nothing is sent here).

        Query arguments of the URL reach the client (e.g. `?ssl_ca_certs=/path/ca.pem` for a
        private CA with rediss://).
        """
        scheme = urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(
                f"registry URL {redact_url(url)!r}: use redis://HOST:PORT/DB, "
                "rediss://HOST:PORT/DB or unix://PATH"
            )
        if scheme != "unix" and not urlsplit(url).hostname:
            raise ValueError(f"registry URL {redact_url(url)!r} names no host")
        if timeout_s <= 0 or max_connections < 1:
            raise ValueError("timeout_s must be positive and max_connections at least 1")
        try:
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                # Once, at once: a pooled connection may have died with a restarted server.
                retry=Retry(NoBackoff(), 1),
                decode_responses=True,
                protocol=2,
                client_name="muxtunnel",
            )
        except ValueError as exc:
            raise ValueError(f"registry URL {redact_url(url)!r}: {exc}") from None
        description = f"{redact_url(url)} (prefix {prefix!r})"
        client = Redis.from_pool(pool)
        return cls(client, description=description, prefix=prefix, timeout_s=timeout_s)

    # ------------------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn what the client raises into our two errors, once, here."""
        where = f"registry {self.description}: {action}"
        try:
            with anyio.fail_after(self.timeout_s):
                yield
        except TimeoutError:
            raise RegistryUnavailable(f"{where}: no answer within {self.timeout_s} s") from None
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            raise RegistryUnavailable(f"{where}: {exc or type(exc).__name__}") from None
        except redis_errors.ReadOnlyError as exc:
            message = f"{where}: the server is a read-only replica ({exc})"
            raise RegistryUnavailable(message) from None
        except redis_errors.RedisError as exc:
            raise RegistryError(f"{where}: {exc}") from None

    def _claim_keys(self, key: ClaimKey) -> tuple[str, str, str]:
        suffix = f"{key.kind.value}:{key.name}"
        prefix = self.prefix
        return f"{prefix}claim:{suffix}", f"{prefix}members:{suffix}", f"{prefix}health:{suffix}"

    def _node_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def _encode(self, leases: Sequence[Lease]) -> tuple[list[str], list[str]]:
        keys: list[str] = []
        args: list[str] = []
        for lease in leases:
            if isinstance(lease, Claim):
                key = self._claim_keys(lease.key)[0]
                keys += [key, key, key]
                args += ["c", "x " + lease.owner.token(), ""]
            elif isinstance(lease, Membership):
                keys += self._claim_keys(lease.key)
                args += ["m" if lease.healthy else "u", "g " + lease.group, lease.member.token()]
            else:
                key = self._node_key(lease.node_id)
                keys += [key, key, key]
                args += ["c", lease.encode(), ""]
        return keys, args

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str]) -> Any:
        return await script(keys=keys, args=args, client=self._client)

    def _holding(self, key: ClaimKey, item: Sequence[Any]) -> Holding | None:
        if not item:
            return None
        value, left_ms = str(item[0]), max(0, int(item[1]))
        kind, _, rest = value.partition(" ")
        try:
            if kind == "x":
                return Exclusive(Owner.parse(rest), left_ms / 1000)
            if kind == "g" and len(item) > 2:
                flat = list(item[2])
                members = sorted(
                    (
                        Member(Owner.parse(str(m)), int(ms) / 1000, int(healthy) == 1)
                        for m, ms, healthy in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
                    ),
                    key=lambda member: member.owner,
                )
                return Grouped(rest, tuple(members), left_ms / 1000)
        except ValueError as exc:
            message = f"registry {self.description}: unreadable {key}: {exc}"
            raise RegistryError(message) from None
        raise RegistryError(f"registry {self.description}: unreadable {key}: {value[:200]!r}")

    async def _lookup_raw(self, keys: Sequence[ClaimKey]) -> dict[ClaimKey, Holding]:
        found: dict[ClaimKey, Holding] = {}
        for start in range(0, len(keys), _BATCH):
            batch = keys[start : start + _BATCH]
            redis_keys = [k for key in batch for k in self._claim_keys(key)]
            items = await self._run(self._lookup, redis_keys, [])
            for key, item in zip(batch, items, strict=True):
                holding = self._holding(key, item)
                if holding is not None:
                    found[key] = holding
        return found

    async def _nodes_raw(self, node_ids: Sequence[str]) -> dict[str, NodeRecord]:
        if not node_ids:
            return {}
        values = await self._client.mget([self._node_key(n) for n in node_ids])
        return {
            node_id: NodeRecord.decode(str(value))
            for node_id, value in zip(node_ids, values, strict=True)
            if value is not None
        }

    async def _holders(self, leases: Sequence[Lease]) -> list[Lost]:
        """What holds each of `leases`' keys now (a second round trip, only when one is lost)."""
        claim_keys = [x.key for x in leases if isinstance(x, Claim | Membership)]
        holdings = await self._lookup_raw(claim_keys)
        nodes = await self._nodes_raw([x.node_id for x in leases if isinstance(x, NodeRecord)])
        return [
            Lost(x, nodes.get(x.node_id) if isinstance(x, NodeRecord) else holdings.get(x.key))
            for x in leases
        ]

    async def _scan(self, pattern: str) -> list[str]:
        match = _glob_escape(self.prefix) + pattern
        return [str(k) async for k in self._client.scan_iter(match=match, count=_SCAN_COUNT)]

    # ---------------------------------------------------------------------------- the store

    async def acquire(
        self, leases: Sequence[Lease], lease_s: float, *, atomic: bool = True
    ) -> ClaimOutcome:
        """See `RegistryStore.acquire`."""
        ttl = str(lease_ms(lease_s))
        check_distinct(leases)
        if atomic and len(leases) > _BATCH:
            raise ValueError(f"an atomic acquire takes at most {_BATCH} leases")
        refused: list[Lease] = []
        with self._errors("acquire"):
            for start in range(0, len(leases), _BATCH):
                batch = leases[start : start + _BATCH]
                keys, args = self._encode(batch)
                indices = await self._run(self._acquire, keys, [ttl, "1" if atomic else "0", *args])
                refused += [batch[int(i) - 1] for i in indices]
            lost = await self._holders(refused) if refused else []
        return ClaimOutcome(tuple(lost))

    async def renew(self, leases: Sequence[Lease], lease_s: float) -> list[Lost]:
        """See `RegistryStore.renew`."""
        ttl = str(lease_ms(lease_s))
        gone: list[Lease] = []
        with self._errors("renew"):
            for start in range(0, len(leases), _BATCH):
                batch = leases[start : start + _BATCH]
                keys, args = self._encode(batch)
                indices = await self._run(self._renew, keys, [ttl, "", *args])
                gone += [batch[int(i) - 1] for i in indices]
            return await self._holders(gone) if gone else []

    async def release(self, leases: Sequence[Lease]) -> int:
        """See `RegistryStore.release`."""
        released = 0
        with self._errors("release"):
            for start in range(0, len(leases), _BATCH):
                keys, args = self._encode(leases[start : start + _BATCH])
                released += int(await self._run(self._release, keys, ["", "", *args]))
        return released

    async def lookup(self, keys: Sequence[ClaimKey]) -> dict[ClaimKey, Holding]:
        """See `RegistryStore.lookup`."""
        with self._errors("lookup"):
            return await self._lookup_raw(keys)

    async def nodes(self) -> list[NodeRecord]:
        """See `RegistryStore.nodes`."""
        with self._errors("list nodes"):
            start = len(self.prefix) + len("node:")
            node_ids = sorted({key[start:] for key in await self._scan("node:*")})
            found = await self._nodes_raw(node_ids)
        return [found[node_id] for node_id in node_ids if node_id in found]

    async def holdings(self) -> list[tuple[ClaimKey, Holding]]:
        """See `RegistryStore.holdings`."""
        with self._errors("list claims"):
            start = len(self.prefix) + len("claim:")
            keys = []
            for key in await self._scan("claim:*"):
                kind, _, name = key[start:].partition(":")
                with contextlib.suppress(ValueError):  # not ours: an unknown kind or bad name
                    keys.append(ClaimKey(ClaimKind(kind), name))
            keys.sort()
            found = await self._lookup_raw(keys)
        return [(key, found[key]) for key in keys if key in found]

    async def aclose(self) -> None:
        """See `RegistryStore.aclose`."""
        with anyio.move_on_after(self.timeout_s, shield=True):
            await self._client.aclose()
