"""Typed readers of config values: each checks one value and returns it as its model type.

A reader takes a tree node and the environment (for `${VAR}`), and either returns the value or
raises `ConfigError` naming the file, line and key. Token values never appear in messages.
The last few read the compound values both sections share (`mux:`, the metrics and admin
endpoints, service lists given on the command line).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from mux import MuxConfig
from muxtunnel.config._tree import (
    List,
    Map,
    Node,
    Scalar,
    absent,
    check_keys,
    fail,
    kind,
    present,
    string,
    value,
    wrong,
)
from muxtunnel.model import Endpoint, Secret, ServicePolicy, ServiceSpec, VisitSpec
from muxtunnel.specs import parse_host_port
from muxtunnel.trust import default_state_dir

T = TypeVar("T")
#: A reader of one YAML key: node and environment in, model value out.
Reader = Callable[[Node, Mapping[str, str]], object]

_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
#: zstd's compression levels (1 fastest, 22 smallest).
ZSTD_LEVELS = (1, 22)
_MUX_FIELDS = {f.name: f.default for f in dataclasses.fields(MuxConfig)}
#: Keys that hold a token, in any section or sub-section (services, endpoints).
TOKEN_KEYS = ("token", "token_file")
#: Shortest token accepted without `allow_weak_token`: 16 random base64 characters hold 96
#: bits, out of reach of offline guessing (the `openssl` line below makes 44).
MIN_TOKEN_CHARS = 16
TOKEN_HOWTO = (
    "make one with `openssl rand -base64 32` or "
    "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)
#: A token file larger than this is not a token file (a key, a log, a wrong path).
MAX_TOKEN_FILE_BYTES = 4096


def token(node: Node, env: Mapping[str, str]) -> Secret:
    """A non-empty token string."""
    found = value(node, env, "a token string")
    if isinstance(found, Secret):
        found = found.value
    if not isinstance(found, str):
        wrong(node, "a token string (quote it if it looks like a number)", found, secret=True)
    if not found:
        fail(node, "the token must not be empty")
    return Secret(found)


def visitor_tokens(node: Node, env: Mapping[str, str]) -> tuple[Secret, ...]:
    """`visitor_token`: one token or a list of them (duplicates dropped), at most 32."""
    from muxtunnel.visitauth import MAX_VISITOR_TOKENS

    if isinstance(node, Scalar) and isinstance(node.value, tuple | list):  # the command line
        nodes: list[Node] = [Scalar(node.file, 0, node.path, None, item) for item in node.value]
    else:
        nodes = node.items if isinstance(node, List) else [node]
    found = tuple(dict.fromkeys(token(item, env) for item in nodes))
    if not found:
        fail(node, "give at least one visitor token")
    if len(found) > MAX_VISITOR_TOKENS:
        fail(node, f"at most {MAX_VISITOR_TOKENS} visitor tokens per service")
    return found


def token_file(node: Node, env: Mapping[str, str]) -> Secret:
    """The token in the file `node` names: its one line, without surrounding white space.

    A token on the command line can be read by every user of the machine in /proc/PID/cmdline
    for as long as the process runs; a file (mode 0600) cannot. It is read at every (re)load.
    """
    file = path(node, env)
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        fail(node, f"cannot read the token file {file}: {exc.strerror or exc}")
    if len(data) > MAX_TOKEN_FILE_BYTES:
        fail(node, f"{file} is larger than {MAX_TOKEN_FILE_BYTES} bytes: not a token file")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        fail(node, f"the token file {file} is not UTF-8 text")
    if not text:
        fail(node, f"the token file {file} is empty")
    if "\n" in text or "\r" in text:
        fail(node, f"the token file {file} holds more than one line")
    return Secret(text)


def secret(mapping: Map, env: Mapping[str, str]) -> Secret | None:
    """The token of a mapping: its `token` or its `token_file` (not both), or None."""
    given, file = present(mapping, "token"), present(mapping, "token_file")
    if given is not None and file is not None:
        fail(file, "give either 'token' or 'token_file', not both")
    if given is not None:
        return token(given, env)
    return token_file(file, env) if file is not None else None


def _token_nodes(node: Node) -> list[tuple[str, Node]]:
    found: list[tuple[str, Node]] = []
    if isinstance(node, Map):
        for key, item in node.items.items():
            if key in (*TOKEN_KEYS, "visitor_token"):
                found += [(key, item)] if present(node, key) is not None else []
            else:
                found += _token_nodes(item)
    elif isinstance(node, List):
        for item in node.items:
            found += _token_nodes(item)
    return found


def refuse_weak_tokens(section: Map, env: Mapping[str, str]) -> None:
    """Refuse every token of `section` shorter than `MIN_TOKEN_CHARS` unless it allows them.

    The tags of one captured handshake let anyone test guesses offline at HMAC-SHA256 speed.
    """
    allow = present(section, "allow_weak_token")
    if allow is not None and boolean(allow, env):
        return
    for key, node in _token_nodes(section):
        if key == "visitor_token":
            found = min(visitor_tokens(node, env), key=lambda t: len(t.value))
        else:
            found = token(node, env) if key == "token" else token_file(node, env)
        if len(found.value) < MIN_TOKEN_CHARS:
            fail(
                node,
                f"the token is too short ({len(found.value)} characters, at least "
                f"{MIN_TOKEN_CHARS} wanted): {TOKEN_HOWTO}; or accept a weak one knowingly "
                "with --allow-weak-token (allow_weak_token: true)",
            )


def integer(node: Node, env: Mapping[str, str], low: int, high: int | None = None) -> int:
    """An integer in `low..high` (no upper bound if `high` is None)."""
    found = value(node, env, "an integer")
    if isinstance(found, bool) or not isinstance(found, int):
        wrong(node, "an integer", found)
    if found < low or (high is not None and found > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        fail(node, f"must be {bound}, got {found}")
    return found


def number(node: Node, env: Mapping[str, str], low: float, *, above: bool = False) -> float:
    """A finite number, at least `low` (greater than `low` if `above`)."""
    found = value(node, env, "a number")
    if isinstance(found, bool) or not isinstance(found, int | float):
        wrong(node, "a number", found)
    result = float(found)
    if not math.isfinite(result) or result < low or (above and result == low):
        fail(node, f"must be {'greater than' if above else 'at least'} {low:g}, got {found}")
    return result


def positive(node: Node, env: Mapping[str, str]) -> float:
    """A number greater than 0 (durations, rates)."""
    return number(node, env, 0.0, above=True)


def non_negative(node: Node, env: Mapping[str, str]) -> float:
    """A number of at least 0."""
    return number(node, env, 0.0)


def count(node: Node, env: Mapping[str, str]) -> int:
    """An integer of at least 1."""
    return integer(node, env, 1)


def boolean(node: Node, env: Mapping[str, str]) -> bool:
    """true or false."""
    found = value(node, env, "true or false")
    if not isinstance(found, bool):
        wrong(node, "true or false", found)
    return found


def size(node: Node, env: Mapping[str, str]) -> int:
    """A size in bytes: an integer, or a string like '64KiB'."""
    found = value(node, env, "a size in bytes")
    if isinstance(found, str) and (match := _SIZE.fullmatch(found)):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if isinstance(found, bool) or not isinstance(found, int):
        wrong(node, "a size in bytes (e.g. 65536 or '64KiB')", found)
    return found


def parsed(node: Node, parse: Callable[[str], T], text: str) -> T:
    """`parse(text)`, its `ValueError` (a `SpecError` too) reported against `node`."""
    try:
        return parse(text)
    except ValueError as exc:
        fail(node, str(exc))


def path(node: Node, env: Mapping[str, str]) -> str:
    """A file path; relative paths in a file are relative to that file's folder."""
    found = os.path.expanduser(string(node, env))
    if not found:
        fail(node, "the path must not be empty")
    if node.line and not os.path.isabs(found):
        found = os.path.join(os.path.dirname(os.path.abspath(node.file)), found)
    return found


def state_dir(section: Map, env: Mapping[str, str], why: str, otherwise: str = "") -> str:
    """`state_dir:` (or `--state-dir`), else $XDG_STATE_HOME/muxtunnel or
    ~/.local/state/muxtunnel: where the process keeps what must outlive it. The variables come
    from `env` (what `${VAR}` reads), else from the process's own environment."""
    if node := present(section, "state_dir"):
        return os.path.abspath(path(node, env))
    found = default_state_dir(env) or default_state_dir(os.environ)
    if found is None:
        fail(
            section,
            f"no state directory for {why} (neither $XDG_STATE_HOME nor $HOME is set): set "
            f"state_dir (--state-dir){otherwise}",
        )
    return found


def mapping(node: Node | None, parent: Node, key: str) -> Map:
    """A section that may be left out (or empty): absent means an empty mapping."""
    if node is None or absent(node):
        return Map(parent.file, parent.line, f"{parent.path}.{key}" if parent.path else key)
    if not isinstance(node, Map):
        fail(node, f"expected a mapping, got {kind(node)}")
    return node


def entry(node: Node) -> Map:
    """A value (a list item, a section) that must be a mapping."""
    if not isinstance(node, Map):
        fail(node, f"expected a mapping, got {kind(node)}")
    return node


def items(node: Node | None) -> list[Node]:
    """The items of a list that may be left out."""
    if node is None or absent(node):
        return []
    if not isinstance(node, List):
        fail(node, f"expected a list, got {kind(node)}")
    return node.items


def fields(section: Map, table: Mapping[str, Reader], env: Mapping[str, str]) -> dict[str, Any]:
    """The keys of `table` that `section` sets, each read by its reader."""
    return {key: read(node, env) for key, read in table.items() if (node := present(section, key))}


def overridden(node: Node, cls: type[T]) -> T | None:
    """The model value itself, when the command line gave one (e.g. a `ServerTls`)."""
    if isinstance(node, Scalar) and isinstance(node.value, cls):
        return node.value
    return None


# --- compound values both sections share ---


def mux(node: Node, env: Mapping[str, str]) -> MuxConfig:
    """`mux:` settings, checked by `MuxConfig` itself."""
    if done := overridden(node, MuxConfig):
        return done
    section = entry(node)
    check_keys(section, list(_MUX_FIELDS))
    changes: dict[str, object] = {}
    for key, item in section.items.items():
        default = _MUX_FIELDS[key]
        if isinstance(default, bool):
            changes[key] = boolean(item, env)
        elif key.endswith("_bytes"):
            changes[key] = size(item, env)
        elif isinstance(default, int):
            changes[key] = count(item, env)
        else:
            changes[key] = positive(item, env)
    try:
        return MuxConfig().replace(**changes)
    except ValueError as exc:
        fail(section, str(exc))


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (or ::ffff:127.x.y.z) or the name `localhost`: only this machine reaches it.

    Addresses are parsed, never matched as text: `127.example.net` is a name anybody may own.
    Of names only `localhost` itself counts (any case, as RFC 6761 reserves it and every resolver
    we know answers it from /etc/hosts); `foo.localhost` and every other name do not, since what
    they resolve to is up to a resolver, not to this check.
    """
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def endpoint(node: Node, env: Mapping[str, str]) -> Endpoint | None:
    """`HOST:PORT` (or a port: loopback), or `{bind, token}` / `{bind, token_file}`; false: off."""
    if done := overridden(node, Endpoint):
        return done
    bind_node: Node = node
    token_section: Map | None = None
    if not isinstance(node, Scalar):
        section = entry(node)
        check_keys(section, ("bind", *TOKEN_KEYS))
        found = present(section, "bind")
        if found is None:
            fail(section, "missing required key 'bind'")
        bind_node, token_section = found, section
    text = value(bind_node, env, "HOST:PORT")
    if text is False:
        return None
    if isinstance(text, bool) or not isinstance(text, str | int):
        wrong(bind_node, "HOST:PORT", text)
    host, port = parsed(
        bind_node, lambda t: parse_host_port(t, default_host="127.0.0.1"), str(text)
    )
    bearer = secret(token_section, env) if token_section else None
    if bearer is None and not is_loopback(host):
        fail(
            node,
            f"{host} is not a loopback address: give a bearer token (token: or token_file:) "
            "so that nobody else can read it",
        )
    return Endpoint(host, port, bearer)


def unique_name(
    names: dict[str, Node], name: str, node: Node, *, what: str = "service name"
) -> None:
    """Refuse a service name (or another `what`) given twice in one list."""
    if name in names:
        first = names[name]
        fail(node, f"duplicate {what} {name!r} (first at {first.file}:{first.line})")
    names[name] = node


_Service = TypeVar("_Service", ServicePolicy, ServiceSpec, VisitSpec)


def override_list(node: Scalar, cls: type[_Service]) -> tuple[_Service, ...]:
    """Services given on the command line: they replace the file's list."""
    given = node.value
    if not isinstance(given, Sequence) or not all(isinstance(i, cls) for i in given):
        raise TypeError(f"services override must be a sequence of {cls.__name__}")
    names: dict[str, Node] = {}
    for item in given:
        unique_name(names, item.name, node)
    return tuple(given)
