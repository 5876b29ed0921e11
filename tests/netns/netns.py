"""Two network namespaces joined by a veth pair, with impairments that work on this kernel.

No netem here (the kernel is built without it), so: loss and blackholes with nftables rules
inside the namespaces, bandwidth with tbf on each veth end. Latency and jitter come from the
userspace delay proxy instead (`bench/delayproxy.py`, see `test_delay.py`).

Names are unique per pair (`mt<pid><n>a`/`b`, at most 15 characters for the interfaces),
addresses come from 10.99.0.0/16 only, nothing is added to the root namespace (the veth is
moved into the namespaces at once), and `close()` deletes both namespaces, which takes the
veth pair and every rule inside them along.

`enter(ns)` switches the calling thread (only) into a namespace with setns(2), so sockets a
test creates inside the block live there: local services and visitors run as threads of the
test, the muxtunnel processes through `ip netns exec`.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count(1)


class NetnsUnavailable(Exception):
    """Why namespaces cannot be used here (the skip reason)."""


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"`{tool}` is not installed (apt-get install iproute2 nftables)")


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, input=input, timeout=20, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


class NetnsPair:
    """Namespaces `a` and `b`; interface `dev[a]` in `a` has `addr[a]`, and so on."""

    def __init__(self) -> None:
        check_available()
        n = next(_counter)
        tag = f"mt{os.getpid() % 100000}{n}"
        self.a, self.b = f"{tag}a", f"{tag}b"
        self.dev = {self.a: f"{tag}a", self.b: f"{tag}b"}
        subnet = (os.getpid() * 7 + n) % 250 + 1
        self.addr = {self.a: f"10.99.{subnet}.1", self.b: f"10.99.{subnet}.2"}
        self._created: list[str] = []
        try:
            for ns in (self.a, self.b):
                run("ip", "netns", "add", ns)
                self._created.append(ns)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            self.close()
            raise NetnsUnavailable(f"cannot build network namespaces here: {exc}") from exc
        try:
            self._setup()
        except BaseException:  # our own setup failed (a bad nft rule, say): an error, no skip
            self.close()
            raise

    def _setup(self) -> None:
        a, b = self.a, self.b
        # Created in `a` directly, the peer moved to `b`: the root namespace never holds it.
        run("ip", "-n", a, "link", "add", self.dev[a], "type", "veth", "peer", "name", self.dev[b])
        run("ip", "-n", a, "link", "set", self.dev[b], "netns", b)
        for ns in (a, b):
            dev = self.dev[ns]
            run("ip", "-n", ns, "addr", "add", f"{self.addr[ns]}/24", "dev", dev)
            # One MTU-sized segment per packet, so loss and shaping act per packet as on a wire.
            run("ip", "-n", ns, "link", "set", dev, "gso_max_segs", "1", check=False)
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "chaos")
            run(
                "ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "chaos", "input",
                "{ type filter hook input priority 0; policy accept; }",
            )  # fmt: skip

    def add_link(self) -> tuple[str, str, str, str]:
        """A second veth pair between `a` and `b` (another subnet of 10.99.0.0/16): returns its
        devices and addresses (dev in a, dev in b, address in a, address in b). `blackhole_dev`
        and `heal` act on it by its devices."""
        a, b = self.a, self.b
        tag = self.a[:-1]
        dev_a, dev_b = f"{tag}c", f"{tag}d"
        subnet = (int(self.addr[a].split(".")[2]) + 125) % 250 + 1
        addr_a, addr_b = f"10.99.{subnet}.1", f"10.99.{subnet}.2"
        run("ip", "-n", a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b)
        run("ip", "-n", a, "link", "set", dev_b, "netns", b)
        for ns, dev, addr in ((a, dev_a, addr_a), (b, dev_b, addr_b)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "gso_max_segs", "1", check=False)
            run("ip", "-n", ns, "link", "set", dev, "up")
        return dev_a, dev_b, addr_a, addr_b

    # ------------------------------------------------------------------ impairments

    def heal(self) -> None:
        """Remove every impairment (rules and qdiscs)."""
        for ns in (self.a, self.b):
            run("ip", "netns", "exec", ns, "nft", "flush", "chain", "inet", "chaos", "input")
            run("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", self.dev[ns], "root",
                check=False)  # fmt: skip

    def loss(self, percent: int) -> None:
        """Drop `percent` % of the packets arriving over the veth, in each direction."""
        for ns in (self.a, self.b):
            run(
                "ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "chaos", "input",
                "iifname", self.dev[ns], "numgen", "random", "mod", "100", "<", str(percent),
                "counter", "drop",
            )  # fmt: skip

    def blackhole(self) -> None:
        """Drop everything arriving over the veth: no FIN, no RST, a half-open connection."""
        for ns in (self.a, self.b):
            run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "chaos", "input",
                "iifname", self.dev[ns], "drop")  # fmt: skip

    def blackhole_dev(self, dev_a: str, dev_b: str) -> None:
        """`blackhole`, on one link only (its device in `a` and in `b`)."""
        for ns, dev in ((self.a, dev_a), (self.b, dev_b)):
            run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "chaos", "input",
                "iifname", dev, "drop")  # fmt: skip

    def bandwidth(self, rate: str = "10mbit") -> None:
        """Shape each direction to `rate` with tbf on each veth end's egress."""
        for ns in (self.a, self.b):
            run(
                "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", self.dev[ns],
                "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "100ms",
            )  # fmt: skip

    def dropped_packets(self) -> int:
        """Packets the nft rules have dropped so far (both namespaces)."""
        total = 0
        for ns in (self.a, self.b):
            command = ("ip", "netns", "exec", ns, "nft", "list", "chain", "inet", "chaos", "input")
            listing = run(*command, check=False)
            words = listing.split()
            total += sum(int(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "packets")
        return total

    def drops(self) -> str:
        """The qdisc statistics of both ends (for failure messages)."""
        shows = [
            ("ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", self.dev[ns])
            for ns in (self.a, self.b)
        ]
        return "\n".join(run(*show, check=False) for show in shows)

    # ------------------------------------------------------------------ threads and processes

    @contextlib.contextmanager
    def enter(self, ns: str) -> Iterator[None]:
        """Run the block with the calling thread inside namespace `ns`."""
        with (
            open("/proc/thread-self/ns/net", "rb") as home,
            open(f"/run/netns/{ns}", "rb") as there,
        ):
            if _libc.setns(there.fileno(), _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns}")
            try:
                yield
            finally:
                if _libc.setns(home.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back home")

    def argv(self, ns: str, *command: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *command]

    def close(self) -> None:
        for ns in reversed(self._created):
            run("ip", "netns", "del", ns, check=False)
        self._created.clear()
