"""The server name of a TLS ClientHello, read without terminating TLS (RFC 8446, RFC 6066).

Sans-IO: `parse_client_hello(buffer)` says "need more", gives the name, or raises
`ClientHelloError`; the caller reads (within a deadline and `MAX_CLIENT_HELLO_BYTES`) and
replays every byte it read to whoever gets the connection.

Wire facts used (RFC 8446 §5.1, §4.1.2, §4.2; RFC 6066 §3):
- record: type (22 = handshake) | legacy version (major 3) | length (<= 2^14) | fragment;
  a handshake message may span several records, so fragments are joined first;
- handshake: type (1 = client_hello) | 24-bit length | body;
- body: version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
  compression_methods<1..2^8-1> extensions<8..2^16-1>, each extension type(2) length(2);
- server_name (type 0): list length(2), entries of name_type(1) (0 = host_name) length(2) name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALERT_UNRECOGNIZED_NAME",
    "MAX_CLIENT_HELLO_BYTES",
    "ClientHello",
    "ClientHelloError",
    "parse_client_hello",
    "tls_alert",
]

#: Bytes we read at most looking for the end of a ClientHello: two full records. Browsers send
#: 0.5-2 KiB (post-quantum key shares make ~1.8 KiB), so this leaves room without letting a
#: visitor make us buffer much.
MAX_CLIENT_HELLO_BYTES = 2 * (5 + 2**14)
#: RFC 6066 §3 / RFC 8446 §6.2: the alert for a server name we do not serve.
ALERT_UNRECOGNIZED_NAME = 112

_HANDSHAKE = 22
_ALERT = 21
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_RECORD_BYTES = 2**14


class ClientHelloError(ValueError):
    """The bytes are not (the start of) a TLS ClientHello we can read."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What routing needs of a ClientHello."""

    #: The host_name of the server_name extension as sent (ASCII), or None if there was none.
    server_name: str | None


def tls_alert(description: int) -> bytes:
    """A fatal alert record (plaintext, as before a handshake completes)."""
    return bytes((_ALERT, 3, 3, 0, 2, 2, description))


def parse_client_hello(data: bytes) -> ClientHello | None:
    """The ClientHello at the start of `data`, or None when more bytes are needed."""
    handshake = bytearray()
    offset = 0
    while True:
        if len(data) - offset < 5:
            if offset == 0 and data and data[0] != _HANDSHAKE:
                raise ClientHelloError("not a TLS handshake record")
            return None
        kind, major, length = (
            data[offset],
            data[offset + 1],
            int.from_bytes(data[offset + 3 : offset + 5]),
        )
        if kind != _HANDSHAKE or major != 3:
            raise ClientHelloError("not a TLS handshake record")
        if length == 0 or length > _MAX_RECORD_BYTES:
            raise ClientHelloError(f"TLS record length {length} out of range")
        if len(data) - offset - 5 < length:
            return None
        handshake += data[offset + 5 : offset + 5 + length]
        offset += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != _CLIENT_HELLO:
                raise ClientHelloError("first handshake message is not a ClientHello")
            size = int.from_bytes(handshake[1:4])
            if size > MAX_CLIENT_HELLO_BYTES:
                raise ClientHelloError(f"ClientHello of {size} bytes is too large")
            if len(handshake) >= 4 + size:
                return ClientHello(_server_name(bytes(handshake[4 : 4 + size])))


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise ClientHelloError("truncated ClientHello")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size))

    def vector(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


def _server_name(body: bytes) -> str | None:
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy_version, random
    if len(reader.vector(1)) > 32:
        raise ClientHelloError("session id longer than 32 bytes")
    reader.vector(2)  # cipher_suites
    reader.vector(1)  # compression methods
    if reader.left == 0:
        return None  # no extensions at all (SSL 3.0 style): no SNI
    extensions = _Reader(reader.vector(2))
    while extensions.left:
        kind = extensions.number(2)
        payload = extensions.vector(2)
        if kind != _SERVER_NAME:
            continue
        names = _Reader(_Reader(payload).vector(2))
        while names.left:
            name_type = names.number(1)
            name = names.vector(2)
            if name_type == _HOST_NAME:
                if not name or not name.isascii():
                    raise ClientHelloError("server_name is empty or not ASCII")
                return name.decode("ascii")
        return None
    return None
