"""Host names as routes see them: one spelling per name, whatever the visitor typed.

A Host header, an absolute request target and a TLS SNI name all go through `normalise_host`
before any lookup, and every name a route registers goes through `normalise_domain`, so a
lookup is a plain dict access:

- case folded, one trailing dot dropped (`App.Example.COM.` == `app.example.com`);
- a port is ignored (`app.example.com:8080`), IPv6 literals keep their brackets (`[::1]`);
- Unicode names become their ASCII (punycode) form by UTS #46 / IDNA 2008 (the `idna`
  package), so `bücher.example` and `xn--bcher-kva.example` are one name;
- anything else is refused with `InvalidHostError`: empty names or labels, labels over 63
  bytes, names over 253 bytes (RFC 1035 §2.3.4), characters outside letters, digits, `-` and
  `_` (underscore is not LDH, but internal names use it and refusing it helps nobody).
"""

from __future__ import annotations

import ipaddress
import re

import idna

__all__ = ["InvalidHostError", "normalise_domain", "normalise_host"]

#: RFC 1035 §2.3.4: 63 bytes a label, 253 a name in its text form (255 on the wire).
MAX_LABEL_BYTES = 63
MAX_NAME_BYTES = 253

_ASCII_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{0,5}")


class InvalidHostError(ValueError):
    """A host name that no route can have; the message says why."""


def normalise_host(value: str | bytes) -> str:
    """The routing key of a Host header or SNI value: `HOST[:PORT]` -> lowercase ASCII host."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidHostError("host name is not valid UTF-8") from None
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if (
            end < 0
            or not _PORT.fullmatch(text[end + 2 :])
            or text[end + 1 : end + 2] not in ("", ":")
        ):
            raise InvalidHostError(f"malformed IPv6 literal {value!r}")
        try:
            address = ipaddress.IPv6Address(text[1:end])
        except ValueError:
            raise InvalidHostError(f"malformed IPv6 literal {value!r}") from None
        return f"[{address.compressed}]"
    host, colon, port = text.rpartition(":")
    if colon:
        if not _PORT.fullmatch(port):
            raise InvalidHostError(f"malformed port in host {value!r}")
        text = host
    return _normalise_name(text, value)


def normalise_domain(value: str) -> str:
    """A name a route registers: like `normalise_host`, no port; `*.example.com` allowed."""
    text = value.strip()
    if text.startswith("*."):
        return "*." + _normalise_name(text[2:], value)
    if ":" in text or text.startswith("["):
        raise InvalidHostError(f"a route's host name takes no port or address: {value!r}")
    return _normalise_name(text, value)


def _normalise_name(text: str, original: str) -> str:
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidHostError(f"empty host name in {original!r}")
    if text.isascii():
        name = text.lower()
        labels = name.split(".")
        for label in labels:
            _check_ascii_label(label, original)
            if label.startswith("xn--"):
                _check_punycode(label, original)
    else:
        labels = []
        try:
            mapped = idna.uts46_remap(text, std3_rules=False, transitional=False)
        except idna.IDNAError as exc:
            raise InvalidHostError(f"invalid international host name {original!r}: {exc}") from None
        if mapped.endswith("."):
            mapped = mapped[:-1]
        for label in mapped.split("."):
            if label.isascii():
                _check_ascii_label(label, original)
                labels.append(label)
                continue
            try:
                labels.append(idna.alabel(label).decode("ascii"))
            except (idna.IDNAError, UnicodeError) as exc:
                raise InvalidHostError(
                    f"invalid international host name {original!r}: {exc}"
                ) from None
        name = ".".join(labels)
    if len(name) > MAX_NAME_BYTES:
        raise InvalidHostError(f"host name longer than {MAX_NAME_BYTES} bytes")
    return name


def _check_ascii_label(label: str, original: str) -> None:
    if not label:
        raise InvalidHostError(f"empty label in host name {original!r}")
    if len(label) > MAX_LABEL_BYTES:
        raise InvalidHostError(f"label longer than {MAX_LABEL_BYTES} bytes in {original!r}")
    if not _ASCII_LABEL.fullmatch(label):
        raise InvalidHostError(f"invalid character in host name {original!r}")


def _check_punycode(label: str, original: str) -> None:
    try:
        idna.ulabel(label)
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidHostError(f"invalid punycode label in {original!r}: {exc}") from None
