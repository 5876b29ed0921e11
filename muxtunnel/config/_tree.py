"""Steps 1 and 3's base: a tree of YAML values that remember their file and line.

Each file is parsed with yaml's node API (`compose`) so every value keeps where it came from;
`include:` patterns are read first and the including file merged on top (see the package
docstring). Values are read from the tree only through `value()`, which substitutes `${VAR}`
then, so only the section being loaded needs its variables set. Every problem raises
`ConfigError` through `fail()`, with one line of the form `FILE:LINE: KEY.PATH: what is wrong`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, NoReturn

from muxtunnel.log import safe_text

if TYPE_CHECKING:
    # Imported where a file is read (`_parse_file`, `value` of a value from a file): a process
    # configured by its command line alone never loads yaml (1 MiB of its idle memory).
    import yaml

__all__ = [
    "ConfigError",
    "List",
    "Map",
    "Node",
    "Scalar",
    "absent",
    "check_keys",
    "child",
    "fail",
    "kind",
    "present",
    "read_tree",
    "string",
    "value",
    "wrong",
]

#: Includes nest at most this deep; real setups use one or two levels.
MAX_INCLUDE_DEPTH = 8
#: Values (scalars, lists, mappings) per file after aliases are expanded: stops alias bombs.
MAX_NODES_PER_FILE = 100_000

TOP_KEYS = ("server", "client", "visitor", "include")
#: Longest message of a ConfigError (a key path of deeply nested includes stays well within).
_MAX_MESSAGE_CHARS = 2000
_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_SUBSTITUTION = re.compile(r"\$\$\{|\$\{([^}]*)(\})?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(ValueError):
    """The configuration is invalid. The message is one line naming file, line and key path.

    One line whatever the file holds: unprintable characters (a line break in a key, which a
    key path quotes as it is) are escaped at construction, so a file cannot forge a log line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(safe_text(message, _MAX_MESSAGE_CHARS, 4 * _MAX_MESSAGE_CHARS))


@dataclass(slots=True)
class Node:
    """Where a value came from."""

    file: str  # as shown to the user; "command line" / "environment" for overrides
    line: int  # 1-based line of the key (or list item) that holds the value; 0 if none
    path: str  # key path within its file, e.g. "client.services[1].local"


@dataclass(slots=True)
class Scalar(Node):
    """A single value: from YAML (`yaml_node`) or from Python (`value`, an override)."""

    yaml_node: yaml.ScalarNode | None = None  # None: `value` came from Python (an override)
    value: object = None

    @property
    def is_null(self) -> bool:
        """`key:` with nothing after it."""
        return self.yaml_node is not None and self.yaml_node.tag == _NULL


@dataclass(slots=True)
class Map(Node):
    """A mapping with string keys."""

    items: dict[str, Node] = dataclasses.field(default_factory=dict)


@dataclass(slots=True)
class List(Node):
    """A sequence."""

    items: list[Node] = dataclasses.field(default_factory=list)


def fail(node: Node, message: str) -> NoReturn:
    """Raise `ConfigError` for `node`: `FILE:LINE: KEY.PATH: message`."""
    where = f"{node.file}:{node.line}" if node.line else node.file
    raise ConfigError(f"{where}: {node.path}: {message}" if node.path else f"{where}: {message}")


def child(path: str, key: str) -> str:
    """The key path of `key` under `path`."""
    return f"{path}.{key}" if path else key


def absent(node: Node | None) -> bool:
    """Not given at all, or given as null (which never erases what an earlier file set)."""
    return node is None or (isinstance(node, Scalar) and node.is_null)


def present(mapping: Map, key: str) -> Node | None:
    """The value under `key`, or None if it is absent."""
    node = mapping.items.get(key)
    return None if absent(node) else node


def kind(node: Node) -> str:
    """What a node holds, for messages."""
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, List):
        return "a list"
    assert isinstance(node, Scalar)
    if node.yaml_node is None:
        return f"a {type(node.value).__name__}"
    return "null" if node.is_null else repr(node.yaml_node.value)


@cache
def _resolver() -> yaml.resolver.Resolver:
    import yaml

    return yaml.resolver.Resolver()


def _unknown_key(mapping: Map, unknown: Iterable[str], allowed: Sequence[str]) -> NoReturn:
    import difflib  # for a message only

    key = min(unknown, key=lambda name: mapping.items[name].line)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
    fail(mapping.items[key], f"unknown key {key!r}; {hint}")


def check_keys(mapping: Map, allowed: Sequence[str]) -> None:
    """Refuse keys not in `allowed`, naming the first one (with a close match, if any)."""
    unknown = set(mapping.items) - set(allowed)
    if unknown:
        _unknown_key(mapping, unknown, allowed)


# --- reading files ---


class _Converter:
    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0

    def convert(self, node: yaml.Node, path: str, line: int) -> Node:
        import yaml

        self.count += 1
        if self.count > MAX_NODES_PER_FILE:
            raise ConfigError(f"{self.file}: more than {MAX_NODES_PER_FILE} values (alias loop?)")
        if isinstance(node, yaml.ScalarNode):
            return Scalar(self.file, line, path, node)
        if isinstance(node, yaml.SequenceNode):
            items = [
                self.convert(item, f"{path}[{i}]", item.start_mark.line + 1)
                for i, item in enumerate(node.value)
            ]
            return List(self.file, line, path, items)
        assert isinstance(node, yaml.MappingNode)
        mapping = Map(self.file, line, path)
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            where = Scalar(self.file, key_line, path)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                what = "merge keys (<<)" if key_node.tag.endswith(":merge") else "keys"
                fail(where, f"{what} must be plain strings")
            key = key_node.value
            if key in mapping.items:
                first = mapping.items[key].line
                fail(where, f"duplicate key {key!r} (first given on line {first})")
            mapping.items[key] = self.convert(value_node, child(path, key), key_line)
        return mapping


#: Constructs that end with a closing character (PyYAML's `context` names them): an unclosed
#: one is noticed only where the parser gives up, often lines later, at the end of the file.
_CLOSED_BY = {
    "while parsing a flow sequence": "the '[' opened here",
    "while parsing a flow mapping": "the '{' opened here",
    "while scanning a quoted scalar": "the quoted string that starts here",
}


def _yaml_message(file: str, exc: yaml.MarkedYAMLError) -> str:
    """One line for a YAML syntax error, at the place to fix: where an unclosed bracket or
    quote started rather than where the parser noticed it."""
    problem = exc.problem or exc.context or "malformed"
    start, mark = exc.context_mark, exc.problem_mark
    opened = _CLOSED_BY.get(exc.context or "")
    if opened and start is not None and mark is not None:
        noticed = f"line {mark.line + 1}, column {mark.column + 1}"
        return (
            f"{file}:{start.line + 1}: invalid YAML (column {start.column + 1}): {opened} is "
            f"not closed ({problem} at {noticed})"
        )
    mark = mark or start
    if mark is None:
        return f"{file}: invalid YAML: {problem}"
    return f"{file}:{mark.line + 1}: invalid YAML (column {mark.column + 1}): {problem}"


def _parse_file(file: str) -> Map:
    try:
        with open(file, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        tree = _Converter(file).convert(root, "", 1) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_message(file, exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested too deeply") from None
    if tree is None or (isinstance(tree, Scalar) and tree.is_null):
        return Map(file, 1, "")
    if not isinstance(tree, Map):
        fail(tree, "the file must hold a mapping with keys server:, client:, visitor:, include:")
    return tree


def _merge(base: Node | None, over: Node) -> Node:
    if base is None:
        return over
    if absent(over):
        return base
    if isinstance(base, Map) and isinstance(over, Map):
        items = dict(base.items)
        for key, item in over.items.items():
            items[key] = _merge(items.get(key), item)
        return Map(over.file, over.line, over.path, items)
    if isinstance(base, List) and isinstance(over, List):
        return List(over.file, over.line, over.path, base.items + over.items)
    return over


def _include_targets(pattern_node: Node, base_dir: str, env: Mapping[str, str]) -> list[str]:
    pattern = os.path.expanduser(string(pattern_node, env))
    full = os.path.join(base_dir, pattern)
    if glob.has_magic(pattern):
        return sorted(path for path in glob.glob(full) if os.path.isfile(path))
    if not os.path.isfile(full):
        fail(pattern_node, f"no such file: {full}")
    return [full]


def read_tree(file: str, env: Mapping[str, str], stack: tuple[str, ...] = ()) -> Map:
    """Read `file` and its includes (first, in order), merged into one tree."""
    tree = _parse_file(file)
    check_keys(tree, TOP_KEYS)
    include = tree.items.pop("include", None)
    merged: Node = Map(file, 1, "")
    if include is not None and not absent(include):
        patterns = include.items if isinstance(include, List) else [include]
        chain = (*stack, os.path.realpath(file))
        for pattern_node in patterns:
            for target in _include_targets(pattern_node, os.path.dirname(file), env):
                if os.path.realpath(target) in chain:
                    fail(pattern_node, f"include cycle: {target} is already being read")
                if len(chain) > MAX_INCLUDE_DEPTH:
                    fail(pattern_node, f"includes nest deeper than {MAX_INCLUDE_DEPTH} levels")
                merged = _merge(merged, read_tree(target, env, chain))
    result = _merge(merged, tree)
    assert isinstance(result, Map)
    return result


# --- values, after ${VAR} substitution ---


def _substitute(node: Scalar, text: str, env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        body = match.group(1)
        if match.group(2) is None:
            fail(node, "unclosed '${' (write '$${' for a literal '${')")
        name, has_default, default = body.partition(":-")
        if not _ENV_NAME.fullmatch(name) or "${" in default:
            fail(node, f"bad substitution '${{{body}}}': expected ${{VAR}} or ${{VAR:-default}}")
        found = env.get(name)
        if found is None or (has_default and not found):
            if has_default:
                return default
            fail(node, f"environment variable {name} is not set (${{{name}:-x}} defaults to x)")
        return found

    return _SUBSTITUTION.sub(replace, text)


def value(node: Node, env: Mapping[str, str], expected: str) -> object:
    """The Python value of a scalar, after `${VAR}` substitution."""
    if not isinstance(node, Scalar):
        fail(node, f"expected {expected}, got {kind(node)}")
    raw = node.yaml_node
    if raw is None:
        return node.value
    import yaml  # loaded already: the value came from a file

    if raw.tag == _STR and "$" in raw.value:
        text = _substitute(node, raw.value, env)
        tag = _STR
        if raw.style is None:  # plain: resolve again, so an unquoted ${PORT} can be a number
            tag = _resolver().resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
            tag = _STR if tag == _NULL else tag  # but `${X:-}` is "", not "absent"
        raw = yaml.ScalarNode(tag, text, raw.start_mark, raw.end_mark, raw.style)
    try:
        return yaml.constructor.SafeConstructor().construct_object(raw)
    except (yaml.YAMLError, ValueError, TypeError):  # e.g. `!!int abc`, or an unknown `!tag`
        fail(node, f"cannot read this value as {raw.tag.rsplit(':', 1)[-1]}")


def _describe(found: object) -> str:
    if found is None:
        return "null"
    if isinstance(found, bool):
        return "true" if found else "false"
    if isinstance(found, str | int | float):
        return repr(found)
    return f"a {type(found).__name__}"


def wrong(node: Node, expected: str, found: object, *, secret: bool = False) -> NoReturn:
    """Raise `ConfigError`: `node` holds `found`, not what was `expected`."""
    shown = "<secret>" if secret else _describe(found)
    hint = ""
    if isinstance(found, str) and "integer" in expected and found.strip().isdigit():
        hint = " (a quoted string; remove the quotes)"
    fail(node, f"expected {expected}, got {shown}{hint}")


def string(node: Node, env: Mapping[str, str]) -> str:
    """A string value."""
    found = value(node, env, "a string")
    if not isinstance(found, str):
        wrong(node, "a string", found)
    return found
