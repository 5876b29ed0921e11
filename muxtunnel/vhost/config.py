"""Limits and timeouts of the virtual-host engine, with where each default comes from."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VhostConfig"]


@dataclass(frozen=True, slots=True)
class VhostConfig:
    """Everything the engine enforces; one instance, validated when built."""

    #: Request line + headers, in bytes (h11's `max_incomplete_event_size`). nginx allows
    #: 1 KiB + 4 x 8 KiB (`client_header_buffer_size`, `large_client_header_buffers`).
    max_header_bytes: int = 32 * 1024
    #: Header fields per request: Apache's `LimitRequestFields` default.
    max_header_count: int = 100
    #: Status line + headers of a service's response; Set-Cookie-heavy apps need more room
    #: than requests do, and the service is the tunnel user's own.
    max_response_header_bytes: int = 64 * 1024
    #: The whole request head must arrive within this many seconds of its first byte (and the
    #: first request within this of the accept): slowloris. frp's `connReadTimeout` is 10 s.
    head_timeout_s: float = 10.0
    #: A keep-alive connection may sit idle (no request, no body byte) this long. nginx's
    #: `keepalive_timeout` is 75 s, `client_body_timeout` 60 s.
    idle_timeout_s: float = 60.0
    #: The service must start its response this long after the request was sent (504 after).
    #: nginx `proxy_read_timeout` and frp's HTTP response header timeout are both 60 s.
    response_timeout_s: float = 60.0
    #: Opening the upstream (a mux stream in production) may take this long (504 after).
    upstream_open_timeout_s: float = 10.0
    #: A send to either side may wait this long for room (a peer that stopped reading).
    send_timeout_s: float = 60.0
    #: TLS: the ClientHello must arrive within this long (the same reasoning as the head).
    client_hello_timeout_s: float = 10.0
    #: TLS termination: the visitor's handshake must finish within this long.
    tls_handshake_timeout_s: float = 10.0
    #: Concurrent connections from one source (IPv4 address or IPv6 /64). Browsers open ~6 per
    #: host; 256 leaves room for a whole office behind one NAT.
    max_connections_per_source: int = 256
    #: Sources tracked at once (each entry is one live source: a global cap as well).
    max_sources: int = 65536
    #: After an error response, read and discard the visitor's leftovers this long / this much
    #: before closing, so its kernel does not turn our response into a reset.
    linger_s: float = 2.0
    linger_bytes: int = 256 * 1024
    #: Names remembered for "log unknown SNI once per name".
    unknown_names_remembered: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "max_header_bytes",
            "max_header_count",
            "max_response_header_bytes",
            "max_connections_per_source",
            "max_sources",
            "linger_bytes",
            "unknown_names_remembered",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "head_timeout_s",
            "idle_timeout_s",
            "response_timeout_s",
            "upstream_open_timeout_s",
            "send_timeout_s",
            "client_hello_timeout_s",
            "tls_handshake_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if self.linger_s < 0:
            raise ValueError("linger_s cannot be negative")
