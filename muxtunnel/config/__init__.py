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

Modules: `_tree` (files, includes, merge, `${VAR}`), `_values` (typed readers), `_server` and
`_client` (the two sections).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, overload

from muxtunnel.config._client import CLIENT_KEYS, client
from muxtunnel.config._server import SERVER_KEYS, server
from muxtunnel.config._tree import ConfigError, Map, Node, Scalar, absent, child, read_tree
from muxtunnel.config._values import MIN_TOKEN_CHARS, TOKEN_KEYS, mapping, token_file
from muxtunnel.config._visitor import visitor
from muxtunnel.model import ClientConfig, Secret, ServerConfig

__all__ = [
    "CLIENT_KEYS",
    "ENV_ADMIN_TOKEN",
    "ENV_TOKEN",
    "ENV_VISITOR_TOKEN",
    "MIN_TOKEN_CHARS",
    "SERVER_KEYS",
    "ConfigError",
    "load_client_config",
    "load_config",
    "load_server_config",
    "load_token_file",
    "load_visitor_config",
]

Role = Literal["server", "client", "visitor"]
#: Where the token comes from when neither the command line nor the file sets one.
ENV_TOKEN = "MUXTUNNEL_TOKEN"
#: The admin API's and metrics' bearer token when no flag gives one (`--admin`, `status`).
ENV_ADMIN_TOKEN = "MUXTUNNEL_ADMIN_TOKEN"
#: `visit`'s: a visitor token is another secret than the client token.
ENV_VISITOR_TOKEN = "MUXTUNNEL_VISITOR_TOKEN"
PathArg = str | os.PathLike[str] | None


def _overlay(
    section: Map, role: Role, overrides: Mapping[str, object], env: Mapping[str, str]
) -> Map:
    allowed = SERVER_KEYS if role == "server" else CLIENT_KEYS
    env_token = ENV_VISITOR_TOKEN if role == "visitor" else ENV_TOKEN
    items = dict(section.items)
    for key, given in overrides.items():
        if key not in allowed:
            raise TypeError(f"unknown {role} config override {key!r}")
        if isinstance(given, Mapping):  # flags for some keys of a sub-section (tls, admin)
            items[key] = _overlay_mapping(items.get(key), section, key, given)
        elif given is not None:
            items[key] = Scalar("command line", 0, key, None, given)
            _drop_other_token(items, key)
    if absent(items.get("token")) and absent(items.get("token_file")) and env.get(env_token):
        items["token"] = Scalar("environment", 0, env_token, None, env[env_token])
    return Map(section.file, section.line, section.path, items)


def _drop_other_token(items: dict[str, Node], key: str) -> None:
    """A token flag replaces the file's token, whichever way each gives it."""
    if key in TOKEN_KEYS:
        for other in TOKEN_KEYS:
            if other != key:
                items.pop(other, None)


def _overlay_mapping(
    node: Node | None, section: Map, key: str, values: Mapping[str, object]
) -> Map:
    """Flags that set some keys of a sub-section: they go on top of the file's keys."""
    if isinstance(node, Map):
        base = dict(node.items)
    elif node is None or absent(node) or "bind" in values or key == "tls":
        base = {}  # flags for `tls` replace a `tls: true/false` of the file
    elif key == "cluster":  # `cluster: URL` in the file, --node-id on the command line
        base = {} if values.get("url") is not None else {"url": node}
    else:
        base = {"bind": node}  # `admin: HOST:PORT` in the file, a token from the command line
    for name, given in values.items():
        if given is not None:
            base[name] = Scalar("command line", 0, f"{key}.{name}", None, given)
            _drop_other_token(base, name)
    return Map(section.file, section.line, child(section.path, key), base)


@overload
def load_config(
    path: PathArg, role: Literal["server"], overrides: Mapping[str, object] | None = None, *,
    env: Mapping[str, str] | None = None,
) -> ServerConfig: ...  # fmt: skip
@overload
def load_config(
    path: PathArg, role: Literal["client", "visitor"],
    overrides: Mapping[str, object] | None = None, *, env: Mapping[str, str] | None = None,
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
        tree = Map("command line", 0, "")
    else:
        tree = read_tree(os.fspath(path), env)
        if role not in tree.items:
            raise ConfigError(f"{os.fspath(path)}: no '{role}:' section")
    section = _overlay(mapping(tree.items.get(role), tree, role), role, overrides or {}, env)
    if role == "server":
        return server(section, env)
    return visitor(section, env) if role == "visitor" else client(section, env)


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


def load_visitor_config(
    path: PathArg,
    overrides: Mapping[str, object] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> ClientConfig:
    """`muxtunnel visit`'s config: `visitor:` of the file at `path`, with `overrides` on top."""
    return load_config(path, "visitor", overrides, env=env)


def load_token_file(path: str) -> Secret:
    """The token in the file a flag names; `ConfigError` if it cannot be used."""
    return token_file(Scalar("command line", 0, "", None, path), os.environ)
