"""The control messages of load-balancing groups: Register's group fields, Registered.member,
Challenge.features, VisitorHeader.confirm and MemberUpdate; what older peers see of them."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from muxtunnel.control import (
    FEATURE_GROUPS,
    Challenge,
    ControlError,
    MemberUpdate,
    Register,
    Registered,
    VisitorHeader,
    decode_message,
    decode_visitor_header,
    encode_message,
    encode_visitor_header,
)
from muxtunnel.model import GroupSpec, ServiceSpec

NONCE = bytes(range(32))
TAG = bytes(range(100, 132))
KEY = bytes(range(200, 232))
PROOF = bytes(64)
INSTANCE = bytes(range(16))


def body(encoded: bytes) -> dict[str, Any]:
    data: dict[str, Any] = msgpack.unpackb(encoded[2:], raw=False)
    return data


def member(**changes: Any) -> Register:
    fields: dict[str, Any] = {
        "group": "web", "group_key": KEY, "group_proof": PROOF, "weight": 3, "healthy": False,
        "instance": INSTANCE, **changes,
    }  # fmt: skip
    return Register("web-a", "tcp", 0, TAG, **fields)


def test_a_members_registration_round_trips() -> None:
    message = member()
    assert decode_message(encode_message(message)[2:]) == message
    assert "group_proof" not in repr(message)


def test_a_plain_registration_is_what_older_versions_send() -> None:
    wire = body(encode_message(Register("web", "tcp", 0, TAG)))
    assert set(wire) == {"kind", "service", "type", "remote_port", "tag"}


def test_register_of_a_member_spec() -> None:
    spec = ServiceSpec("web-a", "tcp", "127.0.0.1", 8001, group=GroupSpec("web", weight=2))
    message = Register.of(spec, TAG, 0, instance=INSTANCE, healthy=False)
    assert (message.group, message.weight, message.healthy) == ("web", 2, False)
    assert (message.group_key, message.group_proof) == (b"", b"")


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"group": "a b"}, "may hold only"),
        ({"group_key": b"short"}, "group_key must be 32 bytes"),
        ({"group_proof": b""}, "group_proof must be 64 bytes"),
        ({"group_key": b"", "group_proof": PROOF}, "group_key must be 32 bytes"),
        ({"weight": 1001}, "between 0 and 1000"),
        ({"weight": True}, "weight must be an integer"),
        ({"healthy": 1}, "healthy must be true or false"),
        ({"instance": b""}, "instance must be 16 bytes"),
        ({"group": None}, "go with group"),
    ],
)
def test_malformed_group_fields_are_refused(changes: dict[str, Any], what: str) -> None:
    wire = body(encode_message(member()))
    wire.update(changes)
    if wire.get("group") is None:
        wire.pop("group")
    raw = msgpack.packb(wire, use_bin_type=True)
    with pytest.raises(ControlError, match=what):
        decode_message(raw)


def test_registered_names_the_member() -> None:
    message = Registered("web-a", "tcp", "0.0.0.0", 8000, TAG, member="host/web-a")
    assert decode_message(encode_message(message)[2:]) == message
    assert "member" not in body(encode_message(dataclasses.replace(message, member=None)))


def test_challenge_features_are_an_extension() -> None:
    plain = Challenge(1, NONCE)
    assert set(body(encode_message(plain))) == {"kind", "version", "server_nonce"}
    offered = Challenge(1, NONCE, (FEATURE_GROUPS,))
    assert decode_message(encode_message(offered)[2:]) == offered
    wire = body(encode_message(offered))
    wire["features"] = "groups"
    with pytest.raises(ControlError, match="features must be a list"):
        decode_message(msgpack.packb(wire, use_bin_type=True))


def test_the_visitor_headers_confirm_flag() -> None:
    plain = VisitorHeader("web-a", "tcp", "127.0.0.1", 5000)
    assert "confirm" not in body(encode_visitor_header(plain))
    asked = dataclasses.replace(plain, confirm=True)
    assert decode_visitor_header(encode_visitor_header(asked)[2:]) == asked
    wire = body(encode_visitor_header(asked))
    wire["confirm"] = "yes"
    with pytest.raises(ControlError, match="confirm must be true or false"):
        decode_visitor_header(msgpack.packb(wire, use_bin_type=True))


def test_member_update() -> None:
    message = MemberUpdate("web-a", False, 2, "connect: Connection refused")
    assert decode_message(encode_message(message)[2:]) == message
    for changes, what in (
        ({"healthy": None}, "healthy must be true or false"),
        ({"weight": -1}, "between 0 and 1000"),
        ({"detail": "x" * 256}, "detail must be"),
        ({"service": ""}, "service name"),
    ):
        wire = body(encode_message(message))
        wire.update(changes)
        with pytest.raises(ControlError, match=what):
            decode_message(msgpack.packb(wire, use_bin_type=True))


def test_older_peers_ignore_what_they_do_not_know() -> None:
    """Unknown keys are ignored: a Register with group fields decodes (minus them) by a
    reader that knows only the fields of version 1, which is what the client guards against
    by sending group fields only to servers that listed FEATURE_GROUPS."""
    wire = body(encode_message(member()))
    known = {f.name for f in dataclasses.fields(Register)} - {
        "group", "group_key", "group_proof", "weight", "healthy", "instance",
    }  # fmt: skip
    old = {k: v for k, v in wire.items() if k in known or k == "kind"}
    assert decode_message(msgpack.packb(old, use_bin_type=True)) == Register("web-a", "tcp", 0, TAG)
