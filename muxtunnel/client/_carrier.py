"""The carrier of a session: the TCP connection to the server (over one of its paths, if
`client.paths` lists several), in TLS unless configured off, the server's certificate checked
(pinned, by a CA, or trusted on first use)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

from mux import MuxConfig, Session, SessionClosed
from muxtunnel.client._state import CONTROL_TIMEOUT_S, FatalError, RetryableError, ServerGone
from muxtunnel.model import ClientConfig
from muxtunnel.path_config import PathSpec
from muxtunnel.specs import format_host_port
from muxtunnel.tls import (
    FINGERPRINT_PREFIX,
    SERVER_SPEAKS_PLAINTEXT,
    SERVER_SPEAKS_TLS,
    TlsError,
    TlsVerifyError,
    connect_tls,
    speaks_tls,
)
from muxtunnel.transport import (
    CONNECT_TIMEOUT_S,
    ConnectionRefused,
    TransportError,
    abort,
    connect,
)
from muxtunnel.trust import KnownHosts, check_known_host

__all__ = ["Carrier", "closed_early", "open_carrier"]

log = structlog.get_logger("muxtunnel.client")
_STREAM_ENDED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class Carrier:
    """The connection a session runs on, and what TLS made of it."""

    stream: anyio.abc.ByteStream
    #: SHA-256 of the server's certificate, fed into the auth tags (b"": plaintext).
    binding: bytes = b""
    #: Trust on first use: remembers the server's fingerprint; to be called once the server
    #: has proven it holds the token (None: nothing to remember).
    remember: Callable[[], None] | None = None


async def open_carrier(
    config: ClientConfig,
    tls_context: ssl.SSLContext | None,
    path: PathSpec | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Carrier:
    """The carrier: TCP, in TLS unless configured off, the server's certificate checked.

    Over `path` if given: from its source address or interface, to its server address; the
    server is verified (and remembered) under its usual address all the same.
    """
    host, port = config.server_host, config.server_port
    to, bind, interface = (host, port), None, None
    if path is not None:
        to, bind, interface = path.server or to, path.bind, path.interface
    try:
        stream = await connect(
            *to, timeout_s=connect_timeout_s, local_host=bind, interface=interface
        )
    except TransportError as exc:
        kind = ServerGone if isinstance(exc, ConnectionRefused) else RetryableError
        raise kind(str(exc)) from None
    if config.tls is None:
        return Carrier(stream)
    try:
        with anyio.fail_after(CONTROL_TIMEOUT_S):
            tls, binding = await connect_tls(stream, config.tls, host, tls_context)
    except TlsVerifyError as exc:
        await abort(stream)
        raise FatalError(str(exc)) from None
    except (TlsError, TimeoutError) as exc:
        await abort(stream)
        if await _speaks_plaintext(host, port):  # a plaintext server: no retry fixes that
            message = f"TLS handshake with {host} failed: {SERVER_SPEAKS_PLAINTEXT}"
            raise FatalError(message) from None
        raise RetryableError(str(exc) or "TLS handshake timed out") from None
    settings = config.tls
    if settings.ca or settings.fingerprints or settings.insecure or not settings.known_hosts:
        return Carrier(tls, binding)
    known_hosts, address = settings.known_hosts, format_host_port(host, port)
    fingerprint = FINGERPRINT_PREFIX + binding.hex()
    try:
        if check_known_host(known_hosts, address, fingerprint):
            return Carrier(tls, binding)
    except TlsError as exc:  # a changed certificate, or a file that cannot be read
        await abort(tls)
        raise FatalError(str(exc)) from None

    def remember() -> None:
        try:
            KnownHosts(known_hosts).remember(address, fingerprint)
        except TlsError as exc:  # the session works; the next one asks again
            log.warning("cannot remember the server", server=address, error=str(exc))
            return
        log.info(
            "server trusted on first use",
            server=address,
            fingerprint=fingerprint,
            known_hosts=known_hosts,
        )

    return Carrier(tls, binding, remember)


#: How long the plaintext probe waits for the server's answer to a ping.
PROBE_TIMEOUT_S = 5.0


async def _speaks_plaintext(host: str, port: int) -> bool:
    """Does `host:port` answer a multiplexer ping in plaintext? What a TLS client asks once
    its handshake failed: what a plaintext server answers a TLS hello with varies (an alert
    about the version or the message, or just the end of the connection)."""
    try:
        with anyio.fail_after(PROBE_TIMEOUT_S):
            stream = await connect(host, port, timeout_s=PROBE_TIMEOUT_S)
            config = MuxConfig(enable_keepalive=False)
            async with Session(stream, client=True, config=config) as session:
                await session.ping()
    except (TransportError, TimeoutError, SessionClosed, *_STREAM_ENDED):
        return False
    return True


async def closed_early(config: ClientConfig, exc: BaseException) -> FatalError | RetryableError:
    """What to raise when the server closed the carrier before the session was up."""
    host, port = config.server_host, config.server_port
    if config.tls is None and await speaks_tls(host, port, CONTROL_TIMEOUT_S):
        return FatalError(SERVER_SPEAKS_TLS)
    # With TLS 1.3 a refused client certificate shows only now, as a closed connection
    # (the server checks it after our side of the handshake has finished).
    hint = ""
    if config.tls is not None and config.tls.cert is None:
        hint = " (does it want a client certificate? see --tls-cert/--tls-key)"
    elif config.tls is not None:
        hint = (
            " (does it trust our client certificate? listen's --tls-client-ca must be "
            "the CA (or the certificate) that signed our --tls-cert)"
        )
    return RetryableError(f"the server closed the connection: {exc or 'EOF'}{hint}")
