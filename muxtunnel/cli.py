"""Command line: parse the arguments of `listen`, `up`, `status` and `cert`, then call `app`.

What is here turns flags into config overrides (flags win over the config file); running the
process (logging, signals, reload, exit codes) is `muxtunnel.app`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from muxtunnel import __version__, app
from muxtunnel.config import load_client_config, load_server_config
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, ClientConfig, ServerConfig
from muxtunnel.specs import SpecError, parse_service_spec
from muxtunnel.status import DEFAULT_ADMIN_ADDRESS

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `muxtunnel` argument parser."""
    parser = argparse.ArgumentParser(
        prog="muxtunnel",
        description="Reverse tunnel for TCP and UDP: every visitor rides one connection.",
    )
    parser.add_argument("--version", action="version", version=f"muxtunnel {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    common.add_argument("--token", help="shared token (default: $MUXTUNNEL_TOKEN or the config)")
    common.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    common.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (off by default)"
    )
    common.add_argument(
        "--admin", metavar="HOST:PORT", help="serve the admin API here (off by default)"
    )
    common.add_argument(
        "--admin-token",
        metavar="TOKEN",
        default=os.environ.get("MUXTUNNEL_ADMIN_TOKEN"),
        help="bearer token for the admin API and metrics (default: $MUXTUNNEL_ADMIN_TOKEN)",
    )
    common.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload when the config file changes (SIGHUP still reloads)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser("listen", parents=[common], help="run the public server")
    listen.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    listen.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    listen.add_argument(
        "--tls-client-ca", metavar="FILE", help="mutual TLS: require client certificates of this CA"
    )
    listen.add_argument(
        "--bind", metavar="HOST:PORT", help="control address (default 0.0.0.0:7835)"
    )
    listen.add_argument(
        "--allow-ports", metavar="RANGES", help="public ports clients may use, e.g. 1024-65535,8080"
    )
    listen.add_argument(
        "--public-host",
        metavar="HOST",
        help="address public ports bind on (default: the --bind host)",
    )
    listen.add_argument(
        "--http-bind", metavar="HOST:PORT", help="the shared HTTP port of --http services"
    )
    listen.add_argument(
        "--https-bind",
        metavar="HOST:PORT",
        help="the shared TLS port: --https services by SNI (and --http ones with https.cert)",
    )
    listen.add_argument(
        "--domain", metavar="DOMAIN", help="web services are reached at NAME.DOMAIN"
    )

    up = commands.add_parser("up", parents=[common], help="expose local services")
    up.add_argument("--server", metavar="HOST:PORT", help="server address (default port 7835)")
    up.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="SPEC",
        help="[NAME=][LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]; repeatable",
    )
    up.add_argument(
        "--udp", action="append", default=[], metavar="SPEC", help="like --tcp, for a UDP service"
    )
    up.add_argument(
        "--http",
        action="append",
        default=[],
        metavar="SPEC",
        help="[NAME=][LOCAL_HOST:]LOCAL_PORT: an HTTP service at NAME.DOMAIN; repeatable",
    )
    up.add_argument(
        "--https",
        action="append",
        default=[],
        metavar="SPEC",
        help="like --http, for a service that speaks TLS itself (routed by SNI); repeatable",
    )
    up.add_argument(
        "--no-console",
        action="store_true",
        help="plain log lines even on a terminal (no live panel)",
    )
    up.add_argument("--tls", action="store_true", help="connect with TLS (needs a way to verify)")
    up.add_argument(
        "--tls-ca", metavar="FILE", help="verify the server with this CA file, or 'system'"
    )
    up.add_argument(
        "--server-fingerprint",
        action="append",
        metavar="sha256:HEX",
        help="pin the server certificate's SHA-256 fingerprint; repeatable",
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="TLS without verifying the server's certificate (not recommended)",
    )
    up.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS")
    up.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    up.add_argument(
        "--tls-server-name", metavar="NAME", help="name to check in the certificate (with --tls-ca)"
    )
    up.add_argument(
        "--compress",
        nargs="?",
        const=DEFAULT_COMPRESSION_LEVEL,
        type=int,
        metavar="LEVEL",
        help=f"zstd-compress every TCP and web service (level 1-22, default "
        f"{DEFAULT_COMPRESSION_LEVEL})",
    )

    status = commands.add_parser("status", help="show what a running listen/up is doing")
    status.add_argument(
        "--admin",
        metavar="HOST:PORT",
        default=DEFAULT_ADMIN_ADDRESS,
        help="its admin API address",
    )
    status.add_argument(
        "--admin-token",
        metavar="TOKEN",
        default=os.environ.get("MUXTUNNEL_ADMIN_TOKEN"),
        help="bearer token (default: $MUXTUNNEL_ADMIN_TOKEN)",
    )
    status.add_argument("--json", action="store_true", help="print the JSON document as it is")

    cert = commands.add_parser("cert", help="make a self-signed certificate and key")
    cert.add_argument("--out", metavar="DIR", required=True, help="folder to write them to")
    cert.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="host name or IP the certificate is for; repeatable (default: this host's name, "
        "localhost, 127.0.0.1, ::1)",
    )
    cert.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    cert.add_argument(
        "--client", action="store_true", help="a client certificate (client.crt/.key)"
    )
    cert.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `muxtunnel` with `argv` (default: the process's arguments); returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return app.status(args.admin, args.admin_token, as_json=args.json)
    if args.command == "cert":
        return app.cert(args.out, args.name, days=args.days, client=args.client, force=args.force)
    options = app.Options(
        log_format=args.log_format,
        log_level=args.log_level,
        watch_path=None if args.no_watch else args.config,
        console=args.command == "up" and not args.no_console,
    )
    if args.command == "listen":
        return app.listen(lambda: _load_server(args), options)
    return app.up(lambda: _load_client(args), options)


def _endpoint_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides: dict[str, object] = {}
    if args.metrics:
        overrides["metrics"] = {"bind": args.metrics, "token": args.admin_token}
    if args.admin:
        overrides["admin"] = {"bind": args.admin, "token": args.admin_token}
    return overrides


def _load_server(args: argparse.Namespace) -> ServerConfig:
    overrides: dict[str, object] = {
        "bind": args.bind,
        "token": args.token,
        "allow_ports": args.allow_ports,
        "public_host": args.public_host,
        **_endpoint_overrides(args),
    }
    tls = {"cert": args.tls_cert, "key": args.tls_key, "client_ca": args.tls_client_ca}
    if any(tls.values()):
        overrides["tls"] = tls
    if args.http_bind or args.domain:
        overrides["http"] = {"bind": args.http_bind, "domain": args.domain}
    if args.https_bind:
        overrides["https"] = {"bind": args.https_bind}
    given = {k: v for k, v in overrides.items() if v is not None}
    return load_server_config(args.config, given)


def _client_overrides(args: argparse.Namespace) -> dict[str, object]:
    specs = [parse_service_spec(text, "tcp") for text in args.tcp]
    specs += [parse_service_spec(text, "udp") for text in args.udp]
    specs += [parse_service_spec(text, "http") for text in args.http]
    specs += [parse_service_spec(text, "https") for text in args.https]
    overrides: dict[str, object] = {"server": args.server, "token": args.token}
    overrides.update(_endpoint_overrides(args))
    if specs:
        overrides["services"] = specs
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
    return {k: v for k, v in overrides.items() if v is not None}


def _load_client(args: argparse.Namespace) -> ClientConfig:
    config = load_client_config(args.config, _client_overrides(args))
    if args.compress is None:
        return config
    if not 1 <= args.compress <= 22:
        raise SpecError(f"--compress: the zstd level must be 1..22, got {args.compress}")
    services = tuple(
        dataclasses.replace(spec, compression="zstd", compression_level=args.compress)
        if spec.type != "udp"
        else spec
        for spec in config.services
    )
    return dataclasses.replace(config, services=services)


if __name__ == "__main__":
    sys.exit(main())
