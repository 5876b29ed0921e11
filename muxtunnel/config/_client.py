"""The `client:` section: keys, their readers, and the resolved `ClientConfig`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

from muxtunnel.auth import KEY_BYTES, TAG_BYTES
from muxtunnel.config import _balance, _paths, _web
from muxtunnel.config import _values as v
from muxtunnel.config._tree import (
    List,
    Map,
    Node,
    Scalar,
    check_keys,
    child,
    fail,
    present,
    string,
    value,
    wrong,
)
from muxtunnel.fields import MAX_LIST_ITEMS
from muxtunnel.model import (
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_CONTROL_PORT,
    WEB_TYPES,
    ClientConfig,
    ClientTls,
    Endpoint,
    Secret,
    ServiceSpec,
    ServiceType,
)
from muxtunnel.specs import (
    DEFAULT_LOCAL_HOST,
    SERVICE_TYPES,
    parse_host_port,
    validate_host,
    validate_service_name,
)
from muxtunnel.tls import parse_fingerprint
from muxtunnel.trust import KNOWN_HOSTS_FILE

__all__ = ["CLIENT_KEYS", "client"]

_SPEC_KEYS = (
    "name", "type", "local", "remote_port", "token", "token_file", "compression",
    "compression_level", "public", "visitor_token", *_web.WEB_SERVICE_KEYS, *_balance.GROUP_KEYS,
)  # fmt: skip
_TLS_KEYS = ("enabled", "ca", "fingerprint", "insecure", "cert", "key", "server_name")


def _compression(entry: Map, env: Mapping[str, str]) -> tuple[str | None, int]:
    """`compression: zstd | none | true | false` and `compression_level: 1..22`."""
    algorithm: str | None = None
    if node := present(entry, "compression"):
        found = value(node, env, "'zstd' or 'none'")
        if found is True or found == "zstd":
            algorithm = "zstd"
        elif found not in (False, "none"):
            wrong(node, "'zstd' or 'none'", found)
    level = DEFAULT_COMPRESSION_LEVEL
    if node := present(entry, "compression_level"):
        level = v.integer(node, env, *v.ZSTD_LEVELS)
    return algorithm, level


def _services(node: Node, env: Mapping[str, str]) -> tuple[ServiceSpec, ...]:
    if isinstance(node, Scalar) and node.yaml_node is None:
        return v.override_list(node, ServiceSpec)
    specs, names = [], dict[str, Node]()
    for item in v.items(node):
        entry = v.entry(item)
        check_keys(entry, _SPEC_KEYS)
        local_node = present(entry, "local")
        if local_node is None:
            fail(entry, "missing required key 'local'")
        local = value(local_node, env, "HOST:PORT or a port")
        if isinstance(local, bool) or not isinstance(local, str | int):
            wrong(local_node, "HOST:PORT or a port", local)
        host, port = v.parsed(
            local_node, lambda t: parse_host_port(t, default_host=DEFAULT_LOCAL_HOST), str(local)
        )
        kind: ServiceType = "tcp"
        if type_node := present(entry, "type"):
            text = string(type_node, env)
            kind = next((t for t in SERVICE_TYPES if t == text), kind)
            if kind != text:
                fail(type_node, f"expected one of {', '.join(SERVICE_TYPES)}, got {text!r}")
        name_node = present(entry, "name")
        name = f"{kind}-{port}"
        if name_node is not None:
            name = v.parsed(name_node, validate_service_name, string(name_node, env))
        v.unique_name(names, name, name_node or entry)
        remote = present(entry, "remote_port")
        if remote is not None and kind in WEB_TYPES:
            fail(remote, f"an {kind} service has no port of its own: it is reached by its name")
        compression, level = _compression(entry, env)
        if compression and kind == "udp":
            fail(present(entry, "compression") or entry, "compression is for tcp services only")
        private, visitor_tokens = _privacy(entry, kind, env)
        if private and remote is not None:
            fail(remote, "a private service has no public port: leave remote_port out")
        if private and (member := present(entry, "group")) is not None:
            fail(member, "a private service cannot be a group member (groups are public)")
        protocol = None
        if found := present(entry, "proxy_protocol"):
            if kind == "udp":
                fail(found, "proxy_protocol is for tcp, http and https services")
            protocol = _web.proxy_protocol(found, env)
        spec = ServiceSpec(
            name=name,
            type=kind,
            local_host=host,
            local_port=port,
            remote_port=v.integer(remote, env, 0, 65535) if remote else 0,
            token=v.secret(entry, env),
            compression=compression,
            compression_level=level,
            http=_web.http_options(entry, kind, name, name_node or entry, env),
            proxy_protocol=protocol,
            private=private,
            visitor_tokens=visitor_tokens,
            group=_balance.group_spec(entry, env),
        )
        _fits_one_message(entry, spec)
        specs.append(spec)
    return tuple(specs)


def _privacy(
    entry: Map, kind: ServiceType, env: Mapping[str, str]
) -> tuple[bool, tuple[Secret, ...]]:
    """`public: false` and its `visitor_token`s (a token, or a list of them)."""
    private = False
    if node := present(entry, "public"):
        private = not v.boolean(node, env)
        if private and kind not in ("tcp", "udp"):
            fail(node, f"an {kind} service cannot be private: only tcp and udp services can")
    tokens: tuple[Secret, ...] = ()
    if node := present(entry, "visitor_token"):
        if not private:
            fail(node, "visitor_token is for private services (public: false)")
        tokens = v.visitor_tokens(node, env)
    if private and (own := v.secret(entry, env)) is not None and own in tokens:
        fail(node or entry, "a visitor token must differ from the service's token")
    return private, tokens


def _fits_one_message(entry: Map, spec: ServiceSpec) -> None:
    """A registration travels in one control message: refuse options too long for it."""
    from muxtunnel import control
    from muxtunnel.auth import GROUP_KEY_BYTES, GROUP_PROOF_BYTES
    from muxtunnel.fields import INSTANCE_BYTES
    from muxtunnel.visitauth import SEALED_OVERHEAD_BYTES

    group: dict[str, bytes] = {}
    if spec.group is not None:  # the largest a member's fields can be
        group = {"group_key": bytes(GROUP_KEY_BYTES), "group_proof": bytes(GROUP_PROOF_BYTES),
                 "instance": bytes(INSTANCE_BYTES)}  # fmt: skip
    keys = bytes(SEALED_OVERHEAD_BYTES + KEY_BYTES * len(spec.visitor_tokens))
    try:
        register = control.Register.of(
            spec, bytes(TAG_BYTES), spec.remote_port, keys=keys if spec.private else b"", **group
        )
        control.encode_message(register)
    except ValueError as exc:
        fail(
            entry,
            f"service {spec.name!r} cannot be registered: {exc} (at most "
            f"{MAX_LIST_ITEMS} domains, locations or headers, {control.MAX_MESSAGE_BYTES} "
            "bytes in all)",
        )


def _fingerprints(pins: Node, env: Mapping[str, str]) -> tuple[str, ...]:
    pin_nodes: list[Node] = pins.items if isinstance(pins, List) else [pins]
    if isinstance(pins, Scalar) and isinstance(pins.value, tuple | list):  # flags
        pin_nodes = [Scalar(pins.file, 0, pins.path, None, text) for text in pins.value]
    return tuple(v.parsed(item, parse_fingerprint, string(item, env)) for item in pin_nodes)


def _tls(section: Map, env: Mapping[str, str]) -> ClientTls | None:
    """`tls:` false (plaintext), true or absent (trust on first use), or a mapping that says
    how to verify the server (`ca`, `fingerprint`, `insecure`), with a client certificate."""
    node = present(section, "tls")
    if node is not None and (done := v.overridden(node, ClientTls)):
        return done
    if isinstance(node, Scalar):  # `tls: false` (off) or `tls: true` (the default)
        if not v.boolean(node, env):
            return None
        tls = Map(node.file, node.line, node.path)
    elif node is None:
        tls = Map(section.file, section.line, child(section.path, "tls"))
    else:
        tls = v.entry(node)
        check_keys(tls, _TLS_KEYS)
        if (enabled := present(tls, "enabled")) and not v.boolean(enabled, env):
            return None
    fields: dict[str, Any] = {}
    if ca := present(tls, "ca"):
        fields["ca"] = "system" if string(ca, env) == "system" else v.path(ca, env)
    if pins := present(tls, "fingerprint"):
        fields["fingerprints"] = _fingerprints(pins, env)
    if insecure := present(tls, "insecure"):
        fields["insecure"] = v.boolean(insecure, env)
    cert, key = present(tls, "cert"), present(tls, "key")
    if (cert is None) != (key is None):
        fail(tls, "a client certificate needs both 'cert' and 'key'")
    if cert is not None and key is not None:
        fields["cert"], fields["key"] = v.path(cert, env), v.path(key, env)
    if name := present(tls, "server_name"):
        fields["server_name"] = v.parsed(name, validate_host, string(name, env))
    if not (fields.get("ca") or fields.get("fingerprints") or fields.get("insecure")):
        state = v.state_dir(
            section,
            env,
            "the fingerprints of servers met (known_hosts)",
            ", or verify the server without one: --server-fingerprint sha256:HEX "
            "(tls.fingerprint) or --tls-ca FILE (tls.ca)",
        )
        fields["known_hosts"] = os.path.join(state, KNOWN_HOSTS_FILE)
    return ClientTls(**fields)


def _inspect(node: Node, env: Mapping[str, str]) -> Endpoint | Literal["off"]:
    """`inspect: false` turns the HTTP inspector off; an address (or `{bind, token}`) moves it."""
    return v.endpoint(node, env) or "off"


# YAML key -> reader; each key is also the name of the model field it fills.
_FIELDS: dict[str, v.Reader] = {
    "services": _services,
    "reconnect_min_s": v.positive,
    "reconnect_max_s": v.positive,
    "drain_timeout_s": v.non_negative,
    "udp_flow_idle_s": v.positive,
    "udp_max_flows": v.count,
    "mux": v.mux,
    "metrics": v.endpoint,
    "admin": v.endpoint,
    "inspect": _inspect,
    "resume": v.boolean,
}
#: Every key `client:` may hold.
CLIENT_KEYS = (
    "server", "servers", *v.TOKEN_KEYS, "allow_weak_token", "tls", "state_dir", *_FIELDS,
    *_paths.PATH_KEYS, *_paths.TUNING_KEYS,
)  # fmt: skip


def client(section: Map, env: Mapping[str, str]) -> ClientConfig:
    """Resolve a `client:` section (with the command line's overrides on it)."""
    check_keys(section, CLIENT_KEYS)
    fields = v.fields(section, _FIELDS, env)
    fields["token"] = v.secret(section, env)
    v.refuse_weak_tokens(section, env)
    fields["tls"] = _tls(section, env)
    host, port = ClientConfig().server_host, DEFAULT_CONTROL_PORT
    if node := present(section, "server"):
        text = string(node, env)
        host, port = v.parsed(node, lambda t: parse_host_port(t, default_port=port), text)
    servers = _servers(section, env)
    if servers and present(section, "server") and (host, port) != servers[0]:
        fail(section, "give server or servers, not both")
    if servers:
        (host, port), fields["servers"] = servers[0], servers if len(servers) > 1 else ()
    fields["paths"], fields["path_tuning"] = _paths.paths(section, env), _paths.tuning(section, env)
    if fields["paths"] and fields.get("servers"):
        fail(section, "paths lead to one server: give paths or several servers, not both")
    config = ClientConfig(server_host=host, server_port=port, **fields)
    for spec in config.services:
        if spec.private and config.token is not None and config.token in spec.visitor_tokens:
            fail(section, f"service {spec.name!r}: a visitor token must differ from the token")
    if config.reconnect_max_s < config.reconnect_min_s:
        where = present(section, "reconnect_max_s") or present(section, "reconnect_min_s")
        assert where is not None
        fail(where, "reconnect_max_s must not be less than reconnect_min_s")
    return config


def _servers(section: Map, env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """`servers:` (a list of HOST[:PORT]; the command line's `--server`s as a tuple)."""
    node = present(section, "servers")
    if node is None:
        return ()
    texts = v.overridden(node, tuple)
    nodes: list[Node] = [node] * len(texts) if texts is not None else v.items(node)
    if texts is None:
        texts = tuple(string(item, env) for item in nodes)
    found: list[tuple[str, int]] = []
    port = DEFAULT_CONTROL_PORT
    for item, text in zip(nodes, texts, strict=True):
        address = v.parsed(item, lambda t: parse_host_port(t, default_port=port), text)
        if address in found:
            fail(item, f"server {text!r} is listed twice")
        found.append(address)
    if len(found) > MAX_LIST_ITEMS:
        fail(node, f"at most {MAX_LIST_ITEMS} servers")
    return tuple(found)
