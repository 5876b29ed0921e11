"""What the cipher alone leaves of a TLS path's bulk throughput on this machine.

    .venv/bin/python -m bench.ceiling [--gib 2] [--pairs 1] [--json]

A bulk run (`iperf3 -P1`) through listen + up keeps every core of a small machine busy, TLS
or not (on a 2-core machine vmstat shows 5-8 % idle through either), so its throughput
follows the CPU the *whole* path spends per byte: both iperf3 processes and every tunnel
process. A TLS path does all its plaintext twin does, plus one encryption and one decryption
per TLS hop of every byte, and no implementation (kTLS included: the kernel runs the same
cipher) can do those for less than the cipher costs alone. So, with `plain` and `cipher` in
CPU seconds per GiB:

    best TLS / plaintext ratio = plain / (plain + 2 * hops * cipher)

This module measures both sides of that on the machine it runs on: the CPU per GiB of every
process of each path (one `iperf3 -c -n` of `--gib` GiB; the client's own CPU from `wait4`),
and the cipher's CPU per GiB from `openssl speed -evp` (CPU time, not elapsed: it holds on a
busy machine) with 16 KiB blocks (TLS records are 16 KiB) for the suite each path negotiates:
AES-256-GCM for muxtunnel's TLS 1.3 carriers (what Python's `ssl` picks first; it cannot be
told to pick another TLS 1.3 suite) and ChaCha20-Poly1305 for OpenSSH (its default first
cipher). It prints, per path, the CPU per GiB, the ceiling the cipher allows against
plaintext, the ratio of CPU per GiB measured (what the throughput ratio is on a CPU-bound
machine), and the overhead beyond the cipher (copies, buffers, Python): the only part
software here can still remove. The iperf3 processes spend more per byte at a lower rate
(smaller reads), which the ceiling, taken from the twin's figures, leaves out: it is an
upper bound.

Paths: `plain` (listen + up, `--no-tls`), `tls` (as `python -m bench` runs it), `visit-plain`
and `visit` (visit -> listen -> up: two TLS hops, so four cipher passes), `sshl` (ssh -L: one
hop, two passes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procstat
from bench.cost import probe_env
from bench.paths import REPO, Env, Opener, muxtunnel, ssh_l, visit_path

GIB = 2**30

#: path -> (opener, TLS hops, the cipher `openssl speed -evp` names for its suite)
PATHS: dict[str, tuple[Opener, int, str]] = {
    "plain": (muxtunnel(tls=False), 0, ""),
    "tls": (muxtunnel(tls=True), 1, "aes-256-gcm"),
    "visit-plain": (visit_path(tls=False), 0, ""),
    "visit": (visit_path(tls=True), 2, "aes-256-gcm"),
    "sshl": (ssh_l, 1, "chacha20-poly1305"),
}
#: The plaintext twin each TLS path is compared with (ssh -L with plaintext `visit`'s twin:
#: what ssh would cost with no cipher is not measurable, so it is listed against its own).
TWINS = {"tls": "plain", "visit": "visit-plain"}


def cipher_s_per_gib(name: str, seconds: int = 2) -> float:
    """CPU seconds per GiB of `openssl speed -evp NAME` with 16 KiB blocks (one core)."""
    cp = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "-bytes", "16384",
         "-evp", name],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    line = cp.stdout.strip().splitlines()[-1]  # "AES-256-GCM    4087029.76k"
    m = re.search(r"([0-9.]+)k\s*$", line)
    if m is None:
        raise RuntimeError(f"openssl speed said {line!r}")
    return GIB / (float(m.group(1)) * 1000)


def tls_suite() -> str:
    """The TLS 1.3 suite Python's default contexts agree on (muxtunnel's carriers are those)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    suites = [c["name"] for c in client.get_ciphers() if c["protocol"] == "TLSv1.3"]
    shared = [c["name"] for c in server.get_ciphers() if c["name"] in suites]
    return shared[0] if shared else "?"


def _iperf_client(address: tuple[str, int], nbytes: int) -> float:
    """Run `iperf3 -c -n`; the client's CPU seconds (user + system, from `wait4`)."""
    argv = ["iperf3", "-c", address[0], "-p", str(address[1]), "-n", str(nbytes)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("iperf3 did not finish in 180 s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise RuntimeError(f"iperf3 failed: {err.strip()[:200]}")
    return usage.ru_utime + usage.ru_stime


def measure_path(env: Env, opener: Opener, server_pid: int, nbytes: int) -> dict[str, float]:
    """CPU seconds per GiB of every process of one bulk stream through `opener`'s path."""
    with opener(env, None) as ep:
        time.sleep(0.5)
        trees = {role: procstat.descendants(pids) for role, pids in ep.roles.items()}
        trees["iperf3-server"] = {server_pid}
        c0 = {role: procstat.cpu_seconds(pids) for role, pids in trees.items()}
        t0 = time.monotonic()
        client = _iperf_client(ep.tcp, nbytes)
        wall = time.monotonic() - t0
        spent = {role: procstat.cpu_seconds(pids) - c0[role] for role, pids in trees.items()}
    spent["iperf3-client"] = client
    gib = nbytes / GIB
    out = {f"{role}_s_per_gib": s / gib for role, s in spent.items()}
    out["s_per_gib"] = sum(spent.values()) / gib
    out["gbit_s"] = nbytes * 8 / wall / 1e9
    return out


def measure(exe: Path, gib: float, paths: list[str]) -> dict[str, dict[str, float]]:
    """Every path of `paths` once, on fresh tunnels sharing one iperf3 server."""
    out: dict[str, dict[str, float]] = {}
    with probe_env(exe) as (env, server):
        assert server.proc is not None
        server_pid = server.proc.pid
        for name in paths:
            out[name] = measure_path(env, PATHS[name][0], server_pid, int(gib * GIB))
    return out


Rows = tuple[list[str], list[list[str]]]

HEADER = ["path", "Gbit/s", "CPU s/GiB", "cipher passes", "ceiling", "measured", "beyond",
          "per process (CPU s/GiB)"]  # fmt: skip
#: What the columns mean, under the table.
LEGEND = (
    "CPU s/GiB: every process of the path, both iperf3s included; cipher passes: 2 per TLS "
    "hop at the cipher's own cost (openssl speed); ceiling: plaintext twin / (twin + cipher "
    "passes), the best TLS/plaintext ratio on a CPU-bound machine; measured: twin / path; "
    "beyond: what the path spends past its twin and its cipher passes"
)


def table(runs: list[dict[str, dict[str, float]]], ciphers: dict[str, float]) -> Rows:
    """Each path's least costly round of `runs` (the one other work on the machine disturbed
    least: preempted processes move smaller batches, at a higher cost per byte), its ceiling
    and its gap."""
    med = {path: min((r[path] for r in runs), key=lambda f: f["s_per_gib"]) for path in runs[0]}
    rows = []
    for path, fig in med.items():
        _, hops, cipher = PATHS[path]
        passes = 2 * hops * ciphers[cipher] if cipher else 0.0
        twin = med.get(TWINS.get(path, ""))
        ceiling = measured = beyond = ""
        if twin is not None:
            ceiling = f"{twin['s_per_gib'] / (twin['s_per_gib'] + passes):.2f}x"
            measured = f"{twin['s_per_gib'] / fig['s_per_gib']:.2f}x"
            beyond = f"{fig['s_per_gib'] - twin['s_per_gib'] - passes:.2f}"
        roles = " ".join(
            f"{k.removesuffix('_s_per_gib')}={v:.2f}"
            for k, v in fig.items()
            if k.endswith("_s_per_gib") and k != "s_per_gib"
        )
        rows.append([path, f"{fig['gbit_s']:.2f}", f"{fig['s_per_gib']:.2f}", f"{passes:.2f}",
                     ceiling, measured, beyond, roles])  # fmt: skip
    if "visit-plain" in med and "sshl" in med and "aes-256-gcm" in ciphers:
        # visit's floor: its plaintext twin plus its four cipher passes, against ssh -L whole.
        floor = med["visit-plain"]["s_per_gib"] + 4 * ciphers["aes-256-gcm"]
        sshl = med["sshl"]["s_per_gib"]
        measured = f"{sshl / med['visit']['s_per_gib']:.2f}x" if "visit" in med else ""
        why = "visit's floor (visit-plain + 4 passes) against ssh -L's CPU per GiB"
        rows.append(["visit vs sshl", "", f"{floor:.2f}", "", f"{sshl / floor:.2f}x", measured,
                     "", why])  # fmt: skip
    return HEADER, rows


def report(runs: list[dict[str, dict[str, float]]], ciphers: dict[str, float]) -> list[str]:
    """`table` as text lines, with the suite and the ciphers' costs above it."""
    lines = [f"TLS 1.3 suite of the carriers: {tls_suite()}"]
    lines += [f"cipher {name}: {s:.3f} CPU s per GiB (openssl speed, 16 KiB)"
              for name, s in ciphers.items()]  # fmt: skip
    header, rows = table(runs, ciphers)
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    lines.append(LEGEND)
    return lines


def run(exe: Path, gib: float, rounds: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Every path `rounds` times and the ciphers' costs: what `python -m bench` keeps."""
    paths = list(PATHS)
    ciphers = {c: cipher_s_per_gib(c) for c in sorted({PATHS[p][2] for p in paths} - {""})}
    runs = []
    for i in range(rounds):
        runs.append(measure(exe, gib, paths))
        say(f"round {i}: " + " ".join(
            f"{p}={r['gbit_s']:.2f}G/{r['s_per_gib']:.2f}s" for p, r in runs[-1].items()
        ))  # fmt: skip
    return {"ciphers": ciphers, "runs": runs, "suite": tls_suite(), "gib": gib}


def rows(results: dict[str, Any]) -> Rows:
    """The report's section (`bench.report.SECTIONS`), empty when the run had none."""
    found = results.get("ceiling")
    if not found:
        return HEADER, []
    header, body = table(found["runs"], found["ciphers"])
    ciphers = ", ".join(f"{n} {s:.3f}" for n, s in found["ciphers"].items())
    body.append([f"ciphers (CPU s/GiB): {ciphers}; carriers' suite {found['suite']}",
                 "", "", "", "", "", "", LEGEND])  # fmt: skip
    return header, body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0, help="GiB per bulk run (2)")
    ap.add_argument("--pairs", type=int, default=1, help="rounds over every path (best kept)")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma list of " + ",".join(PATHS))
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    a = ap.parse_args(argv)
    paths = a.paths.split(",")
    for name in paths:
        if name not in PATHS:
            ap.error(f"unknown path {name!r}")
    for twin in (TWINS[p] for p in paths if p in TWINS):
        if twin not in paths:
            paths.insert(0, twin)
    exe = REPO / ".venv" / "bin" / "muxtunnel"
    ciphers = {c: cipher_s_per_gib(c) for c in sorted({PATHS[p][2] for p in paths} - {""})}
    runs = []
    for i in range(a.pairs):
        runs.append(measure(exe, a.gib, paths))
        load = os.getloadavg()[0]
        print(f"round {i}: " + " ".join(
            f"{p}={r['gbit_s']:.2f}G/{r['s_per_gib']:.2f}s" for p, r in runs[-1].items()
        ) + f" load={load:.2f}", flush=True)  # fmt: skip
    for line in report(runs, ciphers):
        print(line)
    if a.json:
        print(json.dumps({"ciphers": ciphers, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
