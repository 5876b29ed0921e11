"""Visitor tokens (`muxtunnel.visitauth`): tags of their own, keys sealed for the server."""

from __future__ import annotations

import pytest

from muxtunnel.auth import NONCE_BYTES, client_tag, derive_key, server_tag
from muxtunnel.model import Secret
from muxtunnel.visitauth import (
    MAX_VISITOR_TOKENS,
    SEALED_OVERHEAD_BYTES,
    match_key,
    open_keys,
    seal_keys,
    visit_server_tag,
    visit_tag,
    visitor_key,
)

SN, CN = b"s" * NONCE_BYTES, b"c" * NONCE_BYTES
ARGS = ("ssh", "tcp", SN, CN, b"binding")


def test_a_visitor_key_is_not_the_client_key_of_the_same_text() -> None:
    assert visitor_key("same-text-16chars") != derive_key("same-text-16chars")
    assert visitor_key(Secret("v" * 20)) == visitor_key("v" * 20)
    with pytest.raises(ValueError):
        visitor_key("")


def test_visit_tags_never_pass_for_registration_tags() -> None:
    key = visitor_key("visitor-token-0001")
    tags = {visit_tag(key, *ARGS), visit_server_tag(key, *ARGS)}
    tags |= {client_tag(key, *ARGS), server_tag(key, *ARGS)}
    assert len(tags) == 4


def test_match_key_finds_the_key_a_tag_proves_and_nothing_else() -> None:
    keys = [visitor_key(f"visitor-token-{i:04}") for i in range(5)]
    tag = visit_tag(keys[3], *ARGS)
    assert match_key(keys, tag, *ARGS) == keys[3]
    assert match_key(keys[:3], tag, *ARGS) is None
    assert match_key([], tag, *ARGS) is None
    # Every field of the transcript counts.
    assert match_key(keys, tag, "other", "tcp", SN, CN, b"binding") is None
    assert match_key(keys, tag, "ssh", "udp", SN, CN, b"binding") is None
    assert match_key(keys, tag, "ssh", "tcp", SN, CN, b"") is None
    assert match_key(keys, tag, "ssh", "tcp", CN, SN, b"binding") is None


def test_sealed_keys_open_with_the_same_service_key_and_session_only() -> None:
    service_key = derive_key("client-token-00001")
    keys = tuple(visitor_key(f"visitor-token-{i:04}") for i in range(3))
    sealed = seal_keys(service_key, "ssh", SN, CN, b"b", keys)
    assert len(sealed) == 3 * 32 + SEALED_OVERHEAD_BYTES
    assert all(key not in sealed for key in keys)
    assert open_keys(service_key, "ssh", SN, CN, b"b", sealed) == keys
    assert seal_keys(service_key, "ssh", SN, CN, b"b", keys) != sealed  # a fresh GCM nonce
    wrong = [
        (derive_key("client-token-00002"), "ssh", SN, CN, b"b"),
        (service_key, "ssh2", SN, CN, b"b"),
        (service_key, "ssh", CN, SN, b"b"),
        (service_key, "ssh", SN, CN, b""),
    ]
    for args in wrong:
        with pytest.raises(ValueError, match="do not open"):
            open_keys(*args, sealed)
    tampered = bytearray(sealed)
    tampered[20] ^= 1
    with pytest.raises(ValueError, match="do not open"):
        open_keys(service_key, "ssh", SN, CN, b"b", bytes(tampered))
    for size in (0, SEALED_OVERHEAD_BYTES + 5, SEALED_OVERHEAD_BYTES + 33 * 32):
        with pytest.raises(ValueError, match="wrong size"):
            open_keys(service_key, "ssh", SN, CN, b"b", bytes(size))


def test_no_keys_and_too_many_keys() -> None:
    service_key = derive_key("client-token-00001")
    sealed = seal_keys(service_key, "ssh", SN, CN, b"", [])
    assert open_keys(service_key, "ssh", SN, CN, b"", sealed) == ()
    with pytest.raises(ValueError):
        seal_keys(service_key, "ssh", SN, CN, b"", [b"k" * 32] * (MAX_VISITOR_TOKENS + 1))
    with pytest.raises(ValueError):
        seal_keys(service_key, "ssh", SN, CN, b"", [b"short"])
