"""The control channel of a `muxtunnel visit` session: one `Visit` per private service, then the
server's notices (its provider came or went; a visitor token was revoked).

The exchange is `up`'s (`Control.hello`, the same nonces and channel binding) with the
visitor's own tags (`muxtunnel.visitauth`): the visitor token proves the right to visit, and
the server proves it holds the same key, so a visitor never sends its bytes to a server that
could not have been told the token's key by the service's provider (or its operator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import structlog

from muxtunnel import control
from muxtunnel.auth import verify
from muxtunnel.client._session import Control
from muxtunnel.client._state import FatalError, RetryableError
from muxtunnel.control import Error, Presence, Visit, Visited
from muxtunnel.limits import ServiceTraffic
from muxtunnel.model import Secret, VisitSpec
from muxtunnel.status import ServiceRow
from muxtunnel.udp import UdpCounters
from muxtunnel.visitauth import visit_server_tag, visit_tag, visitor_key

__all__ = ["VisitControl", "VisitState"]

log = structlog.get_logger("muxtunnel.visit")


@dataclass(slots=True)
class VisitState:
    """What `visit` knows of one private service while it runs."""

    spec: VisitSpec
    #: Where it is served locally, once bound ("HOST:PORT").
    bound: str | None = None
    #: The current session's server granted the visit.
    granted: bool = False
    #: Its provider is registered on the server now (as the server last said).
    online: bool = False
    #: Agreed for this visitor's streams (None: they travel as they are), and the level.
    compression: str | None = None
    compression_level: int = 0
    #: The line `NAME tcp HOST:PORT -> NAME@SERVER` was printed.
    announced: bool = False
    #: Why the server revoked its visitor token (None: it did not): never visited again.
    revoked: str | None = None
    udp: UdpCounters = field(default_factory=UdpCounters)

    def row(self, traffic: ServiceTraffic | None, server: str) -> ServiceRow:
        """The service as a status row: `public` is where it is served locally."""
        spec, udp = self.spec, self.udp
        dropped = None
        if spec.type == "udp":
            open_, total, bytes_in, bytes_out = 0, udp.flows_opened, udp.bytes_in, udp.bytes_out
            dropped = udp.dropped()
        elif traffic is None:
            open_ = total = bytes_in = bytes_out = 0
        else:
            open_, total = len(traffic.live), traffic.connections_total
            bytes_in, bytes_out = traffic.bytes_in, traffic.bytes_out
        return ServiceRow(
            name=spec.name,
            type=spec.type,
            public=self.bound if self.granted else None,
            open_connections=open_,
            connections_total=total,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            compression=self.compression,
            udp_dropped=dropped,
            local=f"{spec.name}@{server}",
            private=True,
            provider_online=self.online if self.granted else None,
        )


class VisitControl(Control):
    """`Control` for a visitor session: visits instead of registrations."""

    RESUMES = False  # nothing derives a resume key: a visitor's session is never resumed

    async def visit(self, state: VisitState, token: Secret | None, *, first: bool) -> None:
        """Ask to visit one private service; updates `state`.

        Raises `FatalError` for what no retry fixes (on the first session, any refusal but a
        rate limit), `RetryableError` otherwise: after the first session, a refused token may
        also mean that the server restarted and its provider has not registered again yet.
        """
        spec = state.spec
        if token is None:
            raise FatalError(f"service {spec.name!r} has no visitor token: set --token")
        key = visitor_key(token)
        server_nonce, client_nonce = self._nonces
        tag = visit_tag(key, spec.name, spec.type, server_nonce, client_nonce, self._binding)
        level = spec.compression_level if spec.compression else 0
        await control.send_message(
            self.channel, Visit(spec.name, spec.type, tag, spec.compression, level)
        )
        reply = await control.receive_message(self.channel)
        if isinstance(reply, Error):
            message = f"service {spec.name!r}: {reply.message}"
            if reply.code == control.AUTH_FAILED:
                message = (
                    f"service {spec.name!r}: the server refused the visitor token (wrong or "
                    "revoked, or no provider of this private service has registered since the "
                    "server started)"
                )
                tls = self._config.tls
                if tls is not None and tls.insecure:
                    message += " (with --insecure TLS this is also what a man in the middle "
                    message += "looks like: pin the server's certificate)"
            if first and reply.code != control.RATE_LIMITED:
                raise FatalError(message)
            raise RetryableError(message)
        if not isinstance(reply, Visited) or reply.service != spec.name:
            raise control.ControlError(f"unexpected answer to visiting {spec.name!r}")
        expected = visit_server_tag(
            key, spec.name, spec.type, server_nonce, client_nonce, self._binding
        )
        if not verify(reply.tag, expected):
            raise FatalError("the server could not prove it knows the visitor token: refusing it")
        state.granted, state.online = True, reply.online
        state.compression = reply.compression if spec.compression else None
        state.compression_level = reply.compression_level or spec.compression_level
        log.info("visit granted", service=spec.name, type=spec.type, provider_online=reply.online,
                 compression=state.compression)  # fmt: skip
        if not reply.online:
            log.warning("the provider is offline: connections are reset until it is back",
                        service=spec.name)  # fmt: skip

    async def watch_visits(
        self,
        on_presence: Callable[[str, bool], None],
        on_revoked: Callable[[str | None, str], None],
    ) -> None:
        """Read the server's notices until the channel ends: a provider came or went
        (`on_presence`), a visitor token was revoked (`on_revoked`, which may raise)."""
        try:
            while True:
                message = await control.receive_message(self.channel)
                if isinstance(message, Presence):
                    on_presence(message.service, message.online)
                elif isinstance(message, Error) and message.code == control.ACCESS_REVOKED:
                    on_revoked(message.service, message.message)
                elif isinstance(message, Error):
                    log.warning("server error", code=message.code, message=message.message,
                                service=message.service)  # fmt: skip
        except (anyio.EndOfStream, anyio.BrokenResourceError, control.ControlError):
            pass
