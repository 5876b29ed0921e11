"""iperf3: the server behind every path, and bounded client runs parsed from -J JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.proc import Address, Proc, StartError, free_port


@dataclass
class IperfResult:
    ok: bool
    bps: float = 0.0  # received bits/s (TCP: receiver side; UDP: what arrived)
    sent_bps: float = 0.0
    loss_pct: float | None = None  # UDP only
    retransmits: int | None = None
    error: str = ""


class IperfServer:
    """One `iperf3 -s` on a loopback port (TCP control and data, UDP data)."""

    def __init__(self, log_dir: Path) -> None:
        if shutil.which("iperf3") is None:
            raise StartError("iperf3 is not installed")
        self.log_dir = log_dir
        self.port = free_port(udp_too=True)
        self.proc: Proc | None = None
        self.restarts = 0

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        name = "iperf3-server" if not self.restarts else f"iperf3-server-{self.restarts}"
        # Bound to loopback only: the port was checked free there (on a busy machine a port free
        # on 127.0.0.1 may be taken on another address, and iperf3 binds [::] by default).
        argv = ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(self.port)]
        self.proc = Proc(name, argv, log_dir=self.log_dir)
        self.proc.wait_listening(self.port, 5)

    def restart(self) -> None:
        """After a failed run iperf3 may stay 'busy'; a fresh server avoids cascading errors."""
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def __enter__(self) -> IperfServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def client_argv(
    addr: Address,
    *,
    seconds: float,
    udp_bitrate: str | None = None,
    udp_len: int = 1400,
    parallel: int = 1,
    reverse: bool = False,
) -> list[str]:
    argv = ["iperf3", "-c", addr[0], "-p", str(addr[1]), "-t", f"{seconds:g}", "-J"]
    argv += ["--connect-timeout", "5000"]
    if parallel > 1:
        argv += ["-P", str(parallel)]
    if reverse:
        argv.append("-R")
    if udp_bitrate is not None:
        argv += ["-u", "-b", udp_bitrate, "-l", str(udp_len)]
    return argv


def parse(stdout: str) -> IperfResult:
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        tail = stdout.strip().splitlines()[-1:] or ["no output"]
        return IperfResult(False, error=f"unparseable iperf3 output: {tail[0][:200]}")
    if data.get("error"):
        return IperfResult(False, error=str(data["error"]))
    end = data.get("end", {})
    rx = end.get("sum_received") or end.get("sum") or {}
    tx = end.get("sum_sent") or end.get("sum") or {}
    udp = data.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
    return IperfResult(
        ok=bool(rx),
        bps=float(rx.get("bits_per_second", 0.0)),
        sent_bps=float(tx.get("bits_per_second", 0.0)),
        loss_pct=float(rx.get("lost_percent", 0.0)) if udp else None,
        retransmits=tx.get("retransmits"),
        error="" if rx else "no end summary",
    )


def run(argv: list[str], seconds: float) -> IperfResult:
    """Run one iperf3 client to completion (bounded by a timeout)."""
    try:
        cp = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 25, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return IperfResult(False, error=f"iperf3 did not finish within {seconds + 25:g} s")
    res = parse(cp.stdout)
    if not res.ok and not res.error:
        res.error = (cp.stderr or "").strip()[:200]
    return res


def start(argv: list[str]) -> subprocess.Popen[str]:
    """Start an iperf3 client in the background (used as load for latency probes)."""
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )


def finish(p: subprocess.Popen[str], seconds: float) -> IperfResult:
    try:
        out, _ = p.communicate(timeout=seconds + 25)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return IperfResult(False, error="iperf3 load run did not finish")
    return parse(out)
