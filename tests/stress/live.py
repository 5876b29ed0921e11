"""Live tunnels for attack and fault tests: real `listen`/`up` processes plus an honest visitor.

The processes come from the end-to-end harness (`tests/e2e/harness.py`); this module adds what
hostile-peer tests need on top of it:

- `HonestProbe`: one visitor connection through the tunnel doing small echo round trips every
  few milliseconds in a thread, so a test can say how an honest session fared during an attack
  (latency percentiles, the longest gap between answers, errors).
- `connect_from`: a TCP connection from a chosen loopback source address (127.0.0.x), so
  attackers and honest clients count as different sources for per-address limits.
- `RawCarrier`: a raw TCP connection that speaks mux frames by hand (`mux.testing.FrameBuilder`)
  to a server's control port, for floods and malformed input.
- `AuthClient`: an in-process client that authenticates like `up` and then does what `up`
  never does (asks for other services' names or ports, opens streams of its own).
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import anyio.abc
from e2e.harness import Proc
from stress_report import latency_figures
from testenv import within_load

from mux import FrameType, MuxConfig, MuxStream, Session
from mux.testing import Frame, FrameReader
from muxtunnel import control
from muxtunnel.auth import client_tag, derive_key, new_nonce, verify_server_tag

Address = tuple[str, int]

#: Round trips a probe window needs before `assert_healthy` can judge it: a window shorter than
#: a few probe intervals is extended (see `HonestProbe.window`) until it has this many.
MIN_WINDOW_SAMPLES = 5

#: Source addresses for attackers; the honest `up` and visitors use 127.0.0.1.
ATTACKER_IP = "127.0.0.2"


def connect_from(
    source: str, address: Address, timeout_s: float = 5.0, *, linger_reset: bool = False
) -> socket.socket:
    """A TCP connection to `address` from `source` (any 127.0.0.0/8 address on loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.settimeout(timeout_s)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def closed_by_peer(sock: socket.socket, timeout_s: float) -> tuple[bool, float, bytes]:
    """Read (and discard) until the peer closes: (closed, seconds waited, first bytes read).

    `closed` is True for EOF or a reset, False if the connection is still open at the timeout.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    head = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False, time.monotonic() - started, head
        sock.settimeout(min(left, 0.5))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except OSError:
            return True, time.monotonic() - started, head
        if not data:
            return True, time.monotonic() - started, head
        if len(head) < 4096:
            head += data[: 4096 - len(head)]


def log_lines(proc: Proc) -> int:
    """Lines the process has written to stderr so far (its log, one JSON object a line)."""
    try:
        with open(proc.stderr_path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


# ---------------------------------------------------------------------------------------- probe


@dataclass
class ProbeWindow:
    """What the probe saw between two instants."""

    samples: list[float] = field(default_factory=list)  # round-trip seconds
    errors: list[str] = field(default_factory=list)
    max_gap_s: float = 0.0  # longest time without a completed round trip

    @property
    def success_pct(self) -> float:
        """Round trips that succeeded, in percent of those tried (100 when none was tried)."""
        tried = len(self.samples) + len(self.errors)
        return 100.0 * len(self.samples) / tried if tried else 100.0

    def figures(self) -> dict[str, float]:
        return {
            **latency_figures(self.samples),
            "honest_ok_pct": self.success_pct,
            "honest_max_gap_s": self.max_gap_s,
        }

    def assert_shared_fate(
        self,
        *,
        min_ok_pct: float = 99.0,
        p99_ms: float = 100.0,
        quiet: ProbeWindow | None = None,
    ) -> None:
        """The neighbour's bar during an attack: at least `min_ok_pct` % of its round trips
        succeeded, with p99 under `p99_ms` (the isolation issue's promise). With `quiet`, the
        same probe's window before the attack, the bound stretches by 4 times its p99: a
        machine slowed by other work is slow at both (`testenv.within_load`)."""
        figures = latency_figures(self.samples)
        tried = len(self.samples) + len(self.errors)
        assert tried >= MIN_WINDOW_SAMPLES, f"only {tried} honest round trips tried"
        assert self.success_pct >= min_ok_pct, (
            f"the honest neighbour got {len(self.samples)} of {tried} answers: {self.errors[:3]}"
        )
        bound_ms = p99_ms
        if quiet is not None:
            bound_ms = within_load(p99_ms, latency_figures(quiet.samples)["honest_p99_ms"])
        assert figures["honest_p99_ms"] < bound_ms, (
            f"honest p99 {figures['honest_p99_ms']:.1f} ms >= {bound_ms:.1f} ms"
        )

    def assert_healthy(
        self, p99_ms: float, max_gap_s: float = 2.0, min_samples: int = MIN_WINDOW_SAMPLES
    ) -> None:
        """The honest session answered throughout: no error, p99 and gaps within bounds."""
        figures = latency_figures(self.samples)
        assert not self.errors, f"the honest session failed: {self.errors[:3]}"
        assert len(self.samples) >= min_samples, f"only {len(self.samples)} honest round trips"
        assert figures["honest_p99_ms"] < p99_ms, (
            f"honest p99 {figures['honest_p99_ms']:.1f} ms >= {p99_ms} ms"
        )
        assert self.max_gap_s < max_gap_s, f"honest session stalled {self.max_gap_s:.2f} s"


class HonestProbe:
    """Echo round trips of `size` bytes every `interval_s` on one visitor connection, in a thread.

    Errors are recorded (and the connection re-made), never raised; `window()` reports them.
    With `fresh`, every round trip is a new visitor (connect, echo, close): what a neighbour
    sees when a service's new connections are starved while old ones carry on.
    """

    def __init__(
        self,
        address: Address,
        *,
        size: int = 64,
        interval_s: float = 0.01,
        timeout_s: float = 5.0,
        source: str = "127.0.0.1",
        fresh: bool = False,
    ) -> None:
        self.address = address
        self.fresh = fresh
        self.size = size
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.source = source
        self._events: list[tuple[float, float | None, str | None]] = []  # (t, rtt, error)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HonestProbe:
        self._thread = threading.Thread(target=self._run, name="honest-probe", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 2)

    def _note(self, rtt: float | None, error: str | None) -> None:
        with self._lock:
            self._events.append((time.monotonic(), rtt, error))

    def _run(self) -> None:
        sock: socket.socket | None = None
        payload = secrets.token_bytes(self.size)
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                if sock is None:
                    sock = connect_from(self.source, self.address, self.timeout_s)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self.fresh:
                    started = time.monotonic()
                sock.sendall(payload)
                got = b""
                while len(got) < self.size:
                    chunk = sock.recv(self.size - len(got))
                    if not chunk:
                        raise ConnectionError("EOF from the tunnel")
                    got += chunk
                if got != payload:
                    raise AssertionError("the echo came back different")
                if self.fresh:
                    sock.close()
                    sock = None
                self._note(time.monotonic() - started, None)
            except (OSError, AssertionError) as exc:
                self._note(None, f"{type(exc).__name__}: {exc}")
                if sock is not None:
                    sock.close()
                    sock = None
                self._stop.wait(0.1)
            self._stop.wait(self.interval_s)
        if sock is not None:
            sock.close()

    def mark(self) -> float:
        return time.monotonic()

    def since(self, start: float, end: float | None = None) -> ProbeWindow:
        end = time.monotonic() if end is None else end
        window = ProbeWindow()
        last = start
        with self._lock:
            events = [e for e in self._events if start <= e[0] <= end]
        for t, rtt, error in events:
            if error is not None:
                window.errors.append(error)
            elif rtt is not None:
                window.samples.append(rtt)
                window.max_gap_s = max(window.max_gap_s, t - last)
                last = t
        window.max_gap_s = max(window.max_gap_s, end - last)
        return window

    @contextlib.contextmanager
    def window(self, min_samples: int = MIN_WINDOW_SAMPLES) -> Iterator[ProbeWindow]:
        """`with probe.window() as w:` fills `w` when the block ends.

        A block that ends within a few probe intervals holds too few round trips to judge:
        the window then stays open (at most `timeout_s` more) until it has `min_samples`, so
        it also covers the honest session right after what the block did.
        """
        result = ProbeWindow()
        start = time.monotonic()
        try:
            yield result
        except BaseException:
            self._fill(result, start, 0)
            raise
        self._fill(result, start, min_samples)

    def _fill(self, result: ProbeWindow, start: float, min_samples: int) -> None:
        got = self.since(start)
        deadline = time.monotonic() + self.timeout_s
        while len(got.samples) < min_samples and not got.errors and time.monotonic() < deadline:
            time.sleep(self.interval_s)
            got = self.since(start)
        result.samples, result.errors, result.max_gap_s = got.samples, got.errors, got.max_gap_s

    def wait_samples(self, count: int, timeout_s: float = 10.0) -> None:
        start = time.monotonic()
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            if len(self.since(start).samples) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"the honest probe did not get {count} answers in {timeout_s} s")


# ---------------------------------------------------------------------------------------- raw


class RawCarrier:
    """A raw TCP connection to a mux peer: write frames, optionally read frames back."""

    def __init__(self, address: Address, source: str = ATTACKER_IP) -> None:
        self.sock = connect_from(source, address)
        self.reader = FrameReader()
        #: GoAway codes read so far (by `flood(reading=True)` and `read_until_closed`).
        self.go_aways: list[int] = []

    def _feed(self, data: bytes) -> list[Frame]:
        frames = self.reader.feed(data)
        self.go_aways += [f.length for f in frames if f.type == FrameType.GO_AWAY]
        return frames

    def _read_available(self) -> None:
        """Read what has arrived, without waiting (a socket with a timeout would first wait
        for data that long, whatever the flags)."""
        timeout_s = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            while data := self.sock.recv(1 << 18):
                self._feed(data)
        except OSError:  # nothing there yet (BlockingIOError), or the connection ended
            pass
        finally:
            self.sock.settimeout(timeout_s)

    def send(self, data: bytes, timeout_s: float = 2.0) -> bool:
        """Write `data`; False if the peer stopped reading (timeout) or closed the connection."""
        self.sock.settimeout(timeout_s)
        try:
            self.sock.sendall(data)
        except (TimeoutError, OSError):
            return False
        return True

    def flood(
        self,
        chunks: Callable[[int], bytes],
        duration_s: float,
        max_bytes: int = 256 << 20,
        *,
        reading: bool = False,
    ) -> int:
        """Send `chunks(0)`, `chunks(1)`, ... for `duration_s`; bytes sent. Never reads, unless
        `reading`: then what the peer answers is read between sends, so its replies (and its
        GoAway) are not held up behind a full receive window.

        Stops early when the peer stops reading (a send makes no progress for 0.5 s), when it
        closes the connection, or after `max_bytes`.
        """
        sent = 0
        deadline = time.monotonic() + duration_s
        self.sock.settimeout(0.5)
        n = 0
        view = memoryview(chunks(n))
        while time.monotonic() < deadline and sent < max_bytes:
            try:
                count = self.sock.send(view)
            except OSError:  # a timeout (the peer stopped reading) or a closed connection
                break
            sent += count
            view = view[count:]
            if reading:
                self._read_available()
            if not view:
                n += 1
                view = memoryview(chunks(n))
        return sent

    def read_until_closed(self, timeout_s: float) -> tuple[bool, float, list[int]]:
        """Read frames until the peer closes: (closed, seconds waited, GoAway codes seen)."""
        started = time.monotonic()
        deadline = started + timeout_s
        codes = self.go_aways
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False, time.monotonic() - started, codes
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(1 << 18)
            except TimeoutError:
                continue
            except OSError:
                return True, time.monotonic() - started, codes
            if not data:
                return True, time.monotonic() - started, codes
            self._feed(data)

    def wait_frame(self, predicate: Callable[[Frame], bool], timeout_s: float = 5.0) -> Frame:
        """Read frames until one matches (e.g. the server's first keepalive ping)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                break
            if not data:
                break
            for frame in self._feed(data):
                if predicate(frame):
                    return frame
        raise AssertionError("the expected frame did not come")

    def closed_by_peer(self, timeout_s: float) -> tuple[bool, float, bytes]:
        return closed_by_peer(self.sock, timeout_s)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ---------------------------------------------------------------------------------------- auth


class Refused(Exception):
    """The server answered a registration with an Error message."""

    def __init__(self, error: control.Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code


class AuthClient:
    """A client that authenticates like `up`, in-process (use inside `async with`).

    `register()` asks for a service; it raises `Refused` with the server's error code.
    """

    def __init__(
        self, address: Address, *, source: str = ATTACKER_IP, config: MuxConfig | None = None
    ) -> None:
        self.address = address
        self.source = source
        self.config = config or MuxConfig(enable_keepalive=False)
        self.session: Session | None = None
        self.channel: MuxStream | None = None
        self._nonces: tuple[bytes, bytes] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> AuthClient:
        carrier = await anyio.connect_tcp(*self.address, local_host=self.source)
        await self._stack.__aenter__()
        self.session = await self._stack.enter_async_context(
            Session(carrier, client=True, config=self.config)
        )
        self.channel = await self.session.open_stream()
        client_nonce = new_nonce()
        await control.send_message(
            self.channel, control.Hello(control.PROTOCOL_VERSION, client_nonce, "attacker")
        )
        with anyio.fail_after(5):
            challenge = await control.receive_message(self.channel)
        assert isinstance(challenge, control.Challenge), challenge
        self._nonces = (challenge.server_nonce, client_nonce)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.__aexit__(None, None, None)

    async def register(self, service: str, token: str, port: int = 0, kind: str = "tcp") -> int:
        """Register `service`; returns the public port, or raises `Refused`."""
        assert self.channel is not None and self._nonces is not None
        key = derive_key(token)
        server_nonce, client_nonce = self._nonces
        tag = client_tag(key, service, kind, server_nonce, client_nonce)
        await control.send_message(self.channel, control.Register(service, kind, port, tag))
        with anyio.fail_after(5):
            reply = await control.receive_message(self.channel)
        if isinstance(reply, control.Error):
            raise Refused(reply)
        assert isinstance(reply, control.Registered), reply
        assert verify_server_tag(key, reply.tag, service, kind, server_nonce, client_nonce)
        return reply.public_port

    async def unregister(self, service: str) -> None:
        """Give `service` up (the server answers nothing; the next message waits for it)."""
        assert self.channel is not None
        await control.send_message(self.channel, control.Unregister(service))


# ---------------------------------------------------------------------------------------- tap


class FrameTap:
    """A TCP relay in front of a mux server that decodes the frames the server sends.

    `up --server` points at `address`; every connection is relayed to `upstream` byte for byte
    (threads, no delay), and the frames going back to the client are parsed on the way, so a
    test can see a GoAway on the wire. `go_aways` holds (monotonic time, code) pairs.
    """

    def __init__(self, upstream: Address) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: Address = self.listener.getsockname()[:2]
        self.go_aways: list[tuple[float, int]] = []
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                if self._closed:
                    return
                continue
            server.settimeout(None)
            self._socks += [client, server]
            reader = FrameReader()
            threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, reader), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, reader: FrameReader | None) -> None:
        try:
            while data := src.recv(1 << 16):
                if reader is not None:
                    for frame in reader.feed(data):
                        if frame.type == FrameType.GO_AWAY:
                            self.go_aways.append((time.monotonic(), frame.length))
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            with contextlib.suppress(OSError):
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                dst.close()

    def close(self) -> None:
        self._closed = True
        for sock in [self.listener, *self._socks]:
            with contextlib.suppress(OSError):
                sock.close()
