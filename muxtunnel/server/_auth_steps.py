"""The steps of authenticating a session that registrations and visits share: the source's
failure rate limit first, then a failed attempt counted and answered, then the first success
admitted (sessions per source address, out of the pre-auth gate).

A failed authentication ends a session that has not authenticated yet; one that has (a client
adding a service after a reload) stays up for its other services, but every failure counts
against its source's rate limit.
"""

from __future__ import annotations

import anyio
import structlog

from mux import MuxStream
from muxtunnel import control
from muxtunnel.admission import Ticket
from muxtunnel.control import Error
from muxtunnel.server._host import Host

__all__ = ["AuthSteps"]

log = structlog.get_logger("muxtunnel.server")


class AuthSteps:
    """What `ClientSession` does at each authentication, whatever is authenticated."""

    host: Host
    id: int
    peer: str
    source: str
    preauth: Ticket | None
    authenticated: bool
    close_reason: str

    async def _may_try(self, channel: MuxStream, service: str) -> bool:
        """False (and the client told) when its source has failed too often lately."""
        host, now = self.host, anyio.current_time()
        if host.failures.allowed(self.source, now):
            return True
        retry = host.failures.retry_after(self.source, now)
        host.refusals.refuse(
            "auth_rate_limited",
            "auth rate limited",
            session=self.id,
            peer=self.peer,
            retry_after_s=round(retry, 1),
        )
        await control.send_message(
            channel,
            Error(
                control.RATE_LIMITED, f"too many failed attempts; retry in {retry:.0f} s", service
            ),
        )
        self.close_reason = "rate limited"
        return False

    async def _failed(self, channel: MuxStream, service: str) -> bool:
        """A failed authentication: counted, answered; False when the session must end."""
        self.host.auth_failed(self.source, anyio.current_time())
        self.host.refusals.refuse(
            "auth_failed",
            "authentication failed",
            session=self.id,
            peer=self.peer,
            service=service,
        )
        await control.send_message(
            channel,
            Error(
                control.AUTH_FAILED,
                "authentication failed: wrong token or unknown service",
                service,
            ),
        )
        if self.authenticated:
            return True
        self.close_reason = "authentication failed"
        return False

    async def _admit(self, channel: MuxStream, service: str) -> bool:
        """The session's first success: it counts against its source's sessions and leaves the
        pre-auth gate. False (and the client told) when its source has too many sessions."""
        host = self.host
        if self.authenticated:
            return True
        if not host.admit_session(self.source):
            limit = host.config.max_sessions_per_source
            host.refusals.refuse(
                "sessions_per_source",
                "session refused: too many from its address",
                peer=self.peer,
                limit=limit,
            )
            await control.send_message(
                channel,
                Error(
                    control.LIMIT_REACHED,
                    f"this address has {limit} sessions already (max_sessions_per_source)",
                    service,
                ),
            )
            self.close_reason = "too many sessions from its address"
            return False
        self.authenticated = True
        if self.preauth is not None:
            host.preauth.release(self.preauth)
        log.info("session opened", session=self.id, peer=self.peer)
        return True
