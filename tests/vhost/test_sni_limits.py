"""The ClientHello reader, basic auth, the per-source limiter and "log once" memory."""

from __future__ import annotations

import base64
import functools
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from muxtunnel.vhost import (
    ClientHelloError,
    SourceLimiter,
    basic_auth_ok,
    parse_client_hello,
    source_key,
)
from muxtunnel.vhost.limits import OnceSet
from muxtunnel.vhost.sni import ALERT_UNRECOGNIZED_NAME, MAX_CLIENT_HELLO_BYTES, tls_alert


def client_hello(server_name: str | None, **context_options: object) -> bytes:
    """The first flight of Python's TLS client (OpenSSL), as sent on the wire."""
    context = ssl.create_default_context()
    for name, value in context_options.items():
        setattr(context, name, value)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    if server_name is None:
        context.check_hostname = False
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def test_reads_the_server_name_of_a_real_client_hello() -> None:
    data = client_hello("app.example.com")
    hello = parse_client_hello(data)
    assert hello is not None and hello.server_name == "app.example.com"
    tls12 = client_hello("old.example.com", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert parse_client_hello(tls12).server_name == "old.example.com"  # type: ignore[union-attr]
    assert parse_client_hello(client_hello(None)).server_name is None  # type: ignore[union-attr]


def test_byte_by_byte_needs_more_until_whole() -> None:
    data = client_hello("app.example.com")
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is None
    assert parse_client_hello(data + b"trailing bytes").server_name == "app.example.com"  # type: ignore[union-attr]


def test_a_hello_split_over_records_is_joined() -> None:
    data = client_hello("split.example.com")
    body = data[5:]
    records = b""
    for start in range(0, len(body), 50):  # 50-byte fragments, each in a record of its own
        fragment = body[start : start + 50]
        records += b"\x16\x03\x01" + len(fragment).to_bytes(2, "big") + fragment
    assert parse_client_hello(records).server_name == "split.example.com"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x02\x00\x00\x05hello",  # major version 2
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x50\x00",  # record over 2^14
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a truncated ClientHello body
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # a ClientHello declaring 16 MiB
    ],
)
def test_what_is_not_a_client_hello_is_refused(data: bytes) -> None:
    with pytest.raises(ClientHelloError):
        parse_client_hello(data)


@given(st.binary(max_size=600))
def test_random_bytes_need_more_or_are_refused(data: bytes) -> None:
    try:
        parse_client_hello(data)
    except ClientHelloError:
        pass


@functools.cache
def _sample_hello() -> bytes:
    return client_hello("app.example.com")


@given(st.binary(min_size=1, max_size=400))
def test_corrupted_hellos_never_raise_anything_else(noise: bytes) -> None:
    data = bytearray(_sample_hello())
    for i, byte in enumerate(noise):
        data[(i * 7919) % len(data)] ^= byte
    try:
        parse_client_hello(bytes(data))
    except ClientHelloError:
        pass


def test_alert_and_bounds() -> None:
    assert tls_alert(ALERT_UNRECOGNIZED_NAME) == b"\x15\x03\x03\x00\x02\x02\x70"
    assert MAX_CLIENT_HELLO_BYTES >= 16 * 1024


def test_basic_auth_compare() -> None:
    good = b"Basic " + base64.b64encode(b"alice:s3cret")
    assert basic_auth_ok(good, b"alice:s3cret")
    assert basic_auth_ok(b"basic  " + base64.b64encode(b"alice:s3cret"), b"alice:s3cret")
    assert not basic_auth_ok(None, b"alice:s3cret")
    assert not basic_auth_ok(b"Basic " + base64.b64encode(b"alice:s3cre"), b"alice:s3cret")
    assert not basic_auth_ok(b"Basic !!!notbase64", b"alice:s3cret")
    assert not basic_auth_ok(b"Bearer " + base64.b64encode(b"alice:s3cret"), b"alice:s3cret")


def test_source_keys_group_ipv6_by_64() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert (
        source_key("2001:db8:1:2:aaaa::1")
        == source_key("2001:db8:1:2:bbbb::2")
        == "2001:db8:1:2::/64"
    )
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")


def test_source_limiter_caps_per_source_and_in_all() -> None:
    limiter = SourceLimiter(per_source=2, max_sources=3)
    a1, a2 = limiter.acquire("192.0.2.1"), limiter.acquire("192.0.2.1")
    assert a1 and a2 and limiter.acquire("192.0.2.1") is None
    assert limiter.refused_per_source == 1
    b, c = limiter.acquire("192.0.2.2"), limiter.acquire("2001:db8::1")
    assert b and c and limiter.acquire("192.0.2.9") is None  # table full
    assert limiter.refused_table_full == 1
    limiter.release(a1)
    limiter.release(a1)  # twice is harmless
    assert limiter.live("192.0.2.1") == 1
    limiter.release(b)
    assert limiter.acquire("192.0.2.9") is not None and len(limiter) == 3


def test_once_set_forgets_the_oldest() -> None:
    once = OnceSet(capacity=2)
    assert once.first_time("a") and not once.first_time("a")
    assert once.first_time("b") and once.first_time("c")
    assert len(once) == 2 and once.first_time("a")  # "a" was forgotten
