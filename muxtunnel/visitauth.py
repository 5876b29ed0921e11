"""Visitor tokens: how `muxtunnel visit` proves it may reach a private service, and how the
service's provider hands the server what it needs to check that.

A visitor token is a secret of its own, distinct from the client tokens that register services:
`K_v = HKDF-SHA256(token, info="muxtunnel visitor")`. `visit` authenticates with `auth`'s
construction (a tag over the service, its type, both nonces and the channel binding, answered by
the server's tag) under labels of its own, so a visitor's tag never passes for a registration's
and the other way round: a visitor token proves the right to visit one service, nothing else.

HMAC is symmetric, so the server needs `K_v` to check a visitor's tag. The provider sends the
keys of its service's visitor tokens with the registration, sealed with AES-256-GCM under a key
derived from the service's own token key, both nonces and the channel binding: a token never
travels, a key never travels readable (not even on a plaintext carrier), and a blob changed on
the way fails to open. The server keeps the keys in memory only.

Rules this module keeps:
- Tags are compared only with `hmac.compare_digest` (`auth.verify`).
- `match_key` does the same work whichever key matches, and as much for no key at all (a dummy
  key stands in), so a prober learns nothing about which names have keys.
- Nothing here reads a clock or logs.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence

from muxtunnel.auth import KEY_BYTES, hkdf_sha256, labelled_tag, verify
from muxtunnel.model import Secret

__all__ = [
    "MAX_VISITOR_TOKENS",
    "SEALED_OVERHEAD_BYTES",
    "match_key",
    "open_keys",
    "seal_keys",
    "visit_server_tag",
    "visit_tag",
    "visitor_key",
]

#: Visitor tokens per service (each one a 32-byte key in the registration: 32 fit well within a
#: control message's 4 KiB).
MAX_VISITOR_TOKENS = 32
_NONCE_BYTES = 12  # AES-GCM's standard nonce
_GCM_TAG_BYTES = 16
#: A sealed blob is its keys plus this much: the GCM nonce in front, its tag at the end.
SEALED_OVERHEAD_BYTES = _NONCE_BYTES + _GCM_TAG_BYTES

_KEY_INFO = b"muxtunnel visitor"
_VISITOR_LABEL = b"muxtunnel v1 visitor"
_SERVER_LABEL = b"muxtunnel v1 visit server"
_SEAL_INFO = b"muxtunnel visitor keys"
#: Stands in when a name has no visitor key at all: the same work, the same failure.
_DUMMY_KEY = secrets.token_bytes(KEY_BYTES)


def visitor_key(token: Secret | str) -> bytes:
    """The HMAC key of a visitor token: HKDF-SHA256(token, info="muxtunnel visitor")."""
    value = token.value if isinstance(token, Secret) else token
    if not value:
        raise ValueError("a visitor token must not be empty")
    return hkdf_sha256(value.encode("utf-8"), info=_KEY_INFO)


def visit_tag(
    key: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes:
    """The visitor's proof that it holds `key`, for visiting `service` in this handshake."""
    nonces = (server_nonce, client_nonce)
    return labelled_tag(key, _VISITOR_LABEL, service, type, *nonces, channel_binding)


def visit_server_tag(
    key: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes:
    """The server's proof, once it accepted the visitor's tag, that it holds the same key."""
    nonces = (server_nonce, client_nonce)
    return labelled_tag(key, _SERVER_LABEL, service, type, *nonces, channel_binding)


def match_key(
    keys: Collection[bytes],
    tag: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes | None:
    """Server side: the key of `keys` that `tag` proves, or None.

    Every key is tried, even after a match, and a dummy key when there are none.
    """
    found = None
    for key in keys or (_DUMMY_KEY,):
        expected = visit_tag(key, service, type, server_nonce, client_nonce, channel_binding)
        if verify(tag, expected) and keys:
            found = key
    return found


def _sealing_key(
    service_key: bytes, service: str, server_nonce: bytes, client_nonce: bytes, binding: bytes
) -> bytes:
    salt = server_nonce + client_nonce + binding
    return hkdf_sha256(service_key, info=_SEAL_INFO + service.encode("utf-8"), salt=salt)


def seal_keys(
    service_key: bytes,
    service: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes,
    keys: Sequence[bytes],
) -> bytes:
    """The provider's visitor keys for the server, readable only with the service's token key
    and this session's nonces: GCM nonce, then ciphertext and tag."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # only for private services

    if len(keys) > MAX_VISITOR_TOKENS or any(len(key) != KEY_BYTES for key in keys):
        raise ValueError(f"at most {MAX_VISITOR_TOKENS} keys of {KEY_BYTES} bytes")
    nonces = (server_nonce, client_nonce)
    sealing = AESGCM(_sealing_key(service_key, service, *nonces, channel_binding))
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + sealing.encrypt(nonce, b"".join(keys), service.encode("utf-8"))


def open_keys(
    service_key: bytes,
    service: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes,
    sealed: bytes,
) -> tuple[bytes, ...]:
    """The keys `seal_keys` sealed; `ValueError` if the blob does not open (wrong key, another
    session's, changed on the way) or holds no whole number of keys."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    size = len(sealed) - SEALED_OVERHEAD_BYTES
    if size < 0 or size % KEY_BYTES or size // KEY_BYTES > MAX_VISITOR_TOKENS:
        raise ValueError("the visitor keys have the wrong size")
    nonces = (server_nonce, client_nonce)
    sealing = AESGCM(_sealing_key(service_key, service, *nonces, channel_binding))
    nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    try:
        plain = sealing.decrypt(nonce, body, service.encode("utf-8"))
    except InvalidTag:
        raise ValueError("the visitor keys do not open with this service's token") from None
    return tuple(plain[i : i + KEY_BYTES] for i in range(0, len(plain), KEY_BYTES))
