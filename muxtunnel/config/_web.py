"""The web keys: `server.http`, `server.https`, and the HTTP options of a client's services.

Names, locations and headers are checked here with the virtual-host engine's own rules
(`muxtunnel.vhost.names` / `routes`), so a config the server would refuse fails at load, with
its file and line. The engine is imported only when a web key is present: a process without
web services never loads h11.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from muxtunnel.config import _values as v
from muxtunnel.config._tree import (
    List,
    Map,
    Node,
    Scalar,
    check_keys,
    fail,
    present,
    string,
    value,
    wrong,
)
from muxtunnel.model import (
    BasicAuthSpec,
    HttpFront,
    HttpOptions,
    HttpsFront,
    ProxyProtocol,
    ServiceType,
)
from muxtunnel.specs import parse_host_port, validate_subdomain

__all__ = [
    "HTTPS_KEYS",
    "HTTP_KEYS",
    "WEB_SERVICE_KEYS",
    "domain_patterns",
    "http_front",
    "http_options",
    "https_front",
    "proxy_protocol",
    "route_options",
]

#: `server.http` keys: where, under which domain, and the engine's limits.
_HTTP_LIMITS: dict[str, v.Reader] = {
    "max_header_bytes": v.count,
    "max_header_count": v.count,
    "head_timeout_s": v.positive,
    "idle_timeout_s": v.positive,
    "response_timeout_s": v.positive,
    "max_connections_per_source": v.count,
    "offline_grace_s": v.non_negative,
}
HTTP_KEYS = ("bind", "domain", "custom_domains", *_HTTP_LIMITS)
HTTPS_KEYS = ("bind", "cert", "key")
#: Keys of a client service entry that only web services (or, for proxy_protocol, tcp) take.
WEB_SERVICE_KEYS = (
    "subdomain", "custom_domains", "locations", "host_rewrite", "request_headers",
    "basic_auth", "response_timeout_s", "proxy_protocol",
)  # fmt: skip
#: Only `http` services see requests: these make no sense for TLS passthrough.
_HTTP_ONLY = ("locations", "host_rewrite", "request_headers", "basic_auth", "response_timeout_s")


def _texts(node: Node, env: Mapping[str, str]) -> list[tuple[Node, str]]:
    """A string or a (possibly empty) list of strings, each with its node."""
    if isinstance(node, Scalar) and isinstance(node.value, tuple | list):  # command line
        return [(node, str(item)) for item in node.value]
    nodes = node.items if isinstance(node, List) else [node]
    return [(item, string(item, env)) for item in nodes]


def domain_patterns(node: Node, env: Mapping[str, str]) -> tuple[str, ...]:
    """Server policy: names a service may claim: `*`, `*.example.org` or an exact name."""
    from muxtunnel.vhost.names import normalise_domain

    patterns = []
    for item, text in _texts(node, env):
        if text.strip() == "*":
            patterns.append("*")
        else:
            patterns.append(v.parsed(item, normalise_domain, text))
    return tuple(patterns)


def http_front(node: Node, env: Mapping[str, str]) -> HttpFront:
    """`server.http: {bind, domain, custom_domains, limits...}`."""
    from muxtunnel.vhost.names import normalise_domain

    section = v.entry(node)
    check_keys(section, HTTP_KEYS)
    domain_node = present(section, "domain")
    if domain_node is None:
        fail(section, "the web ports need a domain (domain: example.com, or --domain)")
    domain = v.parsed(domain_node, normalise_domain, string(domain_node, env))
    if domain.startswith("*"):
        fail(domain_node, "the domain is a plain name: services live at NAME.DOMAIN")
    fields: dict[str, Any] = v.fields(section, _HTTP_LIMITS, env)
    if found := present(section, "bind"):
        fields["bind_host"], fields["bind_port"] = _bind(found, env, 80)
    if found := present(section, "custom_domains"):
        fields["custom_domains"] = domain_patterns(found, env)
    return HttpFront(domain=domain, **fields)


def https_front(node: Node, env: Mapping[str, str]) -> HttpsFront:
    """`server.https: {bind, cert, key}`; cert and key go together."""
    section = v.entry(node)
    check_keys(section, HTTPS_KEYS)
    fields: dict[str, Any] = {}
    if found := present(section, "bind"):
        fields["bind_host"], fields["bind_port"] = _bind(found, env, 443)
    cert, key = present(section, "cert"), present(section, "key")
    if (cert is None) != (key is None):
        fail(section, "terminating TLS needs both 'cert' and 'key' (a wildcard for *.DOMAIN)")
    if cert is not None and key is not None:
        fields["cert"], fields["key"] = v.path(cert, env), v.path(key, env)
    return HttpsFront(**fields)


def _bind(node: Node, env: Mapping[str, str], default_port: int) -> tuple[str, int]:
    found = value(node, env, "HOST:PORT")
    if isinstance(found, bool) or not isinstance(found, str | int):
        wrong(node, "HOST:PORT", found)
    return v.parsed(
        node,
        lambda t: parse_host_port(t, default_port=default_port, default_host="0.0.0.0"),
        str(found),
    )


def proxy_protocol(node: Node, env: Mapping[str, str]) -> ProxyProtocol | None:
    """`v1`, `v2`, or `none`/false."""
    found = value(node, env, "'v1', 'v2' or 'none'")
    if found in (False, "none"):
        return None
    if found == "v1" or found == 1:
        return "v1"
    if found == "v2" or found == 2:
        return "v2"
    wrong(node, "'v1', 'v2' or 'none'", found)


def http_options(
    entry: Map, kind: ServiceType, name: str, name_node: Node, env: Mapping[str, str]
) -> HttpOptions | None:
    """The web keys of one `client.services[]` entry (None for tcp and udp)."""
    if kind not in ("http", "https"):
        for key in WEB_SERVICE_KEYS:
            if key != "proxy_protocol" and (found := present(entry, key)):
                fail(found, f"{key} is for http and https services, not {kind}")
        return None
    if kind == "https":
        for key in _HTTP_ONLY:
            if found := present(entry, key):
                fail(found, f"{key} is for http services: TLS passthrough cannot see requests")
    from muxtunnel.vhost.names import normalise_domain
    from muxtunnel.vhost.routes import BasicAuth, normalise_location

    fields: dict[str, Any] = {}
    if found := present(entry, "subdomain"):
        fields["subdomain"] = v.parsed(found, validate_subdomain, string(found, env))
    else:
        v.parsed(name_node, _name_as_subdomain, name)
    if found := present(entry, "custom_domains"):
        texts = _texts(found, env)
        fields["custom_domains"] = tuple(v.parsed(n, normalise_domain, t) for n, t in texts)
    if found := present(entry, "locations"):
        texts = _texts(found, env)
        fields["locations"] = tuple(v.parsed(n, normalise_location, t) for n, t in texts)
    if found := present(entry, "host_rewrite"):
        fields["host_rewrite"] = string(found, env)
    if found := present(entry, "request_headers"):
        fields["set_headers"], fields["remove_headers"] = _request_headers(found, env)
    if found := present(entry, "basic_auth"):
        section = v.entry(found)
        check_keys(section, ("user", "password"))
        user, password = present(section, "user"), present(section, "password")
        if user is None or password is None:
            fail(section, "basic auth needs both 'user' and 'password'")
        secret = v.token(password, env)
        spec = BasicAuthSpec(string(user, env), secret)
        v.parsed(section, lambda _: BasicAuth(spec.user, spec.password.value), "")
        fields["basic_auth"] = spec
    if found := present(entry, "response_timeout_s"):
        fields["response_timeout_s"] = v.positive(found, env)
    options = HttpOptions(**fields)
    v.parsed(entry, lambda _: route_options(options), "")
    return options


def _name_as_subdomain(name: str) -> str:
    try:
        return validate_subdomain(name)
    except ValueError:
        raise ValueError(
            f"service name {name!r} cannot be its subdomain (one DNS label, no dots): "
            "set 'subdomain'"
        ) from None


def route_options(options: HttpOptions) -> object:
    """The engine's `RouteOptions` checks on `options` (`ValueError` says what is wrong)."""
    from muxtunnel.vhost.routes import RouteOptions

    return RouteOptions(
        host_rewrite=options.host_rewrite,
        set_headers=options.set_headers,
        remove_headers=options.remove_headers,
        response_timeout_s=options.response_timeout_s,
    )


def _request_headers(
    node: Node, env: Mapping[str, str]
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    section = v.entry(node)
    check_keys(section, ("set", "remove"))
    set_headers: list[tuple[str, str]] = []
    if found := present(section, "set"):
        mapping = v.entry(found)
        for header, item in mapping.items.items():
            set_headers.append((header, string(item, env)))
    remove: tuple[str, ...] = ()
    if found := present(section, "remove"):
        remove = tuple(text for _, text in _texts(found, env))
    return tuple(set_headers), remove
