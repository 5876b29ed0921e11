"""Command line: parse arguments, load config, run `listen` or `up`. No logic of its own.

Exit codes: 0 after SIGINT/SIGTERM (graceful), 2 for usage and config errors, 1 for fatal
runtime errors (a port in use, a wrong token). Each failure is one readable line on stderr and
a structured log line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import structlog

from muxtunnel import __version__
from muxtunnel.config import ConfigError, load_client_config, load_server_config
from muxtunnel.log import configure_logging
from muxtunnel.specs import SpecError, parse_service_spec

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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser("listen", parents=[common], help="run the public server")
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    try:
        if args.command == "listen":
            return _run(_listen_main, args)
        return _run(_up_main, args)
    except (ConfigError, SpecError) as exc:
        return _fail(EXIT_USAGE, str(exc), kind="config")


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
                failures.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(main_task)
    if failures:
        raise failures[0]


async def _listen_main(args: argparse.Namespace) -> int:
    from muxtunnel.server import Server
    from muxtunnel.transport import TransportError

    overrides = {
        "bind": args.bind,
        "token": args.token,
        "allow_ports": args.allow_ports,
        "public_host": args.public_host,
    }
    config = load_server_config(args.config, {k: v for k, v in overrides.items() if v is not None})
    server = Server(config)
    if not server.tokens.has_any_token:
        return _fail(
            EXIT_USAGE,
            "no token configured: set --token, $MUXTUNNEL_TOKEN or "
            "server.token (refusing to run an open server)",
            kind="config",
        )
    try:
        await _until_signal(server.run, server.shutdown)
    except TransportError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="bind")
    return EXIT_OK


async def _up_main(args: argparse.Namespace) -> int:
    from muxtunnel.client import Client, FatalError, ServiceState

    specs = [parse_service_spec(text, "tcp") for text in args.tcp]
    specs += [parse_service_spec(text, "udp") for text in args.udp]
    overrides: dict[str, Any] = {"server": args.server, "token": args.token}
    if specs:
        overrides["services"] = specs
    config = load_client_config(args.config, {k: v for k, v in overrides.items() if v is not None})
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
    try:
        if use_console:
            from muxtunnel.console import run_with_console

            await _until_signal(lambda: run_with_console(client), client.stop)
        else:
            await _until_signal(client.run, client.stop)
    except FatalError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="fatal")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
