"""Helpers for the private-service tests: `muxtunnel visit` as a process, the listening sockets
of a process, and a throwaway sshd on loopback.

- `start_visit` runs `visit` like `Harness.up` runs `up`: JSON logs, waits for its line
  `NAME tcp HOST:PORT -> NAME@SERVER` (unless told not to).
- `listening_sockets(pid)` reads what a process listens on from /proc (its fds' socket inodes
  matched in /proc/PID/net/{tcp,tcp6,udp,udp6}): what `ss -ltnup` shows, without parsing it.
- `Sshd` starts `/usr/sbin/sshd -D` on a free loopback port with a temporary host key, an
  authorized key and a config of its own; `ssh_argv` gives the client's options. Missing
  OpenSSH (or root, which sshd's privilege separation needs) fails under CI, skips elsewhere.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from testenv import skip_or_fail

from .harness import START_TIMEOUT_S, Harness, Listen, Proc, free_port, tcp_connects, wait_until

_LINE = re.compile(r"^(?P<name>\S+) (?P<type>tcp|udp) (?P<host>\S+):(?P<port>\d+) -> (?P<to>\S+)$")


def visitor_token() -> str:
    return "visitor-" + secrets.token_hex(12)


class Visit(Proc):
    def bound(self) -> dict[str, tuple[str, int]]:
        """Service name -> where `visit` serves it, from its stdout lines."""
        found = {}
        for line in self.stdout().splitlines():
            if match := _LINE.match(line):
                found[match["name"]] = (match["host"].strip("[]"), int(match["port"]))
        return found

    def lines(self) -> list[str]:
        return self.stdout().splitlines()

    def address(self, name: str) -> tuple[str, int]:
        return self.bound()[name]


def start_visit(
    harness: Harness,
    server: Listen | str,
    name: str | None,
    token: str,
    *,
    bind: str | None = None,
    udp: bool = False,
    config: Path | None = None,
    extra: Sequence[object] = (),
    wait: bool = True,
) -> Visit:
    address = server if isinstance(server, str) else server.address
    args: list[object] = ["visit", "--server", address, "--log-format", "json", "--token", token]
    if config is not None:
        args += ["--config", config]
    if name is not None:
        args.append(name)
    if bind is not None:
        args += ["--bind", bind]
    if udp:
        args.append("--udp")
    proc: Visit = harness.spawn(Visit, "visit", [*args, *extra])
    if wait:
        proc.wait_for(lambda: proc.bound(), START_TIMEOUT_S, "visit's service line")
    return proc


# --- what a process listens on ---

_TCP_LISTEN = "0A"
_STATES = {"tcp": _TCP_LISTEN, "tcp6": _TCP_LISTEN, "udp": "07", "udp6": "07"}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _port(hex_address: str) -> int:
    return int(hex_address.rsplit(":", 1)[1], 16)


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(protocol, port) of every TCP socket `pid` listens on and every UDP socket it bound
    (unconnected: state 07), as `ss -ltnup` would show them for that process."""
    inodes = _socket_inodes(pid)
    found = set()
    for protocol, state in _STATES.items():
        with open(f"/proc/{pid}/net/{protocol}", encoding="ascii") as table:
            next(table)
            for row in table:
                fields = row.split()
                local, remote, st, inode = fields[1], fields[2], fields[3], fields[9]
                connected = _port(remote) != 0
                if inode in inodes and st == state and not connected:
                    found.add((protocol.rstrip("6"), _port(local)))
    return found


# --- a throwaway sshd ---


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "muxtunnel-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=20,
    )


@dataclass
class Sshd:
    """sshd on 127.0.0.1:`port` with its own keys; `user_key` logs in as this user."""

    port: int
    dir: Path
    proc: Proc

    @property
    def user_key(self) -> Path:
        return self.dir / "user_key"

    def ssh_options(self) -> list[str]:
        """Client options: this key only, no known_hosts, never a prompt."""
        return [
            "-F", "/dev/null", "-i", str(self.user_key), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20",
        ]  # fmt: skip


def need_openssh() -> tuple[str, str, str]:
    """The sshd, ssh and scp binaries, or skip (fail under CI) saying what is missing."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    ssh, scp = shutil.which("ssh"), shutil.which("scp")
    if not os.path.exists(sshd) or ssh is None or scp is None or not shutil.which("ssh-keygen"):
        skip_or_fail("OpenSSH is not installed (apt-get install openssh-server openssh-client)")
    if os.geteuid() != 0:
        skip_or_fail("sshd needs root here (its privilege separation)")
    return sshd, ssh, scp


def start_sshd(harness: Harness) -> Sshd:
    """A throwaway sshd for this test (stopped with the harness's other processes)."""
    sshd_bin, _, _ = need_openssh()
    directory = harness.log_dir / "sshd"
    directory.mkdir(mode=0o700)
    _keygen(directory / "host_key")
    _keygen(directory / "user_key")
    shutil.copy(directory / "user_key.pub", directory / "authorized_keys")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # its privilege separation dir
    port = free_port()
    settings = {
        "Port": port, "ListenAddress": "127.0.0.1", "HostKey": directory / "host_key",
        "PidFile": directory / "sshd.pid", "AuthorizedKeysFile": directory / "authorized_keys",
        "PermitRootLogin": "prohibit-password", "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no", "UsePAM": "no",
        "StrictModes": "no", "X11Forwarding": "no", "PrintMotd": "no", "UseDNS": "no",
        "LogLevel": "ERROR", "AllowTcpForwarding": "yes", "Subsystem": "sftp internal-sftp",
    }  # fmt: skip
    config = directory / "sshd_config"
    config.write_text("".join(f"{key} {value}\n" for key, value in settings.items()))
    argv = [sshd_bin, "-D", "-e", "-f", str(config)]
    proc = Proc("sshd", argv, harness.log_dir, harness.env())
    harness.procs.append(proc)
    proc.wait_for(lambda: tcp_connects("127.0.0.1", port), START_TIMEOUT_S, "sshd's port")
    return Sshd(port, directory, proc)


def user() -> str:
    return getpass.getuser()


__all__ = [
    "Sshd",
    "Visit",
    "listening_sockets",
    "need_openssh",
    "start_sshd",
    "start_visit",
    "user",
    "visitor_token",
    "wait_until",
]
