"""Helpers of the registry tests: both stores behind one face, and a redis-server or a skip."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from muxtunnel.cluster import MemoryStore, RedisStore, RegistryStore
from muxtunnel.cluster.testing import RedisServer, RedisServerMissing, TlsFiles


def in_ci() -> bool:
    """CI systems set CI (GitHub Actions, GitLab: "true"); "0" or "false" count as unset."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def new_redis_server(directory: Path, tls: TlsFiles | None = None) -> RedisServer:
    """A started redis-server, or a skip (a failure under CI) when there is none."""
    try:
        server = RedisServer(directory, tls=tls)
    except RedisServerMissing as exc:
        if in_ci():
            pytest.fail(f"the Redis registry tests cannot run in CI: {exc}", pytrace=False)
        pytest.skip(f"the Redis registry tests need redis-server: {exc}")
    server.start()
    return server


class FakeClock:
    """Seconds that pass only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Registry:
    """One registry that several nodes share, and a way to let its time pass.

    Memory: one `MemoryStore` on a `FakeClock` (every node gets the same instance; time jumps).
    Redis: a new client per `store()` call, like separate processes (time passes for real).
    """

    def __init__(self, kind: str, url: str = "", prefix: str = "") -> None:
        self.kind = kind
        self.url = url
        self.prefix = prefix
        self.clock = FakeClock()
        self._memory = MemoryStore(self.clock)
        self._opened: list[RegistryStore] = []

    def store(self, *, timeout_s: float = 2.0) -> RegistryStore:
        """A node's handle on the registry."""
        if self.kind == "memory":
            return self._memory
        store = RedisStore.from_url(self.url, prefix=self.prefix, timeout_s=timeout_s)
        self._opened.append(store)
        return store

    def now(self) -> float:
        """The registry's time in seconds (for measuring how long a lease lived)."""
        return self.clock() if self.kind == "memory" else time.monotonic()

    async def pass_time(self, seconds: float) -> None:
        if self.kind == "memory":
            self.clock.advance(seconds)
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.sleep(seconds)

    async def aclose(self) -> None:
        for store in self._opened:
            await store.aclose()
