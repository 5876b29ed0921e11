"""Which web pages a process serves: `listen`'s dashboard, `up`'s HTTP inspector.

The inspector is on when asked for (`--inspect`, `client.inspect`), or by default when the
config has http services, at `DEFAULT_INSPECT` or one of the ports after it. Requests are
captured only while it serves: the client gets its `Captures` ring once the page listens. The
config at start decides; a reload that adds the first http service does not start it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import anyio.abc

from muxtunnel.model import (
    DEFAULT_INSPECT,
    INSPECT_PORTS_TRIED,
    ClientConfig,
    Endpoint,
    ServerConfig,
)
from muxtunnel.status import Status

if TYPE_CHECKING:
    from muxtunnel.captures import Captures

__all__ = ["inspector_endpoint", "start_pages"]


def inspector_endpoint(config: ClientConfig) -> tuple[Endpoint, int] | None:
    """Where the inspector binds and how many ports it may try (None: off)."""
    if config.inspect == "off":
        return None
    if config.inspect == "auto":
        if not any(spec.type == "http" for spec in config.services):
            return None
        return Endpoint(*DEFAULT_INSPECT), INSPECT_PORTS_TRIED
    return config.inspect, 1


async def start_pages(
    tg: anyio.abc.TaskGroup,
    config: ServerConfig | ClientConfig,
    status: Callable[[], Status],
    capture: Callable[[Captures], None],
) -> dict[str, int]:
    """Start the pages `config` asks for in `tg`; their bound ports, by name.

    `capture` hands the client the ring its http visitors' requests go to, once the inspector
    serves. `TransportError` if a page's address (one given, not the default) cannot be bound.
    """
    if isinstance(config, ServerConfig):
        if config.dashboard is None:
            return {}
        from muxtunnel.web.dashboard import run_dashboard

        return {"dashboard": await tg.start(run_dashboard, config.dashboard, status)}
    where = inspector_endpoint(config)
    if where is None:
        return {}
    from muxtunnel.captures import Captures
    from muxtunnel.web.inspector import run_inspector

    endpoint, tries = where
    captures = Captures()
    port = await tg.start(partial(run_inspector, tries=tries), endpoint, status, captures)
    if port is None:
        return {}
    capture(captures)
    return {"inspect": port}
