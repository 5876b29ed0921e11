"""The composition root: what `muxtunnel listen`, `up` and `visit` run (`status` and `cert`,
which run no tunnel, are `muxtunnel.tools`).

This is the one place that wires the process together: logging, the event loop (uvloop when
installed), the server or client, its metrics and admin endpoints (fed by its `status`), the
live console, the config watcher (changes go down through `apply_config`), SIGINT/SIGTERM
(a graceful stop, then cancellation), and the exit codes. Everything below is built and
connected here; none of it knows about the others it does not import. What a process does
not use it does not import (the other side, the endpoints, the console): idle memory stays low.

Exit codes: 0 after SIGINT/SIGTERM (graceful), 2 for usage and config errors, 1 for fatal
runtime errors (a port in use, a wrong token). Each failure is one readable line on stderr,
and a structured log line unless a person reads the logs on a terminal (it would repeat it).
"""

from __future__ import annotations

import gc
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import structlog

from muxtunnel.config import ConfigError
from muxtunnel.heap import tune_heap
from muxtunnel.log import LogFormat, configure_logging, logs_on_terminal
from muxtunnel.model import ClientConfig, ServerConfig
from muxtunnel.reload import ConfigWatcher
from muxtunnel.specs import SpecError
from muxtunnel.tls import TlsError
from muxtunnel.transport import TransportError

if TYPE_CHECKING:  # each role imports its side only, and the endpoints only when configured
    from muxtunnel.client import Client, Clients, ServiceState, Visitor, VisitState
    from muxtunnel.server import Server

__all__ = [
    "EXIT_OK",
    "EXIT_RUNTIME",
    "EXIT_USAGE",
    "STOP_TIMEOUT_S",
    "Options",
    "listen",
    "serve",
    "up",
    "visit",
]

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2
#: The cyclic GC's thresholds once a server or client is built. A full collection scans every
#: tracked object (about 130 per live visitor, each side); with CPython's defaults (700, 10, 10)
#: a burst of a thousand new visitors sets off several, each stopping the event loop for 50 to
#: 170 ms on a loaded 2-core machine: what a neighbour's round trips then wait (p99 100-230 ms
#: in tests/attacks/test_isolation_accept.py). Young collections every 10 000 allocations and a
#: full one after 100 middle ones kept the worst round trip under 60 ms in the same burst, for
#: about 1 MiB more RSS after 4 500 visitors had come and gone (garbage cycles die young).
GC_THRESHOLDS = (10_000, 20, 100)
#: After SIGINT/SIGTERM, how long the graceful stop (GoAway, drain, close) may take before what
#: is left is cancelled: above either side's drain timeout as usually configured (10 s, 5 s).
STOP_TIMEOUT_S = 60.0

log = structlog.get_logger("muxtunnel")
C = TypeVar("C", ServerConfig, ClientConfig)


@dataclass(frozen=True, slots=True)
class Options:
    """How to run `listen` or `up`, beyond the config: what the command line said."""

    log_format: LogFormat = "auto"
    log_level: str = "info"
    #: The config file to reload when it changes (None: none, or not watched); SIGHUP always
    #: reloads.
    watch_path: str | None = None
    #: `up`: the live panel, if stdout is a terminal and the log is not JSON.
    console: bool = True
    #: Secret flags given a value on the command line (`--token`, ...): warned about once.
    secrets_on_command_line: tuple[str, ...] = ()


def _settle_gc() -> None:
    """Start-up is over: what it allocated lives as long as the process, so the GC need never
    scan it again (`gc.freeze`), and collections come less often (`GC_THRESHOLDS`)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _fail(code: int, message: str, **context: Any) -> int:
    """Report a fatal error once (see the module docstring)."""
    if not logs_on_terminal():
        log.error("fatal", error=message, **context)
    print(f"muxtunnel: {message}", file=sys.stderr, flush=True)
    return code


def _run(entry: Callable[..., Awaitable[int]], *args: object) -> int:
    backend_options = {}
    try:
        import uvloop  # noqa: F401  (optional, measurably faster event loop)

        backend_options["use_uvloop"] = True
    except ImportError:
        pass
    try:
        return anyio.run(entry, *args, backend_options=backend_options)
    except KeyboardInterrupt:
        return EXIT_OK


def _start(entry: Callable[..., Awaitable[int]], *args: object, options: Options) -> int:
    """Configure logging, then run `entry` on the event loop; config errors exit 2."""
    configure_logging(options.log_format, options.log_level)
    tune_heap()
    if options.secrets_on_command_line:
        flags = options.secrets_on_command_line
        log.warning(
            "secret on the command line",
            flags=list(flags),
            hint="any local user can read the command line (ps, /proc/PID/cmdline); use "
            f"{' / '.join(flag + '-file FILE' for flag in flags)} or the environment instead",
        )
    try:
        return _run(entry, *args)
    except (ConfigError, SpecError) as exc:
        return _fail(EXIT_USAGE, str(exc), kind="config")
    except TlsError as exc:
        return _fail(EXIT_USAGE, str(exc), kind="tls")


# --- listen and up ---


def listen(load: Callable[[], ServerConfig], options: Options) -> int:
    """`muxtunnel listen`: run a server with the config `load` returns (also on each reload)."""
    return _start(_listen, load, options, options=options)


def up(load: Callable[[], ClientConfig], options: Options) -> int:
    """`muxtunnel up`: run a client with the config `load` returns (also on each reload)."""
    return _start(_up, load, options, options=options)


def visit(load: Callable[[], ClientConfig], options: Options) -> int:
    """`muxtunnel visit`: reach private services with the config `load` returns."""
    return _start(_visit, load, options, options=options)


async def serve(
    target: Server | Client | Clients | Visitor,
    *,
    task_status: anyio.abc.TaskStatus[dict[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run `target` with its metrics endpoint and admin API (when configured) until cancelled.

    Reports the endpoints' bound ports ({"metrics": ..., "admin": ..., "dashboard": ...,
    "inspect": ...}) once they listen and a server's control port is bound too. Returns when
    `target.run` does.
    """
    config = target.config
    async with anyio.create_task_group() as tg:

        async def run(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
            await target.run(task_status=task_status)  # a server's: once its port is bound
            tg.cancel_scope.cancel()  # the endpoints end with it

        ports: dict[str, int] = {}
        if config.metrics is not None or config.admin is not None:
            from muxtunnel.web.admin import run_endpoints

            ports = await tg.start(
                partial(run_endpoints, refusals=target.refusals),
                config.metrics,
                config.admin,
                target.status,
            )
        from muxtunnel.web.pages import start_pages  # loads a page's stack only if one is on

        capture = partial(setattr, target, "captures")  # a client's http requests, once on
        ports.update(await start_pages(tg, config, target.status, capture))
        await tg.start(run)
        task_status.started(ports)


async def _listen(load: Callable[[], ServerConfig], options: Options) -> int:
    from muxtunnel.server import ClusterError, Server, join_cluster

    try:
        server = join_cluster(Server(load()))
    except ClusterError as exc:
        return _fail(EXIT_USAGE, str(exc), kind="cluster")
    if server.tls is None:
        log.warning(
            "tls is off",
            hint="service names, registrations and every visitor byte cross the network "
            "readable by anyone on the path; leave --no-tls out to get TLS",
        )
    _settle_gc()
    if not server.tokens.has_any_token:
        return _fail(
            EXIT_USAGE,
            "no token configured: set --token, $MUXTUNNEL_TOKEN or "
            "server.token (refusing to run an open server)",
            kind="config",
        )
    try:
        await _until_signal(
            lambda: _with_reload(lambda: serve(server), options, load, server.apply_config),
            server.shutdown,
        )
    except TransportError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="bind")
    except ClusterError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="cluster")
    return EXIT_OK


def _print_line(line: str) -> None:
    print(line, flush=True)


class Announcer:
    """`NAME TYPE PUBLIC -> LOCAL` per service, what scripts wait for: again only if it changed
    (not after a reconnect); to stdout, or above the live panel while it shows (`write`). With
    several servers, a service has a line per server (its public address on each)."""

    def __init__(self) -> None:
        self.shown: dict[tuple[str, str | None], str] = {}
        self.write: Callable[[str], None] = _print_line

    def __call__(self, state: ServiceState) -> None:
        spec = state.spec
        line = f"{spec.name} {spec.type} {state.public} -> {spec.local}"
        if self.shown.get((spec.name, state.public)) != line:
            self.shown[(spec.name, state.public)] = line
            self.write(line)


async def _up(load: Callable[[], ClientConfig], options: Options) -> int:
    from muxtunnel.client import Client, Clients, FatalError

    config = load()
    missing = config.services_without_token()
    if missing:
        return _fail(
            EXIT_USAGE,
            f"no token for service(s) {', '.join(missing)}: set --token, "
            "$MUXTUNNEL_TOKEN or client.token",
            kind="config",
        )
    announce = Announcer()
    try:
        client: Client | Clients = (
            Clients(config, announce) if config.servers else Client(config, announce)
        )
    except FatalError as exc:
        return _fail(EXIT_USAGE, str(exc), kind="config")
    _warn_plaintext(config)
    _settle_gc()
    use_console = options.console and sys.stdout.isatty() and options.log_format != "json"

    async def run() -> None:
        if not use_console:
            await serve(client)
            return
        from muxtunnel.console import LiveConsole, show  # rich, only on a terminal

        terminal = LiveConsole()
        async with anyio.create_task_group() as tg:
            await tg.start(show, client.status, terminal)
            announce.write = terminal.print_line  # above the panel, never past it
            try:
                await serve(client)
            finally:
                announce.write = _print_line
                tg.cancel_scope.cancel()

    return await _client_side(run, options, load, client.apply_config, client.stop)


def _warn_plaintext(config: ClientConfig) -> None:
    if config.tls is None:
        log.warning(
            "tls is off",
            hint="service names, registrations and every visitor byte cross the network "
            "readable by anyone on the path; leave --no-tls out (on both sides) to get TLS",
        )
    elif config.tls.insecure:
        log.warning(
            "tls does not verify the server",
            hint="--insecure: anyone on the path can pose as the server; pin it with "
            "--server-fingerprint, give --tls-ca, or leave all out to trust it on first use",
        )


async def _client_side(
    run: Callable[[], Awaitable[None]],
    options: Options,
    load: Callable[[], ClientConfig],
    apply: Callable[[ClientConfig], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> int:
    """Run `up` or `visit` until a signal (reloading on the way); its exit code."""
    from muxtunnel.client import FatalError

    try:
        await _until_signal(lambda: _with_reload(run, options, load, apply), stop)
    except FatalError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="fatal")
    except TransportError as exc:
        return _fail(EXIT_RUNTIME, str(exc), kind="bind")
    return EXIT_OK


def _announce_visit(state: VisitState, server: str) -> None:
    """One line on stdout per private service served locally: what scripts wait for."""
    spec = state.spec
    print(f"{spec.name} {spec.type} {state.bound} -> {spec.name}@{server}", flush=True)


async def _visit(load: Callable[[], ClientConfig], options: Options) -> int:
    from muxtunnel.client import Visitor

    config = load()
    missing = ", ".join(config.services_without_token())
    if not config.visits or missing:
        why = f"no visitor token for {missing}: set --token, --token-file, "
        why += "$MUXTUNNEL_VISITOR_TOKEN or visitor.token"
        if not config.visits:
            why = "no private service to visit: give NAME or visitor.services"
        return _fail(EXIT_USAGE, why, kind="config")
    visitor = Visitor(config, _announce_visit)
    _warn_plaintext(config)
    _settle_gc()
    return await _client_side(
        lambda: serve(visitor), options, load, visitor.apply_config, visitor.stop
    )


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
                    with anyio.move_on_after(STOP_TIMEOUT_S):
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
    run: Callable[[], Awaitable[None]],
    options: Options,
    load: Callable[[], C],
    apply: Callable[[C], Awaitable[None]],
) -> None:
    """Run `run` with a config watcher beside it (SIGHUP, and the file if it is watched)."""
    watcher = ConfigWatcher(options.watch_path, load, apply)
    async with anyio.create_task_group() as tg:
        tg.start_soon(watcher.run)
        try:
            await run()
        finally:
            tg.cancel_scope.cancel()
