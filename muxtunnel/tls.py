"""TLS on the carrier: contexts, certificate pinning, channel binding, self-signed pairs.

The server presents a certificate; the client verifies it against a CA file (or the system's
trust store), against pinned SHA-256 fingerprints, or, only when the user said `insecure`, not at
all. Either side may ask the other for a certificate (mutual TLS).

Channel binding: both sides feed SHA-256(server certificate DER) into the auth tags (the
`channel_binding` argument of `muxtunnel.auth`): the server hashes the certificate it presents,
the client the one it received. A man in the middle who terminates TLS with a certificate of his
own and relays to the real server makes the two hashes differ, so authentication fails even for
a client that was told to accept any certificate.

Errors: `TlsConfigError` for files that cannot be used (exit 2 material), `TlsVerifyError` when
the peer's certificate is refused (no retry fixes it), `TlsError` for a failed handshake.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from mux import start_tls
from muxtunnel.certgen import generate_self_signed
from muxtunnel.model import ClientTls, ServerTls
from muxtunnel.transport import TransportError, abort, connect

__all__ = [
    "CLIENT_SPEAKS_PLAINTEXT",
    "CLIENT_SPEAKS_TLS",
    "FINGERPRINT_PREFIX",
    "SERVER_SPEAKS_PLAINTEXT",
    "SERVER_SPEAKS_TLS",
    "SHUTDOWN_TIMEOUT_S",
    "ServerTlsContext",
    "TlsConfigError",
    "TlsError",
    "TlsVerifyError",
    "client_context",
    "connect_tls",
    "format_fingerprint",
    "generate_self_signed",
    "parse_fingerprint",
    "speaks_tls",
]

FINGERPRINT_PREFIX = "sha256:"
_HEX_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
#: Alerts a server sends when it refuses our client certificate: retrying cannot help.
_CLIENT_CERT_REFUSED = ("CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UN")
#: After close_notify, how long a closing carrier waits for the peer's before closing its socket:
#: a live peer answers within one round trip; a dead one must not hold the socket long.
SHUTDOWN_TIMEOUT_S = 5.0
#: How a handshake fails: ssl's errors (OSErrors), or the carrier's; mapped to `TlsError` here.
_HANDSHAKE_FAILURES = (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError)


class TlsError(Exception):
    """A TLS handshake failed; the message is meant for the user."""


class TlsConfigError(TlsError):
    """A certificate, key or CA file cannot be used."""


class TlsVerifyError(TlsError):
    """The peer's certificate was refused (CA, hostname or pinned fingerprint)."""


#: What OpenSSL says when the other side's first bytes are not TLS at all.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE")
#: What each side says then: which flag makes the two agree.
CLIENT_SPEAKS_PLAINTEXT = (
    "the client does not speak TLS (`up --no-tls`?): leave --no-tls out there, or start "
    "listen with --no-tls as well"
)
SERVER_SPEAKS_PLAINTEXT = (
    "the server does not speak TLS (`listen --no-tls`?): give up --no-tls as well "
    "(tls: false), or start listen without --no-tls"
)
CLIENT_SPEAKS_TLS = (
    "the client speaks TLS (the default) and this server runs with --no-tls: give up --no-tls "
    "as well, or start listen without it"
)
SERVER_SPEAKS_TLS = (
    "the server speaks TLS (the default) and closed our plaintext connection: leave --no-tls "
    "(tls: false) out, or start listen with --no-tls as well"
)


def _not_tls(exc: BaseException) -> bool:
    return any(reason in _reason(exc) for reason in _NOT_TLS)


def parse_fingerprint(text: str) -> str:
    """`sha256:AB:CD...` (or bare hex, any case, colons optional) -> 64 lowercase hex digits."""
    value = text.strip()
    if value.lower().startswith(FINGERPRINT_PREFIX):
        value = value[len(FINGERPRINT_PREFIX) :]
    value = value.replace(":", "").lower()
    if not _HEX_FINGERPRINT.fullmatch(value):
        raise ValueError(
            f"expected a SHA-256 fingerprint like 'sha256:' and 64 hex digits, got {text!r}"
        )
    return value


def format_fingerprint(der: bytes) -> str:
    """The fingerprint of a DER certificate as users pin it: `sha256:` and 64 hex digits."""
    return FINGERPRINT_PREFIX + hashlib.sha256(der).hexdigest()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TlsConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def first_certificate_der(path: str) -> bytes:
    """DER of the first certificate in a PEM file (the leaf of a chain)."""
    match = _PEM_CERT.search(_read(path, "certificate"))
    if match is None:
        raise TlsConfigError(f"no PEM certificate in {path}")
    return ssl.PEM_cert_to_DER_cert(match.group(0).decode("ascii"))


def _load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    _read(cert, "certificate")
    _read(key, "key")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"cannot use certificate {cert} with key {key}: {exc.reason or exc}"
        ) from None


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    if ca == "system":
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        return
    _read(ca, "CA file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cannot use CA file {ca}: {exc.reason or exc}") from None


@dataclass(frozen=True, slots=True)
class ServerTlsContext:
    """The server's TLS context together with the channel binding of its certificate."""

    context: ssl.SSLContext
    #: SHA-256 of the certificate the server presents (what clients feed into their tags).
    binding: bytes
    fingerprint: str

    @classmethod
    def load(cls, settings: ServerTls) -> ServerTlsContext:
        """Read the files now: a bad file is reported at start (or reload), not per client."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, settings.cert, settings.key)
        if settings.client_ca:
            _load_ca(context, settings.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        der = first_certificate_der(settings.cert)
        return cls(context, hashlib.sha256(der).digest(), format_fingerprint(der))

    async def accept(self, stream: anyio.abc.ByteStream) -> anyio.abc.ByteStream:
        """Run the server side of the handshake; `TlsError` if it fails."""
        try:
            upgraded, _ = await _handshake(stream, self.context, server_side=True)
        except _HANDSHAKE_FAILURES as exc:
            await abort(stream)
            hint = f": {CLIENT_SPEAKS_PLAINTEXT}" if _not_tls(exc) else ""
            raise TlsError(f"TLS handshake failed: {_reason(exc)}{hint}") from None
        return upgraded


async def _handshake(
    stream: anyio.abc.ByteStream,
    context: ssl.SSLContext,
    *,
    server_side: bool,
    hostname: str | None = None,
) -> tuple[anyio.abc.ByteStream, bytes | None]:
    """TLS over `stream`; returns the TLS stream and the peer's certificate (DER) if any.

    An anyio socket stream is upgraded on its own transport (`mux.start_tls`): the session's
    carrier fast path then drives the loop's SSL transport directly, as it drives a TCP one.
    Any other stream is wrapped in anyio's `TLSStream`.
    """
    upgraded = await start_tls(
        stream,
        context,
        server_side=server_side,
        server_hostname=hostname,
        shutdown_timeout_s=SHUTDOWN_TIMEOUT_S,
    )
    if upgraded is not None:
        tls_stream, ssl_object = upgraded
        return tls_stream, ssl_object.getpeercert(binary_form=True)
    wrapped = await TLSStream.wrap(
        stream,
        server_side=server_side,
        hostname=hostname,
        ssl_context=context,
        standard_compatible=False,
    )
    return wrapped, wrapped.extra(TLSAttribute.peer_certificate_binary)


def client_context(settings: ClientTls) -> ssl.SSLContext:
    """The client's context. Pins are checked after the handshake by `connect_tls`, known
    hosts (trust on first use) by the client with `muxtunnel.trust`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.ca:
        _load_ca(context, settings.ca)
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        # Only pins (checked below), known hosts or an explicit `insecure` get here.
        assert settings.fingerprints or settings.known_hosts or settings.insecure, (
            "ClientTls without a way to verify"
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if settings.cert and settings.key:
        _load_chain(context, settings.cert, settings.key)
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exc.verify_message or str(exc)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, anyio.EndOfStream):
        return "the peer closed the connection"
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError):
        return _reason(cause)
    return str(exc) or type(exc).__name__


def client_cert_refused(exc: BaseException) -> bool:
    """Did the server refuse our client certificate (or the lack of one)?"""
    text = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}".upper().replace(" ", "_")
    return any(alert in text for alert in _CLIENT_CERT_REFUSED)


async def connect_tls(
    stream: anyio.abc.ByteStream,
    settings: ClientTls,
    host: str,
    context: ssl.SSLContext | None = None,
) -> tuple[anyio.abc.ByteStream, bytes]:
    """Client handshake over `stream`; returns the TLS stream and the channel binding.

    Raises `TlsVerifyError` when the certificate is refused (CA, hostname, pin) or the server
    refuses ours, `TlsError` for other handshake failures.
    """
    context = context or client_context(settings)
    name = settings.server_name or host
    try:
        tls, der = await _handshake(stream, context, server_side=False, hostname=name)
    except ssl.SSLCertVerificationError as exc:
        raise TlsVerifyError(
            f"the server's certificate was refused: {_reason(exc)} "
            "(pin it with --server-fingerprint, or give the right --tls-ca)"
        ) from None
    except _HANDSHAKE_FAILURES as exc:
        if client_cert_refused(exc):
            raise TlsVerifyError(
                f"the server refused our client certificate: {_reason(exc)}"
            ) from None
        raise TlsError(f"TLS handshake with {host} failed: {_reason(exc)}") from None
    if not der:
        await tls.aclose()
        raise TlsVerifyError("the server presented no certificate")
    seen = hashlib.sha256(der).hexdigest()
    if settings.fingerprints and seen not in settings.fingerprints:
        await tls.aclose()
        pinned = ", ".join(FINGERPRINT_PREFIX + pin for pin in settings.fingerprints)
        raise TlsVerifyError(
            f"the server's certificate fingerprint {FINGERPRINT_PREFIX}{seen} does not match "
            f"the pinned {pinned}: refusing to connect (a changed certificate or a man in the "
            "middle)"
        )
    return tls, hashlib.sha256(der).digest()


async def speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """Does `host:port` complete a TLS handshake? What a plaintext client asks once the server
    has closed on it, to say which flag is wrong rather than retry forever."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with anyio.fail_after(timeout_s):
            stream = await connect(host, port, timeout_s=timeout_s)
            try:
                tls, _ = await _handshake(stream, context, server_side=False, hostname=host)
            except _HANDSHAKE_FAILURES:
                await abort(stream)
                return False
    except (TransportError, TimeoutError):
        return False
    await abort(tls)
    return True
