"""Parsers for the short forms a user types: service specs, port ranges, `host:port` addresses.

Each parser raises `SpecError` (a `ValueError`) whose message is one readable sentence that quotes
the offending text, so the command line and the config loader can show it as it is.
"""

from __future__ import annotations

import ipaddress
import re

from muxtunnel.model import WEB_TYPES, HttpOptions, PortRanges, ServiceSpec, ServiceType

__all__ = [
    "DEFAULT_LOCAL_HOST",
    "MAX_SERVICE_NAME_CHARS",
    "SERVICE_TYPES",
    "SpecError",
    "format_host_port",
    "parse_host_port",
    "parse_port",
    "parse_port_ranges",
    "parse_service_spec",
    "validate_host",
    "validate_service_name",
    "validate_subdomain",
]

DEFAULT_LOCAL_HOST = "127.0.0.1"
SERVICE_TYPES: tuple[ServiceType, ...] = ("tcp", "udp", "http", "https")
#: Service names travel in control messages and log lines; 64 is plenty and keeps both short.
MAX_SERVICE_NAME_CHARS = 64

_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Host names and IPv4 literals: letters, digits, dots, dashes, underscores (no ':' or spaces).
_HOST = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_HOST_CHARS = 253  # longest DNS name
# One DNS label (RFC 1035 §2.3.4: at most 63 bytes); `_` too, as the virtual hosts accept it.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class SpecError(ValueError):
    """A spec the user typed is malformed; the message says what and where."""


def parse_port(text: str, *, what: str = "port", allow_zero: bool = False) -> int:
    """A decimal port number, 1..65535 (or 0 when `allow_zero`)."""
    text = text.strip()
    if not text.isascii() or not text.isdigit():
        raise SpecError(f"{what} must be a number, got {text!r}")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise SpecError(f"{what} must be between {low} and 65535, got {port}")
    return port


def validate_service_name(name: str) -> str:
    """Return `name` if it is a valid service name: letters, digits, `.`, `_`, `-`; ≤ 64 chars."""
    if not name:
        raise SpecError("service name must not be empty")
    if len(name) > MAX_SERVICE_NAME_CHARS:
        raise SpecError(f"service name must be at most {MAX_SERVICE_NAME_CHARS} characters")
    if not name.isascii() or not _SERVICE_NAME.fullmatch(name):
        raise SpecError(
            f"service name {name!r} may hold only letters, digits, '.', '_' and '-', "
            "and must start with a letter or digit"
        )
    return name


def validate_subdomain(label: str) -> str:
    """`label` lowercased, if it is one DNS label (letters, digits, `-`, `_`; no dots)."""
    lowered = label.lower()
    if not lowered.isascii() or not _LABEL.fullmatch(lowered):
        raise SpecError(
            f"{label!r} is not a subdomain: one DNS label of at most 63 letters, digits, '-' "
            "or '_', without dots, not starting or ending with '-'"
        )
    return lowered


def validate_host(host: str) -> str:
    """Return `host` (a name, an IPv4 or an IPv6 literal without brackets) if it looks valid."""
    if not host:
        raise SpecError("host must not be empty")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise SpecError(f"{host!r} is not a valid IPv6 address") from None
        return host
    if len(host) > _MAX_HOST_CHARS or not host.isascii() or not _HOST.fullmatch(host):
        raise SpecError(f"{host!r} is not a valid host name or address")
    return host


def _split_bracketed(text: str) -> tuple[str, str]:
    """`[v6]rest` -> (v6, rest)."""
    end = text.find("]")
    if end < 0:
        raise SpecError(f"missing ']' in {text!r}")
    host = text[1:end]
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise SpecError(f"{host!r} in brackets is not a valid IPv6 address") from None
    return host, text[end + 1 :]


def parse_host_port(
    text: str,
    *,
    default_port: int | None = None,
    default_host: str | None = None,
    allow_zero: bool = False,
) -> tuple[str, int]:
    """Parse `host:port`, `[v6]:port`, or, when the defaults allow it, `host` or `port` alone.

    `default_port` fills in a missing port (`example.com`, `[::1]`); `default_host` fills in a
    missing host (`7835`, `:7835`). An IPv6 literal needs brackets when a port follows it.
    `allow_zero`: port 0 (any free port) is allowed, for an address to bind.
    """
    text = text.strip()
    if not text:
        raise SpecError("address must not be empty")
    if text.startswith("["):
        host, rest = _split_bracketed(text)
        if not rest:
            port_text = None
        elif rest.startswith(":"):
            port_text = rest[1:]
        else:
            raise SpecError(f"expected ':PORT' after ']' in {text!r}")
    elif text.count(":") > 1:
        raise SpecError(f"put an IPv6 address in brackets, e.g. [::1]:7835, got {text!r}")
    elif ":" in text:
        host, port_text = text.split(":")
        if not host:
            if default_host is None:
                raise SpecError(f"missing host in {text!r}")
            host = default_host
        validate_host(host)
    elif text.isascii() and text.isdigit():
        if default_host is None:
            raise SpecError(f"missing host in {text!r} (expected HOST:PORT)")
        host, port_text = default_host, text
    else:
        host, port_text = validate_host(text), None
    if port_text is None:
        if default_port is None:
            raise SpecError(f"missing port in {text!r} (expected HOST:PORT)")
        return host, default_port
    return host, parse_port(port_text, allow_zero=allow_zero)


def format_host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets: what `parse_host_port` reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_port_ranges(text: str) -> PortRanges:
    """Parse `1024-65535,8080` into sorted, merged inclusive ranges."""
    ranges: list[tuple[int, int]] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise SpecError(f"empty item in port list {text!r}")
        if "-" in item:
            lo_text, _, hi_text = item.partition("-")
            lo = parse_port(lo_text, what=f"port range {item!r}")
            hi = parse_port(hi_text, what=f"port range {item!r}")
            if lo > hi:
                raise SpecError(f"port range {item!r} is backwards")
        else:
            lo = hi = parse_port(item)
        ranges.append((lo, hi))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return PortRanges(tuple(merged))


def parse_service_spec(text: str, type: ServiceType) -> ServiceSpec:
    """Parse `[NAME=][LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]` into a `ServiceSpec` of `type`.

    A first part that is all digits is the local port, so `3000:9000` maps local port 3000 to
    remote port 9000, while `127.0.0.1:3000` names the host and lets the server pick the remote
    port (0). IPv6 hosts go in brackets: `[::1]:3000`. The default name is `{type}-{local_port}`.
    HTTP and HTTPS services take no REMOTE_PORT: they share the server's web ports, and their
    public name is `NAME.DOMAIN`.
    """
    if type not in SERVICE_TYPES:
        raise SpecError(f"service type must be one of {', '.join(SERVICE_TYPES)}, got {type!r}")
    spec = text.strip()
    name: str | None = None
    if "=" in spec:
        name, _, spec = spec.partition("=")
        validate_service_name(name.strip())
        name = name.strip()
    if not spec:
        raise SpecError(f"missing local port in service spec {text!r}")
    host = DEFAULT_LOCAL_HOST
    if spec.startswith("["):
        host, rest = _split_bracketed(spec)
        if not rest.startswith(":"):
            raise SpecError(f"expected ':PORT' after ']' in service spec {text!r}")
        parts = rest[1:].split(":")
        if len(parts) > 2:
            raise SpecError(f"too many ':' in service spec {text!r}")
    else:
        parts = spec.split(":")
        if len(parts) > 3:
            raise SpecError(
                f"too many ':' in service spec {text!r} (put an IPv6 host in brackets: [::1]:3000)"
            )
        first = parts[0]
        if len(parts) == 3 or (len(parts) == 2 and not (first.isascii() and first.isdigit())):
            host = validate_host(first)
            parts = parts[1:]
    local_port = parse_port(parts[0], what="local port")
    remote_port = parse_port(parts[1], what="remote port", allow_zero=True) if len(parts) > 1 else 0
    web = type in WEB_TYPES
    if web and len(parts) > 1:
        raise SpecError(
            f"an {type} service takes no remote port ({text!r}): it is reached by its name on "
            "the server's shared port; use [NAME=][LOCAL_HOST:]LOCAL_PORT"
        )
    name = name if name is not None else f"{type}-{local_port}"
    if web:
        try:
            validate_subdomain(name)
        except SpecError:
            raise SpecError(
                f"service name {name!r} is its public name NAME.DOMAIN: one DNS label, "
                "letters, digits and '-' (no dots)"
            ) from None
    return ServiceSpec(
        name=name,
        type=type,
        local_host=host,
        local_port=local_port,
        remote_port=remote_port,
        http=HttpOptions() if web else None,
    )
