"""Mutual challenge-response authentication of one service registration.

Both sides derive `K = HKDF-SHA256(token, info="muxtunnel auth")`. The client proves it holds K
with `client_tag` over a transcript of the service, its type, both nonces and an optional channel
binding; the server answers with `server_tag` over the same fields under a different label, so the
client knows it reached a server holding the same token. Each side contributes a fresh 32-byte
nonce, which makes every transcript single-use: a captured exchange cannot be replayed.

A member of a load-balancing group registers under the group's name: its tags cover the group
too, and it may also have to prove the group's own token. That proof is an Ed25519 signature
over the same transcript, with a key pair derived from the group token: the server needs only
the public key, which is what a group's first member hands it when no group token is
configured (README, "Load balancing"). A public key lets nobody sign, so it may cross a
plain-TCP carrier, and a later member proves the token without the server ever holding it.

Rules this module keeps:
- Tags are compared only with `hmac.compare_digest`.
- An unknown service costs the same work and gets the same answer as a wrong token (`TokenBook`
  hands out a random dummy key for it), so failures reveal nothing about which names exist.
- Nothing here reads a clock or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

from muxtunnel.model import Secret, ServerConfig

if TYPE_CHECKING:  # imported where used: cryptography's OpenSSL binding costs ~9 MiB of RSS
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "GROUP_KEY_BYTES",
    "GROUP_PROOF_BYTES",
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "TokenBook",
    "client_tag",
    "derive_key",
    "group_key_pair",
    "group_proof",
    "hkdf_sha256",
    "labelled_tag",
    "new_nonce",
    "server_tag",
    "transcript",
    "verify",
    "verify_client_tag",
    "verify_group_proof",
    "verify_server_tag",
]

KEY_BYTES = 32
NONCE_BYTES = 32
TAG_BYTES = hashlib.sha256().digest_size  # 32

_KEY_INFO = b"muxtunnel auth"
_CLIENT_LABEL = b"muxtunnel v1 client"
_SERVER_LABEL = b"muxtunnel v1 server"
_GROUP_LABEL = b"muxtunnel v1 group"
_GROUP_KEY_INFO = b"muxtunnel group key"
#: An Ed25519 public key and signature (RFC 8032).
GROUP_KEY_BYTES = 32
GROUP_PROOF_BYTES = 64
_FIELD_LENGTH = struct.Struct(">I")


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int = KEY_BYTES, salt: bytes = b"") -> bytes:
    """HKDF (RFC 5869) with SHA-256: extract, then expand to `length` bytes."""
    if not 0 < length <= 255 * TAG_BYTES:
        raise ValueError(f"HKDF length must be 1..{255 * TAG_BYTES}, got {length}")
    prk = hmac.digest(salt or bytes(TAG_BYTES), ikm, "sha256")
    out, block = b"", b""
    for counter in range(1, -(-length // TAG_BYTES) + 1):
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
    return out[:length]


def derive_key(token: Secret | str) -> bytes:
    """The HMAC key for a token: HKDF-SHA256(token, info="muxtunnel auth")."""
    value = token.value if isinstance(token, Secret) else token
    if not value:
        raise ValueError("token must not be empty")
    return hkdf_sha256(value.encode("utf-8"), info=_KEY_INFO)


def new_nonce() -> bytes:
    """A fresh random nonce for one handshake."""
    return secrets.token_bytes(NONCE_BYTES)


def transcript(label: bytes, fields: tuple[bytes, ...]) -> bytes:
    """What a tag signs: every field length-prefixed, so no two field tuples share an encoding."""
    parts = [_FIELD_LENGTH.pack(len(label)), label]
    for item in fields:
        parts += [_FIELD_LENGTH.pack(len(item)), item]
    return b"".join(parts)


def _tag(
    key: bytes,
    label: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes,
    group: str = "",
) -> bytes:
    fields = (service.encode("utf-8"), type.encode("utf-8"), server_nonce, client_nonce)
    extra = (group.encode("utf-8"),) if group else ()
    return hmac.digest(key, transcript(label, (*fields, channel_binding, *extra)), "sha256")


def labelled_tag(
    key: bytes,
    label: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes:
    """This module's transcript tag under another `label`: for exchanges of their own (a
    visitor's, `muxtunnel.visitauth`) whose tags must never pass for a client's or a server's."""
    return _tag(key, label, service, type, server_nonce, client_nonce, channel_binding)


def client_tag(
    key: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
    group: str = "",
) -> bytes:
    """The client's proof that it holds `key`, for registering `service` in this handshake
    (as a member of `group`, if given)."""
    return _tag(
        key, _CLIENT_LABEL, service, type, server_nonce, client_nonce, channel_binding, group
    )


def server_tag(
    key: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
    group: str = "",
) -> bytes:
    """The server's proof, sent back once it accepted the client's tag."""
    return _tag(
        key, _SERVER_LABEL, service, type, server_nonce, client_nonce, channel_binding, group
    )


def verify(received: bytes, expected: bytes) -> bool:
    """Constant-time comparison of a received tag with the expected one."""
    return hmac.compare_digest(received, expected)


def verify_client_tag(
    key: bytes,
    tag: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
    group: str = "",
) -> bool:
    """Server side: does `tag` prove the client holds `key` for this transcript?"""
    expected = client_tag(key, service, type, server_nonce, client_nonce, channel_binding, group)
    return verify(tag, expected)


def verify_server_tag(
    key: bytes,
    tag: bytes,
    service: str,
    type: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
    group: str = "",
) -> bool:
    """Client side: does `tag` prove the server holds `key` for this transcript?"""
    expected = server_tag(key, service, type, server_nonce, client_nonce, channel_binding, group)
    return verify(tag, expected)


def group_key_pair(token: Secret | str) -> tuple[Ed25519PrivateKey, bytes]:
    """The signing key of a group token, and its public key (raw, `GROUP_KEY_BYTES`)."""
    value = token.value if isinstance(token, Secret) else token
    if not value:
        raise ValueError("token must not be empty")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = hkdf_sha256(value.encode("utf-8"), info=_GROUP_KEY_INFO)
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return private, private.public_key().public_bytes_raw()


def _group_transcript(
    public_key: bytes,
    service: str,
    group: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes,
) -> bytes:
    fields = (service.encode("utf-8"), group.encode("utf-8"), server_nonce, client_nonce)
    return transcript(_GROUP_LABEL, (*fields, channel_binding, public_key))


def group_proof(
    private: Ed25519PrivateKey,
    service: str,
    group: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
) -> bytes:
    """A member's proof that it holds its group's token, for this handshake only."""
    public = private.public_key().public_bytes_raw()
    transcript = _group_transcript(
        public, service, group, server_nonce, client_nonce, channel_binding
    )
    return private.sign(transcript)


def verify_group_proof(
    public_key: bytes,
    proof: bytes,
    service: str,
    group: str,
    server_nonce: bytes,
    client_nonce: bytes,
    channel_binding: bytes = b"",
) -> bool:
    """Server side: does `proof` show the member holds the token whose public key this is?"""
    if len(public_key) != GROUP_KEY_BYTES or len(proof) != GROUP_PROOF_BYTES:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    transcript = _group_transcript(
        public_key, service, group, server_nonce, client_nonce, channel_binding
    )
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(proof, transcript)
    except (InvalidSignature, ValueError):
        return False
    return True


class TokenBook:
    """The server's keys: one per service with a token of its own, plus the default token's.

    `key_for(name)` always returns a key. For a name that no token covers it returns a random
    dummy key (fixed for the book's life) and `known=False`; the caller runs the same
    verification with it and fails the same way, so a prober cannot tell names apart.
    Accept a registration only if `known` *and* the tag verifies.
    """

    def __init__(
        self,
        default: Secret | None,
        per_service: Mapping[str, Secret | None],
        group_tokens: Mapping[str, Secret | None] | None = None,
    ) -> None:
        self._default = derive_key(default) if default else None
        self._keys = {name: derive_key(token) for name, token in per_service.items() if token}
        self._dummy = secrets.token_bytes(KEY_BYTES)
        #: Public keys of the group tokens the server's config sets, by group name.
        self.group_keys = {
            name: group_key_pair(token)[1] for name, token in (group_tokens or {}).items() if token
        }

    @classmethod
    def from_config(cls, config: ServerConfig) -> TokenBook:
        policies = config.services
        return cls(
            config.token,
            {policy.name: policy.token for policy in policies},
            {policy.name: policy.group_token for policy in policies},
        )

    @property
    def has_any_token(self) -> bool:
        """False when no token is configured at all (the server must then refuse to start)."""
        return self._default is not None or bool(self._keys)

    def key_for(self, service: str) -> tuple[bytes, bool]:
        """`(key, known)`: the service's own key, else the default key, else a dummy key."""
        key = self._keys.get(service, self._default)
        if key is None:
            return self._dummy, False
        return key, True
