from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import anyio
import msgpack  # type: ignore[import-untyped]
import pytest
from anyio.abc import ByteStream
from hypothesis import given, settings
from hypothesis import strategies as st

from muxtunnel import framing
from muxtunnel.control import (
    AUTH_FAILED,
    BAD_REQUEST,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Challenge,
    ControlError,
    Error,
    Hello,
    Message,
    Presence,
    Register,
    Registered,
    Unregister,
    Visit,
    Visited,
    VisitorHeader,
    VisitorKeys,
    decode_message,
    encode_message,
    encode_visitor_header,
    read_visitor_header,
    receive_message,
    send_message,
)

T = TypeVar("T")
NONCE = bytes(range(32))
TAG = bytes(range(100, 132))


class ScriptedStream(ByteStream):
    """Hands out `data` in chunks of at most `chunk` bytes (and never more than asked), then EOF.

    Records how many bytes were handed out, and everything sent to it.
    """

    def __init__(self, data: bytes = b"", chunk: int = 1 << 30) -> None:
        self.data = data
        self.chunk = chunk
        self.consumed = 0
        self.sent = bytearray()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.consumed >= len(self.data):
            raise anyio.EndOfStream
        size = min(max_bytes, self.chunk, len(self.data) - self.consumed)
        out = self.data[self.consumed : self.consumed + size]
        self.consumed += size
        return out

    async def send(self, item: bytes) -> None:
        self.sent += item

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """Run on a real event loop."""

    async def main() -> T:
        return await fn()

    return anyio.run(main)


def drive(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine that never suspends (ScriptedStream never does) without an event loop.

    Hundreds of hypothesis examples stay fast this way.
    """
    coro = fn()
    try:
        coro.send(None)
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise AssertionError("coroutine suspended")


def frame(wire: object) -> bytes:
    body: bytes = msgpack.packb(wire, use_bin_type=True)
    return struct.pack(">H", len(body)) + body


SAMPLES: list[Message] = [
    Hello(PROTOCOL_VERSION, NONCE, "laptop"),
    Hello(PROTOCOL_VERSION, NONCE, ""),
    Challenge(PROTOCOL_VERSION, NONCE),
    Register("web", "tcp", 8080, TAG),
    Register("dns", "udp", 0, TAG),
    Registered("web", "tcp", "tunnel.example.com", 8080, TAG),
    Unregister("web"),
    Error(AUTH_FAILED, "authentication failed", "web"),
    Error(BAD_REQUEST, "", None),
    Register("ssh", "tcp", 0, TAG, private=True, visitor_keys=bytes(28 + 64)),
    Registered("ssh", "tcp", "tunnel.example.com", 0, TAG, private=True),
    Visit("ssh", "tcp", TAG),
    Visit("ssh", "tcp", TAG, "zstd", 3),
    Visited("dns", "udp", TAG, False),
    Presence("ssh", True),
    VisitorKeys("ssh", bytes(28 + 32)),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_round_trip_whole_and_byte_by_byte(message: Message, chunk: int) -> None:
    out = ScriptedStream()
    run(lambda: send_message(out, message))
    trailing = encode_message(Unregister("next"))
    stream = ScriptedStream(bytes(out.sent) + trailing, chunk=chunk)
    assert run(lambda: receive_message(stream)) == message
    assert run(lambda: receive_message(stream)) == Unregister("next")  # framing kept its place


def test_wire_form_is_a_readable_map() -> None:
    body = encode_message(Register("web", "udp", 8080, TAG))[2:]
    assert msgpack.unpackb(body, raw=False) == {
        "kind": "register",
        "service": "web",
        "type": "udp",
        "remote_port": 8080,
        "tag": TAG,
    }


def test_visitor_header_round_trip_and_raw_bytes_follow() -> None:
    header = VisitorHeader("web", "tcp", "2001:db8::7", 51234)
    stream = ScriptedStream(encode_visitor_header(header) + b"GET / HTTP/1.1\r\n", chunk=2)
    assert run(lambda: read_visitor_header(stream)) == header
    assert stream.data[stream.consumed :] == b"GET / HTTP/1.1\r\n"


def test_oversize_prefix_is_refused_before_the_body_is_read() -> None:
    stream = ScriptedStream(struct.pack(">H", MAX_MESSAGE_BYTES + 1) + b"x" * 10)
    with pytest.raises(ControlError, match="exceeds"):
        run(lambda: receive_message(stream))
    assert stream.consumed == 2


def test_largest_allowed_message_is_accepted() -> None:
    # Pad a valid map with an ignored field up to exactly the limit.
    wire: dict[str, Any] = {"kind": "unregister", "service": "web", "pad": ""}
    base = len(msgpack.packb(wire, use_bin_type=True))
    wire["pad"] = "p" * (MAX_MESSAGE_BYTES - base - 2)  # str8 -> str16 header grows by 2
    data = frame(wire)
    assert len(data) == 2 + MAX_MESSAGE_BYTES
    assert run(lambda: receive_message(ScriptedStream(data))) == Unregister("web")


def test_encode_refuses_an_oversize_message() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        framing.frame({"kind": "unregister", "pad": "p" * MAX_MESSAGE_BYTES})


@pytest.mark.parametrize(
    "text",
    [
        "port 80 is not allowed (allowed: " + ",".join(map(str, range(1024, 3024, 10))) + ")",
        "\U0001f600" * 1024,
        "x" * 100_000,
        "two\nlines\x1b[31m",
    ],
    ids=["long port list", "4-byte characters", "100 000 chars", "control characters"],
)
def test_an_error_is_made_safe_at_construction_never_refused(text: str) -> None:
    """An error message used to raise ValueError over 1024 characters (and crash `listen` on a
    refusal listing a long allow_ports): now it is shortened and escaped, and always encodes."""
    error = Error(BAD_REQUEST, text)
    assert len(error.message) <= 1024 and error.message.isprintable()
    assert error.message[:20] == text[:20] or not text.isprintable()
    assert "\n" not in error.message
    decoded = decode_message(encode_message(error)[2:])
    assert decoded == error


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x00\x00", "empty message"),
        (b"\x00\x01\xc1", "undecodable"),  # 0xc1 is never used in msgpack
        (b"\x00\x02\x01\x02", "undecodable"),  # extra data after the first object
        (frame([1, 2, 3]), "not a map"),
        (frame({"service": "web"}), "lacks a string 'kind'"),
        (frame({"kind": 7}), "lacks a string 'kind'"),
        (frame({"kind": "ping"}), "unknown message kind 'ping'"),
        (frame({"kind": "visitor", "service": "w", "type": "tcp"}), "unknown message kind"),
        (
            frame(
                {"kind": "register", "service": "w", "type": "sctp", "remote_port": 1, "tag": TAG}
            ),
            "type must be one of",
        ),
        (
            frame(
                {
                    "kind": "register",
                    "service": "w",
                    "type": "tcp",
                    "remote_port": 65536,
                    "tag": TAG,
                }
            ),
            "remote_port must be between",
        ),
        (frame({"kind": "unregister"}), "lacks field 'service'"),
        (frame({"kind": "unregister", "service": 5}), "service must be a string"),
        (frame({"kind": "unregister", "service": "bad name"}), "may hold only"),
        (frame({"kind": "challenge", "version": "1", "server_nonce": NONCE}), "integer"),
        (frame({"kind": "challenge", "version": True, "server_nonce": NONCE}), "integer"),
        (frame({"kind": "challenge", "version": -1, "server_nonce": NONCE}), "between"),
        (frame({"kind": "challenge", "version": 1, "server_nonce": NONCE[:31]}), "32 bytes"),
        (frame({"kind": "challenge", "version": 1, "server_nonce": "x" * 32}), "32 bytes"),
        (
            frame({"kind": "register", "service": "w", "type": "tcp"}),
            "lacks field 'remote_port'",
        ),
        (
            frame({"kind": "register", "service": "w", "remote_port": 1, "tag": TAG}),
            "lacks field",
        ),
        (
            frame({"kind": "hello", "version": 1, "client_nonce": NONCE, "client_name": "a\nb"}),
            "printable",
        ),
        (frame({1: 2}), "undecodable"),  # strict_map_key: keys must be strings
        (b"\x00\x02\xd4\x01", "undecodable"),  # truncated ext
    ],
)
def test_garbage_raises_control_error(data: bytes, fragment: str) -> None:
    with pytest.raises(ControlError, match=fragment) as info:
        run(lambda: receive_message(ScriptedStream(data)))
    assert info.value.code == BAD_REQUEST


def test_unknown_fields_are_ignored_and_defaults_fill_gaps() -> None:
    body = msgpack.packb(
        {"kind": "error", "code": "rate_limited", "message": "slow down", "future": [1]},
        use_bin_type=True,
    )
    assert decode_message(body) == Error("rate_limited", "slow down", None)


def test_visitor_header_is_not_a_control_message_and_vice_versa() -> None:
    header = encode_visitor_header(VisitorHeader("web", "udp", "192.0.2.1", 5353))
    with pytest.raises(ControlError, match="unknown message kind 'visitor'"):
        run(lambda: receive_message(ScriptedStream(header)))
    with pytest.raises(ControlError, match="expected a visitor header"):
        run(lambda: read_visitor_header(ScriptedStream(encode_message(Unregister("web")))))


def test_eof_passes_through_at_a_boundary_and_mid_message() -> None:
    with pytest.raises(anyio.EndOfStream):
        run(lambda: receive_message(ScriptedStream(b"")))
    with pytest.raises(anyio.EndOfStream):
        run(lambda: receive_message(ScriptedStream(b"\x00")))
    whole = encode_message(Unregister("web"))
    with pytest.raises(anyio.EndOfStream):
        run(lambda: receive_message(ScriptedStream(whole[:-1])))


def test_local_construction_validates_fields() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Hello(PROTOCOL_VERSION, b"short", "x")
    with pytest.raises(ValueError, match="remote_port"):
        Register("web", "tcp", 70000, TAG)
    with pytest.raises(ValueError, match="type must be"):
        VisitorHeader("web", "sctp", "h", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="public_port"):
        Registered("web", "tcp", "h", 0, TAG)


# --- properties ---


async def _decode_all(data: bytes, chunk: int) -> None:
    stream = ScriptedStream(data, chunk=chunk)
    while True:
        await receive_message(stream)


def _only_expected_errors(data: bytes, chunk: int) -> None:
    try:
        drive(lambda: _decode_all(data, chunk))
    except (ControlError, anyio.EndOfStream):
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_random_bytes_only_raise_control_error_or_eof(data: bytes, chunk: int) -> None:
    _only_expected_errors(data, chunk)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bodies_with_correct_prefix_only_raise_control_error(body: bytes) -> None:
    _only_expected_errors(struct.pack(">H", len(body)) + body, 1 << 20)


_msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=6,
)
_field_names = st.sampled_from(
    [
        "version",
        "client_nonce",
        "kind",
        "client_name",
        "server_nonce",
        "service",
        "type",
        "remote_port",
        "tag",
        "public_host",
        "public_port",
        "code",
        "message",
        "peer_host",
        "peer_port",
        "private",
        "visitor_keys",
        "online",
    ]
)
_message_types = st.sampled_from(
    [
        "hello",
        "challenge",
        "register",
        "registered",
        "unregister",
        "error",
        "visitor",
        "x",
        "visit",
        "visited",
        "presence",
        "visitor_keys",
    ]
)


@settings(max_examples=150, deadline=None)
@given(_message_types, st.dictionaries(_field_names, _msgpack_values, max_size=8))
def test_structured_garbage_only_raises_control_error(kind: str, fields: dict[str, Any]) -> None:
    fields.pop("kind", None)
    wire = {**fields, "kind": kind}
    body = msgpack.packb(wire, use_bin_type=True)
    if len(body) <= MAX_MESSAGE_BYTES:
        _only_expected_errors(struct.pack(">H", len(body)) + body, 1 << 20)


_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
_types = st.sampled_from(["tcp", "udp"])
_nonces = st.binary(min_size=32, max_size=32)
_text = st.text(
    st.characters(categories=["L", "N", "P", "S"], include_characters=" "), min_size=1, max_size=80
)
_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, st.integers(0, 0xFFFF), _nonces, _text | st.just("")),
    st.builds(Challenge, st.integers(0, 0xFFFF), _nonces),
    st.builds(Register, _names, _types, st.integers(0, 65535), _nonces),
    st.builds(Registered, _names, _types, _text, st.integers(1, 65535), _nonces),
    st.builds(Unregister, _names),
    st.builds(Visit, _names, _types, _nonces),
    st.builds(Visited, _names, _types, _nonces, st.booleans()),
    st.builds(Presence, _names, st.booleans()),
    st.builds(VisitorKeys, _names, st.binary(max_size=28 + 32 * 32)),
    st.builds(Error, st.from_regex(r"[a-z_]{1,20}", fullmatch=True), _text, st.none() | _names),
)


@settings(max_examples=200, deadline=None)
@given(_messages, st.integers(1, 16))
def test_encode_decode_round_trip(message: Message, chunk: int) -> None:
    data = encode_message(message)
    assert decode_message(data[2:]) == message
    assert drive(lambda: receive_message(ScriptedStream(data, chunk=chunk))) == message


@settings(max_examples=100, deadline=None)
@given(st.builds(VisitorHeader, _names, _types, _text, st.integers(0, 65535)))
def test_visitor_header_round_trip(header: VisitorHeader) -> None:
    data = encode_visitor_header(header)
    assert drive(lambda: read_visitor_header(ScriptedStream(data, chunk=5))) == header
