"""What is measured on each path, in which order, and how results are recorded.

Per path (loopback, no added delay):
  idle RSS, idle request/response latency, short-connection rate + time to first byte,
  small messages over 50 concurrent visitors (TCP, and UDP if the path carries it),
  TCP -P1 / -P8 / -R and UDP at each bitrate (each run: CPU% and peak RSS of the path's
  own processes), then request/response latency while an iperf3 -P1 bulk run shares
  the same tunnel.
Per tunnel and RTT (delay proxy between the tunnel's halves):
  measured RTT, first-byte time of new visitors, single-stream TCP throughput.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from bench import iperf, latency, messages, procstat
from bench.iperf import IperfServer
from bench.paths import Endpoint, Env, PathSpec
from bench.proc import StartError
from bench.stats import spread

TCP_MODES: dict[str, dict[str, Any]] = {
    "P1": {"parallel": 1},
    "P8": {"parallel": 8},
    "R": {"reverse": True},
}


@dataclass
class Plan:
    seconds: float = 5.0
    repeats: int = 3
    tcp_modes: tuple[str, ...] = ("P1", "P8", "R")
    udp_rates: tuple[str, ...] = ("100M", "1G", "0")
    udp_len: int = 1400
    latency_idle_n: int = 300
    conn_seconds: float = 2.0
    messages_conns: int = 50
    messages_seconds: float = 2.0
    lfn_rtts: tuple[float, ...] = (50.0, 200.0)
    lfn_repeats: int = 1
    first_byte_n: int = 5

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            seconds=2.0,
            repeats=1,
            tcp_modes=("P1", "P8"),
            udp_rates=("1G",),
            latency_idle_n=150,
            conn_seconds=1.0,
            messages_seconds=1.0,
            lfn_rtts=(50.0,),
            first_byte_n=3,
        )


class PathDied(RuntimeError):
    pass


def _fmt_bps(bps: float) -> str:
    return f"{bps / 1e9:.2f} Gbit/s" if bps >= 1e9 else f"{bps / 1e6:.1f} Mbit/s"


class Runner:
    def __init__(self, env: Env, server: IperfServer, plan: Plan, console: Console) -> None:
        self.env = env
        self.server = server
        self.plan = plan
        self.console = console

    def log(self, path: str, msg: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] [bold]{path}[/bold] {msg}")

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _check_alive(ep: Endpoint) -> None:
        dead = [
            role for role, pids in ep.roles.items() if not all(procstat.exists(p) for p in pids)
        ]
        if dead:
            raise PathDied(f"process(es) exited: {', '.join(dead)}")

    def _figure(self, entry: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
        """Run one figure; a failure is recorded as a note, never ends the run."""
        try:
            value = fn()
        except (PathDied, KeyboardInterrupt):
            raise
        except Exception as e:
            entry["notes"].append(f"{key}: {type(e).__name__}: {e}")
            self.log(entry["key"], f"[red]{key} failed: {e}[/red]")
            return None
        return value

    def _iperf_series(
        self, key: str, what: str, ep: Endpoint, repeats: int, **kw: Any
    ) -> dict[str, Any]:
        addr = ep.udp if kw.get("udp_bitrate") is not None else ep.tcp
        assert addr is not None
        argv = iperf.client_argv(addr, seconds=self.plan.seconds, udp_len=self.plan.udp_len, **kw)
        bps: list[float] = []
        loss: list[float] = []
        cpu_total: list[float] = []
        cpu_roles: dict[str, list[float]] = {r: [] for r in ep.roles}
        rss_total: list[float] = []
        rss_roles: dict[str, list[float]] = {r: [] for r in ep.roles}
        errors: list[str] = []
        window_peak = True
        for i in range(repeats):
            self._check_alive(ep)
            meter = procstat.Meter(ep.roles) if ep.roles else None
            if meter:
                meter.start()
            res = iperf.run(argv, self.plan.seconds)
            usage = meter.stop() if meter else None
            if not res.ok:
                errors.append(res.error)
                self.log(key, f"{what} run {i + 1}/{repeats}: [red]failed: {res.error}[/red]")
                self.server.restart()
                continue
            bps.append(res.bps)
            if res.loss_pct is not None:
                loss.append(res.loss_pct)
            extra = ""
            if usage:
                cpu_total.append(usage.cpu_total)
                rss_total.append(usage.rss_total)
                window_peak = window_peak and usage.peak_is_window
                for r in ep.roles:
                    cpu_roles[r].append(usage.cpu_pct[r])
                    rss_roles[r].append(usage.peak_rss_mib[r])
                extra = f" cpu {usage.cpu_total:.0f}% peak rss {usage.rss_total:.1f} MiB"
            losss = f" loss {res.loss_pct:.1f}%" if res.loss_pct is not None else ""
            self.log(key, f"{what} run {i + 1}/{repeats}: {_fmt_bps(res.bps)}{losss}{extra}")
        out: dict[str, Any] = {"runs_bps": bps, "bps": spread(bps), "errors": errors}
        if kw.get("udp_bitrate") is not None:
            out["loss_pct"] = spread(loss)
        if ep.roles:
            out["cpu_pct"] = spread(cpu_total)
            out["cpu_pct_by_role"] = {r: spread(v) for r, v in cpu_roles.items()}
            out["peak_rss_mib"] = spread(rss_total)
            out["peak_rss_mib_by_role"] = {r: spread(v) for r, v in rss_roles.items()}
            out["peak_rss_is_per_run"] = window_peak
        return out

    def _latency_under_load(self, key: str, ep: Endpoint) -> dict[str, Any]:
        t = self.plan.seconds
        p = iperf.start(iperf.client_argv(ep.tcp, seconds=t))
        try:
            t0 = time.monotonic()
            time.sleep(min(0.7, t * 0.2))  # let the bulk flow get going
            stop_at = t0 + t - 0.3
            samples = latency.request_response(
                ep.echo,
                until=lambda: time.monotonic() >= stop_at or p.poll() is not None,
                interval=0.005,
            )
            res = iperf.finish(p, t)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        out: dict[str, Any] = {
            **latency.summary_ms(samples),
            "bulk_bps": res.bps,
            "bulk_ok": res.ok,
        }
        if not res.ok:
            out["bulk_error"] = res.error
            self.server.restart()
        self.log(
            key,
            f"latency under load: p50 {out['p50_ms']:.2f} ms p99 {out['p99_ms']:.2f} ms"
            f" (bulk {_fmt_bps(res.bps)}, n={out['n']})",
        )
        return out

    def _messages(self, key: str, entry: dict[str, Any], ep: Endpoint) -> dict[str, Any]:
        """64-byte request/response over `messages_conns` concurrent visitors, TCP and UDP."""
        plan = self.plan
        out: dict[str, Any] = {"conns": plan.messages_conns}
        probes = [("tcp", ep.echo, messages.tcp), ("udp", ep.echo_udp, messages.udp)]
        for proto, addr, probe in probes:
            if addr is None:
                continue
            res = self._figure(
                entry,
                f"small messages {proto}",
                lambda addr=addr, probe=probe: probe(
                    addr, conns=plan.messages_conns, seconds=plan.messages_seconds
                ),
            )
            if res:
                out[proto] = res
                lost = f", {res['lost']} lost" if proto == "udp" else ""
                self.log(
                    key,
                    f"small messages {proto} x{plan.messages_conns}: "
                    f"{res['msgs_per_s']:.0f}/s, p99 {res['rtt']['p99_ms']:.2f} ms{lost}",
                )
        return out

    # -- per path -----------------------------------------------------------------------
    def run_path(self, spec: PathSpec) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "key": spec.key,
            "label": spec.label,
            "kind": spec.kind,
            "status": "ok",
            "notes": [],
        }
        plan = self.plan
        t_start = time.monotonic()
        self.log(spec.key, "starting")
        try:
            with spec.opener(self.env, None) as ep:
                entry["notes"] += ep.notes
                entry["roles"] = list(ep.roles)
                if ep.roles:
                    time.sleep(0.5)
                    entry["idle_rss_mib"] = procstat.current_rss_mib(ep.roles)
                    self.log(spec.key, f"idle rss {sum(entry['idle_rss_mib'].values()):.1f} MiB")
                lat: dict[str, Any] = {}
                entry["latency"] = lat
                idle = self._figure(
                    entry,
                    "latency idle",
                    lambda: latency.request_response(ep.echo, count=plan.latency_idle_n),
                )
                if idle:
                    lat["idle"] = latency.summary_ms(idle)
                    self.log(
                        spec.key,
                        f"latency idle: p50 {lat['idle']['p50_ms']:.3f} ms "
                        f"p99 {lat['idle']['p99_ms']:.3f} ms",
                    )
                cr = self._figure(
                    entry,
                    "short connections",
                    lambda: latency.short_connections(ep.echo, plan.conn_seconds),
                )
                if cr:
                    rate, ttfb = cr
                    entry["connrate"] = {"conns_per_s": rate, "ttfb": latency.summary_ms(ttfb)}
                    self.log(
                        spec.key,
                        f"short connections: {rate:.0f}/s, first byte p50 "
                        f"{entry['connrate']['ttfb']['p50_ms']:.2f} ms",
                    )
                entry["messages"] = self._messages(spec.key, entry, ep)
                entry["tcp"] = {}
                for mode in plan.tcp_modes:
                    entry["tcp"][mode] = self._iperf_series(
                        spec.key, f"TCP -{mode}", ep, plan.repeats, **TCP_MODES[mode]
                    )
                if ep.udp is not None:
                    entry["udp"] = {}
                    for rate in plan.udp_rates:
                        entry["udp"][rate] = self._iperf_series(
                            spec.key, f"UDP -b {rate}", ep, plan.repeats, udp_bitrate=rate
                        )
                else:
                    entry["udp"] = None
                    entry["notes"].append("UDP: not supported by this path")
                self._check_alive(ep)
                load = self._figure(
                    entry, "latency under load", lambda: self._latency_under_load(spec.key, ep)
                )
                if load:
                    lat["load"] = load
        except StartError as e:
            entry["status"] = "skipped"
            entry["notes"].append(str(e))
            self.log(spec.key, f"[yellow]skipped: {e}[/yellow]")
        except PathDied as e:
            entry["status"] = "partial"
            entry["notes"].append(str(e))
            self.log(spec.key, f"[red]aborted: {e}[/red]")
        except KeyboardInterrupt:
            raise
        except Exception as e:
            entry["status"] = "failed"
            entry["notes"].append(f"{type(e).__name__}: {e}")
            self.log(spec.key, f"[red]failed: {e}[/red]\n{traceback.format_exc(limit=3)}")
        entry["elapsed_s"] = round(time.monotonic() - t_start, 1)
        return entry

    # -- long fat link ------------------------------------------------------------------
    def run_lfn(self, spec: PathSpec, rtt_ms: float) -> dict[str, Any]:
        key = f"{spec.key}@{rtt_ms:g}ms"
        label = spec.label + (" (delay proxy only)" if spec.kind == "reference" else "")
        entry: dict[str, Any] = {"key": key, "label": label, "status": "ok", "notes": []}
        plan = self.plan
        self.log(key, "starting")
        try:
            with spec.opener(self.env, rtt_ms) as ep:
                entry["notes"] += ep.notes
                rtt = self._figure(
                    entry,
                    "rtt",
                    lambda: latency.request_response(
                        ep.echo, count=5, interval=0, warmup=1, timeout=30
                    ),
                )
                if rtt:
                    entry["rtt"] = latency.summary_ms(rtt)
                fb = self._figure(
                    entry,
                    "first byte",
                    lambda: [
                        latency.first_byte(ep.echo, timeout=30) for _ in range(plan.first_byte_n)
                    ],
                )
                if fb:
                    entry["first_byte"] = latency.summary_ms(fb)
                    entry["first_byte_runs_ms"] = [x * 1000 for x in fb]
                entry["tcp"] = self._iperf_series(key, "TCP -P1", ep, plan.lfn_repeats, parallel=1)
                self.log(
                    key,
                    "rtt {:.1f} ms, first byte p50 {:.1f} ms".format(
                        entry.get("rtt", {}).get("p50_ms", float("nan")),
                        entry.get("first_byte", {}).get("p50_ms", float("nan")),
                    ),
                )
        except StartError as e:
            entry["status"] = "skipped"
            entry["notes"].append(str(e))
            self.log(key, f"[yellow]skipped: {e}[/yellow]")
        except PathDied as e:
            entry["status"] = "partial"
            entry["notes"].append(str(e))
        except KeyboardInterrupt:
            raise
        except Exception as e:
            entry["status"] = "failed"
            entry["notes"].append(f"{type(e).__name__}: {e}")
            self.log(key, f"[red]failed: {e}[/red]")
        return entry
