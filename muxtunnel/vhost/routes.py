"""The route table: (host, longest matching location) -> the service that answers.

Invariants:
- Keys are normalised once, at `add` (hosts by `names.normalise_domain`, locations by
  `normalise_location`); a lookup is one dict access per candidate host (the name itself, then
  `*.parent`, `*.grandparent`, ... as frp does) and a scan of that host's locations, kept
  sorted longest first. Hosts rarely have more than a few locations.
- A (host, location) pair has one owner. Adding a pair that another owner (or another service
  of the same owner) holds raises `RouteConflict` and changes nothing: `add` checks every pair
  before it inserts any. The same owner and service adding it again replaces the entry (a
  reconnect, a reload that changed options).
- Locations match whole path segments: `/api` matches `/api`, `/api/`, `/api/v1`, not `/apix`.
  The path a request routes by is normalised the way nginx does before matching locations
  (percent-decoded, `.`/`..` segments resolved, `//` merged), so `/public/../admin` cannot
  slip past a route on `/admin`; the request itself is forwarded as the visitor sent it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from muxtunnel.vhost.counters import ServiceCounters, VhostCounters
from muxtunnel.vhost.names import InvalidHostError, normalise_domain, normalise_host

__all__ = [
    "BasicAuth",
    "Route",
    "RouteConflict",
    "RouteOptions",
    "RouteTable",
    "RouteTarget",
    "normalise_location",
    "routing_path",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
#: Headers a route may not set or remove: framing and hop-by-hop ones belong to the proxy, the
#: forwarded ones describe the visitor and must not be forged by configuration either.
_RESERVED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "forwarded",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)


class RouteConflict(Exception):
    """A host and location that someone else holds; the message says which."""


@dataclass(frozen=True, slots=True)
class BasicAuth:
    """HTTP basic auth a route demands of visitors (RFC 7617)."""

    user: str
    password: str = field(repr=False)
    realm: str = "muxtunnel"

    def __post_init__(self) -> None:
        if ":" in self.user:
            raise ValueError("a basic auth user name cannot contain ':' (RFC 7617)")
        if not self.password:
            raise ValueError("basic auth needs a password")
        if '"' in self.realm or "\\" in self.realm or not _FIELD_VALUE.fullmatch(self.realm):
            raise ValueError("a basic auth realm cannot contain quotes, backslashes or controls")

    @property
    def credentials(self) -> bytes:
        """`user:password` as the visitor must send it, before base64."""
        return f"{self.user}:{self.password}".encode()

    @property
    def challenge(self) -> bytes:
        """The `WWW-Authenticate` value of a 401."""
        return f'Basic realm="{self.realm}", charset="UTF-8"'.encode()


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """What a route changes about the requests it forwards; validated when built."""

    #: Host header the service receives instead of the visitor's (X-Forwarded-Host keeps it).
    host_rewrite: str | None = None
    #: Request headers to set (replacing any the visitor sent) and to remove, in that order:
    #: removes first, then sets.
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    basic_auth: BasicAuth | None = None
    #: Seconds the service has to start its response; None: the engine's default.
    response_timeout_s: float | None = None
    #: PROXY protocol header written first on every connection to the service.
    proxy_protocol: Literal["v1", "v2"] | None = None
    #: Every request opens an upstream of its own, closed after its response (the `Upstream`
    #: decides per request: a load-balanced group's member, a rate limit's 429).
    per_request: bool = False

    def __post_init__(self) -> None:
        if self.host_rewrite is not None:
            host, _, port = self.host_rewrite.rpartition(":")
            if not host or not port.isdigit():
                host = self.host_rewrite
            try:
                normalise_host(host)
            except InvalidHostError as exc:
                raise ValueError(f"host_rewrite: {exc}") from None
        for name, value in self.set_headers:
            _check_header_name(name)
            if not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"header {name}: value has control characters")
        for name in self.remove_headers:
            _check_header_name(name)
        if self.response_timeout_s is not None and not self.response_timeout_s > 0:
            raise ValueError("response_timeout_s must be positive")
        if self.proxy_protocol not in (None, "v1", "v2"):
            raise ValueError("proxy_protocol must be v1 or v2")


def _check_header_name(name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {name!r}")
    if name.lower() in _RESERVED_HEADERS:
        raise ValueError(f"header {name} is managed by the proxy and cannot be set or removed")


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """Who answers a route: a service name, the owner that registered it, its options."""

    service: str
    #: Whoever registered the route (a client's identity); conflicts are judged by it.
    owner: str
    options: RouteOptions = RouteOptions()


class Route:
    """One (host, location) entry, with the target's options compiled for the request path."""

    __slots__ = (
        "_location_slash",
        "auth_challenge",
        "auth_credentials",
        "counters",
        "host",
        "host_rewrite",
        "location",
        "remove_headers",
        "set_headers",
        "target",
    )

    def __init__(
        self, host: str, location: str, target: RouteTarget, counters: ServiceCounters
    ) -> None:
        self.host = host
        self.location = location
        self.target = target
        self.counters = counters
        self._location_slash = "/" if location == "/" else location + "/"
        options = target.options
        self.host_rewrite = options.host_rewrite.encode() if options.host_rewrite else None
        self.remove_headers = frozenset(
            name.lower().encode() for name in (*options.remove_headers, *dict(options.set_headers))
        )
        # Stripped: a field value has no leading or trailing whitespace (RFC 9110 §5.5), and
        # the proxy sends these without h11's checks (`_parsed`).
        self.set_headers = tuple(
            (n.encode(), v.strip(" \t").encode()) for n, v in options.set_headers
        )
        auth = options.basic_auth
        self.auth_credentials = auth.credentials if auth else None
        self.auth_challenge = auth.challenge if auth else None

    def matches(self, path: str) -> bool:
        """Does a (normalised) request path fall under this route's location?"""
        return path.startswith(self._location_slash) or path == self.location

    def __repr__(self) -> str:
        return f"Route({self.host}{self.location} -> {self.target.service})"


def normalise_location(location: str) -> str:
    """A route's `locations` entry as it is matched: see `routing_path`; no trailing slash."""
    if not location.startswith("/"):
        raise ValueError(f"a location must start with '/': {location!r}")
    if "?" in location or "#" in location:
        raise ValueError(f"a location is a path, without query or fragment: {location!r}")
    path = routing_path(location)
    return path.rstrip("/") or "/"


def routing_path(path: str) -> str:
    """The path a request routes by: percent-decoded, dot segments resolved, `//` merged."""
    if "%" not in path and "/." not in path and "//" not in path:
        return path
    if "%" in path:
        path = unquote(path, errors="replace")
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and segments else ""
    return "/" + "/".join(segments) + trailing


def basic_auth_token(user: str, password: str) -> bytes:
    """The `Authorization` value a visitor sends for `user`/`password` (for clients, tests)."""
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class _HostRoutes:
    __slots__ = ("routes",)

    def __init__(self) -> None:
        self.routes: list[Route] = []  # longest location first

    def find(self, path: str) -> Route | None:
        for route in self.routes:
            if route.matches(path):
                return route
        return None

    def put(self, route: Route) -> None:
        self.routes = [r for r in self.routes if r.location != route.location]
        self.routes.append(route)
        self.routes.sort(key=lambda r: len(r.location), reverse=True)


class RouteTable:
    """Routes by host and location; counters live in `counters`, one per service name."""

    def __init__(self, counters: VhostCounters | None = None) -> None:
        self.counters = counters if counters is not None else VhostCounters()
        self._hosts: dict[str, _HostRoutes] = {}
        self._by_target: dict[tuple[str, str], list[Route]] = {}
        #: Moves on at every change: a lookup's result holds while it stays the same (what
        #: `FastPath` reuses the last request's route and rewrite by).
        self.generation = 0

    def __len__(self) -> int:
        return sum(len(routes) for routes in self._by_target.values())

    def add(
        self,
        target: RouteTarget,
        hosts: Iterable[str],
        locations: Iterable[str] = ("/",),
    ) -> list[Route]:
        """Route every host x location to `target`, or raise and change nothing.

        Raises `InvalidHostError` / `ValueError` for a bad name or location and
        `RouteConflict` when another owner or service holds a pair.
        """
        host_keys = list(dict.fromkeys(normalise_domain(host) for host in hosts))
        location_keys = list(dict.fromkeys(normalise_location(loc) for loc in locations))
        if not host_keys:
            raise ValueError(f"service {target.service!r} has no host name to route by")
        if not location_keys:
            raise ValueError(f"service {target.service!r} has an empty list of locations")
        for host in host_keys:
            entry = self._hosts.get(host)
            for location in location_keys:
                held = (
                    next((r for r in entry.routes if r.location == location), None)
                    if entry
                    else None
                )
                if held is None:
                    continue
                if held.target.owner != target.owner:
                    raise RouteConflict(
                        f"{host}{location if location != '/' else ''} is already routed to "
                        "a service of another client"
                    )
                if held.target.service != target.service:
                    raise RouteConflict(
                        f"{host}{location if location != '/' else ''} is already routed to "
                        f"service {held.target.service!r}"
                    )
        self.remove(target.owner, target.service)
        counters = self.counters.service(target.service)
        added = []
        for host in host_keys:
            entry = self._hosts.setdefault(host, _HostRoutes())
            for location in location_keys:
                route = Route(host, location, target, counters)
                entry.put(route)
                added.append(route)
        self.generation += 1
        self._by_target[(target.owner, target.service)] = added
        return added

    def remove(self, owner: str, service: str) -> int:
        """Drop every route of `service` registered by `owner`; returns how many."""
        routes = self._by_target.pop((owner, service), [])
        if routes:
            self.generation += 1
        for route in routes:
            entry = self._hosts.get(route.host)
            if entry is None:
                continue
            entry.routes = [r for r in entry.routes if r is not route]
            if not entry.routes:
                del self._hosts[route.host]
        return len(routes)

    def remove_owner(self, owner: str) -> int:
        """Drop every route `owner` registered (its client went away)."""
        services = [service for (who, service) in self._by_target if who == owner]
        return sum(self.remove(owner, service) for service in services)

    def lookup(self, host: str, path: str = "/") -> Route | None:
        """The route for a normalised host and a `routing_path`, or None."""
        entry = self._hosts.get(host)
        if entry is not None:
            route = entry.find(path)
            if route is not None:
                return route
        dot = host.find(".")
        while dot >= 0:
            entry = self._hosts.get("*" + host[dot:])
            if entry is not None:
                route = entry.find(path)
                if route is not None:
                    return route
            dot = host.find(".", dot + 1)
        return None

    def has_host(self, host: str) -> bool:
        """Does any route (any location) serve this normalised host, wildcards included?"""
        if host in self._hosts:
            return True
        dot = host.find(".")
        while dot >= 0:
            if "*" + host[dot:] in self._hosts:
                return True
            dot = host.find(".", dot + 1)
        return False

    def owners(self, host: str) -> set[str]:
        """Who holds routes on exactly this normalised host (no wildcard lookup)."""
        entry = self._hosts.get(host)
        return {route.target.owner for route in entry.routes} if entry is not None else set()

    def routes(self) -> list[Route]:
        """Every route, grouped by target (for admin listings)."""
        return [route for routes in self._by_target.values() for route in routes]

    def hosts_of(self, owner: str, service: str) -> Mapping[str, list[str]]:
        """host -> locations routed to one service (what `up` prints)."""
        result: dict[str, list[str]] = {}
        for route in self._by_target.get((owner, service), []):
            result.setdefault(route.host, []).append(route.location)
        return result
