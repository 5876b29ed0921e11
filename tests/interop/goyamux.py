"""Build the Go reference peer (`yamuxpeer/main.go`, on hashicorp/yamux) for the interop tests.

The build is offline: GOPATH mode against Debian's golang-github-hashicorp-yamux-dev, with the
build cache inside the caller's temporary directory, so it touches nothing outside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: The Go program's source directory.
PEER_SOURCE_DIR = Path(__file__).parent / "yamuxpeer"
#: Where Debian's golang-github-hashicorp-yamux-dev puts its sources (a GOPATH).
GOPATH = Path("/usr/share/gocode")
YAMUX_SOURCE_DIR = GOPATH / "src" / "github.com" / "hashicorp" / "yamux"
#: A cold build takes a few seconds; this only stops a wedged toolchain.
BUILD_TIMEOUT_S = 300.0


class GoToolchainMissing(RuntimeError):
    """`go` or the hashicorp/yamux sources are not installed; the build was not attempted."""


def missing_toolchain() -> str | None:
    """Why the Go peer cannot be built here, or None if it can."""
    if shutil.which("go") is None:
        return "`go` is not on PATH (run scripts/install-system-deps.sh)"
    if not (YAMUX_SOURCE_DIR / "session.go").is_file():
        return (
            f"hashicorp/yamux sources not found in {YAMUX_SOURCE_DIR} "
            "(apt-get install golang-github-hashicorp-yamux-dev)"
        )
    return None


def build_yamux_peer(tmp_dir: Path) -> Path:
    """Compile `yamuxpeer` into `tmp_dir` and return the binary's path.

    Raises GoToolchainMissing if the toolchain or yamux sources are absent, and RuntimeError
    with the compiler's output if the build fails.
    """
    reason = missing_toolchain()
    if reason is not None:
        raise GoToolchainMissing(reason)
    tmp_dir = Path(tmp_dir)
    binary = tmp_dir / "yamuxpeer"
    env = {
        **os.environ,
        "GO111MODULE": "off",  # GOPATH mode: resolve the import from GOPATH, never a module proxy
        "GOPATH": str(GOPATH),
        "GOCACHE": str(tmp_dir / "gocache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",  # a static binary; no C compiler needed
    }
    result = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=PEER_SOURCE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"go build of {PEER_SOURCE_DIR} failed (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return binary
