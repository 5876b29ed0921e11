"""HTTP rows of `python -m bench`: requests/s and latency through `--http`, `--tcp` and direct.

A real HTTP load generator, wrk (Debian's package), against nginx serving a small static file
on loopback, three ways:

    direct        wrk -> nginx
    --tcp         wrk -> listen (the service's own public port) == mux == up -> nginx
    --http        wrk -> listen (the shared web port: Host routing) == mux == up -> nginx

each with keep-alive (wrk reuses its connections), with keep-alive and another request target
each time (a wrk script: what listen and up remember of a repeated head does not apply), and
without keep-alive (`Connection: close`: a new visitor connection per request). Per run:
requests/s, p50/p99 latency (`wrk --latency`), non-2xx responses and socket errors, CPU of
listen and up. The issue's target: with keep-alive, `--http` serves at least 70 % of the
requests/s of the same service as `--tcp`.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstat
from bench.paths import LOCAL, Env
from bench.proc import Address, Proc, StartError, free_port
from bench.stats import spread

DOMAIN = "bench.test"
#: Bytes of the static file nginx serves: a small page (nginx's own index.html is 615 bytes).
PAGE_BYTES = 612
#: Concurrent connections of wrk, one thread: enough to keep a Python relay busy on 2 cores
#: without the load generator taking a core of its own.
CONNECTIONS = 16

_NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ root {dir}/www; }}
    }}
}}
"""


@dataclass
class HttpPlan:
    seconds: float = 5.0
    repeats: int = 3
    connections: int = CONNECTIONS


@dataclass
class Target:
    key: str
    label: str
    address: Address
    host: str
    roles: dict[str, list[int]]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise StartError(f"{name} is not installed (scripts/install-system-deps.sh installs it)")
    return path


@contextlib.contextmanager
def _nginx(env: Env) -> Iterator[Address]:
    folder = env.tmp / "nginx"
    (folder / "www").mkdir(parents=True, exist_ok=True)
    (folder / "www" / "index.html").write_bytes(b"x" * (PAGE_BYTES - 1) + b"\n")
    port = free_port()
    conf = folder / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(dir=folder, port=port))
    proc = Proc("nginx", [_tool("nginx"), "-c", str(conf), "-p", str(folder)], log_dir=env.tmp)
    try:
        proc.wait_listening(port, 10)
        yield (LOCAL, port)
    finally:
        proc.stop()


@contextlib.contextmanager
def _tunnel(env: Env, nginx: Address) -> Iterator[tuple[Target, ...]]:
    """listen + up exposing nginx twice, as a tcp service and as an http service (the
    inspector on: up's default with an HTTP service); and a second up with `--no-inspect`."""
    exe = str(env.muxtunnel)
    penv = {"MUXTUNNEL_TOKEN": secrets.token_hex(16)}
    control, web, public = free_port(), free_port(), free_port()
    # A plaintext carrier, as these figures were first taken (the TLS carrier's cost is the
    # muxtunnel-tls path's to show), and nothing kept in the user's state directory.
    log = ["--log-level", env.mux_log_level or "warning", "--no-tls"]
    listen = Proc(
        "muxtunnel-listen-http",
        [exe, "listen", "--bind", f"{LOCAL}:{control}", "--http-bind", f"{LOCAL}:{web}",
         "--domain", DOMAIN, "--allow-ports", str(public), *log],
        log_dir=env.tmp, extra_env=penv, stop_signal=signal.SIGINT,
    )  # fmt: skip
    up = quiet = None
    try:
        listen.wait_listening(control, 15)
        target = f"{nginx[0]}:{nginx[1]}"
        up = Proc(
            "muxtunnel-up-http",
            [exe, "up", "--server", f"{LOCAL}:{control}", "--no-console",
             "--tcp", f"site={target}:{public}", "--http", f"app={target}", *log],
            log_dir=env.tmp, extra_env=penv, stop_signal=signal.SIGINT,
        )  # fmt: skip
        up.wait_line(r"^site tcp ", 20)
        up.wait_line(r"^app http ", 20)
        quiet = Proc(
            "muxtunnel-up-http-no-inspect",
            [exe, "up", "--server", f"{LOCAL}:{control}", "--no-console", "--no-inspect",
             "--http", f"plain={target}", *log],
            log_dir=env.tmp, extra_env=penv, stop_signal=signal.SIGINT,
        )  # fmt: skip
        quiet.wait_line(r"^plain http ", 20)
        roles = {"listen": [listen.pid], "up": [up.pid]}
        quiet_roles = {"listen": [listen.pid], "up": [quiet.pid]}
        yield (
            Target("tcp", "--tcp service", (LOCAL, public), "site", roles),
            Target("http", "--http service", (LOCAL, web), f"app.{DOMAIN}", roles),
            Target(
                "http-no-inspect",
                "--http, up --no-inspect",
                (LOCAL, web),
                f"plain.{DOMAIN}",
                quiet_roles,
            ),
        )
    finally:
        for proc in (quiet, up):
            if proc is not None:
                proc.stop()
        listen.stop()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip()).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    """Requests/s, p50/p99 (ms), completed requests, non-2xx/3xx and socket errors."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    done = re.search(r"(\d+) requests in", output)
    if not (rate and p50 and p99 and done):
        raise RuntimeError(f"unreadable wrk output: {output[-400:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "rps": float(rate.group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "requests": float(done.group(1)),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(x) for x in errors.groups())) if errors else 0.0,
    }


#: wrk's script for the "another target each time" runs: the same headers, a new query on
#: every request (as a browser's or an API client's keep-alive requests differ in their
#: targets), so what listen and up remember of a head repeated byte for byte does not apply.
VARY_SCRIPT = """\
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/index.html?n=" .. n)
end
"""


def vary_script(folder: Path) -> Path:
    """`VARY_SCRIPT` written in `folder`, for `_wrk`'s `script`."""
    script = folder / "vary.lua"
    script.write_text(VARY_SCRIPT)
    return script


def _wrk(
    target: Address, host: str, keepalive: bool, plan: HttpPlan, script: Path | None = None
) -> dict[str, float]:
    argv = [_tool("wrk"), "-t1", f"-c{plan.connections}", f"-d{plan.seconds:g}s", "--latency",
            "-H", f"Host: {host}"]  # fmt: skip
    if not keepalive:
        argv += ["-H", "Connection: close"]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(f"http://{target[0]}:{target[1]}/index.html")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr.strip()[-300:]}")
    return parse_wrk(done.stdout)


def _series(
    target: Target,
    keepalive: bool,
    plan: HttpPlan,
    log: Callable[[str], None],
    script: Path | None = None,
) -> dict[str, Any]:
    runs: list[dict[str, float]] = []
    cpu: dict[str, list[float]] = {role: [] for role in target.roles}
    for i in range(plan.repeats):
        meter = procstat.Meter(target.roles) if target.roles else None
        if meter:
            meter.start()
        result = _wrk(target.address, target.host, keepalive, plan, script)
        if meter:
            usage = meter.stop()
            for role in target.roles:
                cpu[role].append(usage.cpu_pct[role])
        runs.append(result)
        mode = "keep-alive" if keepalive else "new connection per request"
        if script is not None:
            mode += ", another target each time"
        log(f"{target.label}, {mode}, run {i + 1}/{plan.repeats}: {result['rps']:.0f} req/s, "
            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
            f"non-2xx {result['non_2xx']:.0f}, errors {result['socket_errors']:.0f}")  # fmt: skip
    out: dict[str, Any] = {
        key: spread([run[key] for run in runs])
        for key in ("rps", "p50_ms", "p99_ms", "non_2xx", "socket_errors")
    }
    out["cpu_pct_by_role"] = {role: spread(values) for role, values in cpu.items()}
    return out


#: (key, keep-alive, another target each time) of each run per path, in the report's order.
MODES = (("keepalive", True, False), ("vary", True, True), ("close", False, False))
LABELS = {"keepalive": "keep-alive", "vary": "keep-alive, another target each",
          "close": "new per request"}  # fmt: skip


def run(env: Env, plan: HttpPlan, log: Callable[[str], None]) -> dict[str, Any]:
    """Every HTTP figure; a missing tool makes the section 'skipped' with the reason."""
    results: dict[str, Any] = {
        "status": "ok",
        "notes": [],
        "plan": {"seconds": plan.seconds, "repeats": plan.repeats,
                 "connections": plan.connections, "page_bytes": PAGE_BYTES},
        "paths": {},
    }  # fmt: skip
    try:
        _tool("wrk")
        with _nginx(env) as nginx, _tunnel(env, nginx) as tunnelled:
            direct = Target("direct", "direct (nginx)", nginx, "localhost", {})
            script = vary_script(env.tmp)
            for target in (direct, *tunnelled):
                entry: dict[str, Any] = {"label": target.label}
                for mode, keepalive, vary in MODES:
                    entry[mode] = _series(target, keepalive, plan, log, script if vary else None)
                    time.sleep(0.5)  # let TIME_WAIT sockets and the processes settle
                results["paths"][target.key] = entry
    except StartError as exc:
        results["status"] = "skipped"
        results["notes"].append(str(exc))
        log(f"skipped: {exc}")
    return results


def rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The report's table: one row per path and connection mode."""
    section = results.get("http") or {}
    # CPU per request (CPU % / requests/s) is what other load on the machine changes least.
    header = ["path", "connections", "requests/s", "p50 ms", "p99 ms", "vs --tcp",
              "errors", "listen CPU us/req", "up CPU us/req"]  # fmt: skip
    table = []
    paths = section.get("paths", {})
    for key, entry in paths.items():
        for mode, label in LABELS.items():
            figures = entry.get(mode)
            if not figures:
                continue
            rate = figures["rps"]["median"]
            tcp = (paths.get("tcp") or {}).get(mode, {}).get("rps", {}).get("median")
            versus = f"{rate / tcp:.2f}" if tcp and key != "direct" else "-"
            cpu = figures.get("cpu_pct_by_role", {})
            errors = figures["non_2xx"]["max"] + figures["socket_errors"]["max"]
            table.append([
                entry["label"], label, f"{rate:.0f}", f"{figures['p50_ms']['median']:.2f}",
                f"{figures['p99_ms']['median']:.2f}", versus, f"{errors:.0f}",
                f"{cpu['listen']['median'] / rate * 1e4:.0f}" if "listen" in cpu else "-",
                f"{cpu['up']['median'] / rate * 1e4:.0f}" if "up" in cpu else "-",
            ])  # fmt: skip
    if section.get("status") == "skipped":
        table.append(["http", "skipped", *section.get("notes", [""])[:1], *[""] * 6])
    return header, table


def keepalive_ratio(results: dict[str, Any]) -> tuple[float | None, float | None]:
    """(--http, --tcp) requests/s with keep-alive, for the target row."""
    paths = (results.get("http") or {}).get("paths", {})

    def rate(key: str) -> float | None:
        value = (paths.get(key) or {}).get("keepalive", {}).get("rps", {}).get("median")
        return float(value) if value is not None else None

    return rate("http"), rate("tcp")


HOW = """\
- HTTP: `wrk -t1 -c{connections} -d{seconds:g}s --latency` against nginx serving a
  {page_bytes}-byte static file, {repeats} run(s) per figure (median): direct, through the same
  service exposed by `up --tcp` (its own public port) and by `up --http` (the shared web port,
  routed by Host; that up has the inspector on, its default with HTTP services), and through a
  second up with `--no-inspect` (what the inspector costs). Keep-alive: wrk reuses its
  connections, sending the same request each time; another target each: the same, but each
  request asks for `/index.html?n=<a counter>` (a wrk script), as a browser's requests differ
  in their targets, so what listen and up remember of a repeated head is no help; new per
  request: `Connection: close`, a new visitor connection (and a new mux stream) per request.
  CPU of listen and up over each run, per request (their CPU % /
  requests/s): the figure other load on the machine changes least.
"""
