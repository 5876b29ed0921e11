from __future__ import annotations

import dataclasses

import pytest

from muxtunnel.auth import (
    NONCE_BYTES,
    TAG_BYTES,
    TokenBook,
    client_tag,
    derive_key,
    hkdf_sha256,
    new_nonce,
    server_tag,
    verify,
    verify_client_tag,
    verify_server_tag,
)
from muxtunnel.model import Secret, ServerConfig, ServicePolicy
from muxtunnel.sources import FailureLimiter, address_key


@dataclasses.dataclass(frozen=True)
class Transcript:
    service: str = "web"
    type: str = "tcp"
    server_nonce: bytes = b"s" * NONCE_BYTES
    client_nonce: bytes = b"c" * NONCE_BYTES
    channel_binding: bytes = b""

    def args(self) -> tuple[str, str, bytes, bytes, bytes]:
        return (self.service, self.type, self.server_nonce, self.client_nonce, self.channel_binding)


def test_hkdf_matches_rfc5869_case_1() -> None:
    okm = hkdf_sha256(
        bytes([0x0B] * 22), salt=bytes(range(13)), info=bytes(range(0xF0, 0xFA)), length=42
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_matches_rfc5869_case_3_empty_salt_and_info() -> None:
    okm = hkdf_sha256(bytes([0x0B] * 22), info=b"", length=42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_derive_key_accepts_secret_and_refuses_empty() -> None:
    assert derive_key(Secret("t0ken")) == derive_key("t0ken")
    assert len(derive_key("t0ken")) == 32
    assert derive_key("a") != derive_key("b")
    with pytest.raises(ValueError):
        derive_key(Secret(""))


def test_nonces_are_fresh() -> None:
    assert len(new_nonce()) == NONCE_BYTES
    assert new_nonce() != new_nonce()


def test_right_token_verifies_both_ways() -> None:
    t = Transcript(server_nonce=new_nonce(), client_nonce=new_nonce())
    client_key = derive_key("correct horse battery staple")
    server_key, known = TokenBook(Secret("correct horse battery staple"), {}).key_for("web")
    assert known
    tag_c = client_tag(client_key, *t.args())
    assert len(tag_c) == TAG_BYTES
    assert verify_client_tag(server_key, tag_c, *t.args())
    tag_s = server_tag(server_key, *t.args())
    assert verify_server_tag(client_key, tag_s, *t.args())


def test_client_and_server_tags_are_domain_separated() -> None:
    key = derive_key("tok")
    t = Transcript()
    assert client_tag(key, *t.args()) != server_tag(key, *t.args())
    # A server cannot be fooled by a reflected client tag, nor the other way round.
    assert not verify_server_tag(key, client_tag(key, *t.args()), *t.args())
    assert not verify_client_tag(key, server_tag(key, *t.args()), *t.args())


def test_wrong_token_fails() -> None:
    t = Transcript()
    tag = client_tag(derive_key("wrong"), *t.args())
    assert not verify_client_tag(derive_key("right"), tag, *t.args())


@pytest.mark.parametrize(
    "change",
    [
        {"service": "web2"},
        {"type": "udp"},
        {"server_nonce": b"S" * NONCE_BYTES},
        {"client_nonce": b"C" * NONCE_BYTES},
        {"channel_binding": b"\x01" * 32},
    ],
)
def test_every_transcript_field_matters(change: dict[str, object]) -> None:
    key = derive_key("tok")
    original = Transcript()
    changed = dataclasses.replace(original, **change)  # type: ignore[arg-type]
    tag = client_tag(key, *original.args())
    assert not verify_client_tag(key, tag, *changed.args())
    assert not verify_server_tag(key, server_tag(key, *original.args()), *changed.args())


def test_fields_are_length_prefixed_not_concatenated() -> None:
    key = derive_key("tok")
    a = Transcript(service="ab", type="c")
    b = Transcript(service="a", type="bc")
    assert client_tag(key, *a.args()) != client_tag(key, *b.args())


def test_verify_is_plain_equality() -> None:
    assert verify(b"x" * 32, b"x" * 32)
    assert not verify(b"x" * 32, b"y" * 32)
    assert not verify(b"x" * 31, b"x" * 32)


def test_unknown_service_fails_like_a_wrong_token() -> None:
    book = TokenBook(None, {"web": Secret("web-token")})
    t = Transcript(service="nope")
    key, known = book.key_for("nope")
    assert not known and len(key) == 32
    # Even a client that knows the token of another service gets a plain failure.
    tag = client_tag(derive_key("web-token"), *t.args())
    assert not verify_client_tag(key, tag, *t.args())
    # The dummy key is stable, so repeated probes do the same work.
    assert book.key_for("other")[0] == key


def test_per_service_token_overrides_default() -> None:
    config = ServerConfig(
        token=Secret("default"),
        services=(ServicePolicy("db", Secret("db-token")), ServicePolicy("web")),
    )
    book = TokenBook.from_config(config)
    assert book.key_for("db") == (derive_key("db-token"), True)
    assert book.key_for("web") == (derive_key("default"), True)
    assert book.key_for("anything") == (derive_key("default"), True)
    assert book.has_any_token


def test_book_without_tokens_knows_nothing() -> None:
    book = TokenBook.from_config(ServerConfig(services=(ServicePolicy("web"),)))
    assert not book.has_any_token
    assert book.key_for("web")[1] is False


def test_limiter_allows_burst_then_refuses_then_refills() -> None:
    limiter = FailureLimiter(burst=3, per_min=6)  # one token per 10 s
    now = 100.0
    for _ in range(3):
        assert limiter.allowed("1.2.3.4", now)
        limiter.record_failure("1.2.3.4", now)
    assert not limiter.allowed("1.2.3.4", now)
    assert limiter.retry_after("1.2.3.4", now) == pytest.approx(10.0)
    assert limiter.allowed("5.6.7.8", now)  # other sources are unaffected
    assert not limiter.allowed("1.2.3.4", now + 9.9)
    assert limiter.allowed("1.2.3.4", now + 10.0)
    assert limiter.retry_after("1.2.3.4", now + 10.0) == 0.0


def test_limiter_forgets_refilled_sources() -> None:
    limiter = FailureLimiter(burst=2, per_min=60)
    limiter.record_failure("a", 0.0)
    assert len(limiter) == 1
    assert limiter.allowed("a", 1.0)  # refilled to burst after 1 s
    assert len(limiter) == 0


def test_limiter_memory_is_bounded_and_evicts_oldest() -> None:
    limiter = FailureLimiter(burst=1, per_min=1, max_sources=100)
    for i in range(1000):
        limiter.record_failure(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(limiter) == 100
    assert limiter.allowed("10.0.0.0", 0.0)  # evicted long ago
    assert not limiter.allowed("10.0.3.231", 0.0)  # the most recent one is still tracked


def test_limiter_touch_keeps_a_source_from_eviction() -> None:
    limiter = FailureLimiter(burst=5, per_min=1, max_sources=2)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("b", 0.0)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("c", 0.0)  # evicts b, the least recently touched
    assert limiter.retry_after("a", 0.0) == 0.0 and len(limiter) == 2
    limiter.record_failure("a", 0.0)
    limiter.record_failure("a", 0.0)
    limiter.record_failure("a", 0.0)
    assert not limiter.allowed("a", 0.0)


def test_limiter_ignores_time_going_backwards() -> None:
    limiter = FailureLimiter(burst=1, per_min=60)
    limiter.record_failure("a", 10.0)
    assert not limiter.allowed("a", 5.0)
    assert limiter.allowed("a", 11.0)


def test_limiter_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        FailureLimiter(burst=0, per_min=1)
    with pytest.raises(ValueError):
        FailureLimiter(burst=1, per_min=0)


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_address_key_groups_ipv6_by_64(host: str, key: str) -> None:
    assert address_key(host) == key
