"""`client.paths` and the keys that tune the choice of path (`client.switch_after_s`,
`client.path_*`), and the command line's `--path NAME=SOURCE[@HOST:PORT]`."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from muxtunnel.config import _values as v
from muxtunnel.config._tree import Map, Node, Scalar, check_keys, fail, present, string
from muxtunnel.model import DEFAULT_CONTROL_PORT
from muxtunnel.path_config import PathSpec, PathTuning
from muxtunnel.specs import SpecError, parse_host_port, validate_service_name

__all__ = ["PATH_KEYS", "TUNING_KEYS", "parse_path", "paths", "tuning"]

_ENTRY_KEYS = ("name", "bind", "interface", "server")
#: Paths of one client: the server keeps this many carriers attached per session besides the
#: session's own (`server._resume.MAX_ATTACHED_CARRIERS`), one per standby path.
MAX_PATHS = 8
#: Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
_MAX_IFNAME = 15
_TUNING = {
    "switch_after_s": ("switch_after_s", v.non_negative),
    "path_probe_interval_s": ("probe_interval_s", v.positive),
    "path_stall_s": ("stall_s", v.positive),
    "path_loss_penalty_s": ("loss_penalty_s", v.non_negative),
    "path_margin_s": ("margin_s", v.non_negative),
    "path_margin_ratio": ("margin_ratio", v.non_negative),
}
PATH_KEYS = ("paths",)
TUNING_KEYS = tuple(_TUNING)
_SYNTAX = "NAME=SOURCE_ADDRESS[@HOST:PORT], NAME=dev:INTERFACE[@HOST:PORT] or NAME=@HOST:PORT"


def _bind(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SpecError(f"expected a local IP address, got {text!r}") from None


def _interface(text: str) -> str:
    if not text or len(text.encode()) > _MAX_IFNAME or any(c in text for c in "/ \0:"):
        raise SpecError(f"expected an interface name (at most {_MAX_IFNAME} bytes), got {text!r}")
    return text


def _server(text: str) -> tuple[str, int]:
    return parse_host_port(text, default_port=DEFAULT_CONTROL_PORT)


def parse_path(text: str) -> PathSpec:
    """`--path NAME=SOURCE[@HOST:PORT]`: SOURCE an address, `dev:IFNAME` or nothing."""
    name, eq, rest = text.partition("=")
    if not eq:
        raise SpecError(f"expected {_SYNTAX}, got {text!r}")
    name = validate_service_name(name)
    source, at, server = rest.partition("@")
    bind = interface = None
    if source.startswith("dev:"):
        interface = _interface(source[4:])
    elif source:
        bind = _bind(source)
    if at and not server:
        raise SpecError(f"{text!r}: a server address after '@'")
    spec = PathSpec(name, bind, interface, _server(server) if at else None)
    if bind is None and interface is None and spec.server is None:
        raise SpecError(f"{text!r}: give a source address, an interface or a server address")
    return spec


def paths(section: Map, env: Mapping[str, str]) -> tuple[PathSpec, ...]:
    """`paths:` (a list of {name, bind | interface, server}; the command line's as a tuple)."""
    node = present(section, "paths")
    if node is None:
        return ()
    if isinstance(node, Scalar) and isinstance(node.value, tuple):  # `--path`s
        found = tuple(item for item in node.value if isinstance(item, PathSpec))
    else:
        found = tuple(_entry(item, env) for item in v.items(node))
    names: dict[str, Node] = {}
    for spec in found:
        v.unique_name(names, spec.name, node, what="path name")
    if len(found) > MAX_PATHS:
        fail(node, f"at most {MAX_PATHS} paths")
    if len(found) == 1:
        fail(node, "one path is no choice: give two or more, or none")
    return found


def _entry(item: Node, env: Mapping[str, str]) -> PathSpec:
    entry = v.entry(item)
    check_keys(entry, _ENTRY_KEYS)
    name_node = present(entry, "name")
    if name_node is None:
        fail(entry, "missing required key 'name'")
    fields: dict[str, Any] = {"name": v.parsed(name_node, validate_service_name,
                                               string(name_node, env))}  # fmt: skip
    for key, parse in (("bind", _bind), ("interface", _interface), ("server", _server)):
        if node := present(entry, key):
            fields[key] = v.parsed(node, parse, string(node, env))
    if len(fields) == 1:
        fail(entry, "a path needs 'bind', 'interface' or 'server'")
    return PathSpec(**fields)


def tuning(section: Map, env: Mapping[str, str]) -> PathTuning:
    """The choice's settings (`PathTuning`'s defaults for what is not given)."""
    changes = {
        field: read(node, env)
        for key, (field, read) in _TUNING.items()
        if (node := present(section, key))
    }
    return dataclasses.replace(PathTuning(), **changes)
