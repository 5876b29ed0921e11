"""The control messages of private services and `muxtunnel visit` (see `muxtunnel.control` for
the exchange they take part in, and `muxtunnel.visitauth` for their tags and sealed keys).

`control` decodes them with the others; they live here to keep each module readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from muxtunnel import fields
from muxtunnel.auth import TAG_BYTES
from muxtunnel.framing import Wire as _Wire
from muxtunnel.model import ServiceType

__all__ = ["ACCESS_REVOKED", "PRIVATE_TYPES", "Presence", "Visit", "Visited", "VisitorKeys"]

#: Server -> visitor, unasked: its visitor token no longer lets it in (a reload revoked it).
ACCESS_REVOKED = "access_revoked"
#: Types a private service may have.
PRIVATE_TYPES = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class Visit(_Wire):
    """Visitor -> server: reach private `service`; `tag` proves a visitor token of it
    (`visitauth.visit_tag`). Compression, as in `Register`, is for the visitor's streams."""

    WIRE_KIND: ClassVar[str] = "visit"
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("compression", "compression_level")
    service: str
    type: ServiceType
    tag: bytes
    compression: str | None = None
    compression_level: int = 0

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        if self.type not in PRIVATE_TYPES:
            raise ValueError("only tcp and udp services can be visited")
        fields.check_bytes("tag", self.tag, TAG_BYTES)
        fields.check_compression(self.compression)
        fields.check_int("compression_level", self.compression_level, 0, 22)


@dataclass(frozen=True, slots=True)
class Visited(_Wire):
    """Server -> visitor: the visit is granted; `tag` proves the server holds the same key
    (`visitauth.visit_server_tag`); `online`: the service's provider is registered now."""

    WIRE_KIND: ClassVar[str] = "visited"
    EXTENSIONS: ClassVar[tuple[str, ...]] = ("compression", "compression_level")
    service: str
    type: ServiceType
    tag: bytes
    online: bool
    compression: str | None = None
    compression_level: int = 0

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_type(self.type)
        fields.check_bytes("tag", self.tag, TAG_BYTES)
        fields.check_bool("online", self.online)
        fields.check_compression(self.compression)
        fields.check_int("compression_level", self.compression_level, 0, 22)


@dataclass(frozen=True, slots=True)
class Presence(_Wire):
    """Server -> visitor, unasked: the provider of `service` came online or went offline."""

    WIRE_KIND: ClassVar[str] = "presence"
    service: str
    online: bool

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_bool("online", self.online)


@dataclass(frozen=True, slots=True)
class VisitorKeys(_Wire):
    """Provider -> server: the visitor keys of private `service` changed (a reload); sealed
    as in its registration; answered with `Registered` or `Error`."""

    WIRE_KIND: ClassVar[str] = "visitor_keys"
    service: str
    visitor_keys: bytes

    def __post_init__(self) -> None:
        fields.check_service(self.service)
        fields.check_sealed_keys(self.visitor_keys)
