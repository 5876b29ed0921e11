"""`muxtunnel up` with several servers (`client.servers`): every service on every server.

One `Client` per server, each with its own session, reconnects, resumption and visitors: a
server that goes away (or a session that breaks) is that client's business only, and the
visitors of the others never notice. The clients share nothing but the config they were made
from and the process's instance id; `Clients` runs them side by side and merges what they
show into one status snapshot (a `ServerRow` per server). A failure no retry can fix (a
token one server refuses) ends `up` as it does with one server: it is loud, never
half-served.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

import anyio
import anyio.abc

from muxtunnel.client._client import Client
from muxtunnel.client._state import Announce, FatalError
from muxtunnel.log import Refusals
from muxtunnel.model import ClientConfig
from muxtunnel.reload import ReloadError
from muxtunnel.status import ClientStatus, ResumeRow, TrafficRow

__all__ = ["Clients"]


class Clients:
    """Several `Client`s, one per server of `config.servers`, run and shown as one."""

    def __init__(self, config: ClientConfig, announce: Announce | None = None) -> None:
        self.config = config
        self.clients = [Client(each, announce) for each in config.per_server()]
        # One process, one instance id at every server: the nodes of one cluster then know
        # its registrations for one client's (they hold its names together), and a group
        # member's reconnect is told from another member as with one server.
        for client in self.clients[1:]:
            client.instance = self.clients[0].instance

    @property
    def refusals(self) -> Refusals:
        """Where the admin and metrics endpoints count their refusals (the first client's)."""
        return self.clients[0].refusals

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run every client until cancelled; the first `FatalError` ends them all."""
        fatal: FatalError | None = None
        async with anyio.create_task_group() as tg:

            async def one(client: Client) -> None:
                nonlocal fatal
                try:
                    await client.run()
                except FatalError as exc:  # raised as itself, not in the task group's group
                    fatal = fatal or FatalError(f"{client.server}: {exc}")
                    tg.cancel_scope.cancel()

            for client in self.clients:
                tg.start_soon(one, client)
            task_status.started()
        if fatal is not None:
            raise fatal

    async def stop(self) -> None:
        """Graceful end of every session at once (GoAway, drain, close)."""
        async with anyio.create_task_group() as tg:
            for client in self.clients:
                tg.start_soon(client.stop)

    async def apply_config(self, new: ClientConfig) -> None:
        """Put `new` in force on every server; the servers themselves are fixed at start."""
        if new.servers != self.config.servers:
            raise ReloadError("the servers changed: restart up to connect to other servers")
        for client, each in zip(self.clients, new.per_server(), strict=True):
            await client.apply_config(each)
        self.config = new

    def status(self) -> ClientStatus:
        """One snapshot of all: every server's row, session, services and connections."""
        parts = [client.status() for client in self.clients]
        sessions = tuple(
            dataclasses.replace(row, id=i)
            for i, row in enumerate(r for p in parts for r in p.sessions)
        )
        refusals: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        for part in parts:
            refusals.update(part.refusals)
            failures.update(part.resume.failures)
        resume = ResumeRow(
            resumes=sum(p.resume.resumes for p in parts),
            failures=dict(failures),
            suspended=sum(p.resume.suspended for p in parts),
            replay_bytes=sum(p.resume.replay_bytes for p in parts),
            replay_peak_bytes=max(p.resume.replay_peak_bytes for p in parts),
        )
        return ClientStatus(
            version=parts[0].version,
            server=", ".join(p.server for p in parts),
            reconnects=sum(p.reconnects for p in parts),
            sessions=sessions,
            services=tuple(row for p in parts for row in p.services),
            connections=tuple(row for p in parts for row in p.connections),
            traffic=_traffic_by_name(row for p in parts for row in p.traffic),
            refusals=dict(refusals),
            resume=resume,
            servers=tuple(row for p in parts for row in p.servers),
        )


def _traffic_by_name(rows: Iterable[TrafficRow]) -> tuple[TrafficRow, ...]:
    """A service's counters summed over the servers (one series per name, as with one)."""
    totals: dict[str, TrafficRow] = {}
    for row in rows:
        seen = totals.get(row.name)
        if seen is not None:
            row = TrafficRow(
                row.name, seen.bytes_in + row.bytes_in, seen.bytes_out + row.bytes_out,
                seen.open_connections + row.open_connections,
                seen.connections_total + row.connections_total,
            )  # fmt: skip
        totals[row.name] = row
    return tuple(totals.values())
