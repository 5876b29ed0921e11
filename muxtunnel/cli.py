"""Command line: parse the arguments of `listen`, `up`, `visit`, `status` and `cert`, then call
`app`.

What is here turns flags into config overrides (flags win over the config file); running the
process (logging, signals, reload, exit codes) is `muxtunnel.app`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Literal

from muxtunnel import app, tools
from muxtunnel.argv import hide_secrets
from muxtunnel.config import (
    ENV_ADMIN_TOKEN,
    ENV_VISITOR_TOKEN,
    MIN_TOKEN_CHARS,
    ConfigError,
    load_client_config,
    load_server_config,
    load_token_file,
    load_visitor_config,
)
from muxtunnel.config._paths import parse_path
from muxtunnel.flags import TLS_FLAGS, build_parser, secret_values, secrets_on_command_line
from muxtunnel.model import (
    MAX_WEIGHT,
    ClientConfig,
    GroupSpec,
    Secret,
    ServerConfig,
    ServiceSpec,
    VisitSpec,
)
from muxtunnel.path_config import PathSpec
from muxtunnel.specs import (
    DEFAULT_LOCAL_HOST,
    SERVICE_TYPES,
    SpecError,
    parse_host_port,
    parse_service_spec,
    validate_service_name,
)

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run `muxtunnel` with `argv` (default: the process's arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_tls", False):
        given = [name for name in TLS_FLAGS if getattr(args, name, None)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            parser.error(f"--no-tls contradicts {flag}: give one or the other")
    exposed = secrets_on_command_line(args)
    if argv is None and exposed:  # the process's own command line: mask it where we can
        hide_secrets(secret_values(args, exposed))
    if args.command == "status":
        try:
            token = _admin_token(args)
        except ConfigError as exc:
            print(f"muxtunnel: {exc}", file=sys.stderr, flush=True)
            return app.EXIT_USAGE
        return tools.status(args.admin, token, as_json=args.json)
    if args.command == "cert":
        return tools.cert(args.out, args.name, days=args.days, client=args.client, force=args.force)
    options = app.Options(
        log_format=args.log_format,
        log_level=args.log_level,
        watch_path=None if args.no_watch else args.config,
        console=args.command == "up" and not args.no_console,
        secrets_on_command_line=exposed,
    )
    if args.command == "listen":
        return app.listen(lambda: _load_server(args), options)
    if args.command == "visit":
        return app.visit(lambda: _load_visitor(args), options)
    return app.up(lambda: _load_client(args), options)


def _admin_token(args: argparse.Namespace) -> str | None:
    """`muxtunnel status`'s bearer token: the flag, the file, or the environment."""
    if args.admin_token_file:
        return load_token_file(args.admin_token_file).value
    return args.admin_token or os.environ.get(ENV_ADMIN_TOKEN)


def _endpoint_overrides(args: argparse.Namespace) -> dict[str, object]:
    bearer: dict[str, object] = {"token": args.admin_token or os.environ.get(ENV_ADMIN_TOKEN)}
    if args.admin_token_file:
        bearer = {"token_file": args.admin_token_file}
    overrides: dict[str, object] = {}
    if args.metrics:
        overrides["metrics"] = {"bind": args.metrics, **bearer}
    if args.admin:
        overrides["admin"] = {"bind": args.admin, **bearer}
    if getattr(args, "dashboard", None):
        overrides["dashboard"] = {"bind": args.dashboard, **bearer}
    if getattr(args, "inspect", None):
        overrides["inspect"] = {"bind": args.inspect, **bearer}
    if getattr(args, "no_inspect", False):
        overrides["inspect"] = False
    return overrides


def _token_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "token": args.token,
        "token_file": args.token_file,
        "allow_weak_token": args.allow_weak_token,
    }


def _load_server(args: argparse.Namespace) -> ServerConfig:
    overrides: dict[str, object] = {
        "bind": args.bind,
        **_token_overrides(args),
        "allow_ports": args.allow_ports,
        "public_host": args.public_host,
        **_endpoint_overrides(args),
    }
    tls = {"cert": args.tls_cert, "key": args.tls_key, "client_ca": args.tls_client_ca}
    if any(tls.values()):
        overrides["tls"] = tls
    if args.no_tls:
        overrides["tls"] = False
    overrides["state_dir"] = args.state_dir
    if args.http_bind or args.domain:
        overrides["http"] = {"bind": args.http_bind, "domain": args.domain}
    if args.https_bind:
        overrides["https"] = {"bind": args.https_bind}
    cluster = {
        "url": args.cluster,
        "node_id": args.node_id,
        "advertise": args.advertise,
        "secret_file": args.cluster_secret_file,
    }
    if any(value is not None for value in cluster.values()):
        overrides["cluster"] = cluster
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_server_config(args.config, given)


def _group(args: argparse.Namespace) -> GroupSpec | None:
    """`--group` and the flags that go with it; read again on every reload (the token file)."""
    given = [f"--{name}" for name in ("group-token", "group-token-file", "weight")
             if getattr(args, name.replace("-", "_")) is not None]  # fmt: skip
    if args.group is None:
        if given:
            raise SpecError(f"{given[0]} needs --group")
        return None
    validate_service_name(args.group)
    if args.weight is not None and not 0 <= args.weight <= MAX_WEIGHT:
        raise SpecError(f"--weight must be between 0 and {MAX_WEIGHT}, got {args.weight}")
    token = args.group_token
    if args.group_token_file is not None:
        if token is not None:
            raise SpecError("give --group-token or --group-token-file, not both")
        token = load_token_file(args.group_token_file).value
    if token is not None and not token:
        raise SpecError("the group token must not be empty")
    secret = Secret(token) if token else None
    return GroupSpec(args.group, secret, 1 if args.weight is None else args.weight)


#: What each service flag takes, shown with its mistakes.
SPEC_SYNTAX = {
    "tcp": "[NAME=][LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]",
    "udp": "[NAME=][LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]",
    "http": "[NAME=][LOCAL_HOST:]LOCAL_PORT",
    "https": "[NAME=][LOCAL_HOST:]LOCAL_PORT",
}


def _service_specs(args: argparse.Namespace) -> list[ServiceSpec]:
    """The services of `--tcp/--udp/--http/--https`; a mistake names its flag and the syntax."""
    specs: list[ServiceSpec] = []
    given: dict[str, str] = {}  # name -> the flag that gave it first
    for type_ in SERVICE_TYPES:
        for text in getattr(args, type_):
            flag = f"--{type_} {text}"
            try:
                spec = parse_service_spec(text, type_)
            except SpecError as exc:
                raise SpecError(f"{flag}: {exc} (syntax: --{type_} {SPEC_SYNTAX[type_]})") from None
            if spec.name in given:
                local = text.partition("=")[2] or text
                raise SpecError(
                    f"{flag}: service name {spec.name!r} is taken by {given[spec.name]}; "
                    f"give each service its own name (--{type_} NAME={local})"
                )
            given[spec.name] = flag
            specs.append(spec)
    return specs


def _client_overrides(args: argparse.Namespace) -> dict[str, object]:
    specs = _service_specs(args)
    if args.private:
        if args.http or args.https:
            raise SpecError("--private is for --tcp and --udp services (web services are public)")
        specs = _private(specs, args)
    elif args.visitor_token or args.visitor_token_file:
        raise SpecError("--visitor-token is for --private services")
    group = _group(args)
    if group is not None:
        if args.private:
            raise SpecError("--private and --group: a private service is no group member")
        if not specs:
            raise SpecError("--group applies to the services of --tcp/--udp/--http/--https")
        specs = [_joined(spec, group) for spec in specs]
    servers: list[str] = args.server or []
    overrides: dict[str, object] = {**_token_overrides(args)}
    if servers:  # the command line's servers replace the file's, one or several
        overrides.update(server=servers[0], servers=tuple(servers))
    if paths := getattr(args, "path", None):  # they replace the file's too
        overrides["paths"] = tuple(_path(text) for text in paths)
    if (switch_after := getattr(args, "switch_after", None)) is not None:
        overrides["switch_after_s"] = switch_after
    overrides.update(_endpoint_overrides(args))
    if specs:
        overrides["services"] = specs
    overrides.update(_tls_overrides(args))
    return {k: v for k, v in overrides.items() if v is not None}


def _path(text: str) -> PathSpec:
    try:
        return parse_path(text)
    except SpecError as exc:
        raise SpecError(f"--path {text}: {exc}") from None


def _private(specs: list[ServiceSpec], args: argparse.Namespace) -> list[ServiceSpec]:
    """`--private`: the services, with the visitor tokens of the flags (else the variable's);
    files are read again at every reload."""
    texts: list[str] = list(args.visitor_token or [])
    texts += [load_token_file(path).value for path in args.visitor_token_file or []]
    if not texts and os.environ.get(ENV_VISITOR_TOKEN):
        texts = [os.environ[ENV_VISITOR_TOKEN]]
    if not texts:
        raise SpecError(f"--private needs a visitor token: --visitor-token or ${ENV_VISITOR_TOKEN}")
    if not specs:
        raise SpecError("--private applies to the --tcp and --udp services: give one")
    short = min(len(text) for text in texts)
    if short < MIN_TOKEN_CHARS and not args.allow_weak_token:
        raise SpecError(
            f"a visitor token is too short ({short} characters, at least {MIN_TOKEN_CHARS} "
            "wanted): make one with `openssl rand -base64 32`, or --allow-weak-token"
        )
    tokens = tuple(dict.fromkeys(Secret(text) for text in texts))
    for spec in specs:
        if spec.remote_port:
            raise SpecError(f"--private: {spec.name} has no public port (no :REMOTE_PORT)")
    return [dataclasses.replace(spec, private=True, visitor_tokens=tokens) for spec in specs]


def _tls_overrides(args: argparse.Namespace) -> dict[str, object]:
    """`up`'s and `visit`'s TLS flags: on the config's `tls` (and `state_dir`)."""
    overrides: dict[str, object] = {"state_dir": args.state_dir}
    tls = {
        "ca": args.tls_ca,
        "fingerprint": args.server_fingerprint,
        "insecure": True if args.insecure else None,
        "cert": args.tls_cert,
        "key": args.tls_key,
        "server_name": args.tls_server_name,
    }
    if args.tls or any(value is not None for value in tls.values()):
        overrides["tls"] = {"enabled": True, **tls}
    if args.no_tls:
        overrides["tls"] = False
    return overrides


def _compress_level(args: argparse.Namespace) -> int | None:
    if args.compress is not None and not 1 <= args.compress <= 22:
        raise SpecError(f"--compress: the zstd level must be 1..22, got {args.compress}")
    return args.compress  # type: ignore[no-any-return]


def _joined(spec: ServiceSpec, group: GroupSpec) -> ServiceSpec:
    return dataclasses.replace(spec, group=group)


def _load_client(args: argparse.Namespace) -> ClientConfig:
    config = load_client_config(args.config, _client_overrides(args))
    level = _compress_level(args)
    if level is None:
        return config
    services = tuple(
        dataclasses.replace(spec, compression="zstd", compression_level=level)
        if spec.type != "udp"
        else spec
        for spec in config.services
    )
    return dataclasses.replace(config, services=services)


def _load_visitor(args: argparse.Namespace) -> ClientConfig:
    overrides: dict[str, object] = {"server": args.server, **_token_overrides(args)}
    overrides.update(_endpoint_overrides(args))
    overrides.update(_tls_overrides(args))
    level = _compress_level(args)
    if args.name is not None:
        validate_service_name(args.name)
        host, port = DEFAULT_LOCAL_HOST, 0
        if args.bind:
            host, port = parse_host_port(
                args.bind, default_host=DEFAULT_LOCAL_HOST, allow_zero=True
            )
        kind: Literal["tcp", "udp"] = "udp" if args.udp else "tcp"
        overrides["services"] = [VisitSpec(args.name, kind, host, port)]
    elif args.bind or args.udp:
        raise SpecError("--bind and --udp describe NAME: give the service's name")
    config = load_visitor_config(args.config, {k: v for k, v in overrides.items() if v is not None})
    if level is None:
        return config
    visits = tuple(
        dataclasses.replace(spec, compression="zstd", compression_level=level)
        if spec.type == "tcp"
        else spec
        for spec in config.visits
    )
    return dataclasses.replace(config, visits=visits)


if __name__ == "__main__":
    sys.exit(main())
