"""Checks of the fields of control messages (`muxtunnel.control`): each raises `ValueError`,
which `control` turns into `ControlError` where the bytes came from a peer."""

from __future__ import annotations

from typing import Any

from muxtunnel.auth import KEY_BYTES
from muxtunnel.model import MAX_WEIGHT
from muxtunnel.specs import SERVICE_TYPES, SpecError, validate_service_name
from muxtunnel.visitauth import MAX_VISITOR_TOKENS, SEALED_OVERHEAD_BYTES

__all__ = [
    "MAX_LIST_ITEMS",
    "MAX_TEXT_CHARS",
    "check_bool",
    "check_bytes",
    "check_compression",
    "check_group_options",
    "check_int",
    "check_sealed_keys",
    "check_service",
    "check_text",
    "check_type",
    "check_web_options",
    "optional_text",
    "texts",
]

#: Names and host strings.
MAX_TEXT_CHARS = 255
#: Web options: at most this many domains, locations, headers (they share one message anyway).
MAX_LIST_ITEMS = 32


def check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def check_bool(name: str, value: object) -> None:
    if type(value) is not bool:
        raise ValueError(f"{name} must be true or false")


def check_bytes(name: str, value: object, size: int) -> None:
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


def check_text(name: str, value: object, max_chars: int, *, empty_ok: bool = False) -> None:
    if type(value) is not str:
        raise ValueError(f"{name} must be a string")
    if len(value) > max_chars or (not value and not empty_ok):
        raise ValueError(f"{name} must be 1..{max_chars} characters")
    if not value.isprintable():
        raise ValueError(f"{name} must hold only printable characters")


def check_service(value: object) -> None:
    if type(value) is not str:
        raise ValueError("service must be a string")
    try:
        validate_service_name(value)
    except SpecError as exc:
        raise ValueError(str(exc)) from None


def check_type(value: object) -> None:
    if value not in SERVICE_TYPES:
        raise ValueError(f"type must be one of {', '.join(SERVICE_TYPES)}")


def check_sealed_keys(value: object) -> None:
    """Sealed visitor keys (`muxtunnel.visitauth`): bytes, empty or of a sealed blob's size."""
    if type(value) is not bytes:
        raise ValueError("visitor_keys must be bytes")
    if value and len(value) > SEALED_OVERHEAD_BYTES + MAX_VISITOR_TOKENS * KEY_BYTES:
        raise ValueError("visitor_keys holds too many keys")


def check_compression(value: object) -> None:
    if value is not None:
        check_text("compression", value, 16)


def optional_text(name: str, value: object, max_chars: int = MAX_TEXT_CHARS) -> None:
    if value is not None:
        check_text(name, value, max_chars)


def texts(name: str, value: object, size: int = 1) -> tuple[Any, ...]:
    """A list of strings (`size` 2: of string pairs) as a tuple; msgpack gives lists."""
    if not isinstance(value, list | tuple) or len(value) > MAX_LIST_ITEMS:
        raise ValueError(f"{name} must be a list of at most {MAX_LIST_ITEMS} items")
    items: list[Any] = []
    for item in value:
        if size == 1:
            check_text(name, item, MAX_TEXT_CHARS)
            items.append(item)
            continue
        if not isinstance(item, list | tuple) or len(item) != size:
            raise ValueError(f"{name} must be a list of pairs")
        for part in item:
            check_text(name, part, MAX_TEXT_CHARS, empty_ok=True)
        items.append(tuple(item))
    return tuple(items)


def check_web_options(message: Any) -> None:
    """The web options of a `Register` (lists made tuples: msgpack gives lists)."""
    if message.proxy_protocol not in (None, "v1", "v2"):
        raise ValueError("proxy_protocol must be 'v1' or 'v2'")
    optional_text("subdomain", message.subdomain, 63)
    optional_text("host_rewrite", message.host_rewrite)
    set_ = object.__setattr__
    set_(message, "custom_domains", texts("custom_domains", message.custom_domains))
    set_(message, "locations", texts("locations", message.locations))
    set_(message, "set_headers", texts("set_headers", message.set_headers, 2))
    set_(message, "remove_headers", texts("remove_headers", message.remove_headers))
    if message.basic_auth is not None:
        (pair,) = texts("basic_auth", [message.basic_auth], 2)
        set_(message, "basic_auth", pair)
    timeout = message.response_timeout_s
    if timeout is not None and (type(timeout) not in (int, float) or not 0 < timeout <= 86400):
        raise ValueError("response_timeout_s must be a number of seconds, 0 < s <= 86400")


#: Sizes of a group member's proof (`auth.GROUP_KEY_BYTES`, `GROUP_PROOF_BYTES`), and of the
#: random id of its client process (128 bits: no two processes draw the same).
_GROUP_KEY_BYTES = 32
_GROUP_PROOF_BYTES = 64
INSTANCE_BYTES = 16


def check_group_options(message: Any) -> None:
    """The group fields of a `Register`: all at their defaults unless `group` is set."""
    if message.group is None:
        if (message.group_key, message.group_proof) != (b"", b""):
            raise ValueError("group_key and group_proof go with group")
        if message.instance:  # to a server that listed FEATURE_INSTANCE
            check_bytes("instance", message.instance, INSTANCE_BYTES)
        return
    check_service(message.group)
    if message.group_key or message.group_proof:
        check_bytes("group_key", message.group_key, _GROUP_KEY_BYTES)
        check_bytes("group_proof", message.group_proof, _GROUP_PROOF_BYTES)
    check_int("weight", message.weight, 0, MAX_WEIGHT)
    check_bool("healthy", message.healthy)
    check_bytes("instance", message.instance, INSTANCE_BYTES)
