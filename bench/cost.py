"""CPU cost per exchange of the muxtunnel path: a figure that holds on a busy machine.

``python -m bench.cost`` starts `muxtunnel listen` + `up` (as `python -m bench` does), then
runs each probe for a fixed amount of work and divides the CPU seconds (user + system) that
the two processes spent by that work:

* new visitor: sequential short connections (connect, 64 B, echo, close);
* small message TCP / UDP: 64 B request/response over 50 concurrent visitors;
* bulk: one `iperf3 -P1` for a fixed number of bytes (CPU per MiB);
* UDP bulk: `iperf3 -u -b 1G -l 1400` for `UDP_S` seconds (CPU per MiB received, and the rate).

Wall-clock rates move with whatever else runs on the machine; the CPU a process spends per
unit of work moves far less, so two checkouts can be compared on a loaded machine
(`--pairs`, alternating with `--vs OTHER_CHECKOUT`).

``--visit`` measures the private-service path instead: the same bulk probe through `visit`
-> `listen` -> `up` (TLS, as `python -m bench` runs it) and through `ssh -L` to the
throwaway sshd, CPU per MiB of each process (with its live children: sshd forks one per
connection) and of the whole path, so the two can be compared where their throughput
figures only measure the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench import iperf, latency, messages, procstat
from bench.iperf import IperfServer
from bench.paths import REPO, Env, Opener, muxtunnel, ssh_l, visit
from bench.proc import Proc

#: Work per probe: enough for the CPU counters (10 ms ticks) to be precise to ~1 %.
VISITORS = 600
MESSAGE_S = 2.0
BULK_BYTES = 2 * 1024**3
UDP_S = 3.0


def _cpu(roles: dict[str, list[int]]) -> float:
    return procstat.cpu_seconds([pid for pids in roles.values() for pid in pids])


@contextlib.contextmanager
def probe_env(exe: Path) -> Iterator[tuple[Env, IperfServer]]:
    """An iperf3 server and an echo server for the probes, and the bench's `Env` around them
    (with the iperf3 server, whose process a probe may count)."""
    tmp = Path(f"/tmp/bench-cost-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    with IperfServer(tmp) as server:
        echo = Proc("echo", [sys.executable, "-m", "bench.echo"], log_dir=tmp)
        try:
            m = echo.wait_line(r"^listening (\S+):(\d+)", 10)
            echo_at = (m.group(1), int(m.group(2)))
            yield (
                Env(tmp=tmp, iperf=server.address, echo=echo_at, results=tmp, muxtunnel=exe),
                server,
            )
        finally:
            echo.stop()


def measure(exe: Path) -> dict[str, float]:
    """CPU microseconds per unit of work for each probe, on a fresh tunnel."""
    out: dict[str, float] = {}
    with probe_env(exe) as (env, _), muxtunnel(tls=False)(env, None) as ep:
        time.sleep(0.5)
        out["rss_idle_mib"] = sum(procstat.current_rss_mib(ep.roles).values())
        latency.request_response(ep.echo, count=50, interval=0)  # warm up
        c0 = _cpu(ep.roles)
        for _ in range(VISITORS):
            latency.first_byte(ep.echo)
        out["visitor_us"] = (_cpu(ep.roles) - c0) / VISITORS * 1e6
        for proto, probe, addr in (
            ("tcp", messages.tcp, ep.echo),
            ("udp", messages.udp, ep.echo_udp),
        ):
            assert addr is not None
            c0 = _cpu(ep.roles)
            res = probe(addr, seconds=MESSAGE_S, warmup_s=0.0)
            count = res["msgs_per_s"] * MESSAGE_S
            out[f"msg_{proto}_us"] = (_cpu(ep.roles) - c0) / count * 1e6
            out[f"msg_{proto}_per_s"] = res["msgs_per_s"]
        c0 = _cpu(ep.roles)
        subprocess.run(
            ["iperf3", "-c", ep.tcp[0], "-p", str(ep.tcp[1]), "-n", str(BULK_BYTES)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        out["bulk_us_per_mib"] = (_cpu(ep.roles) - c0) / (BULK_BYTES / 2**20) * 1e6
        assert ep.udp is not None
        argv = iperf.client_argv(ep.udp, seconds=UDP_S, udp_bitrate="1G", udp_len=1400)
        c0 = _cpu(ep.roles)
        res = iperf.run(argv, UDP_S)
        received_mib = res.bps * UDP_S / 8 / 2**20
        if res.ok and received_mib:
            out["udp_us_per_mib"] = (_cpu(ep.roles) - c0) / received_mib * 1e6
            out["udp_gbps"] = res.bps / 1e9
    return out


def measure_private(exe: Path) -> dict[str, float]:
    """CPU microseconds per MiB of one bulk stream, per process and in all, through `visit`
    and through `ssh -L`."""
    out: dict[str, float] = {}
    openers: dict[str, Opener] = {"visit": visit, "sshl": ssh_l}
    with probe_env(exe) as (env, _):
        for path, opener in openers.items():
            with opener(env, None) as ep:
                time.sleep(0.5)
                trees = {role: procstat.descendants(pids) for role, pids in ep.roles.items()}
                c0 = {role: procstat.cpu_seconds(pids) for role, pids in trees.items()}
                subprocess.run(
                    ["iperf3", "-c", ep.tcp[0], "-p", str(ep.tcp[1]), "-n", str(BULK_BYTES)],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                mib = BULK_BYTES / 2**20
                spent = {
                    role: (procstat.cpu_seconds(pids) - c0[role]) / mib * 1e6
                    for role, pids in trees.items()
                }
                for role, us in spent.items():
                    out[f"{path}_{role}_us_per_mib"] = us
                out[f"{path}_us_per_mib"] = sum(spent.values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=1, help="runs per checkout (alternating)")
    ap.add_argument("--vs", type=Path, default=None, help="another checkout to compare with")
    ap.add_argument(
        "--vs-exe",
        type=Path,
        default=None,
        help="another muxtunnel executable to compare with, measured by this checkout's bench "
        "(a build of the same code: compiled, other interpreter flags)",
    )
    ap.add_argument(
        "--visit", action="store_true", help="the private-service path and ssh -L (bulk only)"
    )
    a = ap.parse_args(argv)
    probe = measure_private if a.visit else measure
    sides = {"this": REPO}
    if a.vs is not None:
        sides = {"vs": a.vs.resolve(), "this": REPO}
    elif a.vs_exe is not None:
        sides = {"vs": a.vs_exe.resolve(), "this": REPO}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for i in range(a.pairs):
        for name, checkout in sides.items():
            if checkout == REPO:
                res = probe(checkout / ".venv" / "bin" / "muxtunnel")
            elif not checkout.is_dir():  # --vs-exe
                res = probe(checkout)
            else:  # the other checkout's bench and code, in its own venv
                cp = subprocess.run(
                    [
                        str(checkout / ".venv" / "bin" / "python"),
                        *("-m", "bench.cost", "--json"),
                        *(["--visit"] if a.visit else []),
                    ],
                    cwd=checkout,
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                )
                res = json.loads(cp.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            load = os.getloadavg()[0]
            print(name, i, " ".join(f"{k}={v:.4g}" for k, v in res.items()), f"load={load:.2f}")
    if "vs" in sides:
        print("median, this/vs:")
        for key in runs["this"][0]:
            mine = statistics.median(r[key] for r in runs["this"])
            theirs = statistics.median(r[key] for r in runs["vs"])
            print(f"  {key:18s} vs={theirs:10.4g} this={mine:10.4g} ratio={mine / theirs:.3f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--json"]:
        probe = measure_private if sys.argv[2:] == ["--visit"] else measure
        print(json.dumps(probe(REPO / ".venv" / "bin" / "muxtunnel")))
        sys.exit(0)
    sys.exit(main())
