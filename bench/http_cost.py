"""CPU per HTTP request through `--http` and `--tcp`: a figure that holds on a busy machine.

    .venv/bin/python -m bench.http_cost [--seconds 4] [--pairs 1] [--vs OTHER_CHECKOUT]
        [--vary] [--profile]

Starts nginx and `muxtunnel listen` + `up` exposing it twice (as `python -m bench`'s HTTP rows
do: a `--tcp` service and an `--http` one), runs `wrk` with keep-alive against each in turn and
divides the CPU seconds (user + system) listen and up spent by the requests wrk completed.
Wall-clock rates move with whatever else runs on the machine; CPU per request moves far less,
so two checkouts can be compared on a loaded machine (`--vs`, alternating, `--pairs` each;
the other checkout runs its own copy of this module in its own `.venv`).
Also prints wrk's requests/s ratio --http / --tcp of the same run. `--vary`: each request
asks for another target (`http.VARY_SCRIPT`), so nothing is taken from a repeated head (the
other checkout of `--vs` must know `--vary` too).

`--profile` attaches py-spy (200 samples/s) to listen and up during the --tcp and the
--http (inspector off) runs and writes `bench/results/profiles/http-keepalive-*.json` and
`http-keepalive.md` (top frames, as `bench.profile` summarises its rows); the CPU figures of
a profiled run include py-spy's cost, so compare them with each other only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import http, procstat
from bench.paths import REPO, Env
from bench.profile import OUT, _spy, portable_profile, top_frames

#: The runs `--profile` profiles (by target key), and the name its files take.
PROFILED = ("tcp", "http-no-inspect")
PROFILE_ROW = "http-keepalive"


def measure(
    exe: Path, seconds: float, profile: Path | None = None, vary: bool = False
) -> dict[str, float]:
    """µs of CPU per request (listen, up) and requests/s for --tcp and --http, keep-alive;
    `profile`: a directory for py-spy profiles of the `PROFILED` runs; `vary`: another
    target each request."""
    tmp = Path(f"/tmp/bench-http-cost-{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    env = Env(tmp=tmp, iperf=("127.0.0.1", 0), echo=("127.0.0.1", 0), results=tmp, muxtunnel=exe)
    plan = http.HttpPlan(seconds=seconds, repeats=1)
    out: dict[str, float] = {}
    script = http.vary_script(tmp) if vary else None
    with http._nginx(env) as nginx, http._tunnel(env, nginx) as targets:
        for target in targets:
            warm = http.HttpPlan(seconds=1, repeats=1)
            http._wrk(target.address, target.host, True, warm, script)
            before = {role: procstat.cpu_seconds(pids) for role, pids in target.roles.items()}
            spies = {}
            if profile is not None and target.key in PROFILED:
                spies = {
                    role: _spy(
                        pids[0], math.ceil(seconds), _profile_file(profile, target.key, role)
                    )
                    for role, pids in target.roles.items()
                }
            result = http._wrk(target.address, target.host, True, plan, script)
            for spy in spies.values():
                spy.wait(timeout=seconds + 30)
            if result["non_2xx"] or result["socket_errors"]:
                raise RuntimeError(f"{target.key}: wrk saw failures: {result}")
            for role, pids in target.roles.items():
                spent_s = procstat.cpu_seconds(pids) - before[role]
                out[f"{target.key}_{role}_us"] = spent_s / result["requests"] * 1e6
            out[f"{target.key}_rps"] = result["rps"]
    out["ratio"] = out["http_rps"] / out["tcp_rps"]
    return out


def _profile_file(out: Path, key: str, role: str) -> Path:
    return out / f"{PROFILE_ROW}-{key}-{role}.json"


def summarise(out: Path, figures: dict[str, float]) -> Path:
    """`http-keepalive.md`: the profiled run's figures and each profile's top frames."""
    lines = [
        "# profile: HTTP keep-alive, --tcp vs --http (`python -m bench.http_cost --profile`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load average "
        f"{os.getloadavg()[0]:.2f} at the end. Under py-spy (200 samples/s): "
        + ", ".join(f"{k}={v:.4g}" for k, v in figures.items()),
        "",
    ]
    for key in PROFILED:
        for role in ("listen", "up"):
            file = _profile_file(out, key, role)
            own, total = top_frames(portable_profile(file))
            lines += [f"## {key}: {role} (`{file.name}`)", "", "own time:", "", "```", *own]
            lines += ["```", "", "total time (the frame and what it calls):", "", "```", *total]
            lines += ["```", ""]
    summary = out / f"{PROFILE_ROW}.md"
    summary.write_text("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.http_cost", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--pairs", type=int, default=1, help="runs per checkout (alternating)")
    ap.add_argument("--seconds", type=float, default=4.0, help="wrk seconds per service")
    ap.add_argument("--vs", type=Path, default=None, help="another checkout to compare with")
    ap.add_argument("--json", action="store_true", help="one run of this checkout, as JSON")
    ap.add_argument("--profile", action="store_true", help="one profiled run (see the doc)")
    ap.add_argument("--vary", action="store_true", help="another target each request")
    a = ap.parse_args(argv)
    if a.profile:
        OUT.mkdir(parents=True, exist_ok=True)
        figures = measure(REPO / ".venv" / "bin" / "muxtunnel", a.seconds, OUT, a.vary)
        print(summarise(OUT, figures))
        return 0
    if a.json:
        print(json.dumps(measure(REPO / ".venv" / "bin" / "muxtunnel", a.seconds, None, a.vary)))
        return 0
    sides = {"this": REPO} if a.vs is None else {"vs": a.vs.resolve(), "this": REPO}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for i in range(a.pairs):
        for name, checkout in sides.items():
            if checkout == REPO:
                res = measure(checkout / ".venv" / "bin" / "muxtunnel", a.seconds, None, a.vary)
            else:  # the other checkout's bench and code, in its own venv
                done = subprocess.run(
                    [str(checkout / ".venv" / "bin" / "python"), "-m", "bench.http_cost",
                     "--json", "--seconds", str(a.seconds), *(["--vary"] if a.vary else [])],
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
