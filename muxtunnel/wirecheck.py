"""Checks of the fields of control messages, for `muxtunnel.control`.

Each raises `ValueError` naming the field; `control` turns that into `ControlError` where the
fields came from a peer's bytes. Types are checked exactly (`type(x) is int`: msgpack gives a
bool for true, and a bool is not a port).
"""

from __future__ import annotations

from muxtunnel.specs import SERVICE_TYPES, SpecError, validate_service_name

__all__ = [
    "check_bool",
    "check_bytes",
    "check_compression",
    "check_int",
    "check_service",
    "check_text",
    "check_type",
]


def check_int(name: str, value: object, low: int, high: int) -> None:
    """An int (not a bool) in `low..high`."""
    if type(value) is not int:
        raise ValueError(f"{name} must be an integer")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def check_bool(name: str, value: object) -> None:
    """True or false."""
    if type(value) is not bool:
        raise ValueError(f"{name} must be true or false")


def check_bytes(name: str, value: object, size: int) -> None:
    """Exactly `size` bytes."""
    if type(value) is not bytes or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


def check_text(name: str, value: object, max_chars: int, *, empty_ok: bool = False) -> None:
    """A printable string of 1 (0 if `empty_ok`) to `max_chars` characters."""
    if type(value) is not str:
        raise ValueError(f"{name} must be a string")
    if len(value) > max_chars or (not value and not empty_ok):
        raise ValueError(f"{name} must be 1..{max_chars} characters")
    if not value.isprintable():
        raise ValueError(f"{name} must hold only printable characters")


def check_service(value: object) -> None:
    """A valid service name."""
    if type(value) is not str:
        raise ValueError("service must be a string")
    try:
        validate_service_name(value)
    except SpecError as exc:
        raise ValueError(str(exc)) from None


def check_type(value: object) -> None:
    """A service type: "tcp" or "udp"."""
    if value not in SERVICE_TYPES:
        raise ValueError(f"type must be one of {', '.join(SERVICE_TYPES)}")


def check_compression(value: object) -> None:
    """None, or an algorithm name of at most 16 characters."""
    if value is not None:
        check_text("compression", value, 16)
