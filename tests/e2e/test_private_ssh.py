"""ssh to a machine behind NAT without a public port: a throwaway sshd behind `up --private`,
reached through `muxtunnel visit` (the README's worked example, for real).

A command runs, and a 64 MiB file goes there and back with scp, its SHA-256 the same at every
step. Missing OpenSSH (or root, which sshd's privilege separation needs) fails under CI.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

from .harness import Harness
from .private import need_openssh, start_sshd, start_visit, user, visitor_token

SCP_BYTES = 64 * 1024 * 1024
#: An scp of 64 MiB through two mux hops takes a couple of seconds; a loaded 2-core machine
#: with other suites running gets ten times that.
SCP_TIMEOUT_S = 120.0


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def test_ssh_command_and_a_64_mib_scp_through_a_private_service(harness: Harness) -> None:
    _, ssh, scp = need_openssh()
    sshd = start_sshd(harness)
    token = visitor_token()
    listen = harness.listen("--log-level", "debug")  # a clean 'visitor closed' is a debug line
    up = harness.up(listen, tcp=[f"ssh={sshd.port}"], extra=["--private", "--visitor-token", token])
    assert up.services()["ssh"].host == "private"
    visit = start_visit(harness, listen, "ssh", token, bind="127.0.0.1:0")
    host, port = visit.address("ssh")
    options = sshd.ssh_options()

    command = subprocess.run(
        [ssh, *options, "-p", str(port), f"{user()}@{host}", "echo hello from $(hostname); id -un"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert command.returncode == 0, command.stderr
    assert command.stdout.splitlines() == [f"hello from {os.uname().nodename}", user()]

    source = harness.log_dir / "sent.bin"
    with open(source, "wb") as handle:
        for _ in range(SCP_BYTES >> 20):
            handle.write(os.urandom(1 << 20))
    remote = harness.log_dir / "arrived.bin"  # the sshd is this machine: a path of ours
    back = harness.log_dir / "back.bin"
    scp_options = [*options, "-P", str(port)]
    for src, dst in [
        (str(source), f"{user()}@{host}:{remote}"),
        (f"{user()}@{host}:{remote}", str(back)),
    ]:
        copy = subprocess.run(
            [scp, *scp_options, src, dst], capture_output=True, text=True, timeout=SCP_TIMEOUT_S
        )
        assert copy.returncode == 0, copy.stderr
    expected = _sha256(str(source))
    assert _sha256(str(remote)) == expected
    assert _sha256(str(back)) == expected
    assert os.path.getsize(back) == SCP_BYTES
    # Every byte went through the private service: the server counted them.
    closed = [e for e in listen.events("visitor closed") if e["service"] == "ssh"]
    assert sum(e["bytes_in"] for e in closed) > SCP_BYTES
    assert sum(e["bytes_out"] for e in closed) > SCP_BYTES
    assert visit.running() and up.running()
