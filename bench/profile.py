"""`python -m bench.profile ROW [ROW ...]`: py-spy profiles of muxtunnel's processes (`listen`
and `up`; `visit` too for `visit-p1`) during one bench row, so the rows muxtunnel misses can be
explained by where its time goes.

Each row starts the muxtunnel path as `python -m bench` does (plaintext, TLS for `tls-p1`,
the visit path for `visit-p1`), drives the row's load for `--seconds` while `py-spy record` is
attached to each of the path's processes for that long (200 samples/s, speedscope JSON: open
it at speedscope.app or in any speedscope viewer; start-up is not in it), and writes

- `bench/results/profiles/ROW-listen.json`, `ROW-up.json` (and `ROW-visit.json`): the profiles;
- `bench/results/profiles/ROW.md`: the row's figure during the profiled run (py-spy's sampling
  slows the processes: compare figures across rows of one run only) and each process's top
  frames by own time and by total time.

`bench/PROFILES.md` cites these summaries. Profile on a machine as quiet as you can get: the
frames' shares hold under load better than the figures do, but not perfectly.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from bench import iperf, latency, messages, paths
from bench.iperf import IperfServer
from bench.proc import Proc, StartError

OUT = Path(__file__).resolve().parent / "results" / "profiles"
#: Frames a summary lists per process and per ranking.
TOP_FRAMES = 12


def _bulk(streams: int) -> Callable[[paths.Endpoint, float], str]:
    def run(ep: paths.Endpoint, seconds: float) -> str:
        res = iperf.run(iperf.client_argv(ep.tcp, seconds=seconds, parallel=streams), seconds)
        return f"TCP -P{streams}: {res.bps / 1e9:.2f} Gbit/s" + (
            "" if res.ok else f" ({res.error})"
        )

    return run


def _new_visitors(ep: paths.Endpoint, seconds: float) -> str:
    rate, ttfb = latency.short_connections(ep.echo, seconds)
    s = latency.summary_ms(ttfb)
    return (
        f"new visitors: {rate:.0f}/s, first byte p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms"
    )


def _load_latency(ep: paths.Endpoint, seconds: float) -> str:
    p = iperf.start(iperf.client_argv(ep.tcp, seconds=seconds))
    try:
        time.sleep(min(0.7, seconds * 0.2))
        stop_at = time.monotonic() + seconds - 1.0
        samples = latency.request_response(
            ep.echo,
            until=lambda: time.monotonic() >= stop_at or p.poll() is not None,
            interval=0.005,
        )
        res = iperf.finish(p, seconds)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    s = latency.summary_ms(samples)
    return (
        f"64 B echo beside one bulk stream: p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms"
        f" (bulk {res.bps / 1e9:.2f} Gbit/s)"
    )


def _udp(bitrate: str) -> Callable[[paths.Endpoint, float], str]:
    def run(ep: paths.Endpoint, seconds: float) -> str:
        assert ep.udp is not None
        # -l 1400 as the bench's UDP rows (bench/suite.py's `udp_len`).
        res = iperf.run(iperf.client_argv(ep.udp, seconds=seconds, udp_bitrate=bitrate), seconds)
        loss = f", {res.loss_pct:.1f} % lost" if res.loss_pct is not None else ""
        return f"UDP -b {bitrate}: {res.bps / 1e6:.0f} Mbit/s received{loss}" + (
            "" if res.ok else f" ({res.error})"
        )

    return run


def _messages(proto: str) -> Callable[[paths.Endpoint, float], str]:
    def run(ep: paths.Endpoint, seconds: float) -> str:
        addr = ep.echo if proto == "tcp" else ep.echo_udp
        assert addr is not None
        probe = messages.tcp if proto == "tcp" else messages.udp
        res = probe(addr, conns=50, seconds=seconds)
        return f"small messages {proto} x50: {res['msgs_per_s']:.0f}/s"

    return run


_PLAIN, _TLS = paths.muxtunnel(False), paths.muxtunnel(True)
#: The long-fat-link row's round trip (the bench's first LFN column).
LFN_RTT_MS = 50.0


def _lfn_plain(env: paths.Env, _rtt_ms: float | None) -> AbstractContextManager[paths.Endpoint]:
    """The plaintext path with the bench's delay proxy at 50 ms between listen and up."""
    return _PLAIN(env, LFN_RTT_MS)


#: Row -> (the path, the load, what the bench row is called in the report).
ROWS: dict[str, tuple[paths.Opener, Callable[[paths.Endpoint, float], str], str]] = {
    "p1": (_PLAIN, _bulk(1), "TCP -P1"),
    "p8": (_PLAIN, _bulk(8), "TCP -P8"),
    "tls-p1": (_TLS, _bulk(1), "muxtunnel TLS, TCP -P1"),
    "visit-p1": (paths.visit, _bulk(1), "visit (TLS, visit -> listen -> up), TCP -P1"),
    "load-latency": (_PLAIN, _load_latency, "latency under load"),
    "new-visitors": (_PLAIN, _new_visitors, "new visitors"),
    "messages-udp": (_PLAIN, _messages("udp"), "small messages x50 UDP"),
    "udp-1g": (_PLAIN, _udp("1G"), "UDP -b 1G"),
    "messages-tcp": (_PLAIN, _messages("tcp"), "small messages x50 TCP"),
    "lfn-50": (_lfn_plain, _bulk(1), "TCP -P1 through the delay proxy at 50 ms"),
}


def top_frames(profile: dict[str, Any], n: int = TOP_FRAMES) -> tuple[list[str], list[str]]:
    """A speedscope profile's frames ranked by own time and by total time (percent of samples).
    `Runner.run`'s own time is time inside uvloop's C code: waiting in its poll, socket
    system calls, its transports' reads and writes (py-spy does not see native frames)."""
    frames = profile["shared"]["frames"]
    own: Counter[int] = Counter()
    total: Counter[int] = Counter()
    samples = 0
    for prof in profile["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            samples += weight
            if stack:
                own[stack[-1]] += weight
            for index in set(stack):
                total[index] += weight

    def line(index: int, count: int) -> str:
        f = frames[index]
        where = Path(f.get("file") or "?").name
        return f"{100 * count / max(samples, 1):5.1f} %  {f['name']} ({where}:{f.get('line', '?')})"

    return (
        [line(i, c) for i, c in own.most_common(n)],
        [line(i, c) for i, c in total.most_common(n)],
    )


def _portable(path: str) -> str:
    """A frame's file as it reads on any machine: inside the checkout, a package, or the
    standard library (`python3.11/asyncio/...`), never this machine's directories."""
    if not path.startswith("/"):
        return path  # portable already (or `<string>`, `<frozen ...>`)
    for marker in ("/site-packages/", "/lib/"):
        if marker in path:
            return path.rsplit(marker, 1)[1]
    if path.startswith(str(paths.REPO) + "/"):
        return path[len(str(paths.REPO)) + 1 :]
    return Path(path).name


def portable_profile(file: Path) -> dict[str, Any]:
    """Rewrite a speedscope profile's file names with `_portable` (in place); returns it."""
    profile: dict[str, Any] = json.loads(file.read_text())
    for frame in profile["shared"]["frames"]:
        if frame.get("file"):
            frame["file"] = _portable(frame["file"])
    file.write_text(json.dumps(profile, separators=(",", ":")))
    return profile


def _spy(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """`py-spy record` attached to `pid` for `seconds` (py-spy from PATH or beside python)."""
    pyspy = Path(sys.executable).parent / "py-spy"
    argv = [str(pyspy) if pyspy.exists() else "py-spy", "record", "--pid", str(pid)]
    argv += ["--rate", "200", "--duration", str(seconds), "--format", "speedscope"]
    return subprocess.Popen(
        [*argv, "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def profile_row(row: str, seconds: float, out: Path, tmp: Path) -> Path:
    """Run `row` once under py-spy; returns the summary it wrote."""
    opener, load, label = ROWS[row]
    with IperfServer(tmp) as server:
        echo = Proc(
            "echo", [sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"], log_dir=tmp
        )
        try:
            m = echo.wait_line(r"^listening (\S+):(\d+)", 10)
            env = paths.Env(
                tmp=tmp, iperf=server.address, echo=(m.group(1), int(m.group(2))), results=tmp
            )
            load_avg = Path("/proc/loadavg").read_text().split()[:3]
            with opener(env, None) as ep:
                roles = list(ep.roles)
                time.sleep(0.5)
                spies = {
                    role: _spy(pids[0], math.ceil(seconds), out / f"{row}-{role}.json")
                    for role, pids in ep.roles.items()
                }
                figure = load(ep, seconds)
                for role, spy in spies.items():
                    if spy.wait(timeout=seconds + 30) != 0:
                        raise StartError(f"py-spy failed on {role}: {spy.stderr}")
        finally:
            echo.stop()
    lines = [
        f"# profile: {label} (`python -m bench.profile {row}`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {seconds:g} s of load, load "
        f"average {' '.join(load_avg)} at the start. Under py-spy (200 samples/s): {figure}.",
        "",
    ]
    for role in roles:
        dst = out / f"{row}-{role}.json"
        own, total = top_frames(portable_profile(dst))
        lines += [f"## {role} (`{dst.name}`)", "", "own time:", "", "```", *own, "```", ""]
        lines += ["total time (the frame and what it calls):", "", "```", *total, "```", ""]
    summary = out / f"{row}.md"
    summary.write_text("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="+", choices=sorted(ROWS), help="bench rows to profile")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of load per row (5)")
    ap.add_argument("--out", type=Path, default=OUT, help="where profiles go")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for row in a.rows:
        with tempfile.TemporaryDirectory(prefix=f"bench-profile-{row}-") as tmp:
            try:
                summary = profile_row(row, a.seconds, a.out, Path(tmp))
            except StartError as e:
                print(f"{row}: cannot run: {e}", file=sys.stderr)
                return 1
        print(summary.read_text().split("\n")[2])
        print(f"{row}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
