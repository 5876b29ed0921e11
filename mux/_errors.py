"""Typed errors of the core. Whose fault it is decides the class; the wire code rides along."""

from __future__ import annotations

from mux._const import GoAwayCode


class MuxError(Exception):
    """Base of every error the multiplexer raises."""


class ProtocolError(MuxError):
    """The protocol was broken. `go_away_code` is what the GoAway for it carries."""

    go_away_code: GoAwayCode = GoAwayCode.PROTOCOL_ERROR


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (or a limit). The core has queued a GoAway and is closed."""


class LocalProtocolError(ProtocolError):
    """Our caller misused the API (a write after FIN, an unknown stream, opening after GoAway)."""

    go_away_code = GoAwayCode.INTERNAL_ERROR
