"""The control messages of private services: what they refuse, and how older peers see them."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest

from muxtunnel.control import (
    ControlError,
    Register,
    Registered,
    Visit,
    Visited,
    VisitorKeys,
    decode_message,
    encode_message,
)
from muxtunnel.model import HttpOptions, ServiceSpec

TAG = bytes(range(32))


def test_only_tcp_and_udp_services_are_private_or_visited() -> None:
    with pytest.raises(ValueError, match="tcp and udp"):
        Register("web", "http", 0, TAG, private=True)
    with pytest.raises(ValueError, match="tcp and udp"):
        Visit("web", "https", TAG)  # type: ignore[arg-type]
    Register("dns", "udp", 0, TAG, private=True)


def test_only_a_private_registration_has_no_public_port() -> None:
    with pytest.raises(ValueError, match="public_port"):
        Registered("web", "tcp", "example.com", 0, TAG)
    assert Registered("ssh", "tcp", "example.com", 0, TAG, private=True).public_port == 0


def test_sealed_keys_are_bytes_of_a_bounded_size() -> None:
    with pytest.raises(ValueError, match="too many"):
        VisitorKeys("ssh", bytes(28 + 33 * 32))
    with pytest.raises(ValueError, match="bytes"):
        VisitorKeys("ssh", "text")  # type: ignore[arg-type]
    body = msgpack.packb({"kind": "visitor_keys", "service": "ssh", "visitor_keys": "x"})
    with pytest.raises(ControlError, match="visitor_keys"):
        decode_message(body)


def test_a_public_registration_is_what_older_versions_send() -> None:
    """New fields stay off the wire at their defaults: an older server reads it as before."""
    body = encode_message(Register("web", "tcp", 8080, TAG))[2:]
    assert set(msgpack.unpackb(body, raw=False)) == {
        "kind",
        "service",
        "type",
        "remote_port",
        "tag",
    }


def test_an_older_server_answer_lacks_private_and_says_so() -> None:
    """A server that does not know `private` answers a Registered without it (and with a public
    port): the client sees `private` False and refuses it (`client._session`)."""
    body = msgpack.packb(
        {"kind": "registered", "service": "ssh", "type": "tcp", "public_host": "h",
         "public_port": 2222, "tag": TAG, "unknown": 1},
        use_bin_type=True,
    )  # fmt: skip
    answer = decode_message(body)
    assert isinstance(answer, Registered) and not answer.private


def test_register_of_a_private_spec_asks_for_no_port() -> None:
    spec = ServiceSpec("ssh", "tcp", "127.0.0.1", 22, remote_port=2222, private=True)
    request = Register.of(spec, TAG, 2222, keys=b"k" * 60)
    assert (request.private, request.remote_port, request.visitor_keys) == (True, 0, b"k" * 60)
    web = ServiceSpec("w", "http", "127.0.0.1", 80, http=HttpOptions())
    assert not Register.of(web, TAG, 0).private


def test_visited_round_trips_with_its_compression() -> None:
    message = Visited("ssh", "tcp", TAG, True, "zstd", 3)
    assert decode_message(encode_message(message)[2:]) == message
