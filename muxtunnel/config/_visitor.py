"""The `visitor:` section, read by `muxtunnel visit`: the keys of `client:` (server, token, tls,
mux, reconnect, metrics, admin, ...), whose `services` are the private services to visit.

`token` is the default visitor token (`$MUXTUNNEL_VISITOR_TOKEN` when unset): a secret of its
own, never a client token. The result is a `ClientConfig` whose `visits` hold the services and
whose `services` are empty, so the carrier, TLS and reconnect code of `up` serve `visit` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from muxtunnel.config import _values as v
from muxtunnel.config._client import _compression, client
from muxtunnel.config._tree import (
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
from muxtunnel.model import ClientConfig, VisitSpec
from muxtunnel.specs import DEFAULT_LOCAL_HOST, parse_host_port, validate_service_name

__all__ = ["VISIT_KEYS", "visitor"]

#: Keys of one entry of `visitor.services`.
VISIT_KEYS = ("name", "type", "bind", *v.TOKEN_KEYS, "compression", "compression_level")


def _visits(node: Node, env: Mapping[str, str]) -> tuple[VisitSpec, ...]:
    if isinstance(node, Scalar) and node.yaml_node is None:
        return v.override_list(node, VisitSpec)
    visits, names = [], dict[str, Node]()
    for item in v.items(node):
        entry = v.entry(item)
        check_keys(entry, VISIT_KEYS)
        name_node = present(entry, "name")
        if name_node is None:
            fail(entry, "missing required key 'name' (the private service to visit)")
        name = v.parsed(name_node, validate_service_name, string(name_node, env))
        v.unique_name(names, name, name_node)
        kind = "tcp"
        if type_node := present(entry, "type"):
            kind = string(type_node, env)
            if kind not in ("tcp", "udp"):
                fail(type_node, f"expected tcp or udp (private services are), got {kind!r}")
        host, port = DEFAULT_LOCAL_HOST, 0
        if bind := present(entry, "bind"):
            text = value(bind, env, "HOST:PORT or a port")
            if isinstance(text, bool) or not isinstance(text, str | int):
                wrong(bind, "HOST:PORT or a port", text)
            host, port = v.parsed(
                bind,
                lambda t: parse_host_port(t, default_host=DEFAULT_LOCAL_HOST, allow_zero=True),
                str(text),
            )
        compression, level = _compression(entry, env)
        if compression and kind == "udp":
            fail(present(entry, "compression") or entry, "compression is for tcp services only")
        visits.append(
            VisitSpec(
                name=name,
                type="udp" if kind == "udp" else "tcp",
                bind_host=host,
                bind_port=port,
                token=v.secret(entry, env),
                compression=compression,
                compression_level=level,
            )
        )
    return tuple(visits)


def visitor(section: Map, env: Mapping[str, str]) -> ClientConfig:
    """Resolve a `visitor:` section (with the command line's overrides on it)."""
    services = present(section, "services")
    rest = {key: node for key, node in section.items.items() if key != "services"}
    config = client(Map(section.file, section.line, section.path, rest), env)
    v.refuse_weak_tokens(section, env)  # its services' tokens too
    return dataclasses.replace(config, visits=_visits(services, env) if services else ())
