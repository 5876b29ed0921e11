"""The report: rich tables in the terminal, plus JSON and markdown files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import ceiling, cluster, http, pathswitch, resume

Rows = tuple[list[str], list[list[str]]]  # (header, rows)


# -- formatting ---------------------------------------------------------------------------


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def rate(bps: float | None) -> str:
    if _nan(bps):
        return "-"
    assert bps is not None
    if bps >= 1e9:
        return f"{bps / 1e9:.2f}G"
    if bps >= 1e6:
        return f"{bps / 1e6:.0f}M" if bps >= 1e8 else f"{bps / 1e6:.1f}M"
    return f"{bps / 1e3:.0f}k"


def ms(x: float | None) -> str:
    if _nan(x):
        return "-"
    assert x is not None
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def num(x: float | None, digits: int = 0) -> str:
    return "-" if _nan(x) else f"{x:.{digits}f}"


def spread_cell(sp: dict[str, Any] | None, fmt: Any = rate) -> str:
    if not sp or not sp.get("n"):
        return "-"
    if sp["n"] == 1:
        return fmt(sp["median"])
    return f"{fmt(sp['median'])} ({fmt(sp['min'])}-{fmt(sp['max'])})"


def _status(entry: dict[str, Any]) -> str | None:
    if entry.get("status") == "skipped":
        return "skipped"
    return None


# -- tables -------------------------------------------------------------------------------


def throughput_rows(results: dict[str, Any]) -> Rows:
    rates = results["plan"]["udp_rates"]
    modes = results["plan"]["tcp_modes"]
    header = ["path"] + [f"TCP -{m}" for m in modes] + [f"UDP -b {r} rx (loss %)" for r in rates]
    rows = []
    for e in results["paths"].values():
        if (s := _status(e)) is not None:
            rows.append([e["label"], s] + [""] * (len(header) - 2))
            continue
        row = [e["label"]]
        for m in modes:
            row.append(spread_cell((e.get("tcp") or {}).get(m, {}).get("bps")))
        for r in rates:
            u = (e.get("udp") or {}).get(r)
            if e.get("udp") is None:
                row.append("n/a")
            elif not u:
                row.append("-")
            else:
                row.append(f"{spread_cell(u.get('bps'))} ({num(u['loss_pct']['median'], 1)})")
        rows.append(row)
    return header, rows


def resource_rows(results: dict[str, Any]) -> Rows:
    modes = [m for m in ("P1", "P8") if m in results["plan"]["tcp_modes"]]
    header = (
        ["path", "processes"]
        + [f"CPU % TCP -{m}" for m in modes]
        + [f"peak RSS MiB TCP -{m}" for m in modes]
        + ["CPU % UDP 1G", "idle RSS MiB"]
    )
    rows = []
    for e in results["paths"].values():
        if not e.get("roles") or _status(e):
            continue
        row = [e["label"], "+".join(e["roles"])]
        tcp = e.get("tcp") or {}
        for m in modes:
            row.append(spread_cell(tcp.get(m, {}).get("cpu_pct"), lambda x: num(x)))
        for m in modes:
            row.append(spread_cell(tcp.get(m, {}).get("peak_rss_mib"), lambda x: num(x, 1)))
        udp = (e.get("udp") or {}).get("1G")
        row.append(spread_cell(udp.get("cpu_pct"), lambda x: num(x)) if udp else "n/a")
        idle = e.get("idle_rss_mib")
        row.append(num(sum(idle.values()), 1) if idle else "-")
        rows.append(row)
    return header, rows


def latency_rows(results: dict[str, Any]) -> Rows:
    header = [
        "path",
        "idle p50 ms",
        "idle p99 ms",
        "load p50 ms",
        "load p99 ms",
        "bulk during load",
        "new conns/s",
        "first byte p50 ms",
        "first byte p99 ms",
    ]
    rows = []
    for e in results["paths"].values():
        if (s := _status(e)) is not None:
            rows.append([e["label"], s] + [""] * (len(header) - 2))
            continue
        lat = e.get("latency") or {}
        idle, load = lat.get("idle") or {}, lat.get("load") or {}
        cr = e.get("connrate") or {}
        ttfb = cr.get("ttfb") or {}
        rows.append(
            [
                e["label"],
                ms(idle.get("p50_ms")),
                ms(idle.get("p99_ms")),
                ms(load.get("p50_ms")),
                ms(load.get("p99_ms")),
                rate(load.get("bulk_bps")),
                num(cr.get("conns_per_s")),
                ms(ttfb.get("p50_ms")),
                ms(ttfb.get("p99_ms")),
            ]
        )
    return header, rows


def messages_rows(results: dict[str, Any]) -> Rows:
    header = [
        "path",
        "TCP msgs/s",
        "TCP p50 ms",
        "TCP p99 ms",
        "UDP msgs/s",
        "UDP p50 ms",
        "UDP p99 ms",
        "UDP lost",
    ]
    rows = []
    for e in results["paths"].values():
        if (s := _status(e)) is not None:
            rows.append([e["label"], s] + [""] * (len(header) - 2))
            continue
        m = e.get("messages")
        if not m:
            continue
        row = [e["label"]]
        for proto in ("tcp", "udp"):
            r = m.get(proto)
            if r is None:
                row += ["n/a", "", ""] if proto == "tcp" else ["n/a", "", "", ""]
                continue
            rtt = r.get("rtt") or {}
            row += [num(r.get("msgs_per_s")), ms(rtt.get("p50_ms")), ms(rtt.get("p99_ms"))]
            if proto == "udp":
                row.append(num(r.get("lost")))
        rows.append(row)
    return header, rows


def lfn_rows(results: dict[str, Any]) -> Rows:
    rtts = list(results.get("lfn", {}))
    header = ["path"]
    for r in rtts:
        header += [f"{r} ms: measured RTT", f"{r} ms: first byte (RTTs)", f"{r} ms: TCP -P1"]
    keys: list[str] = []
    for per_rtt in results.get("lfn", {}).values():
        keys += [k for k in per_rtt if k not in keys]
    labels = {k: e["label"] for k, e in results["paths"].items()}
    for per_rtt in results.get("lfn", {}).values():
        labels.update({k: e["label"] for k, e in per_rtt.items() if e.get("label")})
    rows = []
    for k in keys:
        row = [labels.get(k, k)]
        for r in rtts:
            e = results["lfn"][r].get(k)
            if not e or e.get("status") == "skipped":
                row += ["skipped", "", ""]
                continue
            rtt = (e.get("rtt") or {}).get("p50_ms")
            fb = (e.get("first_byte") or {}).get("p50_ms")
            rtts_n = f" ({fb / rtt:.1f})" if not _nan(fb) and not _nan(rtt) and rtt else ""
            row += [ms(rtt), f"{ms(fb)}{rtts_n}", spread_cell((e.get("tcp") or {}).get("bps"))]
        rows.append(row)
    return header, rows


def target_rows(results: dict[str, Any]) -> Rows:
    header = ["target", "muxtunnel", "reference", "ratio", "result"]
    rows = []
    for t in results.get("targets", []):
        fmt = (
            rate
            if t["unit"] == "bit/s"
            else (lambda x: "-" if _nan(x) else f"{num(x)}/s")
            if t["unit"] == "/s"
            else (lambda x, u=t["unit"]: "-" if _nan(x) else f"{num(x, 2)} {u}")
        )
        res = {True: "met", False: "MISSED", None: "n/a"}[t["ok"]]
        ref = (
            f"{fmt(t['reference'])} ({t['reference_label']})"
            if t["reference"] is not None
            else f"- ({t['reference_label']})"
        )
        rows.append(
            [
                t["target"],
                fmt(t["value"]),
                ref,
                "-" if t["ratio"] is None else f"{t['ratio']:.2f}x",
                res,
            ]
        )
    return header, rows


def target_summary(results: dict[str, Any]) -> str:
    rows = results.get("targets", [])
    missed = [t["target"] for t in rows if t["ok"] is False]
    met = sum(1 for t in rows if t["ok"] is True)
    na = sum(1 for t in rows if t["ok"] is None)
    text = f"muxtunnel met {met} of {len(rows)} targets"
    if na:
        text += f" ({na} not measurable in this run)"
    if missed:
        text += "; MISSED: " + "; ".join(missed)
    return text


def note_rows(results: dict[str, Any]) -> Rows:
    rows = []
    for e in results["paths"].values():
        for n in e.get("notes", []) or ["-"]:
            rows.append([e["label"], e["status"], n])
    for r, per in results.get("lfn", {}).items():
        for k, e in per.items():
            for n in e.get("notes", []):
                rows.append([f"{k} @{r} ms", e["status"], n])
    return ["path", "status", "note"], rows


SECTIONS = [
    ("Throughput on loopback (median (min-max), bit/s)", throughput_rows),
    ("CPU and memory of the path's own processes (100 % = one core)", resource_rows),
    ("Latency: 64-byte request/response; short visitor connections", latency_rows),
    ("Small messages: 64-byte request/response, concurrent visitors", messages_rows),
    ("Long fat link: delay proxy between the tunnel's two halves", lfn_rows),
    ("What the cipher leaves: CPU per GiB of every process of one bulk stream", ceiling.rows),
    ("HTTP requests through --http, --tcp and direct (wrk against nginx)", http.rows),
    ("Cluster: through the owning node and a forwarding one; one node vs three", cluster.rows),
    ("Resume time: up's carrier reset under a streaming visitor (delay proxy)", resume.rows),
    ("Path switch: the active path fails under a streaming visitor (two paths)", pathswitch.rows),
    ("Targets for muxtunnel", target_rows),
    ("Notes", note_rows),
]


# -- output -------------------------------------------------------------------------------


def print_tables(results: dict[str, Any], console: Console) -> None:
    for title, fn in SECTIONS:
        header, rows = fn(results)
        if not rows:
            continue
        t = Table(title=title, title_justify="left", show_lines=False)
        for h in header:
            t.add_column(h, overflow="fold")
        for row in rows:
            style = None
            if row and row[-1] == "MISSED":
                style = "red"
            elif row and row[-1] == "met":
                style = "green"
            t.add_row(*row, style=style)
        console.print(t)
    console.print(target_summary(results), style="bold")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


HOW = """\
## How each figure is measured

- Everything runs on loopback, started and stopped by `python -m bench`: one `iperf3 -s`
  and one echo server are the services; each path exposes both (the echo as a second
  service on the same tunnel).
- Throughput: `iperf3 -c <visitor address> -t {seconds:g} -J`, {repeats} run(s) per figure,
  median (min-max). TCP: receiver-side rate for `-P1`, `-P8` (sum) and `-R` (service
  sends to the visitor). UDP: `-u -b RATE -l {udp_len}`, rate received by the iperf3 server
  and its loss %; `-b 0` is unlimited.
- CPU %: utime+stime (+ reaped children) of the path's own processes and their descendants
  from /proc/PID/stat over the run, divided by wall time; 100 % = one core.
- Peak RSS: VmHWM from /proc/PID/status, reset per run via /proc/PID/clear_refs, summed
  over the path's processes. Idle RSS: VmRSS after start-up, before any traffic.
- Latency: one connection to the echo service, 64-byte request, wait for the 64-byte
  echo, repeat (p50/p99). Idle: {lat_n} samples. Under load: while one `iperf3 -P1`
  runs through the same path; the bulk rate reached meanwhile is shown.
- New connections: sequential short connections for {conn_s:g} s (connect, 64 bytes,
  echo, close); rate and time from connect() to the first reply byte.
- Small messages: {msg_conns} visitors at once, each sends 64 bytes and waits for the 64-byte
  echo before the next, for {msg_s:g} s (TCP: {msg_conns} connections; UDP: {msg_conns} sockets,
  so {msg_conns} flows through a tunnel, a datagram not echoed within 0.2 s counts as lost and
  its socket sends the next); messages/s and the round trip of every 16th message. The load
  runs in the bench process on uvloop; `direct` shows its ceiling.
- Long fat link: `bench.delayproxy` (userspace; RTT/2 each way, 32 MiB in-flight cap)
  between the tunnel's client and server halves (muxtunnel `up`->`listen`, `ssh`->`sshd`,
  Go client->server); "direct" puts it between the visitor and the services, i.e. the
  ceiling of the emulation. Measured RTT: echo request/response through the path;
  first byte: new visitor connections as above; throughput: `iperf3 -P1`.
- Plain relay reference: socat (one relay connection per visitor, no multiplexing).
"""


def markdown(results: dict[str, Any], charts: list[str]) -> str:
    meta = results["meta"]
    plan = results["plan"]
    out = [f"# muxtunnel benchmark ({meta['mode']} run)", ""]
    out.append(
        f"Run {meta['started']}, {meta['elapsed_s']:.0f} s, `{meta['command']}`; "
        f"load average {meta.get('loadavg_start', '?')} at the start, "
        f"{meta.get('loadavg_end', '?')} at the end (other work on the machine skews "
        "every figure)."
    )
    if meta["mode"] == "quick":
        out += [
            "",
            "**Quick smoke run: fewer figures, shorter runs, no repeats. "
            "Not the reference report.**",
        ]
    elif meta["mode"] != "full":
        out += [
            "",
            "**Custom run (subset of paths or changed settings). Not the reference report.**",
        ]
    out += ["", f"**{target_summary(results)}.**"]
    out += [
        "",
        "## Machine",
        "",
        _md_table(["fact", "value"], [[k, str(v)] for k, v in meta["machine"].items()]),
    ]
    for title, fn in SECTIONS:
        header, rows = fn(results)
        if rows:
            out += ["", f"## {title}", "", _md_table(header, rows)]
    if charts:
        out += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    how_http = ""
    if results.get("http"):
        how_http = http.HOW.format(**results["http"]["plan"])
    if results.get("cluster"):
        how_http += cluster.HOW.format(**results["cluster"]["plan"])
    out += [
        "",
        HOW.format(
            seconds=plan["seconds"],
            repeats=plan["repeats"],
            udp_len=plan["udp_len"],
            lat_n=plan["latency_idle_n"],
            conn_s=plan["conn_seconds"],
            msg_conns=plan.get("messages_conns", 50),
            msg_s=plan.get("messages_seconds", 2.0),
        )
        + how_http,
    ]
    return "\n".join(out) + "\n"


def write(results: dict[str, Any], out_dir: Path, charts: list[str]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    jp = out_dir / "latest.json"
    mp = out_dir / "latest.md"

    def clean(o: Any) -> Any:  # JSON has no NaN
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    jp.write_text(json.dumps(clean(results), indent=2) + "\n")
    mp.write_text(markdown(results, charts))
    return jp, mp
