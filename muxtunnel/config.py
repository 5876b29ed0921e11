"""Load the YAML config file, merge command-line overrides, and resolve it into `model` types.

File layout: top-level keys `server:`, `client:` and `include:` (see config.example.yaml for
every key). Loading goes in three steps:

1. Read: each file is parsed with yaml's node API (`compose`) so every value keeps its file and
   line; `include:` patterns (globs, relative to the including file) are read first, in order,
   and the including file is merged on top of them: mappings merge key by key, lists
   concatenate, and for scalars the later file wins. A null value (`key:` with nothing after
   it) counts as absent and never erases what an earlier file set.
2. Overlay: for the section of the role being loaded, command-line overrides replace file
   values, and `MUXTUNNEL_TOKEN` supplies the token when neither sets one.
3. Resolve: each value is checked against the schema and turned into `ServerConfig` /
   `ClientConfig`. `${VAR}` and `${VAR:-default}` are substituted in string values at this step
   (`$${` writes a literal `${`), so only the section being loaded needs its variables set.
   An unquoted `${PORT}` that expands to `8080` is a number, as if `8080` had been written
   (but one that expands to nothing is an empty string, not an absent value).

Every problem raises `ConfigError` with one line of the form `FILE:LINE: KEY.PATH: what is
wrong`. Token values never appear in messages. Whether a token is required at all is decided by
the caller (the CLI refuses to run without one); here an empty token is always an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, TypeVar, overload

import yaml

from mux._config import MuxConfig
from muxtunnel.model import (
    DEFAULT_CONTROL_PORT,
    ClientConfig,
    ClientTls,
    Endpoint,
    PortRanges,
    Secret,
    ServerConfig,
    ServerTls,
    ServicePolicy,
    ServiceSpec,
)
from muxtunnel.specs import (
    DEFAULT_LOCAL_HOST,
    SERVICE_TYPES,
    SpecError,
    parse_host_port,
    parse_port_ranges,
    validate_host,
    validate_service_name,
)
from muxtunnel.tls import parse_fingerprint

__all__ = [
    "ENV_TOKEN",
    "ConfigError",
    "load_client_config",
    "load_config",
    "load_server_config",
]

Role = Literal["server", "client"]
T = TypeVar("T")
ENV_TOKEN = "MUXTUNNEL_TOKEN"
#: Includes nest at most this deep; real setups use one or two levels.
MAX_INCLUDE_DEPTH = 8
#: Values (scalars, lists, mappings) per file after aliases are expanded: stops alias bombs.
MAX_NODES_PER_FILE = 100_000

_TOP_KEYS = ("server", "client", "include")
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_RESOLVER = yaml.resolver.Resolver()
_SUBSTITUTION = re.compile(r"\$\$\{|\$\{([^}]*)(\})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


class ConfigError(ValueError):
    """The configuration is invalid. The message is one line naming file, line and key path."""


# --- step 1: a tree of values that remember where they came from ---


@dataclass(slots=True)
class _Node:
    file: str  # as shown to the user; "command line" / "environment" for overrides
    line: int  # 1-based line of the key (or list item) that holds the value; 0 if none
    path: str  # key path within its file, e.g. "client.services[1].local"


@dataclass(slots=True)
class _Scalar(_Node):
    yaml_node: yaml.ScalarNode | None = None  # None: `value` came from Python (an override)
    value: object = None

    @property
    def is_null(self) -> bool:
        return self.yaml_node is not None and self.yaml_node.tag == _NULL


@dataclass(slots=True)
class _Map(_Node):
    items: dict[str, _Node] = dataclasses.field(default_factory=dict)


@dataclass(slots=True)
class _List(_Node):
    items: list[_Node] = dataclasses.field(default_factory=list)


def _fail(node: _Node, message: str) -> NoReturn:
    where = f"{node.file}:{node.line}" if node.line else node.file
    raise ConfigError(f"{where}: {node.path}: {message}" if node.path else f"{where}: {message}")


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Converter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0

    def convert(self, node: yaml.Node, path: str, line: int) -> _Node:
        self.count += 1
        if self.count > MAX_NODES_PER_FILE:
            raise ConfigError(f"{self.file}: more than {MAX_NODES_PER_FILE} values (alias loop?)")
        if isinstance(node, yaml.ScalarNode):
            return _Scalar(self.file, line, path, node)
        if isinstance(node, yaml.SequenceNode):
            items = [
                self.convert(item, f"{path}[{i}]", item.start_mark.line + 1)
                for i, item in enumerate(node.value)
            ]
            return _List(self.file, line, path, items)
        assert isinstance(node, yaml.MappingNode)
        mapping = _Map(self.file, line, path)
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            where = _Scalar(self.file, key_line, path)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                what = "merge keys (<<)" if key_node.tag.endswith(":merge") else "keys"
                _fail(where, f"{what} must be plain strings")
            key = key_node.value
            if key in mapping.items:
                first = mapping.items[key].line
                _fail(where, f"duplicate key {key!r} (first given on line {first})")
            mapping.items[key] = self.convert(value_node, _child(path, key), key_line)
        return mapping


def _parse_file(file: str) -> _Map:
    try:
        with open(file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        tree = _Converter(file).convert(root, "", 1) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{file}:{mark.line + 1}" if mark is not None else file
        column = f" (column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "malformed"
        raise ConfigError(f"{where}: invalid YAML{column}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested too deeply") from None
    if tree is None or (isinstance(tree, _Scalar) and tree.is_null):
        return _Map(file, 1, "")
    if not isinstance(tree, _Map):
        _fail(tree, "the file must hold a mapping with keys server:, client:, include:")
    return tree


def _merge(base: _Node | None, over: _Node) -> _Node:
    if base is None:
        return over
    if _absent(over):
        return base
    if isinstance(base, _Map) and isinstance(over, _Map):
        items = dict(base.items)
        for key, value in over.items.items():
            items[key] = _merge(items.get(key), value)
        return _Map(over.file, over.line, over.path, items)
    if isinstance(base, _List) and isinstance(over, _List):
        return _List(over.file, over.line, over.path, base.items + over.items)
    return over


def _include_targets(pattern_node: _Node, base_dir: str, env: Mapping[str, str]) -> list[str]:
    pattern = os.path.expanduser(_string(pattern_node, env))
    full = os.path.join(base_dir, pattern)
    if glob.has_magic(pattern):
        return sorted(path for path in glob.glob(full) if os.path.isfile(path))
    if not os.path.isfile(full):
        _fail(pattern_node, f"no such file: {full}")
    return [full]


def _read_tree(file: str, env: Mapping[str, str], stack: tuple[str, ...] = ()) -> _Map:
    tree = _parse_file(file)
    unknown = set(tree.items) - set(_TOP_KEYS)
    if unknown:
        _unknown_key(tree, unknown, _TOP_KEYS)
    include = tree.items.pop("include", None)
    merged: _Node = _Map(file, 1, "")
    if include is not None and not _absent(include):
        patterns = include.items if isinstance(include, _List) else [include]
        chain = (*stack, os.path.realpath(file))
        for pattern_node in patterns:
            for target in _include_targets(pattern_node, os.path.dirname(file), env):
                if os.path.realpath(target) in chain:
                    _fail(pattern_node, f"include cycle: {target} is already being read")
                if len(chain) > MAX_INCLUDE_DEPTH:
                    _fail(pattern_node, f"includes nest deeper than {MAX_INCLUDE_DEPTH} levels")
                merged = _merge(merged, _read_tree(target, env, chain))
    result = _merge(merged, tree)
    assert isinstance(result, _Map)
    return result


# --- step 3: typed access to values ---


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def _substitute(node: _Scalar, text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        body = match.group(1)
        if match.group(2) is None:
            _fail(node, "unclosed '${' (write '$${' for a literal '${')")
        name, has_default, default = body.partition(":-")
        if not _ENV_NAME.fullmatch(name) or "${" in default:
            _fail(node, f"bad substitution '${{{body}}}': expected ${{VAR}} or ${{VAR:-default}}")
        value = env.get(name)
        if value is None or (has_default and not value):
            if has_default:
                return default
            _fail(node, f"environment variable {name} is not set (${{{name}:-x}} defaults to x)")
        return value

    return _SUBSTITUTION.sub(replace, text)


def _value(node: _Node, env: Mapping[str, str], expected: str) -> object:
    """The Python value of a scalar, after `${VAR}` substitution."""
    if not isinstance(node, _Scalar):
        _fail(node, f"expected {expected}, got {_kind(node)}")
    raw = node.yaml_node
    if raw is None:
        return node.value
    if raw.tag == _STR and "$" in raw.value:
        text = _substitute(node, raw.value, env)
        tag = _STR
        if raw.style is None:  # plain: resolve again, so an unquoted ${PORT} can be a number
            tag = _RESOLVER.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            tag = _STR if tag == _NULL else tag  # but `${X:-}` is "", not "absent"
        raw = yaml.ScalarNode(tag, text, raw.start_mark, raw.end_mark, raw.style)
    try:
        return yaml.constructor.SafeConstructor().construct_object(raw)
    except (yaml.YAMLError, ValueError, TypeError):  # e.g. `!!int abc`, or an unknown `!tag`
        _fail(node, f"cannot read this value as {raw.tag.rsplit(':', 1)[-1]}")


def _wrong(node: _Node, expected: str, value: object, *, secret: bool = False) -> NoReturn:
    shown = "<secret>" if secret else _describe(value)
    hint = ""
    if isinstance(value, str) and "integer" in expected and value.strip().isdigit():
        hint = " (a quoted string; remove the quotes)"
    _fail(node, f"expected {expected}, got {shown}{hint}")


def _string(node: _Node, env: Mapping[str, str]) -> str:
    value = _value(node, env, "a string")
    if not isinstance(value, str):
        _wrong(node, "a string", value)
    return value


def _token(node: _Node, env: Mapping[str, str]) -> Secret:
    value = _value(node, env, "a token string")
    if isinstance(value, Secret):
        value = value.value
    if not isinstance(value, str):
        _wrong(node, "a token string (quote it if it looks like a number)", value, secret=True)
    if not value:
        _fail(node, "the token must not be empty")
    return Secret(value)


def _int(node: _Node, env: Mapping[str, str], low: int, high: int | None = None) -> int:
    value = _value(node, env, "an integer")
    if isinstance(value, bool) or not isinstance(value, int):
        _wrong(node, "an integer", value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        _fail(node, f"must be {bound}, got {value}")
    return value


def _number(node: _Node, env: Mapping[str, str], low: float, *, above: bool = False) -> float:
    value = _value(node, env, "a number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        _wrong(node, "a number", value)
    number = float(value)
    if not math.isfinite(number) or number < low or (above and number == low):
        _fail(node, f"must be {'greater than' if above else 'at least'} {low:g}, got {value}")
    return number


def _bool(node: _Node, env: Mapping[str, str]) -> bool:
    value = _value(node, env, "true or false")
    if not isinstance(value, bool):
        _wrong(node, "true or false", value)
    return value


def _size(node: _Node, env: Mapping[str, str]) -> int:
    value = _value(node, env, "a size in bytes")
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        return int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if isinstance(value, bool) or not isinstance(value, int):
        _wrong(node, "a size in bytes (e.g. 65536 or '64KiB')", value)
    return value


def _parsed(node: _Node, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except SpecError as exc:
        _fail(node, str(exc))


def _absent(node: _Node | None) -> bool:
    return node is None or (isinstance(node, _Scalar) and node.is_null)


def _mapping(node: _Node | None, parent: _Node, key: str) -> _Map:
    """A section that may be left out (or empty): absent means an empty mapping."""
    if node is None or _absent(node):
        return _Map(parent.file, parent.line, _child(parent.path, key))
    if not isinstance(node, _Map):
        _fail(node, f"expected a mapping, got {_kind(node)}")
    return node


def _entry(node: _Node) -> _Map:
    """A list item that must be a mapping."""
    if not isinstance(node, _Map):
        _fail(node, f"expected a mapping, got {_kind(node)}")
    return node


def _list(node: _Node | None) -> list[_Node]:
    if node is None or _absent(node):
        return []
    if not isinstance(node, _List):
        _fail(node, f"expected a list, got {_kind(node)}")
    return node.items


def _kind(node: _Node) -> str:
    if isinstance(node, _Map):
        return "a mapping"
    if isinstance(node, _List):
        return "a list"
    assert isinstance(node, _Scalar)
    if node.yaml_node is None:
        return f"a {type(node.value).__name__}"
    return "null" if node.is_null else repr(node.yaml_node.value)


def _unknown_key(mapping: _Map, unknown: Iterable[str], allowed: Sequence[str]) -> NoReturn:
    key = min(unknown, key=lambda name: mapping.items[name].line)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
    _fail(mapping.items[key], f"unknown key {key!r}; {hint}")


def _check_keys(mapping: _Map, allowed: Sequence[str]) -> None:
    unknown = set(mapping.items) - set(allowed)
    if unknown:
        _unknown_key(mapping, unknown, allowed)


def _present(mapping: _Map, key: str) -> _Node | None:
    node = mapping.items.get(key)
    return None if _absent(node) else node


# --- sections ---

_MUX_FIELDS = {f.name: f.default for f in dataclasses.fields(MuxConfig)}
_PORTS = "a port list like '1024-65535,8080'"
_Reader = Callable[[_Node, Mapping[str, str]], object]


def _positive(node: _Node, env: Mapping[str, str]) -> float:
    return _number(node, env, 0.0, above=True)


def _non_negative(node: _Node, env: Mapping[str, str]) -> float:
    return _number(node, env, 0.0)


def _count(node: _Node, env: Mapping[str, str]) -> int:
    return _int(node, env, 1)


def _mux(node: _Node, env: Mapping[str, str]) -> MuxConfig:
    if isinstance(node, _Scalar) and isinstance(node.value, MuxConfig):
        return node.value
    mapping = _entry(node)
    _check_keys(mapping, list(_MUX_FIELDS))
    changes: dict[str, object] = {}
    for key, child in mapping.items.items():
        default = _MUX_FIELDS[key]
        if isinstance(default, bool):
            changes[key] = _bool(child, env)
        elif key.endswith("_bytes"):
            changes[key] = _size(child, env)
        elif isinstance(default, int):
            changes[key] = _count(child, env)
        else:
            changes[key] = _positive(child, env)
    try:
        return MuxConfig().replace(**changes)
    except ValueError as exc:
        _fail(mapping, str(exc))


def _allow_ports(node: _Node, env: Mapping[str, str]) -> PortRanges:
    if isinstance(node, _Scalar) and isinstance(node.value, PortRanges):
        return node.value
    texts = []
    for item in node.items if isinstance(node, _List) else [node]:
        value = _value(item, env, _PORTS)
        if isinstance(value, bool) or not isinstance(value, str | int):
            _wrong(item, _PORTS, value)
        texts.append(str(value))
    if not texts:
        _fail(node, "the list of allowed ports is empty")
    return _parsed(node, parse_port_ranges, ",".join(texts))


def _unique_name(names: dict[str, _Node], name: str, node: _Node) -> None:
    if name in names:
        first = names[name]
        _fail(node, f"duplicate service name {name!r} (first at {first.file}:{first.line})")
    names[name] = node


_Service = TypeVar("_Service", ServicePolicy, ServiceSpec)


def _override_list(node: _Scalar, kind: type[_Service]) -> tuple[_Service, ...]:
    """Services given on the command line: they replace the file's list."""
    items = node.value
    if not isinstance(items, Sequence) or not all(isinstance(i, kind) for i in items):
        raise TypeError(f"services override must be a sequence of {kind.__name__}")
    names: dict[str, _Node] = {}
    for item in items:
        _unique_name(names, item.name, node)
    return tuple(items)


def _server_services(node: _Node, env: Mapping[str, str]) -> tuple[ServicePolicy, ...]:
    if isinstance(node, _Scalar) and node.yaml_node is None:
        return _override_list(node, ServicePolicy)
    policies, names = [], dict[str, _Node]()
    for item in _list(node):
        entry = _entry(item)
        _check_keys(entry, _POLICY_KEYS)
        name_node = _present(entry, "name")
        if name_node is None:
            _fail(entry, "missing required key 'name'")
        name = _parsed(name_node, validate_service_name, _string(name_node, env))
        _unique_name(names, name, name_node)
        token_node = _present(entry, "token")
        limits: dict[str, Any] = {}
        if node := _present(entry, "bandwidth_bytes_per_s"):
            limits["bandwidth_bytes_per_s"] = _size(node, env)
            if limits["bandwidth_bytes_per_s"] < 1:
                _fail(node, "must be at least 1 byte per second")
        if node := _present(entry, "max_connections"):
            limits["max_connections"] = _count(node, env)
        if node := _present(entry, "compression"):
            limits["compression"] = _bool(node, env)
        token = _token(token_node, env) if token_node else None
        policies.append(ServicePolicy(name, token, **limits))
    return tuple(policies)


def _client_services(node: _Node, env: Mapping[str, str]) -> tuple[ServiceSpec, ...]:
    if isinstance(node, _Scalar) and node.yaml_node is None:
        return _override_list(node, ServiceSpec)
    specs, names = [], dict[str, _Node]()
    for item in _list(node):
        entry = _entry(item)
        _check_keys(entry, _SPEC_KEYS)
        local_node = _present(entry, "local")
        if local_node is None:
            _fail(entry, "missing required key 'local'")
        local = _value(local_node, env, "HOST:PORT or a port")
        if isinstance(local, bool) or not isinstance(local, str | int):
            _wrong(local_node, "HOST:PORT or a port", local)
        host, port = _parsed(
            local_node, lambda t: parse_host_port(t, default_host=DEFAULT_LOCAL_HOST), str(local)
        )
        kind = "tcp"
        if type_node := _present(entry, "type"):
            kind = _string(type_node, env)
            if kind not in SERVICE_TYPES:
                _fail(type_node, f"expected 'tcp' or 'udp', got {kind!r}")
        name_node = _present(entry, "name")
        name = f"{kind}-{port}"
        if name_node is not None:
            name = _parsed(name_node, validate_service_name, _string(name_node, env))
        _unique_name(names, name, name_node or entry)
        remote, token = _present(entry, "remote_port"), _present(entry, "token")
        compression, level = _compression(entry, env)
        if compression and kind == "udp":
            _fail(_present(entry, "compression") or entry, "compression is for tcp services only")
        specs.append(
            ServiceSpec(
                name=name,
                type="udp" if kind == "udp" else "tcp",
                local_host=host,
                local_port=port,
                remote_port=_int(remote, env, 0, 65535) if remote else 0,
                token=_token(token, env) if token else None,
                compression=compression,
                compression_level=level,
            )
        )
    return tuple(specs)


_POLICY_KEYS = ("name", "token", "bandwidth_bytes_per_s", "max_connections", "compression")
_SPEC_KEYS = (
    "name", "type", "local", "remote_port", "token", "compression", "compression_level",
)  # fmt: skip
_LEVELS = (1, 22)  # zstd's levels


def _compression(entry: _Map, env: Mapping[str, str]) -> tuple[str | None, int]:
    """`compression: zstd | none | true | false` and `compression_level: 1..22` (default 3)."""
    algorithm: str | None = None
    if node := _present(entry, "compression"):
        value = _value(node, env, "'zstd' or 'none'")
        if value is True or value == "zstd":
            algorithm = "zstd"
        elif value not in (False, "none"):
            _wrong(node, "'zstd' or 'none'", value)
    level = 3
    if node := _present(entry, "compression_level"):
        level = _int(node, env, *_LEVELS)
    return algorithm, level


def _path(node: _Node, env: Mapping[str, str]) -> str:
    """A file path; relative paths in a file are relative to that file's folder."""
    path = os.path.expanduser(_string(node, env))
    if not path:
        _fail(node, "the path must not be empty")
    if node.line and not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(node.file)), path)
    return path


def _overridden(node: _Node, kind: type[T]) -> T | None:
    if isinstance(node, _Scalar) and isinstance(node.value, kind):
        return node.value
    return None


def _server_tls(node: _Node, env: Mapping[str, str]) -> ServerTls | None:
    if done := _overridden(node, ServerTls):
        return done
    section = _entry(node)
    _check_keys(section, ("cert", "key", "client_ca"))
    cert, key = _present(section, "cert"), _present(section, "key")
    if cert is None or key is None:
        _fail(section, "TLS needs both 'cert' and 'key' (`muxtunnel cert` makes a pair)")
    client_ca = _present(section, "client_ca")
    return ServerTls(
        _path(cert, env), _path(key, env), _path(client_ca, env) if client_ca else None
    )


def _client_tls(node: _Node, env: Mapping[str, str]) -> ClientTls | None:
    if done := _overridden(node, ClientTls):
        return done
    if isinstance(node, _Scalar):  # `tls: false` (off) or `tls: true` (needs a way to verify)
        if not _bool(node, env):
            return None
        section = _Map(node.file, node.line, node.path)
    else:
        section = _entry(node)
        _check_keys(
            section, ("enabled", "ca", "fingerprint", "insecure", "cert", "key", "server_name")
        )
        if (enabled := _present(section, "enabled")) and not _bool(enabled, env):
            return None
    fields: dict[str, Any] = {}
    if ca := _present(section, "ca"):
        fields["ca"] = "system" if _string(ca, env) == "system" else _path(ca, env)
    if pins := _present(section, "fingerprint"):
        items = pins.items if isinstance(pins, _List) else [pins]
        if isinstance(pins, _Scalar) and isinstance(pins.value, tuple | list):  # flags
            items = [_Scalar(pins.file, 0, pins.path, None, text) for text in pins.value]
        fields["fingerprints"] = tuple(
            _parsed_value(item, parse_fingerprint, _string(item, env)) for item in items
        )
    if insecure := _present(section, "insecure"):
        fields["insecure"] = _bool(insecure, env)
    cert, key = _present(section, "cert"), _present(section, "key")
    if (cert is None) != (key is None):
        _fail(section, "a client certificate needs both 'cert' and 'key'")
    if cert is not None and key is not None:
        fields["cert"], fields["key"] = _path(cert, env), _path(key, env)
    if name := _present(section, "server_name"):
        fields["server_name"] = _parsed(name, validate_host, _string(name, env))
    settings = ClientTls(**fields)
    if not (settings.ca or settings.fingerprints or settings.insecure):
        _fail(
            section,
            "TLS needs a way to verify the server: a CA file (ca, or 'system' for the system's "
            "CAs), a pinned fingerprint (fingerprint: sha256:...), or, knowingly, insecure: true",
        )
    return settings


def _parsed_value(node: _Node, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except ValueError as exc:
        _fail(node, str(exc))


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: an address only this machine can reach."""
    return host in ("::1", "localhost") or host.startswith("127.")


def _endpoint(node: _Node, env: Mapping[str, str]) -> Endpoint | None:
    """`HOST:PORT` (or a port: loopback), or a mapping `{bind, token}`; false for off."""
    if done := _overridden(node, Endpoint):
        return done
    if isinstance(node, _Scalar):
        bind_node, token_node = node, None
    else:
        section = _entry(node)
        _check_keys(section, ("bind", "token"))
        found = _present(section, "bind")
        if found is None:
            _fail(section, "missing required key 'bind'")
        bind_node, token_node = found, _present(section, "token")
    text = _value(bind_node, env, "HOST:PORT")
    if text is False:
        return None
    if isinstance(text, bool) or not isinstance(text, str | int):
        _wrong(bind_node, "HOST:PORT", text)
    host, port = _parsed(
        bind_node, lambda t: parse_host_port(t, default_host="127.0.0.1"), str(text)
    )
    token = _token(token_node, env) if token_node else None
    if token is None and not is_loopback(host):
        _fail(
            node,
            f"{host} is not a loopback address: give a bearer token (token: ...) "
            "so that nobody else can read it",
        )
    return Endpoint(host, port, token)


# YAML key -> reader; each key is also the name of the model field it fills.
_SERVER_FIELDS: dict[str, _Reader] = {
    "token": _token,
    "allow_ports": _allow_ports,
    "services": _server_services,
    "auth_timeout_s": _positive,
    "drain_timeout_s": _non_negative,
    "max_visitors_per_service": _count,
    "udp_flow_idle_s": _positive,
    "udp_max_flows": _count,
    "auth_failures_burst": _count,
    "auth_failures_per_min": _positive,
    "max_preauth_connections": _count,
    "max_preauth_per_source": _count,
    "mux": _mux,
    "tls": _server_tls,
    "metrics": _endpoint,
    "admin": _endpoint,
    "compression_level_max": lambda node, env: _int(node, env, *_LEVELS),
}
_SERVER_KEYS = ("bind", "public_host", *_SERVER_FIELDS)
_CLIENT_FIELDS: dict[str, _Reader] = {
    "token": _token,
    "services": _client_services,
    "reconnect_min_s": _positive,
    "reconnect_max_s": _positive,
    "udp_flow_idle_s": _positive,
    "udp_max_flows": _count,
    "mux": _mux,
    "tls": _client_tls,
    "metrics": _endpoint,
    "admin": _endpoint,
}
_CLIENT_KEYS = ("server", *_CLIENT_FIELDS)


def _fields(section: _Map, table: Mapping[str, _Reader], env: Mapping[str, str]) -> dict[str, Any]:
    return {key: read(node, env) for key, read in table.items() if (node := _present(section, key))}


def _server(section: _Map, env: Mapping[str, str]) -> ServerConfig:
    _check_keys(section, _SERVER_KEYS)
    fields = _fields(section, _SERVER_FIELDS, env)
    host, port = ServerConfig().bind_host, DEFAULT_CONTROL_PORT
    if node := _present(section, "bind"):
        text = _string(node, env)
        host, port = _parsed(
            node, lambda t: parse_host_port(t, default_port=port, default_host=host), text
        )
    public_host = host
    if node := _present(section, "public_host"):
        public_host = _parsed(node, validate_host, _string(node, env).strip("[]"))
    return ServerConfig(bind_host=host, bind_port=port, public_host=public_host, **fields)


def _client(section: _Map, env: Mapping[str, str]) -> ClientConfig:
    _check_keys(section, _CLIENT_KEYS)
    fields = _fields(section, _CLIENT_FIELDS, env)
    host, port = ClientConfig().server_host, DEFAULT_CONTROL_PORT
    if node := _present(section, "server"):
        text = _string(node, env)
        host, port = _parsed(node, lambda t: parse_host_port(t, default_port=port), text)
    config = ClientConfig(server_host=host, server_port=port, **fields)
    if config.reconnect_max_s < config.reconnect_min_s:
        where = _present(section, "reconnect_max_s") or _present(section, "reconnect_min_s")
        assert where is not None
        _fail(where, "reconnect_max_s must not be less than reconnect_min_s")
    return config


# --- public API ---

PathArg = str | os.PathLike[str] | None


def _overlay(
    section: _Map, role: Role, overrides: Mapping[str, object], env: Mapping[str, str]
) -> _Map:
    allowed = _SERVER_KEYS if role == "server" else _CLIENT_KEYS
    items = dict(section.items)
    for key, value in overrides.items():
        if key not in allowed:
            raise TypeError(f"unknown {role} config override {key!r}")
        if isinstance(value, Mapping):  # flags for some keys of a sub-section (tls, admin)
            items[key] = _overlay_mapping(items.get(key), section, key, value)
        elif value is not None:
            items[key] = _Scalar("command line", 0, key, None, value)
    if _absent(items.get("token")) and env.get(ENV_TOKEN):
        items["token"] = _Scalar("environment", 0, ENV_TOKEN, None, env[ENV_TOKEN])
    return _Map(section.file, section.line, section.path, items)


def _overlay_mapping(
    node: _Node | None, section: _Map, key: str, values: Mapping[str, object]
) -> _Map:
    """Flags that set some keys of a sub-section: they go on top of the file's keys."""
    if isinstance(node, _Map):
        base = dict(node.items)
    elif node is None or _absent(node) or "bind" in values:
        base = {}
    else:
        base = {"bind": node}  # `admin: HOST:PORT` in the file, a token from the command line
    for name, value in values.items():
        if value is not None:
            base[name] = _Scalar("command line", 0, f"{key}.{name}", None, value)
    return _Map(section.file, section.line, _child(section.path, key), base)


@overload
def load_config(
    path: PathArg, role: Literal["server"], overrides: Mapping[str, object] | None = None, *,
    env: Mapping[str, str] | None = None,
) -> ServerConfig: ...  # fmt: skip
@overload
def load_config(
    path: PathArg, role: Literal["client"], overrides: Mapping[str, object] | None = None, *,
    env: Mapping[str, str] | None = None,
) -> ClientConfig: ...  # fmt: skip
def load_config(
    path: PathArg,
    role: Role,
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> ServerConfig | ClientConfig:
    """Read `path` (None: no file), overlay `overrides`, and resolve the `role` section.

    `overrides` keys are the section's YAML keys; values are what the command line parsed:
    strings for `bind`/`server`/`public_host`/`allow_ports` (or a `PortRanges`), `str` or
    `Secret` for `token`, numbers, a `MuxConfig` for `mux`, and for `services` a sequence of
    `ServiceSpec` (client) or `ServicePolicy` (server) that replaces the file's list. A value of
    None means "not given". `env` defaults to `os.environ`; it feeds `${VAR}` substitution and
    the `MUXTUNNEL_TOKEN` fallback. An unknown override key is a programming error (TypeError).
    """
    env = os.environ if env is None else env
    if path is None:
        tree = _Map("command line", 0, "")
    else:
        tree = _read_tree(os.fspath(path), env)
        if role not in tree.items:
            raise ConfigError(f"{os.fspath(path)}: no '{role}:' section")
    section = _overlay(_mapping(tree.items.get(role), tree, role), role, overrides or {}, env)
    return _server(section, env) if role == "server" else _client(section, env)


def load_server_config(
    path: PathArg,
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> ServerConfig:
    """The server's config: `server:` of the file at `path`, with `overrides` on top."""
    return load_config(path, "server", overrides, env=env)


def load_client_config(
    path: PathArg,
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """The client's config: `client:` of the file at `path`, with `overrides` on top."""
    return load_config(path, "client", overrides, env=env)
