"""The paths under comparison. Each path is a context manager that starts its processes,
yields an ``Endpoint`` (visitor addresses + the tunnel's own process roots) and stops
everything on exit. Tunnels take ``rtt_ms``: a delay proxy is then put between their
two halves (the carrier connection), emulating a long fat link.

Layout on loopback, for every path:

    visitor (iperf3 -c, probes) -> [path] -> iperf3 -s   (iperf service: TCP, and UDP if any)
                                          -> echo server (echo service, same tunnel)
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.proc import Address, Proc, StartError, free_port

LOCAL = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Env:
    """What every path needs: backends, a scratch dir, built peers, options."""

    tmp: Path
    iperf: Address
    echo: Address
    results: Path
    gotunnel: Path | None = None
    gotunnel_note: str = ""
    profile: str | None = None  # None, "auto", "py-spy" or "cprofile"
    mux_log_level: str | None = None  # None: muxtunnel's default
    muxtunnel: Path = REPO / ".venv" / "bin" / "muxtunnel"
    notes: list[str] = field(default_factory=list)


@dataclass
class Endpoint:
    tcp: Address  # iperf3 visitor address (TCP)
    udp: Address | None  # iperf3 visitor address for UDP (same port), None if unsupported
    echo: Address  # echo service visitor address
    roles: dict[str, list[int]]  # the path's own processes (role -> root pids)
    notes: list[str] = field(default_factory=list)
    echo_udp: Address | None = None  # UDP echo service visitor address, None if unsupported


Opener = Callable[[Env, "float | None"], AbstractContextManager[Endpoint]]


@dataclass
class PathSpec:
    key: str
    label: str
    opener: Opener
    udp: bool
    lfn: bool  # can run with a delay proxy between its halves
    kind: str  # "reference" | "relay" | "tunnel"


# -- helpers ------------------------------------------------------------------------------


def _delay(stack: ExitStack, env: Env, name: str, upstream: Address, rtt_ms: float) -> Address:
    """Start a delay proxy (rtt_ms/2 each way) in front of `upstream`; return its address."""
    p = stack.enter_context(
        _proc(
            name,
            [
                sys.executable,
                "-m",
                "bench.delayproxy",
                "--listen",
                f"{LOCAL}:0",
                "--upstream",
                f"{upstream[0]}:{upstream[1]}",
                "--latency-ms",
                f"{rtt_ms / 2:g}",
            ],
            env,
        )
    )
    m = p.wait_line(r"^listening (\S+):(\d+)", 10)
    return (m.group(1), int(m.group(2)))


@contextlib.contextmanager
def _proc(name: str, argv: list[str], env: Env, **kw: object) -> Iterator[Proc]:
    p = Proc(name, argv, log_dir=env.tmp, **kw)  # type: ignore[arg-type]
    try:
        yield p
    finally:
        p.stop()


def _wait_ports(ports: list[int], proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        proc.wait_listening(port, max(0.1, deadline - time.monotonic()))


# -- direct -------------------------------------------------------------------------------


@contextlib.contextmanager
def direct(env: Env, rtt_ms: float | None) -> Iterator[Endpoint]:
    """No tunnel. With rtt_ms, only a delay proxy in front of the services (its ceiling)."""
    if rtt_ms is None:
        yield Endpoint(env.iperf, env.iperf, env.echo, {}, echo_udp=env.echo)
        return
    with ExitStack() as stack:
        tcp = _delay(stack, env, "delay-direct-iperf", env.iperf, rtt_ms)
        echo = _delay(stack, env, "delay-direct-echo", env.echo, rtt_ms)
        yield Endpoint(tcp, None, echo, {}, ["TCP only through the delay proxy"])


# -- socat --------------------------------------------------------------------------------


@contextlib.contextmanager
def socat(env: Env, rtt_ms: float | None) -> Iterator[Endpoint]:
    """A plain relay: one socat per service, one forked child per connection, no mux."""
    if shutil.which("socat") is None:
        raise StartError("socat is not installed (apt-get install socat)")
    pub = free_port(udp_too=True)
    echo = free_port(udp_too=True)
    tcp_opts = "bind=127.0.0.1,reuseaddr,fork,nodelay"
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                _proc(
                    "socat-tcp",
                    [
                        "socat",
                        f"TCP4-LISTEN:{pub},{tcp_opts}",
                        f"TCP4:{env.iperf[0]}:{env.iperf[1]},nodelay",
                    ],
                    env,
                )
            ),
            stack.enter_context(
                _proc(
                    "socat-udp",
                    [
                        "socat",
                        "-T",
                        "15",
                        f"UDP4-LISTEN:{pub},bind=127.0.0.1,reuseaddr,fork",
                        f"UDP4:{env.iperf[0]}:{env.iperf[1]}",
                    ],
                    env,
                )
            ),
            stack.enter_context(
                _proc(
                    "socat-echo",
                    [
                        "socat",
                        f"TCP4-LISTEN:{echo},{tcp_opts}",
                        f"TCP4:{env.echo[0]}:{env.echo[1]},nodelay",
                    ],
                    env,
                )
            ),
            stack.enter_context(
                _proc(
                    "socat-echo-udp",
                    [
                        "socat",
                        "-T",
                        "15",
                        f"UDP4-LISTEN:{echo},bind=127.0.0.1,reuseaddr,fork",
                        f"UDP4:{env.echo[0]}:{env.echo[1]}",
                    ],
                    env,
                )
            ),
        ]
        procs[0].wait_listening(pub, 5)
        procs[1].wait_listening(pub, 5, udp=True)
        procs[2].wait_listening(echo, 5)
        procs[3].wait_listening(echo, 5, udp=True)
        yield Endpoint(
            (LOCAL, pub),
            (LOCAL, pub),
            (LOCAL, echo),
            {"socat": [p.pid for p in procs]},
            echo_udp=(LOCAL, echo),
        )


# -- ssh -R -------------------------------------------------------------------------------


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=20,
    )


@dataclass
class _Sshd:
    port: int
    dir: Path
    pid: int


def _sshd(stack: ExitStack, env: Env, notes: list[str]) -> _Sshd:
    """A throwaway sshd on a high loopback port (own keys and config), stopped with `stack`."""
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd_bin) or shutil.which("ssh") is None:
        raise StartError("OpenSSH server/client not installed (apt-get install openssh-server)")
    if os.geteuid() != 0:
        raise StartError("sshd must run as root here (privilege separation)")
    d = env.tmp / "ssh"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(mode=0o700)
    _keygen(d / "host_key")
    _keygen(d / "user_key")
    shutil.copy(d / "user_key.pub", d / "authorized_keys")
    if not os.path.isdir("/run/sshd"):  # sshd's privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        notes.append("created /run/sshd (sshd privilege separation dir)")
    port = free_port()
    (d / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host_key'}",
                f"PidFile {d / 'sshd.pid'}",
                f"AuthorizedKeysFile {d / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "AllowTcpForwarding yes",
                "GatewayPorts no",
                "PermitListen any",
                "X11Forwarding no",
                "PrintMotd no",
                "UseDNS no",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    sshd = stack.enter_context(
        _proc("sshd", [sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")], env)
    )
    sshd.wait_listening(port, 5)
    return _Sshd(port, d, sshd.pid)


def _ssh_argv(sshd: _Sshd, target: Address, forwards: list[str]) -> list[str]:
    """`ssh -N` to the throwaway sshd at `target` with `forwards` (-R/-L options)."""
    return [
        "ssh", "-F", "/dev/null", "-N", "-T", "-p", str(target[1]), "-i",
        str(sshd.dir / "user_key"), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR", *forwards,
        f"{getpass.getuser()}@{target[0]}",
    ]  # fmt: skip


@contextlib.contextmanager
def ssh_r(env: Env, rtt_ms: float | None) -> Iterator[Endpoint]:
    """`ssh -R` to a throwaway sshd on a high loopback port (own keys and config)."""
    notes: list[str] = []
    pub, echo = free_port(), free_port()
    with ExitStack() as stack:
        sshd = _sshd(stack, env, notes)
        target: Address = (LOCAL, sshd.port)
        if rtt_ms is not None:
            target = _delay(stack, env, "delay-ssh", target, rtt_ms)
        forwards = [
            "-R", f"{LOCAL}:{pub}:{env.iperf[0]}:{env.iperf[1]}",
            "-R", f"{LOCAL}:{echo}:{env.echo[0]}:{env.echo[1]}",
        ]  # fmt: skip
        ssh = stack.enter_context(_proc("ssh", _ssh_argv(sshd, target, forwards), env))
        _wait_ports([pub, echo], ssh, 15 if rtt_ms is None else 30)
        yield Endpoint(
            (LOCAL, pub), None, (LOCAL, echo), {"sshd": [sshd.pid], "ssh": [ssh.pid]}, notes
        )


@contextlib.contextmanager
def ssh_l(env: Env, rtt_ms: float | None) -> Iterator[Endpoint]:
    """`ssh -L` through the throwaway sshd: what `muxtunnel visit` replaces (a local port that
    reaches a service through a server, no public port for it)."""
    notes: list[str] = []
    pub, echo = free_port(), free_port()
    with ExitStack() as stack:
        sshd = _sshd(stack, env, notes)
        target: Address = (LOCAL, sshd.port)
        if rtt_ms is not None:
            target = _delay(stack, env, "delay-ssh-l", target, rtt_ms)
        forwards = [
            "-L", f"{LOCAL}:{pub}:{env.iperf[0]}:{env.iperf[1]}",
            "-L", f"{LOCAL}:{echo}:{env.echo[0]}:{env.echo[1]}",
        ]  # fmt: skip
        ssh = stack.enter_context(_proc("ssh-l", _ssh_argv(sshd, target, forwards), env))
        _wait_ports([pub, echo], ssh, 15 if rtt_ms is None else 30)
        yield Endpoint(
            (LOCAL, pub), None, (LOCAL, echo), {"sshd": [sshd.pid], "ssh": [ssh.pid]}, notes
        )


# -- Go hashicorp/yamux tunnel ------------------------------------------------------------


def build_gotunnel(tmp: Path) -> tuple[Path | None, str]:
    """Build bench/gotunnel offline (GOPATH mode, Debian's hashicorp/yamux)."""
    if shutil.which("go") is None:
        return None, "Go is not installed (apt-get install golang-go)"
    gopath = "/usr/share/gocode"
    if not os.path.isdir(f"{gopath}/src/github.com/hashicorp/yamux"):
        return None, "hashicorp/yamux not found (apt-get install golang-github-hashicorp-yamux-dev)"
    out = tmp / "gotunnel"
    cache = tmp.parent / "gocache"
    env = dict(os.environ, GO111MODULE="off", GOPATH=gopath, GOCACHE=str(cache), GOFLAGS="")
    cp = subprocess.run(
        ["go", "build", "-o", str(out), "."],
        cwd=REPO / "bench" / "gotunnel",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if cp.returncode != 0:
        return None, "go build failed: " + " ".join(cp.stderr.split())[:300]
    return out, ""


def gotunnel(window: int) -> Opener:
    @contextlib.contextmanager
    def open_(env: Env, rtt_ms: float | None) -> Iterator[Endpoint]:
        if env.gotunnel is None:
            raise StartError(env.gotunnel_note or "gotunnel not built")
        control, pub, echo = free_port(), free_port(), free_port()
        w = str(window)
        with ExitStack() as stack:
            server = stack.enter_context(
                _proc(
                    f"gotunnel-server-{window}",
                    [
                        str(env.gotunnel),
                        "server",
                        "--control",
                        f"{LOCAL}:{control}",
                        "--public",
                        f"{LOCAL}:{pub}",
                        "--public",
                        f"{LOCAL}:{echo}",
                        "--window",
                        w,
                    ],
                    env,
                )
            )
            server.wait_line(r"^control ", 5)
            target: Address = (LOCAL, control)
            if rtt_ms is not None:
                target = _delay(stack, env, "delay-gotunnel", target, rtt_ms)
            client = stack.enter_context(
                _proc(
                    f"gotunnel-client-{window}",
                    [
                        str(env.gotunnel),
                        "client",
                        "--server",
                        f"{target[0]}:{target[1]}",
                        "--target",
                        f"{env.iperf[0]}:{env.iperf[1]}",
                        "--target",
                        f"{env.echo[0]}:{env.echo[1]}",
                        "--window",
                        w,
                    ],
                    env,
                )
            )
            client.wait_line(r"^connected ", 10)
            server.wait_line(r"^client ", 10)
            yield Endpoint(
                (LOCAL, pub), None, (LOCAL, echo), {"server": [server.pid], "client": [client.pid]}
            )

    return open_


# -- muxtunnel ----------------------------------------------------------------------------


def _profiled(argv: list[str], env: Env, role: str) -> tuple[list[str], str]:
    """Wrap a muxtunnel command in py-spy (if installed) or cProfile."""
    if not env.profile:
        return argv, ""
    env.results.mkdir(parents=True, exist_ok=True)
    venv_pyspy = Path(sys.executable).parent / "py-spy"
    pyspy = shutil.which("py-spy") or (str(venv_pyspy) if venv_pyspy.exists() else None)
    if env.profile == "py-spy" and not pyspy:
        raise StartError("py-spy not installed (pip install py-spy)")
    if pyspy and env.profile != "cprofile":
        out = env.results / f"profile-{role}.svg"
        return [pyspy, "record", "--rate", "200", "--output", str(out), "--", *argv], str(out)
    out = env.results / f"profile-{role}.prof"
    return [sys.executable, "-m", "cProfile", "-o", str(out), *argv], str(out)


_SERVICE_LINE = r"^{name}\s+{kind}\s+(\S+):(\d+)\s+->"


def muxtunnel(tls: bool) -> Opener:
    """The muxtunnel path: plaintext (`--no-tls`), or TLS as it runs by default (the server's
    own certificate, trusted on first use, in a state directory under the run's scratch dir)."""

    def opener(env: Env, rtt_ms: float | None) -> AbstractContextManager[Endpoint]:
        return _muxtunnel(env, rtt_ms, tls)

    return opener


@contextlib.contextmanager
def _muxtunnel(env: Env, rtt_ms: float | None, tls: bool) -> Iterator[Endpoint]:
    """`muxtunnel listen` + `muxtunnel up` as real processes; all services on one carrier."""
    exe = env.muxtunnel
    if not exe.exists():
        raise StartError(f"{exe} does not exist (pip install -e .)")
    check = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        tail = (check.stderr or check.stdout).strip().splitlines()[-1:] or ["?"]
        raise StartError(f"muxtunnel CLI not usable yet: {tail[0][:200]}")
    token = secrets.token_hex(16)
    penv = {"MUXTUNNEL_TOKEN": token}
    control, pub, echo = free_port(), free_port(udp_too=True), free_port(udp_too=True)
    notes: list[str] = []
    with ExitStack() as stack:
        log = ["--log-level", env.mux_log_level] if env.mux_log_level else []
        if tls:  # a fresh state directory: a new certificate, a first use
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=env.tmp)))
            log += ["--state-dir", str(state)]
        else:
            log.append("--no-tls")
        listen_argv, out = _profiled(
            [str(exe), "listen", "--bind", f"{LOCAL}:{control}", *log], env, "listen"
        )
        if out:
            notes.append(f"listen profiled to {out}")
        listen = stack.enter_context(
            _proc("muxtunnel-listen", listen_argv, env, extra_env=penv, stop_signal=signal.SIGINT)
        )
        listen.wait_listening(control, 15)
        target: Address = (LOCAL, control)
        if rtt_ms is not None:
            target = _delay(stack, env, "delay-muxtunnel", target, rtt_ms)
        up_argv = [
            str(exe),
            "up",
            "--server",
            f"{target[0]}:{target[1]}",
            "--tcp",
            f"iperf={env.iperf[0]}:{env.iperf[1]}:{pub}",
            "--udp",
            f"iperfu={env.iperf[0]}:{env.iperf[1]}:{pub}",
            "--tcp",
            f"echo={env.echo[0]}:{env.echo[1]}:{echo}",
            "--udp",
            f"echou={env.echo[0]}:{env.echo[1]}:{echo}",
            *log,
        ]
        up_argv, out = _profiled(up_argv, env, "up")
        if out:
            notes.append(f"up profiled to {out}")
        up = stack.enter_context(
            _proc("muxtunnel-up", up_argv, env, extra_env=penv, stop_signal=signal.SIGINT)
        )
        wait = 20 if rtt_ms is None else 40
        addrs: dict[str, Address] = {}
        for name, kind in (("iperf", "tcp"), ("iperfu", "udp"), ("echo", "tcp"), ("echou", "udp")):
            m = up.wait_line(_SERVICE_LINE.format(name=re.escape(name), kind=kind), wait)
            host = m.group(1).strip("[]")
            addrs[name] = (LOCAL if host in ("0.0.0.0", "::", "") else host, int(m.group(2)))
        _wait_ports([addrs["iperf"][1], addrs["echo"][1]], listen, 5)
        if env.profile:
            notes.append("profiling: CPU/RSS figures include the profiler's overhead")
        yield Endpoint(
            addrs["iperf"],
            addrs["iperfu"],
            addrs["echo"],
            {"listen": [listen.pid], "up": [up.pid]},
            notes,
            echo_udp=addrs["echou"],
        )


def visit_path(tls: bool) -> Opener:
    """The private-service path, with TLS carriers as it runs by default or `--no-tls` ones."""

    def opener(env: Env, rtt_ms: float | None) -> AbstractContextManager[Endpoint]:
        return _visit(env, rtt_ms, tls)

    return opener


@contextlib.contextmanager
def _visit(env: Env, rtt_ms: float | None, tls: bool) -> Iterator[Endpoint]:
    """`listen` + `up --private` + `muxtunnel visit`: the services have no public port; the
    visitor's connections cross two mux hops (visit -> listen -> up). With rtt_ms the delay
    proxy sits between visit and listen, the hop a visitor crosses (as for ssh -L)."""
    exe = env.muxtunnel
    if not exe.exists():
        raise StartError(f"{exe} does not exist (pip install -e .)")
    token, visitor_token = secrets.token_hex(16), secrets.token_hex(16)
    penv = {"MUXTUNNEL_TOKEN": token, "MUXTUNNEL_VISITOR_TOKEN": visitor_token}
    control, pub, echo = free_port(), free_port(udp_too=True), free_port()
    with ExitStack() as stack:
        log = ["--log-level", env.mux_log_level] if env.mux_log_level else []
        if not tls:
            log.append("--no-tls")
        listen = stack.enter_context(
            _proc("visit-listen", [str(exe), "listen", "--bind", f"{LOCAL}:{control}", *log], env,
                  extra_env=penv, stop_signal=signal.SIGINT)
        )  # fmt: skip
        listen.wait_listening(control, 15)
        up_argv = [
            str(exe), "up", "--server", f"{LOCAL}:{control}", "--private",
            "--tcp", f"iperf={env.iperf[0]}:{env.iperf[1]}",
            "--udp", f"iperfu={env.iperf[0]}:{env.iperf[1]}",
            "--tcp", f"echo={env.echo[0]}:{env.echo[1]}", *log,
        ]  # fmt: skip
        up = stack.enter_context(
            _proc("visit-up", up_argv, env, extra_env=penv, stop_signal=signal.SIGINT)
        )
        for name, kind in (("iperf", "tcp"), ("iperfu", "udp"), ("echo", "tcp")):
            up.wait_line(rf"^{name}\s+{kind}\s+private\s+->", 20)
        target: Address = (LOCAL, control)
        if rtt_ms is not None:
            target = _delay(stack, env, "delay-visit", target, rtt_ms)
        config = env.tmp / "visit.yaml"
        config.write_text(
            "visitor:\n"
            f"  server: {target[0]}:{target[1]}\n"
            "  services:\n"
            f"    - {{name: iperf, bind: '{LOCAL}:{pub}'}}\n"
            f"    - {{name: iperfu, type: udp, bind: '{LOCAL}:{pub}'}}\n"
            f"    - {{name: echo, bind: '{LOCAL}:{echo}'}}\n"
        )
        visitor = stack.enter_context(
            _proc("visit", [str(exe), "visit", "--config", str(config), "--no-watch", *log], env,
                  extra_env=penv, stop_signal=signal.SIGINT)
        )  # fmt: skip
        for name, kind in (("iperf", "tcp"), ("iperfu", "udp"), ("echo", "tcp")):
            visitor.wait_line(_SERVICE_LINE.format(name=re.escape(name), kind=kind), 30)
        yield Endpoint(
            (LOCAL, pub),
            (LOCAL, pub),
            (LOCAL, echo),
            {"listen": [listen.pid], "up": [up.pid], "visit": [visitor.pid]},
            ["two mux hops: visit -> listen -> up"],
        )


#: The private-service path as `python -m bench` runs it (TLS carriers).
visit = visit_path(tls=True)


# -- registry -----------------------------------------------------------------------------

PATHS: list[PathSpec] = [
    PathSpec("direct", "direct", direct, udp=True, lfn=True, kind="reference"),
    PathSpec("muxtunnel", "muxtunnel", muxtunnel(tls=False), udp=True, lfn=True, kind="tunnel"),
    PathSpec(
        "muxtunnel-tls", "muxtunnel TLS", muxtunnel(tls=True), udp=True, lfn=True, kind="tunnel"
    ),
    PathSpec("socat", "socat relay", socat, udp=True, lfn=False, kind="relay"),
    PathSpec("ssh", "ssh -R", ssh_r, udp=False, lfn=True, kind="tunnel"),
    PathSpec("visit", "muxtunnel visit", visit, udp=True, lfn=True, kind="tunnel"),
    PathSpec("sshl", "ssh -L", ssh_l, udp=False, lfn=True, kind="tunnel"),
    PathSpec(
        "yamux256k", "Go yamux 256K", gotunnel(256 * 1024), udp=False, lfn=True, kind="tunnel"
    ),
    PathSpec(
        "yamux6m", "Go yamux 6M", gotunnel(6 * 1024 * 1024), udp=False, lfn=True, kind="tunnel"
    ),
]


def select(keys: list[str] | None) -> list[PathSpec]:
    if not keys:
        return list(PATHS)
    by_key = {p.key: p for p in PATHS}
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"unknown path(s): {', '.join(unknown)}; known: {', '.join(by_key)}")
    return [by_key[k] for k in keys]
