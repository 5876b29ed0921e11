"""PNG charts of a run (matplotlib, the `bench` extra). Missing matplotlib = no charts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _ok(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _bars(
    ax: Any,
    labels: list[str],
    series: dict[str, list[tuple[float, float, float]]],
    scale: float,
    log: bool = False,
) -> None:
    """Grouped bars; series name -> per label (median, min, max); NaN = missing."""
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (name, vals) in enumerate(series.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(labels))]
        med = [v[0] / scale if _ok(v[0]) else 0 for v in vals]
        lo = [max(0.0, (v[0] - v[1]) / scale) if _ok(v[0]) else 0 for v in vals]
        hi = [max(0.0, (v[2] - v[0]) / scale) if _ok(v[0]) else 0 for v in vals]
        spread = any(lo) or any(hi)
        ax.bar(xs, med, width, yerr=[lo, hi] if spread else None, capsize=2, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=15, ha="right")
    if log and any(v[0] > 0 for vals in series.values() for v in vals if _ok(v[0])):
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _spread(sp: dict[str, Any] | None) -> tuple[float, float, float]:
    if not sp or not sp.get("n"):
        return (math.nan, math.nan, math.nan)
    return (sp["median"], sp["min"], sp["max"])


def render(results: dict[str, Any], out_dir: Path) -> tuple[list[str], str]:
    """Write the charts; return (file names, note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "matplotlib not installed (pip install -e '.[bench]'): no charts"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [e for e in results["paths"].values() if e.get("status") in ("ok", "partial")]
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        p = out_dir / name
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(str(p))

    # TCP bitrate
    modes = results["plan"]["tcp_modes"]
    if paths:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        _bars(
            ax,
            [e["label"] for e in paths],
            {
                f"-{m}": [_spread((e.get("tcp") or {}).get(m, {}).get("bps")) for e in paths]
                for m in modes
            },
            1e9,
        )
        ax.set_ylabel("Gbit/s (received)")
        ax.set_title("TCP through each path (iperf3, loopback)")
        save(fig, "tcp_bitrate.png")

    # UDP bitrate
    udp_paths = [e for e in paths if e.get("udp")]
    if udp_paths:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        _bars(
            ax,
            [e["label"] for e in udp_paths],
            {
                f"-b {r}": [_spread(e["udp"].get(r, {}).get("bps")) for e in udp_paths]
                for r in results["plan"]["udp_rates"]
            },
            1e6,
            log=True,
        )
        ax.set_ylabel("Mbit/s received (log)")
        ax.set_title(f"UDP through each path (-l {results['plan']['udp_len']})")
        save(fig, "udp_bitrate.png")

    # Memory
    mem = [e for e in paths if e.get("roles")]
    if mem:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        series = {
            "idle": [(sum((e.get("idle_rss_mib") or {}).values()) or math.nan,) * 3 for e in mem],
        }
        for m in [m for m in ("P1", "P8") if m in modes]:
            series[f"peak, TCP -{m}"] = [
                _spread((e.get("tcp") or {}).get(m, {}).get("peak_rss_mib")) for e in mem
            ]
        _bars(ax, [e["label"] for e in mem], series, 1.0)
        ax.axhline(41, color="red", lw=0.8, ls="--", label="muxtunnel target 41 MiB")
        ax.legend(fontsize=8)
        ax.set_ylabel("RSS MiB (sum of the path's processes)")
        ax.set_title("Memory")
        save(fig, "memory.png")

    # Latency idle vs under load
    if paths:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        series = {}
        for state in ("idle", "load"):
            for q in ("p50", "p99"):
                series[f"{state} {q}"] = [
                    ((((e.get("latency") or {}).get(state) or {}).get(f"{q}_ms", math.nan)),) * 3
                    for e in paths
                ]
        _bars(ax, [e["label"] for e in paths], series, 1.0, log=True)
        ax.axhline(5, color="red", lw=0.8, ls="--", label="muxtunnel target: load p99 5 ms")
        ax.legend(fontsize=8)
        ax.set_ylabel("ms (log)")
        ax.set_title("64-byte request/response, idle and under an iperf3 -P1 bulk flow")
        save(fig, "latency.png")

    # Long fat link
    lfn = results.get("lfn") or {}
    if lfn:
        keys: list[str] = []
        for per in lfn.values():
            keys += [k for k in per if k not in keys and per[k].get("status") != "skipped"]
        labels = {k: e["label"] for k, e in results["paths"].items()}
        for per in lfn.values():
            labels.update({k: e["label"] for k, e in per.items() if e.get("label")})
        if keys:
            fig, ax = plt.subplots(figsize=(9, 4.5))
            _bars(
                ax,
                [labels.get(k, k) for k in keys],
                {
                    f"RTT {r} ms": [
                        _spread(((per.get(k) or {}).get("tcp") or {}).get("bps")) for k in keys
                    ]
                    for r, per in lfn.items()
                },
                1e6,
                log=True,
            )
            ax.set_ylabel("Mbit/s, one TCP stream (log)")
            ax.set_title("Long fat link: delay proxy between the tunnel halves")
            save(fig, "lfn_throughput.png")
    return written, ""
