"""The health checks of a client's group members: one `balance.HealthMonitor` per service with
a `health:` key, running for as long as the service is configured, across sessions.

Each change of a target's health goes to `report` (the client tells the server over the live
control channel, if there is one; a later registration carries the health of its moment). The
prober (and h11, for http checks) is imported only by a client that has a check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from muxtunnel.client._state import ServiceState

__all__ = ["HealthChecks"]


class HealthChecks:
    """Starts and stops the checks of services; `run` holds the task group they run in."""

    def __init__(self, report: Callable[[ServiceState], Awaitable[None]]) -> None:
        self._report = report
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Run the checks until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep_forever()

    def start(self, state: ServiceState) -> None:
        """Check `state`'s target, if it is a group member with a `health:` key."""
        group = state.spec.group
        if group is None or group.health is None or self._tg is None:
            return
        from muxtunnel.balance.health import HealthChange
        from muxtunnel.balance.probe import HealthMonitor, make_probe

        spec, settings = state.spec, group.health

        async def on_change(change: HealthChange) -> None:
            state.health_detail = change.detail
            await self._report(state)

        probe = make_probe(settings, spec.local_host, spec.local_port)
        state.monitor = HealthMonitor(settings, probe, on_change, name=spec.name)
        state.check_scope = scope = anyio.CancelScope()

        async def check() -> None:
            assert state.monitor is not None
            with scope:
                await state.monitor.run()

        self._tg.start_soon(check)

    def stop(self, state: ServiceState) -> None:
        """Stop `state`'s check (it may be started again with a new spec)."""
        if state.check_scope is not None:
            state.check_scope.cancel()
        state.check_scope = state.monitor = None
        state.health_detail = ""
