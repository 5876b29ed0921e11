"""Hot reload: SIGHUP or a changed config file re-reads the config of `listen` or `up`.

A new config is read and checked completely before anything changes; a config that does not
load (a syntax error, a missing secret, an unreadable certificate, no token left) is rejected
with the reason logged, and the old one stays in force. Then only what changed is touched:

- server: tokens, service policies (limits apply at once, also to running connections),
  allowed ports, timeouts and the TLS certificate (new connections) are swapped in place. A live
  service whose token changed or whose port is no longer allowed is closed, and its client told.
- client: services are compared by name: new ones are registered and removed ones unregistered
  over the live control channel; a changed one is registered again (a change of its local
  address alone applies to new visitors, without a restart). A new server address, TLS setting
  or mux setting needs a new session, so the client reconnects.
- everywhere: addresses that are bound once (control port, public host, metrics, admin API)
  keep their old value and a warning says that a restart is needed.

Visitors of services that did not change never notice a reload.

This module decides, and never imports the server or the client: `ConfigWatcher` loads a new
config and hands it to an `apply` callable (`Server.apply_config`, `Client.apply_config`),
which calls `server_changes` / `client_changes` here to learn what to do, and does it to the
fields it owns. Either raises `ReloadError` to reject the config.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
import structlog

from muxtunnel.auth import TokenBook
from muxtunnel.config import ConfigError
from muxtunnel.model import WEB_TYPES, ClientConfig, ServerConfig, ServiceSpec

__all__ = [
    "ClientChanges",
    "ConfigWatcher",
    "ReloadError",
    "ServerChanges",
    "ServiceDiff",
    "client_changes",
    "diff_services",
    "server_changes",
]

log = structlog.get_logger("muxtunnel.reload")

#: How often the config file's modification time is checked.
POLL_INTERVAL_S = 1.0
C = TypeVar("C", ServerConfig, ClientConfig)


class ReloadError(Exception):
    """The new config cannot be applied; the old one stays. The message says why."""


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:  # the file is being replaced, or gone: wait for the next change
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class ConfigWatcher(Generic[C]):
    """Re-reads the config on SIGHUP and when `path` changes (checked every second).

    `load` reads the file (with the command line's overrides) and raises `ConfigError`;
    `apply` puts a loaded config in force and raises `ReloadError` to reject it.
    """

    def __init__(
        self,
        path: str | None,
        load: Callable[[], C],
        apply: Callable[[C], Awaitable[None]],
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        use_signal: bool = True,
    ) -> None:
        self.path = path
        self.load: Callable[[], C] = load
        self.apply: Callable[[C], Awaitable[None]] = apply
        self.poll_interval_s = poll_interval_s
        self.use_signal = use_signal
        self.reloads = 0
        self.rejected = 0
        self._lock = anyio.Lock()

    async def run(self) -> None:
        """Watch until cancelled."""
        async with anyio.create_task_group() as tg:
            if self.path is not None:
                tg.start_soon(self._poll)
            if self.use_signal:
                tg.start_soon(self._signals)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                log.info("reload requested", trigger="SIGHUP")
                await self.reload()

    async def _poll(self) -> None:
        assert self.path is not None
        last = _stamp(self.path)
        while True:
            await anyio.sleep(self.poll_interval_s)
            stamp = _stamp(self.path)
            if stamp is not None and stamp != last:
                last = stamp
                log.info("reload requested", trigger="file changed", file=self.path)
                await self.reload()

    async def reload(self) -> bool:
        """Load and apply the config now; False (and the reason logged) if it was rejected."""
        async with self._lock:
            try:
                config = self.load()
                await self.apply(config)
            except (ConfigError, ReloadError) as exc:
                self.rejected += 1
                log.error("config reload rejected; keeping the running config", reason=str(exc))
                return False
            except Exception:
                # A bug while applying: the process must outlive it (what was applied stays).
                self.rejected += 1
                log.exception("config reload failed")
                return False
            self.reloads += 1
            return True


def _keep_bound(old: C, new: C, fields: tuple[str, ...]) -> C:
    """Bound addresses cannot move without a restart: keep the old values, and say so."""
    kept = {}
    for name in fields:
        if getattr(old, name) != getattr(new, name):
            log.warning("changing this needs a restart; keeping the running value", key=name)
            kept[name] = getattr(old, name)
    return dataclasses.replace(new, **kept) if kept else new


# --- server ---

#: Bound once at start: a reload keeps their running values.
SERVER_BOUND_FIELDS = ("bind_host", "bind_port", "public_host", "metrics", "admin", "cluster")


@dataclasses.dataclass(frozen=True, slots=True)
class ServerChanges:
    """What a new server config changes."""

    #: The config to put in force (bound addresses kept).
    config: ServerConfig
    tokens: TokenBook
    old_tokens: TokenBook

    def close_reason(
        self, name: str, port: int, type: str = "tcp", private: bool = False
    ) -> str | None:
        """Why a live service must close under the new config, or None if it may stay."""
        before, _ = self.old_tokens.key_for(name)
        after, known = self.tokens.key_for(name)
        if not known or not hmac.compare_digest(before, after):
            return "its token changed in the server's config"
        if type in WEB_TYPES or private:  # on the web ports, or private: no port of its own
            return None
        pins = {p.name: p.port for p in self.config.services if p.port is not None}
        if name in pins:  # a pinned port is its own, allowed or not
            return None if pins[name] == port else f"it is pinned to port {pins[name]} now"
        if port in pins.values():
            return f"port {port} is pinned to another service now"
        if port not in self.config.allow_ports:
            return f"port {port} is no longer allowed (allowed: {self.config.allow_ports})"
        return None


def _keep_web_ports(old: ServerConfig, new: ServerConfig) -> ServerConfig:
    """The web ports and their domain are bound once too; their limits, custom domain policy
    and certificate are not."""
    if (old.http is None) != (new.http is None) or (old.https is None) != (new.https is None):
        log.warning("changing this needs a restart; keeping the running value", key="http/https")
        return dataclasses.replace(new, http=old.http, https=old.https)
    http, https = new.http, new.https
    if old.http is not None and http is not None:
        bound = ("bind_host", "bind_port", "domain")
        if any(getattr(old.http, name) != getattr(http, name) for name in bound):
            log.warning("changing this needs a restart; keeping the running value",
                        key="http.bind/http.domain")  # fmt: skip
            http = dataclasses.replace(http, **{name: getattr(old.http, name) for name in bound})
    if old.https is not None and https is not None:
        if (old.https.bind_host, old.https.bind_port) != (https.bind_host, https.bind_port):
            log.warning("changing this needs a restart; keeping the running value",
                        key="https.bind")  # fmt: skip
            https = dataclasses.replace(
                https, bind_host=old.https.bind_host, bind_port=old.https.bind_port
            )
    return dataclasses.replace(new, http=http, https=https)


def server_changes(old: ServerConfig, new: ServerConfig) -> ServerChanges:
    """What putting `new` in force on a server running `old` means; `ReloadError` if it can't."""
    new = _keep_web_ports(old, _keep_bound(old, new, SERVER_BOUND_FIELDS))
    tokens = TokenBook.from_config(new)
    if not tokens.has_any_token:
        raise ReloadError("the new config has no token at all")
    return ServerChanges(new, tokens, TokenBook.from_config(old))


# --- client ---

CLIENT_BOUND_FIELDS = ("metrics", "admin", "paths", "path_tuning")
#: A change to any of these needs a new session.
_SESSION_FIELDS = ("server_host", "server_port", "tls", "mux")


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceDiff:
    """How two clients' service lists differ, by name."""

    added: tuple[ServiceSpec, ...] = ()
    removed: tuple[str, ...] = ()
    #: Changed in a way the server sees (type, port, token, compression, web options, PROXY
    #: protocol, group or group token): register again.
    changed: tuple[ServiceSpec, ...] = ()
    #: Only the local address, or a group member's weight or health check, changed: applied
    #: in place (new visitors go to the new address, the server is told the new weight).
    local_only: tuple[ServiceSpec, ...] = ()
    #: A private service's visitor tokens changed (maybe its local address too): its new keys
    #: go to the server, nothing restarts, visits with a dropped token are revoked.
    visitor_tokens: tuple[ServiceSpec, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.added or self.removed or self.changed or self.local_only or self.visitor_tokens
        )


def diff_services(old: ClientConfig, new: ClientConfig) -> ServiceDiff:
    """What `new` changes in the services of `old` (tokens resolved against each default)."""
    before = {spec.name: spec for spec in old.services}
    after = {spec.name: spec for spec in new.services}

    def remote_view(spec: ServiceSpec, config: ClientConfig) -> tuple[object, ...]:
        token = spec.token or config.token
        group = (spec.group.name, spec.group.token) if spec.group is not None else None
        return (
            spec.type, spec.remote_port, token, spec.compression, spec.compression_level,
            spec.http, spec.proxy_protocol, group, spec.private,
        )  # fmt: skip

    changed, local_only, keys = [], [], []
    for name in before.keys() & after.keys():
        a, b = before[name], after[name]
        if remote_view(a, old) != remote_view(b, new):
            changed.append(b)
        elif set(a.visitor_tokens) != set(b.visitor_tokens):
            keys.append(b)
        elif a != b:
            local_only.append(b)
    return ServiceDiff(
        added=tuple(spec for name, spec in after.items() if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(sorted(changed, key=lambda s: s.name)),
        local_only=tuple(sorted(local_only, key=lambda s: s.name)),
        visitor_tokens=tuple(sorted(keys, key=lambda s: s.name)),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ClientChanges:
    """What a new client config changes."""

    #: The config to put in force (bound addresses kept).
    config: ClientConfig
    services: ServiceDiff
    #: The session must be replaced (its services are then registered anew anyway).
    reconnect: bool


def client_changes(old: ClientConfig, new: ClientConfig) -> ClientChanges:
    """What putting `new` in force on a client running `old` means; `ReloadError` if it can't."""
    new = _keep_bound(old, new, CLIENT_BOUND_FIELDS)
    if not new.services:
        raise ReloadError("the new config has no services")
    missing = new.services_without_token()
    if missing:
        raise ReloadError(f"no token for service(s) {', '.join(missing)}")
    reconnect = any(getattr(old, name) != getattr(new, name) for name in _SESSION_FIELDS)
    return ClientChanges(new, diff_services(old, new), reconnect)
