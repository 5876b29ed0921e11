"""An authenticated client that opens streams of its own as fast as it can (finding 8).

    python stream_flood.py HOST PORT SERVICE TOKEN SECONDS

Authenticates like `up` (source 127.0.0.8), registers SERVICE, then opens streams for SECONDS
(waiting only when its SYN backlog is full) and prints one line: `opened N closed REASON`.
Run in a process of its own so that it does not compete with the test's honest probe.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

_TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_TESTS), str(_TESTS.parent)]  # stress.live, and bench.procstat it imports

from stress.live import AuthClient  # noqa: E402


async def main(host: str, port: int, service: str, token: str, seconds: float) -> None:
    opened = 0
    async with AuthClient((host, port), source="127.0.0.8") as client:
        await client.register(service, token)
        session = client.session
        assert session is not None
        deadline = anyio.current_time() + seconds
        try:
            while anyio.current_time() < deadline and not session.closed:
                try:
                    session.open_stream_nowait(b"x")
                    opened += 1
                except anyio.WouldBlock:
                    await anyio.sleep(0)
                if opened % 64 == 0:
                    await anyio.sleep(0)
        except anyio.BrokenResourceError:
            pass
        with anyio.move_on_after(2):
            await session.wait_closed()
        print(f"opened {opened} closed {session.close_reason}", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5]))
