"""The `server:` section: keys, their readers, and the resolved `ServerConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from muxtunnel.config import _balance, _web
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
    DEFAULT_CONTROL_PORT,
    ClusterConfig,
    PortRanges,
    ServerConfig,
    ServerTls,
    ServicePolicy,
)
from muxtunnel.specs import parse_host_port, parse_port_ranges, validate_host, validate_service_name
from muxtunnel.trust import SERVER_CERT_FILE, SERVER_KEY_FILE

__all__ = ["SERVER_KEYS", "server"]

_PORTS = "a port list like '1024-65535,8080'"
_POLICY_KEYS = (
    "name", "token", "token_file", "bandwidth_bytes_per_s", "max_connections", "compression",
    "custom_domains", "port", "idle_timeout_s", "visitor_token", *_balance.POLICY_KEYS,
)  # fmt: skip


def _allow_ports(node: Node, env: Mapping[str, str]) -> PortRanges:
    if done := v.overridden(node, PortRanges):
        return done
    texts = []
    for item in node.items if isinstance(node, List) else [node]:
        found = value(item, env, _PORTS)
        if isinstance(found, bool) or not isinstance(found, str | int):
            wrong(item, _PORTS, found)
        texts.append(str(found))
    if not texts:
        fail(node, "the list of allowed ports is empty")
    return v.parsed(node, parse_port_ranges, ",".join(texts))


def _services(node: Node, env: Mapping[str, str]) -> tuple[ServicePolicy, ...]:
    if isinstance(node, Scalar) and node.yaml_node is None:
        return v.override_list(node, ServicePolicy)
    policies, names, ports = [], dict[str, Node](), dict[str, Node]()
    for item in v.items(node):
        entry = v.entry(item)
        check_keys(entry, _POLICY_KEYS)
        name_node = present(entry, "name")
        if name_node is None:
            fail(entry, "missing required key 'name'")
        name = v.parsed(name_node, validate_service_name, string(name_node, env))
        v.unique_name(names, name, name_node)
        limits: dict[str, Any] = {}
        if found := present(entry, "bandwidth_bytes_per_s"):
            limits["bandwidth_bytes_per_s"] = v.size(found, env)
            if limits["bandwidth_bytes_per_s"] < 1:
                fail(found, "must be at least 1 byte per second")
        if found := present(entry, "max_connections"):
            limits["max_connections"] = v.count(found, env)
        if found := present(entry, "compression"):
            limits["compression"] = v.boolean(found, env)
        if found := present(entry, "custom_domains"):
            limits["custom_domains"] = _web.domain_patterns(found, env)
        if found := present(entry, "port"):
            limits["port"] = v.integer(found, env, 1, 65535)
            v.unique_name(ports, str(limits["port"]), found, what="pinned port")
        if found := present(entry, "idle_timeout_s"):
            limits["idle_timeout_s"] = v.non_negative(found, env)
        limits.update(_balance.policy_fields(entry, env))
        token = v.secret(entry, env)
        if found := present(entry, "visitor_token"):
            limits["visitor_tokens"] = v.visitor_tokens(found, env)
            if token is not None and token in limits["visitor_tokens"]:
                fail(found, "a visitor token must differ from the service's token")
        policies.append(ServicePolicy(name, token, **limits))
    return tuple(policies)


def _tls(section: Map, env: Mapping[str, str]) -> ServerTls | None:
    """`tls:` false (plaintext), true or absent (the server's own self-signed pair in the state
    directory), or a mapping: `cert` and `key` of your own, `client_ca` for mutual TLS."""
    node = present(section, "tls")
    if node is not None and (done := v.overridden(node, ServerTls)):
        return done
    client_ca: str | None = None
    if isinstance(node, Scalar):
        if not v.boolean(node, env):
            return None
    elif node is not None:
        tls = v.entry(node)
        check_keys(tls, ("enabled", "cert", "key", "client_ca"))
        if (enabled := present(tls, "enabled")) and not v.boolean(enabled, env):
            return None
        if found := present(tls, "client_ca"):
            client_ca = v.path(found, env)
        cert, key = present(tls, "cert"), present(tls, "key")
        if (cert is None) != (key is None):
            fail(tls, "TLS needs both 'cert' and 'key' (`muxtunnel cert` makes a pair)")
        if cert is not None and key is not None:
            return ServerTls(v.path(cert, env), v.path(key, env), client_ca)
    state = v.state_dir(section, env, "the server's own TLS certificate")
    return ServerTls(
        cert=os.path.join(state, SERVER_CERT_FILE),
        key=os.path.join(state, SERVER_KEY_FILE),
        client_ca=client_ca,
        self_signed=True,
    )


_CLUSTER_KEYS = ("url", "node_id", "advertise", "lease_s", "secret", "secret_file", "prefix")


def _cluster(node: Node, env: Mapping[str, str]) -> ClusterConfig:
    """`cluster:` a registry URL, or `{url, node_id, advertise, lease_s, secret|secret_file,
    prefix}`; the cluster package checks each value again when the node starts."""
    if done := v.overridden(node, ClusterConfig):
        return done
    if isinstance(node, Scalar):
        return ClusterConfig(url=string(node, env))
    section = v.entry(node)
    check_keys(section, _CLUSTER_KEYS)
    url = present(section, "url")
    if url is None:
        fail(section, "a cluster needs its registry: url: redis://HOST:PORT/DB")
    fields: dict[str, Any] = {"url": string(url, env)}
    for key in ("node_id", "advertise", "prefix"):
        if found := present(section, key):
            fields[key] = string(found, env)
    if found := present(section, "lease_s"):
        fields["lease_s"] = v.positive(found, env)
    given, file = present(section, "secret"), present(section, "secret_file")
    if given is not None and file is not None:
        fail(file, "give either 'secret' or 'secret_file', not both")
    if given is not None:
        fields["secret"] = v.token(given, env).value
    elif file is not None:
        fields["secret"] = v.token_file(file, env).value
    return ClusterConfig(**fields)


# YAML key -> reader; each key is also the name of the model field it fills.
_FIELDS: dict[str, v.Reader] = {
    "allow_ports": _allow_ports,
    "services": _services,
    "auth_timeout_s": v.positive,
    "drain_timeout_s": v.non_negative,
    "max_visitors_per_service": v.count,
    "max_visitors_per_source": v.count,
    "visitor_idle_timeout_s": v.non_negative,
    "udp_flow_idle_s": v.positive,
    "udp_max_flows": v.count,
    "max_sessions_per_source": v.count,
    "max_services_per_session": v.count,
    "port_reservation_s": v.non_negative,
    "reuse_port": v.boolean,
    "auth_failures_burst": v.count,
    "auth_failures_per_min": v.positive,
    "max_preauth_connections": v.count,
    "max_preauth_per_source": v.count,
    "mux": v.mux,
    "metrics": v.endpoint,
    "admin": v.endpoint,
    "dashboard": v.endpoint,
    "compression_level_max": lambda node, env: v.integer(node, env, *v.ZSTD_LEVELS),
    "compression_budget_bytes": v.size,
    "http": _web.http_front,
    "https": _web.https_front,
    "cluster": _cluster,
    "resume": v.boolean,
}
#: Every key `server:` may hold.
SERVER_KEYS = (
    "bind", "public_host", *v.TOKEN_KEYS, "allow_weak_token", "tls", "state_dir", *_FIELDS,
)  # fmt: skip


def server(section: Map, env: Mapping[str, str]) -> ServerConfig:
    """Resolve a `server:` section (with the command line's overrides on it)."""
    check_keys(section, SERVER_KEYS)
    fields = v.fields(section, _FIELDS, env)
    fields["token"] = v.secret(section, env)
    v.refuse_weak_tokens(section, env)
    fields["tls"] = _tls(section, env)
    host, port = ServerConfig().bind_host, DEFAULT_CONTROL_PORT
    if node := present(section, "bind"):
        text = string(node, env)
        host, port = v.parsed(
            node, lambda t: parse_host_port(t, default_port=port, default_host=host), text
        )
    public_host = host
    if node := present(section, "public_host"):
        public_host = v.parsed(node, validate_host, string(node, env).strip("[]"))
    if (node := present(section, "https")) and "http" not in fields:
        fail(node, "the HTTPS port needs a domain: set http.domain (or --domain)")
    config = ServerConfig(bind_host=host, bind_port=port, public_host=public_host, **fields)
    for policy in config.services:
        if config.token is not None and config.token in policy.visitor_tokens:
            fail(section, f"services {policy.name!r}: a visitor token must differ from the token")
    return config
