"""Facts about the machine and the software a bench run used."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    out = (cp.stdout or cp.stderr).strip().splitlines()
    return out[0].strip() if out else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _module_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "not installed"


def loadavg() -> str:
    """1/5/15-minute load averages: other work on the machine skews every figure."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def facts() -> dict[str, str]:
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "os": _run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "iperf3": _run(["iperf3", "--version"]),
        "go": _run(["go", "version"]),
        "hashicorp/yamux (dpkg)": _run(
            ["dpkg-query", "-W", "-f", "${Version}", "golang-github-hashicorp-yamux-dev"]
        ),
        "socat": _run(["sh", "-c", "socat -V | grep 'socat version'"]),
        "openssh": _run(["sh", "-c", "ssh -V 2>&1"]),
        "uvloop": _module_version("uvloop"),
        "matplotlib": _module_version("matplotlib"),
        "muxtunnel commit": _run(["git", "rev-parse", "--short", "HEAD"])
        + (" (+local changes)" if dirty and not dirty.startswith("error") else ""),
    }
