"""The TLS port: route by SNI without terminating, or terminate and proxy HTTP.

Per connection: read the ClientHello (at most `sni.MAX_CLIENT_HELLO_BYTES`, within
`client_hello_timeout_s`), then
1. an SNI name with a passthrough route (`engine.tls_routes`): open the service, write its
   PROXY header if asked, replay the bytes read and pipe raw (the service holds the
   certificate, as frp's `https` proxy);
2. else, when the engine has a certificate (`tls_context`) and the name is one the HTTP
   routes serve (or no name was sent): terminate TLS here, replaying the same bytes into the
   handshake, and run the HTTP proxy with `X-Forwarded-Proto: https`;
3. else a fatal `unrecognized_name` alert (RFC 6066 §3) and close, logged once per name.
"""

from __future__ import annotations

import ssl

import anyio
import anyio.abc
import structlog

from muxtunnel.proxy import pipe
from muxtunnel.transport import abort
from muxtunnel.vhost._engine_view import EngineView
from muxtunnel.vhost._exchange import IO_ERRORS
from muxtunnel.vhost.http import HttpConnection
from muxtunnel.vhost.limits import log_doubling
from muxtunnel.vhost.names import InvalidHostError, normalise_host
from muxtunnel.vhost.routes import Route
from muxtunnel.vhost.sni import (
    ALERT_UNRECOGNIZED_NAME,
    MAX_CLIENT_HELLO_BYTES,
    ClientHello,
    ClientHelloError,
    parse_client_hello,
    tls_alert,
)
from muxtunnel.vhost.streams import CountingStream, PrefixedStream
from muxtunnel.vhost.tls_stream import TlsServerStream
from muxtunnel.vhost.upstream import UpstreamRefused, UpstreamUnavailable, Visitor, open_service

__all__ = ["read_client_hello", "serve_tls_connection", "server_tls_context"]

log = structlog.get_logger("muxtunnel.vhost")


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A context for terminating visitors' TLS: TLS 1.2+, ALPN `http/1.1` (we speak no h2)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def read_client_hello(
    stream: anyio.abc.ByteStream, timeout_s: float
) -> tuple[bytes, ClientHello]:
    """The bytes read and the ClientHello they hold; `ClientHelloError` for anything else."""
    buffer = b""
    try:
        with anyio.fail_after(timeout_s):
            while True:
                hello = parse_client_hello(buffer)
                if hello is not None:
                    return buffer, hello
                if len(buffer) >= MAX_CLIENT_HELLO_BYTES:
                    raise ClientHelloError("ClientHello too large")
                buffer += await stream.receive(MAX_CLIENT_HELLO_BYTES - len(buffer))
    except TimeoutError:
        raise ClientHelloError(f"no ClientHello within {timeout_s:g} s") from None
    except anyio.EndOfStream:
        raise ClientHelloError("connection closed before the ClientHello ended") from None
    except IO_ERRORS as exc:
        raise ClientHelloError(f"connection failed: {exc!r}") from None


async def serve_tls_connection(
    engine: EngineView, stream: anyio.abc.ByteStream, visitor: Visitor
) -> None:
    """Route one TLS visitor connection (see the module docstring); never raises for I/O."""
    counters = engine.counters
    try:
        hello_bytes, hello = await read_client_hello(stream, engine.config.client_hello_timeout_s)
    except ClientHelloError as exc:
        count = counters.refuse("bad_client_hello")
        log_doubling("tls connection refused: no readable ClientHello", count,
                     visitor=visitor.host, error=str(exc))  # fmt: skip
        await abort(stream)
        return
    name: str | None = None
    if hello.server_name is not None:
        try:
            name = normalise_host(hello.server_name)
        except InvalidHostError:
            name = None
    route = engine.tls_routes.lookup(name) if name is not None else None
    if route is not None:
        await _passthrough(engine, stream, visitor, hello_bytes, route)
        return
    context = engine.tls_context
    if context is not None and (name is None or engine.http_routes.has_host(name)):
        await _terminate(engine, PrefixedStream(stream, hello_bytes), visitor, context)
        return
    counters.refuse("unknown_sni")
    shown = hello.server_name if hello.server_name is not None else "<none>"
    if engine.unknown_names.first_time(shown[:256]):
        log.info("tls connection refused: no service for this server name", server_name=shown[:256])
    try:
        with anyio.move_on_after(engine.config.send_timeout_s):
            await stream.send(tls_alert(ALERT_UNRECOGNIZED_NAME))
    except IO_ERRORS:
        pass
    await abort(stream)


async def _passthrough(
    engine: EngineView,
    stream: anyio.abc.ByteStream,
    visitor: Visitor,
    hello_bytes: bytes,
    route: Route,
) -> None:
    target, counters = route.target, route.counters
    try:
        upstream = await open_service(engine.upstream, target, visitor, engine.config)
    except (TimeoutError, UpstreamUnavailable) as exc:
        refused = isinstance(exc, UpstreamRefused)
        count = counters.refuse("rate_limited" if refused else "upstream_unavailable")
        log_doubling("tls connection failed: service unavailable", count,
                     service=target.service, error=str(exc) or type(exc).__name__)  # fmt: skip
        await abort(stream)
        return
    counters.tunnels += 1
    await pipe(CountingStream(stream, hello_bytes, False, counters), upstream)


async def _terminate(
    engine: EngineView, stream: anyio.abc.ByteStream, visitor: Visitor, context: ssl.SSLContext
) -> None:
    try:
        with anyio.fail_after(engine.config.tls_handshake_timeout_s):
            tls = await TlsServerStream.accept(stream, context)
    except (TimeoutError, ssl.SSLError, anyio.EndOfStream, *IO_ERRORS) as exc:
        count = engine.counters.refuse("tls_handshake_failed")
        log_doubling("tls handshake with a visitor failed", count,
                     visitor=visitor.host, error=str(exc) or type(exc).__name__)  # fmt: skip
        await abort(stream)
        return
    await HttpConnection(engine, tls, visitor.with_scheme("https")).run()
