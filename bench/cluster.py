"""Cluster rows of `python -m bench` (alone: `python -m bench.cluster`): the extra hop and the
aggregate of several nodes.

Three `listen --cluster` nodes on one redis-server, each on a loopback address of its own
(127.0.0.1, .2, .3: the same public port on each), plaintext carriers:

    owner         iperf3/visitors -> node A (holds the service) == mux == up -> target
    forwarded     iperf3/visitors -> node B == node-to-node mux == node A == mux == up -> target
    one node x3   3 iperf3 at once -> node A, three services of one up
    three nodes   3 iperf3 at once -> A, B, C, each the owner of its own service and up

Per row: TCP throughput (iperf3, one stream, median of the repeats), and new visitors per
second (a connection, one echoed byte, close, from 4 threads: what the extra hop costs a short
connection). On this 2-core machine the aggregate rows show what several processes buy when
one Python process is the limit, and what they cost when the cores are already busy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import iperf
from bench.iperf import IperfServer
from bench.paths import Env
from bench.proc import Address, Proc, StartError, free_port, stop_all
from bench.stats import spread

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
#: Threads opening visitor connections for the new-visitor rate: enough to keep one node
#: busy without the load generator taking a core of its own.
VISITOR_THREADS = 4


@dataclass
class ClusterPlan:
    seconds: float = 5.0
    repeats: int = 3


@dataclass
class _Node:
    host: str
    control: int
    proc: Proc


@contextlib.contextmanager
def _cluster(env: Env, count: int) -> Iterator[list[_Node]]:
    from muxtunnel.cluster.testing import RedisServer, RedisServerMissing

    try:
        redis = RedisServer(env.tmp / "bench-redis")
    except RedisServerMissing as exc:
        raise StartError(str(exc)) from None
    redis.start()
    nodes: list[_Node] = []
    try:
        for index, host in enumerate(HOSTS[:count]):
            control, advertise = free_port(), free_port()
            argv = [str(env.muxtunnel), "listen", "--bind", f"{host}:{control}",
                    "--public-host", host, "--cluster", redis.url, "--node-id", "abc"[index],
                    "--advertise", f"{host}:{advertise}", "--no-tls",
                    "--log-level", env.mux_log_level or "warning"]  # fmt: skip
            proc = Proc(f"cluster-listen-{'abc'[index]}", argv, log_dir=env.tmp,
                        extra_env=_token_env(), stop_signal=signal.SIGINT)  # fmt: skip
            nodes.append(_Node(host, control, proc))
        for node in nodes:
            _wait_connect((node.host, node.control), 15, node.proc)
        yield nodes
    finally:
        for node in nodes:
            node.proc.stop()
        redis.close()


_TOKEN = secrets.token_hex(16)


def _token_env() -> dict[str, str]:
    return {"MUXTUNNEL_TOKEN": _TOKEN}


def _wait_connect(address: Address, timeout_s: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(address, timeout=0.5):
            return
        if not proc.alive():
            raise StartError(f"{proc.name} exited: {proc.tail()}")
        time.sleep(0.05)
    raise StartError(f"{proc.name} did not listen on {address} within {timeout_s} s")


def _up(env: Env, node: _Node, name: str, services: dict[str, tuple[Address, int]]) -> Proc:
    """An `up` on `node` exposing each service NAME: (target, public port)."""
    argv = [str(env.muxtunnel), "up", "--server", f"{node.host}:{node.control}", "--no-console",
            "--no-tls", "--log-level", env.mux_log_level or "warning"]  # fmt: skip
    for service, (target, port) in services.items():
        argv += ["--tcp", f"{service}={target[0]}:{target[1]}:{port}"]
    proc = Proc(name, argv, log_dir=env.tmp, extra_env=_token_env(), stop_signal=signal.SIGINT)
    for service in services:
        proc.wait_line(rf"^{service} tcp ", 20)
    return proc


def _reached(address: Address, timeout_s: float = 15.0) -> None:
    """Wait until a visitor gets through (a mirror binds within a sync interval)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=2) as sock:
                sock.sendall(b"?")
                if sock.recv(1) == b"?":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise StartError(f"no echo through {address} within {timeout_s} s")


def _visitor_rate(address: Address, seconds: float) -> float:
    """New visitors per second: connect, one echoed byte, close; from VISITOR_THREADS."""
    done = [0] * VISITOR_THREADS
    deadline = time.monotonic() + seconds

    def worker(slot: int) -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(address, timeout=5) as sock:
                    sock.sendall(b"x")
                    if sock.recv(1) == b"x":
                        done[slot] += 1
            except OSError:
                time.sleep(0.01)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(VISITOR_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 10)
    return sum(done) / seconds


def _iperf_parallel(addresses: list[Address], seconds: float) -> float:
    """Sum of bits/s of one iperf3 client per address, all at once (0 for a failed one)."""
    clients = [iperf.start(iperf.client_argv(a, seconds=seconds)) for a in addresses]
    return sum(iperf.finish(c, seconds).bps for c in clients)


def run(env: Env, plan: ClusterPlan, log: Callable[[str], None]) -> dict[str, Any]:
    """Every cluster figure; a missing tool (iperf3, redis-server) skips the section."""
    results: dict[str, Any] = {"status": "ok", "notes": [], "rows": {}}
    results["plan"] = {"seconds": plan.seconds, "repeats": plan.repeats}
    echo = Proc("cluster-echo", [sys.executable, "-m", "bench.echo"], log_dir=env.tmp)
    try:
        match = echo.wait_line(r"^listening (\S+):(\d+)", 10)
        echo_at: Address = (match.group(1), int(match.group(2)))
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(IperfServer(env.tmp)) for _ in range(3)]
            nodes = stack.enter_context(_cluster(env, 3))
            port, echo_port = free_port(), free_port()
            extra = [free_port() for _ in range(2)]
            ups = [_up(env, nodes[0], "cluster-up-a", {
                "iperf": (servers[0].address, port), "echo": (echo_at, echo_port),
                "iperf2": (servers[1].address, extra[0]), "iperf3": (servers[2].address, extra[1]),
            })]  # fmt: skip
            for host in HOSTS[:2]:
                _reached((host, echo_port))
            for key, host in (("owner", HOSTS[0]), ("forwarded", HOSTS[1])):
                bps = [iperf.run(iperf.client_argv((host, port), seconds=plan.seconds),
                                 plan.seconds).bps for _ in range(plan.repeats)]  # fmt: skip
                rate = [_visitor_rate((host, echo_port), plan.seconds)
                        for _ in range(plan.repeats)]  # fmt: skip
                results["rows"][key] = {"bps": spread(bps), "visitors_per_s": spread(rate)}
                log(f"cluster {key}: {spread(bps)['median'] / 1e6:.0f} Mbit/s, "
                    f"{spread(rate)['median']:.0f} new visitors/s")  # fmt: skip
            single = [(HOSTS[0], p) for p in (port, *extra)]
            sums = [_iperf_parallel(single, plan.seconds) for _ in range(plan.repeats)]
            results["rows"]["one_node_x3"] = {"bps": spread(sums)}
            log(f"cluster one node, 3 streams: {spread(sums)['median'] / 1e6:.0f} Mbit/s")
            ups[0].stop()  # A's extra services go; B and C get their own
            own = [free_port() for _ in range(3)]
            for index, node in enumerate(nodes):
                name = f"cluster-up-own-{'abc'[index]}"
                ups.append(_up(env, node, name, {f"own{index}": (servers[index].address,
                                                                 own[index])}))  # fmt: skip
            spread_out = [(HOSTS[i], own[i]) for i in range(3)]
            sums = [_iperf_parallel(spread_out, plan.seconds) for _ in range(plan.repeats)]
            results["rows"]["three_nodes"] = {"bps": spread(sums)}
            log(f"cluster three nodes, 3 streams: {spread(sums)['median'] / 1e6:.0f} Mbit/s")
            for up in ups:
                up.stop()
    except StartError as exc:
        results["status"] = "skipped"
        results["notes"].append(str(exc))
        log(f"skipped: {exc}")
    finally:
        echo.stop()
    return results


_LABELS = {
    "owner": "owning node (A)",
    "forwarded": "forwarding node (B -> A)",
    "one_node_x3": "one node, 3 services at once",
    "three_nodes": "three nodes, 1 service each at once",
}


def rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's table: one row per path."""
    section = results.get("cluster") or {}
    header = ["cluster path", "TCP Mbit/s", "new visitors/s", "vs owner / one node"]
    table = []
    found = section.get("rows", {})
    for key, label in _LABELS.items():
        entry = found.get(key)
        if entry is None:
            continue
        bps = entry["bps"]["median"]
        base_key = "owner" if key in ("owner", "forwarded") else "one_node_x3"
        base = (found.get(base_key) or {}).get("bps", {}).get("median")
        versus = f"{bps / base:.2f}" if base and key != base_key else "-"
        rate = entry.get("visitors_per_s", {}).get("median")
        table.append([label, f"{bps / 1e6:.0f}", f"{rate:.0f}" if rate else "-", versus])
    if section.get("status") == "skipped":
        table.append(["cluster", "skipped", *section.get("notes", [""])[:1], ""])
    return header, table


HOW = """\
- Cluster: three `listen --cluster` nodes on one redis-server (127.0.0.1, .2, .3, plaintext
  carriers), {repeats} run(s) of {seconds:g} s per figure (median). Throughput: one iperf3
  stream to a service held by node A, at A and at B (which hands each visitor to A over its
  node-to-node session); new visitors/s: connect, one echoed byte, close, from 4 threads.
  Aggregate: three iperf3 streams at once, to three services of one node, then to one
  service on each of three nodes (each with its own `up`).
"""


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("-t", "--time", type=float, default=5.0, help="seconds per run (5)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (3)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    a = ap.parse_args(argv)
    tmp = Path(__file__).resolve().parent / "results" / "tmp" / "cluster"
    tmp.mkdir(parents=True, exist_ok=True)
    env = Env(tmp=tmp, iperf=("127.0.0.1", 0), echo=("127.0.0.1", 0), results=tmp)
    console = Console()
    try:
        found = run(env, ClusterPlan(a.time, a.repeats), console.print)
    finally:
        stop_all()
    header, table_rows = rows({"cluster": found})
    table = Table(title="cluster")
    for column in header:
        table.add_column(column)
    for row in table_rows:
        table.add_row(*row)
    console.print(table)
    if a.json:
        a.json.write_text(json.dumps(found, indent=1))
    return 0 if found["status"] == "ok" else 2


if __name__ == "__main__":
    sys.exit(main())
