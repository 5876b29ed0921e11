from __future__ import annotations

import pytest

from muxtunnel.model import PortRanges, ServiceSpec
from muxtunnel.specs import (
    SpecError,
    parse_host_port,
    parse_port,
    parse_port_ranges,
    parse_service_spec,
    validate_service_name,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3000", ServiceSpec("tcp-3000", "tcp", "127.0.0.1", 3000, 0)),
        ("3000:9000", ServiceSpec("tcp-3000", "tcp", "127.0.0.1", 3000, 9000)),
        ("127.0.0.1:3000", ServiceSpec("tcp-3000", "tcp", "127.0.0.1", 3000, 0)),
        ("localhost:3000", ServiceSpec("tcp-3000", "tcp", "localhost", 3000, 0)),
        ("db=10.0.0.5:5432:15432", ServiceSpec("db", "tcp", "10.0.0.5", 5432, 15432)),
        ("web=8080", ServiceSpec("web", "tcp", "127.0.0.1", 8080, 0)),
        ("web=8080:0", ServiceSpec("web", "tcp", "127.0.0.1", 8080, 0)),
        ("[::1]:3000", ServiceSpec("tcp-3000", "tcp", "::1", 3000, 0)),
        ("v6=[fe80::1]:3000:9000", ServiceSpec("v6", "tcp", "fe80::1", 3000, 9000)),
        (" 3000 ", ServiceSpec("tcp-3000", "tcp", "127.0.0.1", 3000, 0)),
    ],
)
def test_service_spec_forms(text: str, expected: ServiceSpec) -> None:
    assert parse_service_spec(text, "tcp") == expected


def test_service_spec_default_name_uses_type() -> None:
    spec = parse_service_spec("5353:53", "udp")
    assert spec == ServiceSpec("udp-5353", "udp", "127.0.0.1", 5353, 53)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "missing local port"),
        ("web=", "missing local port"),
        ("=3000", "service name must not be empty"),
        ("bad name=3000", "may hold only"),
        ("0", "between 1 and 65535"),
        ("70000", "between 1 and 65535"),
        ("3000:70000", "remote port must be between 0 and 65535"),
        ("3000:abc", "remote port must be a number"),
        ("host:abc", "local port must be a number"),
        ("a:b:c:d", "too many ':'"),
        ("::1:3000", "too many ':'"),
        ("[::1]3000", "expected ':PORT'"),
        ("[::1:3000", "missing ']'"),
        ("[nothost]:3000", "not a valid IPv6"),
        ("ho st:3000", "not a valid host"),
        ("3000:-1", "remote port must be a number"),
        ("\uff13\uff10\uff10\uff10", "must be a number"),  # fullwidth digits
    ],
)
def test_service_spec_errors_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_service_spec(text, "tcp")


def test_service_spec_rejects_unknown_type() -> None:
    with pytest.raises(SpecError, match="one of tcp, udp, http, https"):
        parse_service_spec("3000", "sctp")  # type: ignore[arg-type]


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_service_name_length_limit() -> None:
    assert validate_service_name("a" * 64) == "a" * 64
    with pytest.raises(SpecError, match="at most 64"):
        validate_service_name("a" * 65)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024-65535,8080", ((1024, 65535),)),
        ("8080", ((8080, 8080),)),
        ("9000-9010, 8080 ,8081", ((8080, 8081), (9000, 9010))),
        ("10-20,15-30,31", ((10, 31),)),
        ("1-65535", ((1, 65535),)),
    ],
)
def test_port_ranges_sorted_and_merged(text: str, expected: tuple[tuple[int, int], ...]) -> None:
    assert parse_port_ranges(text) == PortRanges(expected)


def test_port_ranges_membership_and_str() -> None:
    ranges = parse_port_ranges("8080,1024-2000")
    assert 8080 in ranges and 1500 in ranges and 80 not in ranges
    assert str(ranges) == "1024-2000,8080"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty item"),
        ("80,", "empty item"),
        ("0-100", "between 1 and 65535"),
        ("100-50", "backwards"),
        ("a-b", "must be a number"),
        ("1-2-3", "must be a number"),
        ("65536", "between 1 and 65535"),
    ],
)
def test_port_range_errors(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_port_ranges(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0.0:7835", ("0.0.0.0", 7835)),
        ("[::1]:7835", ("::1", 7835)),
        ("[::]", ("::", 7835)),
        ("example.com", ("example.com", 7835)),
        ("example.com:80", ("example.com", 80)),
        ("9000", ("0.0.0.0", 9000)),
        (":9000", ("0.0.0.0", 9000)),
    ],
)
def test_host_port_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, default_port=7835, default_host="0.0.0.0") == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "must not be empty"),
        ("example.com", "missing port"),
        ("9000", "missing host"),
        (":9000", "missing host"),
        ("::1:7835", "brackets"),
        ("[::1]x", "expected ':PORT'"),
        ("host:0", "between 1 and 65535"),
        ("host:", "must be a number"),
    ],
)
def test_host_port_errors_without_defaults(text: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        parse_host_port(text)


def test_parse_port_zero_only_when_allowed() -> None:
    assert parse_port("0", allow_zero=True) == 0
    with pytest.raises(SpecError):
        parse_port("0")
