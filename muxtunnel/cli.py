"""Command line: parse arguments, load config, run `listen`, `up`, `status` or `cert`.

No logic of its own: features live in their modules (tls, admin, reload, ...).

Exit codes: 0 after SIGINT/SIGTERM (graceful), 2 for usage and config errors, 1 for fatal
runtime errors (a port in use, a wrong token). Each failure is one readable line on stderr and
a structured log line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import structlog

from muxtunnel import __version__
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.log import configure_logging
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, ClientConfig, ServerConfig
from muxtunnel.specs import SpecError, parse_service_spec
from muxtunnel.tls import TlsError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

log = structlog.get_logger("muxtunnel")


def build_parser() -> argparse.ArgumentParser:
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
        help=f"zstd-compress every TCP service (level 1-22, default {DEFAULT_COMPRESSION_LEVEL})",
    )

    status = commands.add_parser("status", help="show what a running listen/up is doing")
    status.add_argument(
        "--admin", metavar="HOST:PORT", default="127.0.0.1:7836", help="its admin API address"
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
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return _status_main(args)
    if args.command == "cert":
        return _cert_main(args)
    configure_logging(args.log_format, args.log_level)
    try:
        if args.command == "listen":
            return _run(_listen_main, args)
        return _run(_up_main, args)
    except (ConfigError, SpecError) as exc:
        return _fail(EXIT_USAGE, str(exc), kind="config")
    except TlsError as exc:
        return _fail(EXIT_USAGE, str(exc), kind="tls")


def _fail(code: int, message: str, **context: Any) -> int:
    log.error("fatal", error=message, **context)
    print(f"muxtunnel: {message}", file=sys.stderr, flush=True)
    return code


def _run(entry: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    backend_options = {}
    try:
        import uvloop  # noqa: F401  (optional, measurably faster event loop)

        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    try:
        return anyio.run(entry, args, backend_options=backend_options)
    except KeyboardInterrupt:
        return EXIT_OK


async def _until_signal(
    run: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Run `run`; on SIGINT/SIGTERM call `stop` (graceful), then cancel what is left.

    An exception from `run` is raised as it is (not inside an exception group).
    """
    failures: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    with anyio.move_on_after(60):
                        await stop()
                    tg.cancel_scope.cancel()
                    return

        async def main_task() -> None:
            try:
                await run()
            except Exception as exc:
                while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                    exc = exc.exceptions[0]  # raised through a task group
                failures.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(main_task)
    if failures:
        raise failures[0]


async def _with_reload(
    run: Callable[[], Awaitable[None]], args: argparse.Namespace, load: Any, apply: Any
) -> None:
    """Run `run` with a config watcher beside it (SIGHUP, and the file unless --no-watch)."""
    from muxtunnel.reload import ConfigWatcher

    path = None if args.no_watch else args.config
    watcher = ConfigWatcher(path, load, apply)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        try:
            await run()
        finally:
            tg.cancel_scope.cancel()


def _endpoint_overrides(args: argparse.Namespace) -> dict[str, object]:
    overrides: dict[str, object] = {}
    if args.metrics:
        overrides["metrics"] = {"bind": args.metrics, "token": args.admin_token}
    if args.admin:
        overrides["admin"] = {"bind": args.admin, "token": args.admin_token}
    return overrides


def _server_overrides(args: argparse.Namespace) -> dict[str, object]:
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
    return {k: v for k, v in overrides.items() if v is not None}


async def _listen_main(args: argparse.Namespace) -> int:
    from muxtunnel.server import Server
    from muxtunnel.transport import TransportError

    def load() -> ServerConfig:
        return load_server_config(args.config, _server_overrides(args))

    config = load()
    server = Server(config)
    if not server.tokens.has_any_token:
        return _fail(
            EXIT_USAGE,
            "no token configured: set --token, $MUXTUNNEL_TOKEN or "
            "server.token (refusing to run an open server)",
            kind="config",
        )
    try:
        await _until_signal(
            lambda: _with_reload(server.run, args, load, server.reload), server.shutdown
        )
    except TransportError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="bind")
    return EXIT_OK


def _client_overrides(args: argparse.Namespace) -> dict[str, object]:
    specs = [parse_service_spec(text, "tcp") for text in args.tcp]
    specs += [parse_service_spec(text, "udp") for text in args.udp]
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
        if spec.type == "tcp"
        else spec
        for spec in config.services
    )
    return dataclasses.replace(config, services=services)


async def _up_main(args: argparse.Namespace) -> int:
    from muxtunnel.client import Client, FatalError, ServiceState
    from muxtunnel.transport import TransportError

    config = _load_client(args)
    missing = [spec.name for spec in config.services if not (spec.token or config.token)]
    if missing:
        return _fail(
            EXIT_USAGE,
            f"no token for service(s) {', '.join(missing)}: set --token, "
            "$MUXTUNNEL_TOKEN or client.token",
            kind="config",
        )

    def announce(state: ServiceState) -> None:
        spec = state.spec
        print(f"{spec.name} {spec.type} {state.public} -> {spec.local}", flush=True)

    try:
        client = Client(config, announce)
    except FatalError as exc:
        return _fail(EXIT_USAGE, str(exc), kind="config")
    use_console = sys.stdout.isatty() and not args.no_console and args.log_format != "json"

    async def run() -> None:
        if use_console:
            from muxtunnel.console import run_with_console

            await run_with_console(client)
        else:
            await client.run()

    try:
        await _until_signal(
            lambda: _with_reload(run, args, lambda: _load_client(args), client.reload),
            client.stop,
        )
    except FatalError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="fatal")
    except TransportError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="bind")
    return EXIT_OK


def _status_main(args: argparse.Namespace) -> int:
    import json

    from muxtunnel.admin import StatusError, fetch_status, print_status

    try:
        data = fetch_status(args.admin, args.admin_token)
    except StatusError as exc:
        print(f"muxtunnel: {exc}", file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        print_status(data)
    return EXIT_OK


def _cert_main(args: argparse.Namespace) -> int:
    import socket

    from muxtunnel.tls import format_fingerprint, generate_self_signed

    names = args.name or [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    base = "client" if args.client else "server"
    cert_path = os.path.join(args.out, f"{base}.crt")
    key_path = os.path.join(args.out, f"{base}.key")
    existing = [path for path in (cert_path, key_path) if os.path.exists(path)]
    if existing and not args.force:
        print(f"muxtunnel: {existing[0]} exists (--force overwrites)", file=sys.stderr)
        return EXIT_USAGE
    if args.days < 1:
        print("muxtunnel: --days must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    cert_pem, key_pem, der = generate_self_signed(names, days=args.days, client=args.client)
    try:
        os.makedirs(args.out, exist_ok=True)
        with open(cert_path, "wb") as handle:
            handle.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        os.chmod(key_path, 0o600)
    except OSError as exc:
        print(f"muxtunnel: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    fingerprint = format_fingerprint(der)
    print(f"wrote {cert_path} and {key_path} for {', '.join(names)}", file=sys.stderr)
    if args.client:
        print(f"on the server: --tls-client-ca {cert_path}", file=sys.stderr)
    else:
        print(f"on clients: --server-fingerprint {fingerprint}", file=sys.stderr)
    print(fingerprint, flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
