"""CPU per HTTP request through `--http` and `--tcp`: a figure that holds on a busy machine.

    .venv/bin/python -m bench.http_cost [--seconds 4] [--pairs 1] [--vs OTHER_CHECKOUT]

Starts nginx and `muxtunnel listen` + `up` exposing it twice (as `python -m bench`'s HTTP rows
do: a `--tcp` service and an `--http` one), runs `wrk` with keep-alive against each in turn and
divides the CPU seconds (user + system) listen and up spent by the requests wrk completed.
Wall-clock rates move with whatever else runs on the machine; CPU per request moves far less,
so two checkouts can be compared on a loaded machine (`--vs`, alternating, `--pairs` each;
the other checkout runs its own copy of this module in its own `.venv`).
Also prints wrk's requests/s ratio --http / --tcp of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import http, procstat
from bench.paths import REPO, Env


def measure(exe: Path, seconds: float) -> dict[str, float]:
    """µs of CPU per request (listen, up) and requests/s for --tcp and --http, keep-alive."""
    tmp = Path(f"/tmp/bench-http-cost-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    env = Env(tmp=tmp, iperf=("127.0.0.1", 0), echo=("127.0.0.1", 0), results=tmp, muxtunnel=exe)
    plan = http.HttpPlan(seconds=seconds, repeats=1)
    out: dict[str, float] = {}
    with http._nginx(env) as nginx, http._tunnel(env, nginx) as targets:
        for target in targets:
            http._wrk(target.address, target.host, True, http.HttpPlan(seconds=1, repeats=1))
            before = {role: procstat.cpu_seconds(pids) for role, pids in target.roles.items()}
            result = http._wrk(target.address, target.host, True, plan)
            if result["non_2xx"] or result["socket_errors"]:
                raise RuntimeError(f"{target.key}: wrk saw failures: {result}")
            for role, pids in target.roles.items():
                spent_s = procstat.cpu_seconds(pids) - before[role]
                out[f"{target.key}_{role}_us"] = spent_s / result["requests"] * 1e6
            out[f"{target.key}_rps"] = result["rps"]
    out["ratio"] = out["http_rps"] / out["tcp_rps"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.http_cost", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--pairs", type=int, default=1, help="runs per checkout (alternating)")
    ap.add_argument("--seconds", type=float, default=4.0, help="wrk seconds per service")
    ap.add_argument("--vs", type=Path, default=None, help="another checkout to compare with")
    ap.add_argument("--json", action="store_true", help="one run of this checkout, as JSON")
    a = ap.parse_args(argv)
    if a.json:
        print(json.dumps(measure(REPO / ".venv" / "bin" / "muxtunnel", a.seconds)))
        return 0
    sides = {"this": REPO} if a.vs is None else {"vs": a.vs.resolve(), "this": REPO}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for i in range(a.pairs):
        for name, checkout in sides.items():
            if checkout == REPO:
                res = measure(checkout / ".venv" / "bin" / "muxtunnel", a.seconds)
            else:  # the other checkout's bench and code, in its own venv
                done = subprocess.run(
                    [str(checkout / ".venv" / "bin" / "python"), "-m", "bench.http_cost",
                     "--json", "--seconds", str(a.seconds)],
                    cwd=checkout, capture_output=True, text=True, check=True, timeout=600,
                )  # fmt: skip
                res = json.loads(done.stdout.strip().splitlines()[-1])
            runs[name].append(res)
            load = os.getloadavg()[0]
            print(name, i, " ".join(f"{k}={v:.4g}" for k, v in res.items()), f"load={load:.2f}")
    if a.vs is not None:
        print("median, this/vs:")
        for key in runs["this"][0]:
            mine = statistics.median(r[key] for r in runs["this"])
            theirs = statistics.median(r[key] for r in runs["vs"])
            print(f"  {key:18s} vs={theirs:10.4g} this={mine:10.4g} ratio={mine / theirs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
