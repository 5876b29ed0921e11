"""`python -m bench`: compare muxtunnel with direct, socat, ssh -R/-L and Go yamux tunnels.

`muxtunnel visit` (a private service: two mux hops) is compared with ssh -L.

Sets up everything on loopback (iperf3 server, echo server, each path's processes),
runs bounded measurements, tears everything down (also on Ctrl-C), then prints the
report and writes JSON, markdown and PNG charts.
"""

from __future__ import annotations

import argparse
import atexit
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import (
    ceiling,
    charts,
    cluster,
    http,
    machine,
    paths,
    pathswitch,
    proc,
    report,
    resume,
    targets,
)
from bench.iperf import IperfServer
from bench.proc import Proc, StartError
from bench.suite import Plan, Runner

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (~1-2 min): -t 2, 1 repeat, fewer figures, LFN at 50 ms only",
    )
    ap.add_argument("-t", "--time", type=float, default=None, help="seconds per iperf3 run (5)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per figure (3)")
    ap.add_argument(
        "--paths", default=None, help="comma list of paths: " + ",".join(p.key for p in paths.PATHS)
    )
    ap.add_argument("--rtts", default=None, help="long-fat-link RTTs in ms (50,200); 0 = none")
    ap.add_argument("--no-lfn", action="store_true", help="skip the long-fat-link runs")
    ap.add_argument("--udp-len", type=int, default=None, help="UDP datagram payload bytes (1400)")
    ap.add_argument(
        "--profile",
        nargs="?",
        const="auto",
        choices=["auto", "py-spy", "cprofile"],
        help="run listen/up under py-spy (auto: if installed) or cProfile; "
        "profiles go to the results directory",
    )
    ap.add_argument(
        "--mux-log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="--log-level for muxtunnel listen/up (default: the CLI's own default)",
    )
    ap.add_argument(
        "--no-http", action="store_true", help="skip the HTTP rows (wrk through --http/--tcp)"
    )
    ap.add_argument(
        "--http-only",
        action="store_true",
        help="only the HTTP rows: --http vs --tcp vs direct with wrk and nginx",
    )
    ap.add_argument(
        "--no-cluster",
        action="store_true",
        help="skip the cluster rows (three listen --cluster nodes on a redis-server)",
    )
    ap.add_argument(
        "--no-resume",
        action="store_true",
        help="skip the resume-time and path-switch rows (bench.resume, bench.pathswitch)",
    )
    ap.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the cipher-ceiling rows (bench.ceiling: CPU per GiB of every process of a "
        "bulk stream, plaintext vs TLS vs visit vs ssh -L, beside the cipher's own cost)",
    )
    ap.add_argument("--no-charts", action="store_true", help="do not draw PNG charts")
    ap.add_argument(
        "--muxtunnel",
        type=Path,
        default=None,
        help="the muxtunnel executable to measure (default: this checkout's .venv); another "
        "checkout's, for an A/B with the same bench",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default bench/results, quick runs: "
        "bench/results/quick, other partial runs: bench/results/custom)",
    )
    return ap.parse_args(argv)


def make_plan(a: argparse.Namespace) -> tuple[Plan, str]:
    plan = Plan.quick() if a.quick else Plan()
    custom = False
    if a.time is not None:
        plan.seconds, custom = a.time, True
    if a.repeats is not None:
        plan.repeats, custom = a.repeats, True
    if a.udp_len is not None:
        plan.udp_len, custom = a.udp_len, True
    if a.rtts is not None:
        plan.lfn_rtts = tuple(float(x) for x in a.rtts.split(",") if float(x) > 0)
        custom = True
    if a.no_lfn:
        plan.lfn_rtts, custom = (), True
    if a.paths or a.mux_log_level or a.profile or a.no_http or a.http_only or a.muxtunnel:
        custom = True  # not comparable with the reference run
    if a.no_cluster or a.no_ceiling:
        custom = True  # not comparable with the reference run
    mode = "quick" if a.quick else "custom" if custom else "full"
    return plan, mode


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _run_paths(
    env: paths.Env,
    plan: Plan,
    specs: list[paths.PathSpec],
    results: dict[str, Any],
    console: Console,
    tmp: Path,
) -> None:
    """The iperf3 and echo figures of every path, and the long fat link runs."""
    with IperfServer(tmp) as server:
        echo = Proc(
            "echo", [sys.executable, "-m", "bench.echo", "--listen", "127.0.0.1:0"], log_dir=tmp
        )
        try:
            m = echo.wait_line(r"^listening (\S+):(\d+)", 10)
            env.iperf = server.address
            env.echo = (m.group(1), int(m.group(2)))
            runner = Runner(env, server, plan, console)
            for spec in specs:
                results["paths"][spec.key] = runner.run_path(spec)
            for rtt in plan.lfn_rtts:
                per: dict[str, Any] = {}
                results["lfn"][f"{rtt:g}"] = per
                for spec in specs:
                    if spec.lfn:
                        per[spec.key] = runner.run_lfn(spec, rtt)
        finally:
            echo.stop()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    plan, mode = make_plan(a)
    out = a.out or (RESULTS if mode == "full" else RESULTS / mode)
    console = Console(width=None if sys.stdout.isatty() else 160)
    atexit.register(proc.stop_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    tmp = RESULTS / "tmp" / "run"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    specs = paths.select(a.paths.split(",") if a.paths else None)
    if a.http_only:
        specs, plan.lfn_rtts = [], ()
    t0 = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "mode": mode,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": "python -m bench "
            + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:])),
            "machine": machine.facts(),
            "loadavg_start": machine.loadavg(),
        },
        "plan": {
            "seconds": plan.seconds,
            "repeats": plan.repeats,
            "tcp_modes": list(plan.tcp_modes),
            "udp_rates": list(plan.udp_rates),
            "udp_len": plan.udp_len,
            "latency_idle_n": plan.latency_idle_n,
            "conn_seconds": plan.conn_seconds,
            "messages_conns": plan.messages_conns,
            "messages_seconds": plan.messages_seconds,
            "lfn_rtts": list(plan.lfn_rtts),
            "lfn_repeats": plan.lfn_repeats,
            "first_byte_n": plan.first_byte_n,
            "mux_log_level": a.mux_log_level or "default",
            "profile": a.profile,
            "http": None if a.no_http else {"seconds": plan.seconds, "repeats": plan.repeats},
        },
        "paths": {},
        "lfn": {},
    }
    console.rule(f"muxtunnel bench ({mode}): {', '.join(s.key for s in specs)}")
    try:
        env = paths.Env(
            tmp=tmp,
            iperf=("127.0.0.1", 0),
            echo=("127.0.0.1", 0),
            results=out,
            profile=a.profile,
            mux_log_level=a.mux_log_level,
            **({"muxtunnel": a.muxtunnel.resolve()} if a.muxtunnel else {}),
        )
        if any(s.key.startswith("yamux") for s in specs):
            env.gotunnel, env.gotunnel_note = paths.build_gotunnel(tmp)
            if env.gotunnel_note:
                console.print(f"[yellow]{env.gotunnel_note}[/yellow]")
        if specs:
            _run_paths(env, plan, specs, results, console, tmp)
        if not (a.no_ceiling or a.http_only or a.paths):
            console.rule("cipher ceiling: CPU per GiB of every process of one bulk stream")
            results["ceiling"] = ceiling.run(
                env.muxtunnel, 0.5 if a.quick else 1.0, 1 if a.quick else plan.repeats,
                lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}"),
            )  # fmt: skip
        if not (a.no_resume or a.http_only):
            console.rule("resume time: carrier reset under a streaming visitor")
            rtts = (0.0, *plan.lfn_rtts[:1])  # loopback, and the first long-fat-link RTT
            results["resume"] = resume.run(
                tmp, rtts, 2 if a.quick else 5, env.muxtunnel,
                lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}"),
            )  # fmt: skip
            console.rule("path switch: the active path fails under a streaming visitor")
            results["pathswitch"] = pathswitch.run(
                tmp, rtts, 1 if a.quick else 3, env.muxtunnel,
                lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}"),
            )  # fmt: skip
        if not a.no_http:
            console.rule("HTTP: --http vs --tcp vs direct (wrk, nginx)")
            results["http"] = http.run(
                env,
                http.HttpPlan(seconds=plan.seconds, repeats=plan.repeats),
                lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}"),
            )
        if not a.no_cluster and not a.http_only:
            console.rule("Cluster: the extra hop, and three nodes vs one (iperf3, echo)")
            results["cluster"] = cluster.run(
                env,
                cluster.ClusterPlan(seconds=plan.seconds, repeats=plan.repeats),
                lambda msg: console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {msg}"),
            )
    except KeyboardInterrupt:
        console.print("[red]interrupted: stopping every process; no report written[/red]")
        proc.stop_all()
        return 130
    except StartError as e:
        console.print(f"[red]cannot run the bench: {e}[/red]")
        proc.stop_all()
        return 2
    results["meta"]["elapsed_s"] = time.monotonic() - t0
    results["meta"]["loadavg_end"] = machine.loadavg()
    results["targets"] = targets.evaluate(results)
    chart_files: list[str] = []
    if not a.no_charts:
        chart_files, note = charts.render(results, out)
        if note:
            console.print(f"[yellow]{note}[/yellow]")
    jp, mp = report.write(results, out, chart_files)
    report.print_tables(results, console)
    console.print(
        f"wrote {jp}, {mp}"
        + (f" and {len(chart_files)} charts" if chart_files else "")
        + f" in {results['meta']['elapsed_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
