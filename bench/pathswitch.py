"""Path switch: how long a visitor's bytes stop when the path `up`'s session runs on fails.

`listen` and `up` run as real processes (TLS as by default); `up` has two paths to `listen`
(`--path one=...@PROXY1 --path two=...@PROXY2`), each through its own delay proxy
(`bench.delayproxy`, threads of this process) at 0 ms, or `rtt_ms` / 2 each way. A visitor
streams 64-byte numbered messages every 5 ms through the tunnel to an echo service
(`bench.resume.Visitor`). Each repeat, with the session on path one, path one's proxy fails:

- "reset": every connection through it reset both ways (the carrier killed): the session
  moves to path two's standby at once;
- "blackhole": it swallows everything while connections stay open (a dead route): the
  session moves once path one's probes stall (`client.path_stall_s`, 1.5 s by default).

and we note the longest gap between two echoes around the failure (`stall_s`, what the
visitor felt), the time until a message sent after the failure came back (`back_s`), and
that every message came back, in order, with no error. Then the proxy heals and the session
moves back to path one (it is first in the list) after `switch_after_s` (1 s here).

``python -m bench.pathswitch [--rtts 0,50] [--repeats 3]`` prints the figures; `python -m
bench` runs it (its "path switch" section) unless told `--no-resume`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.delayproxy import DelayProxy
from bench.paths import LOCAL, REPO
from bench.proc import free_port
from bench.resume import Visitor, _ms, _proc, _reset, measure_once, on_proxy

Address = tuple[str, int]
FAULTS = ("reset", "blackhole")
#: The hysteresis of these runs: short, so that the session is back on path one soon.
SWITCH_AFTER_S = 1.0
#: How long the session gets to be back on path one between repeats.
BACK_WAIT_S = 20.0


@contextlib.contextmanager
def tunnel(
    tmp: Path, rtt_ms: float, exe: Path
) -> Iterator[tuple[Address, list[DelayProxy], Callable[[], str | None]]]:
    """listen + two delay proxies + up with a path through each; yields the echo's public
    address, the proxies, and a function that tells the active path (from up's admin API)."""
    token = secrets.token_hex(16)
    env = {"MUXTUNNEL_TOKEN": token}
    control, public, admin = free_port(), free_port(), free_port()
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=tmp)))
        flags = ["--state-dir", str(state), "--log-format", "json"]
        echo = stack.enter_context(_proc("paths-echo", [sys.executable, "-m", "bench.echo"], tmp))
        m = echo.wait_line(r"^listening (\S+):(\d+)", 10)
        listen = stack.enter_context(
            _proc("paths-listen", [str(exe), "listen", "--bind", f"{LOCAL}:{control}", *flags],
                  tmp, env)
        )  # fmt: skip
        listen.wait_listening(control, 15)
        proxies = [
            DelayProxy((LOCAL, 0), (LOCAL, control), latency_ms=rtt_ms / 2) for _ in range(2)
        ]
        addresses = [stack.enter_context(proxy.running()) for proxy in proxies]
        first = f"{addresses[0][0]}:{addresses[0][1]}"
        up = stack.enter_context(
            _proc("paths-up", [
                str(exe), "up", "--server", first, "--no-console",
                "--path", f"one={LOCAL}@{first}",
                "--path", f"two={LOCAL}@{addresses[1][0]}:{addresses[1][1]}",
                "--switch-after", str(SWITCH_AFTER_S), "--admin", f"{LOCAL}:{admin}",
                "--tcp", f"echo={m.group(1)}:{m.group(2)}:{public}", *flags,
            ], tmp, env)
        )  # fmt: skip
        up.wait_line(r"^echo\s+tcp\s+\S+:(\d+)\s+->", 30)

        def active() -> str | None:
            url = f"http://{LOCAL}:{admin}/api/v1/status"
            with urllib.request.urlopen(url, timeout=5) as answer:
                document = json.loads(answer.read())
            rows = document["servers"][0]["paths"]
            if not all(row["state"] in ("active", "standby") for row in rows):
                return None  # a path still down: not settled
            return next((r["name"] for r in rows if r["state"] == "active"), None)

        yield (LOCAL, public), proxies, active


def _set_blackhole(proxy: DelayProxy, on: bool) -> None:
    def flip() -> None:
        proxy.blackhole = on

    on_proxy(proxy, flip)


def _wait_active(active: Callable[[], str | None], name: str) -> bool:
    deadline = time.monotonic() + BACK_WAIT_S
    while time.monotonic() < deadline:
        if active() == name:
            return True
        time.sleep(0.1)
    return False


def run(
    tmp: Path, rtts_ms: tuple[float, ...] = (0.0, 50.0), repeats: int = 3,
    exe: Path = REPO / ".venv" / "bin" / "muxtunnel", log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """The switch figures at each RTT and fault: per repeat, and their median and worst."""
    results: dict[str, Any] = {}
    for rtt in rtts_ms:
        with tunnel(tmp, rtt, exe) as (address, proxies, active):
            visitor = Visitor(address)
            try:
                for fault in FAULTS:
                    runs = []
                    for _ in range(repeats):
                        if not _wait_active(active, "one"):
                            runs.append({"error": "the session never settled on path one"})
                            break
                        if fault == "reset":
                            cut = lambda: _reset(proxies[0])  # noqa: E731
                        else:
                            cut = lambda: _blackhole(proxies[0])  # noqa: E731
                        runs.append(measure_once(visitor, cut))
                        _set_blackhole(proxies[0], False)
                        if runs[-1]["error"] or runs[-1]["resume_s"] is None:
                            break
                    results[f"{rtt:g} ms, {fault}"] = row = _summary(runs)
                    log(f"path switch at {rtt:g} ms RTT, {fault}: {_line(row)}")
            finally:
                visitor.close()
    return results


def _blackhole(proxy: DelayProxy) -> int:
    _set_blackhole(proxy, True)
    return 0


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r.get("resume_s") is not None and not r.get("error")]
    return {
        "runs": runs,
        "lost": len(runs) - len(ok),
        "back_s_median": statistics.median(r["resume_s"] for r in ok) if ok else None,
        "stall_s_median": statistics.median(r["stall_s"] for r in ok) if ok else None,
        "stall_s_max": max((r["stall_s"] for r in ok), default=None),
    }


def _line(row: dict[str, Any]) -> str:
    return (
        f"longest stall median {_ms(row['stall_s_median'])}, worst {_ms(row['stall_s_max'])}; "
        f"bytes back after {_ms(row['back_s_median'])}; {len(row['runs'])} cuts, "
        f"{row['lost']} lost"
    )


def rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's section (`bench.report.SECTIONS`): a row per RTT and fault."""
    header = ["RTT, fault", "cuts", "lost", "stall median", "stall worst", "bytes back after"]
    found = results.get("pathswitch") or {}
    return header, [
        [key, str(len(row["runs"])), str(row["lost"]), _ms(row["stall_s_median"]),
         _ms(row["stall_s_max"]), _ms(row["back_s_median"])]
        for key, row in found.items()
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.pathswitch", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--rtts", default="0,50", help="RTTs in ms through the delay proxies (0,50)")
    ap.add_argument("--repeats", type=int, default=3, help="failures per RTT and fault (3)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rtts = tuple(float(x) for x in a.rtts.split(","))
        run(Path(tmp), rtts, a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
