"""Group membership proofs: Ed25519 over the handshake's transcript, keyed by the group token."""

from __future__ import annotations

import pytest

from muxtunnel.auth import (
    GROUP_KEY_BYTES,
    GROUP_PROOF_BYTES,
    TokenBook,
    client_tag,
    derive_key,
    group_key_pair,
    group_proof,
    new_nonce,
    verify_client_tag,
    verify_group_proof,
)
from muxtunnel.model import Secret, ServerConfig, ServicePolicy

NONCES = (new_nonce(), new_nonce())
BINDING = b"\x01" * 32


def test_the_key_pair_follows_the_token_and_only_it() -> None:
    _, public = group_key_pair("group-secret")
    assert len(public) == GROUP_KEY_BYTES
    assert group_key_pair(Secret("group-secret"))[1] == public
    assert group_key_pair("group-secret2")[1] != public
    with pytest.raises(ValueError):
        group_key_pair("")


def test_a_proof_verifies_for_its_transcript_only() -> None:
    private, public = group_key_pair("group-secret")
    proof = group_proof(private, "web-a", "web", *NONCES, BINDING)
    assert len(proof) == GROUP_PROOF_BYTES
    assert verify_group_proof(public, proof, "web-a", "web", *NONCES, BINDING)
    other_nonces = (new_nonce(), NONCES[1])
    for changed in (
        (public, proof, "web-b", "web", *NONCES, BINDING),
        (public, proof, "web-a", "www", *NONCES, BINDING),
        (public, proof, "web-a", "web", *other_nonces, BINDING),
        (public, proof, "web-a", "web", *NONCES, b""),
        (group_key_pair("other")[1], proof, "web-a", "web", *NONCES, BINDING),
        (public, proof[:-1] + bytes([proof[-1] ^ 1]), "web-a", "web", *NONCES, BINDING),
    ):
        assert not verify_group_proof(*changed)  # type: ignore[arg-type]


def test_a_stranger_with_another_token_cannot_prove_the_group() -> None:
    _, public = group_key_pair("group-secret")
    stranger, _ = group_key_pair("guess")
    proof = group_proof(stranger, "web-a", "web", *NONCES)
    assert not verify_group_proof(public, proof, "web-a", "web", *NONCES)


@pytest.mark.parametrize(
    ("key_size", "proof_size"), [(0, 64), (31, 64), (32, 0), (32, 63), (33, 64)]
)
def test_malformed_keys_and_proofs_are_refused_not_raised(key_size: int, proof_size: int) -> None:
    assert not verify_group_proof(b"k" * key_size, b"p" * proof_size, "a", "b", *NONCES)


def test_an_all_zero_public_key_is_refused() -> None:
    private, _ = group_key_pair("x")
    proof = group_proof(private, "a", "b", *NONCES)
    assert not verify_group_proof(bytes(32), proof, "a", "b", *NONCES)


def test_a_members_tag_covers_its_group() -> None:
    key = derive_key("service-token")
    plain = client_tag(key, "web-a", "tcp", *NONCES)
    member = client_tag(key, "web-a", "tcp", *NONCES, group="web")
    assert plain != member != client_tag(key, "web-a", "tcp", *NONCES, group="www")
    assert verify_client_tag(key, member, "web-a", "tcp", *NONCES, group="web")
    assert not verify_client_tag(key, member, "web-a", "tcp", *NONCES)
    assert verify_client_tag(key, plain, "web-a", "tcp", *NONCES)  # as before groups


def test_the_token_book_knows_configured_group_keys() -> None:
    config = ServerConfig(
        token=Secret("default-token"),
        services=(
            ServicePolicy("web", group_token=Secret("group-secret")),
            ServicePolicy("api"),
        ),
    )
    book = TokenBook.from_config(config)
    assert book.group_keys == {"web": group_key_pair("group-secret")[1]}
