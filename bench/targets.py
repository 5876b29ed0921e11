"""muxtunnel's performance targets, checked against a run's results.

Each target yields a row: the measured value, what it is compared with, the ratio,
and ok = True / False / None (None: a figure is missing, e.g. a peer was skipped).
"Yamux tunnel" means the Go hashicorp/yamux tunnel at its default 256 KiB window;
"plain relay" means socat (one TCP connection per visitor, no mux).
"""

from __future__ import annotations

import math
from typing import Any

from bench import http
from bench.stats import ratio

MUX = "muxtunnel"
MUX_TLS = "muxtunnel-tls"
YAMUX = "yamux256k"
SSH = "ssh"
RELAY = "socat"
#: Private services: `muxtunnel visit` (two mux hops), and what it replaces, `ssh -L`.
VISIT = "visit"
SSH_L = "sshl"


def _get(d: Any, *keys: str) -> float | None:
    for k in keys:
        if not isinstance(d, dict) or k not in d or d[k] is None:
            return None
        d = d[k]
    if isinstance(d, int | float) and not math.isnan(d):
        return float(d)
    return None


def _row(
    tid: str,
    text: str,
    value: float | None,
    unit: str,
    ref: float | None,
    ref_label: str,
    factor: float,
    higher_is_better: bool,
) -> dict[str, Any]:
    """value must be >= factor*ref (higher_is_better) or <= factor*ref."""
    r = ratio(value, ref)
    if value is None or ref is None:
        ok = None
    elif higher_is_better:
        ok = value >= factor * ref
    else:
        ok = value <= factor * ref
    return {
        "id": tid,
        "target": text,
        "value": value,
        "unit": unit,
        "reference": ref,
        "reference_label": ref_label,
        "ratio": r,
        "ok": ok,
    }


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    paths = results.get("paths", {})
    lfn = results.get("lfn", {})
    rows: list[dict[str, Any]] = []

    def tcp(key: str, mode: str) -> float | None:
        return _get(paths.get(key), "tcp", mode, "bps", "median")

    def load_p99(key: str) -> float | None:
        return _get(paths.get(key), "latency", "load", "p99_ms")

    mux_p1 = tcp(MUX, "P1")
    rows.append(
        _row(
            "tcp-p1-yamux",
            "TCP -P1 >= 2.0x yamux(256K) tunnel",
            mux_p1,
            "bit/s",
            tcp(YAMUX, "P1"),
            "Go yamux 256K",
            2.0,
            True,
        )
    )
    rows.append(
        _row(
            "tcp-p1-ssh", "TCP -P1 >= ssh -R", mux_p1, "bit/s", tcp(SSH, "P1"), "ssh -R", 1.0, True
        )
    )
    rows.append(
        _row(
            "tcp-p8-yamux",
            "TCP -P8 >= 1.5x yamux(256K) tunnel",
            tcp(MUX, "P8"),
            "bit/s",
            tcp(YAMUX, "P8"),
            "Go yamux 256K",
            1.5,
            True,
        )
    )
    rows.append(
        _row(
            "udp-1g-socat",
            "UDP -b 1G received >= socat relay",
            _get(paths.get(MUX), "udp", "1G", "bps", "median"),
            "bit/s",
            _get(paths.get(RELAY), "udp", "1G", "bps", "median"),
            "socat",
            1.0,
            True,
        )
    )

    for mode in ("P1", "P8"):
        rows.append(
            _row(
                f"visit-{mode.lower()}-ssh-l",
                f"visit: TCP -{mode} through two mux hops >= ssh -L",
                tcp(VISIT, mode),
                "bit/s",
                tcp(SSH_L, mode),
                "ssh -L",
                1.0,
                True,
            )
        )

    l50 = lfn.get("50", {})
    mux_l50 = _get(l50.get(MUX), "tcp", "bps", "median")
    rows.append(
        _row(
            "lfn50-yamux",
            "LFN 50 ms, one stream >= 10x yamux(256K)",
            mux_l50,
            "bit/s",
            _get(l50.get(YAMUX), "tcp", "bps", "median"),
            "Go yamux 256K",
            10.0,
            True,
        )
    )
    rows.append(
        _row(
            "lfn50-ssh",
            "LFN 50 ms, one stream >= 2x ssh -R",
            mux_l50,
            "bit/s",
            _get(l50.get(SSH), "tcp", "bps", "median"),
            "ssh -R",
            2.0,
            True,
        )
    )

    mux_load = load_p99(MUX)
    rows.append(
        _row(
            "load-p99-abs",
            "latency under load p99 <= 5 ms",
            mux_load,
            "ms",
            5.0,
            "5 ms",
            1.0,
            False,
        )
    )
    rows.append(
        _row(
            "load-p99-yamux",
            "latency under load p99 <= yamux(256K) tunnel's",
            mux_load,
            "ms",
            load_p99(YAMUX),
            "Go yamux 256K",
            1.0,
            False,
        )
    )
    rows.append(
        _row(
            "load-p99-relay",
            "latency under load p99 <= 2x plain relay's",
            mux_load,
            "ms",
            load_p99(RELAY),
            "socat",
            2.0,
            False,
        )
    )

    fb = _get(l50.get(MUX), "first_byte", "p50_ms")
    rtt = _get(l50.get(MUX), "rtt", "p50_ms")
    rows.append(
        _row(
            "lfn50-first-byte",
            "new visitor at 50 ms RTT: first byte ~ 1 RTT (<= 1.5 RTT)",
            fb,
            "ms",
            rtt,
            "measured RTT",
            1.5,
            False,
        )
    )

    def conns(key: str) -> float | None:
        return _get(paths.get(key), "connrate", "conns_per_s")

    def first_byte_p50(key: str) -> float | None:
        return _get(paths.get(key), "connrate", "ttfb", "p50_ms")

    def msgs(key: str, proto: str) -> float | None:
        return _get(paths.get(key), "messages", proto, "msgs_per_s")

    rows.append(
        _row(
            "conns-yamux",
            "new visitor connections/s >= yamux(256K) tunnel's",
            conns(MUX),
            "/s",
            conns(YAMUX),
            "Go yamux 256K",
            1.0,
            True,
        )
    )
    rows.append(
        _row(
            "first-byte-yamux",
            "new visitor first byte p50 <= yamux(256K) tunnel's",
            first_byte_p50(MUX),
            "ms",
            first_byte_p50(YAMUX),
            "Go yamux 256K",
            1.0,
            False,
        )
    )
    rows.append(
        _row(
            "idle-p99-abs",
            "idle latency p99 <= 1 ms",
            _get(paths.get(MUX), "latency", "idle", "p99_ms"),
            "ms",
            1.0,
            "1 ms",
            1.0,
            False,
        )
    )
    rows.append(
        _row(
            "msgs-tcp-yamux",
            "small messages x50 TCP >= yamux(256K) tunnel's",
            msgs(MUX, "tcp"),
            "/s",
            msgs(YAMUX, "tcp"),
            "Go yamux 256K",
            1.0,
            True,
        )
    )
    rows.append(
        _row(
            "msgs-tcp-relay",
            "small messages x50 TCP >= 0.8x plain relay's",
            msgs(MUX, "tcp"),
            "/s",
            msgs(RELAY, "tcp"),
            "socat",
            0.8,
            True,
        )
    )
    rows.append(
        _row(
            "msgs-udp-relay",
            "small messages x50 UDP >= 0.8x plain relay's",
            msgs(MUX, "udp"),
            "/s",
            msgs(RELAY, "udp"),
            "socat",
            0.8,
            True,
        )
    )
    idle = (paths.get(MUX) or {}).get("idle_rss_mib")
    rows.append(
        _row(
            "rss-idle",
            "idle RSS listen+up <= 40 MiB",
            sum(idle.values()) if isinstance(idle, dict) and idle else None,
            "MiB",
            40.0,
            "40 MiB",
            1.0,
            False,
        )
    )
    http_rps, tcp_rps = http.keepalive_ratio(results)
    rows.append(
        _row(
            "http-keepalive-tcp",
            "HTTP keep-alive requests/s through --http >= 70% of the same service as --tcp",
            http_rps,
            "req/s",
            tcp_rps,
            "--tcp service",
            0.7,
            True,
        )
    )
    rows.append(
        _row(
            "rss-p1",
            "peak RSS listen+up during TCP -P1 <= 41 MiB",
            _get(paths.get(MUX), "tcp", "P1", "peak_rss_mib", "max"),
            "MiB",
            41.0,
            "41 MiB",
            1.0,
            False,
        )
    )
    # TLS is the default: it must not cost the fast path more than a fifth (the SSL transport
    # is driven as directly as a TCP one; what is left is the encryption itself).
    rows.append(
        _row(
            "tls-p1",
            "TLS: TCP -P1 >= 0.8x plaintext",
            tcp(MUX_TLS, "P1"),
            "bit/s",
            mux_p1,
            "muxtunnel",
            0.8,
            True,
        )
    )
    rows.append(
        _row(
            "tls-connrate",
            "TLS: new visitors/s >= 0.8x plaintext",
            _get(paths.get(MUX_TLS), "connrate", "conns_per_s"),
            "conn/s",
            _get(paths.get(MUX), "connrate", "conns_per_s"),
            "muxtunnel",
            0.8,
            True,
        )
    )
    return rows
