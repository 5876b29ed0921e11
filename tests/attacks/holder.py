"""An attacker in a process of its own: opens and holds idle connections on command.

Run as `python holder.py`; it reads commands on stdin, one per line, and answers each with one
line on stdout:

    open HOST PORT COUNT PER_SOURCE FIRST [SEND]   ->  ok OPENED (from 127.0.x.y addresses,
                                                        PER_SOURCE each, see isolation.spread;
                                                        each sends SEND, hex, if given)
    close                                          ->  ok CLOSED (all connections held)
    rst                                            ->  ok CLOSED (the same, with RST)
    udp HOST PORT COUNT SOURCE [BATCH PAUSE_MS]    ->  ok SENT (one 1-byte datagram from each
                                                        of COUNT new ports of SOURCE, pausing
                                                        after each BATCH)

The flood runs outside the test process so that its connect loop does not compete for the GIL
with the honest probe's thread: the probe then measures the tunnel, not the test.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time

LINGER_ZERO = struct.pack("ii", 1, 0)


def source(n: int, per_source: int, first: int) -> str:
    k = first + n // per_source
    return f"127.0.{k // 250}.{2 + k % 250}"


def main() -> None:
    held: list[socket.socket] = []
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "open":
            host, port, count, per_source, first = words[1], *map(int, words[2:6])
            payload = bytes.fromhex(words[6]) if len(words) > 6 else b""
            opened = 0
            for n in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind((source(n, per_source, first), 0))
                    sock.settimeout(2.0)
                    sock.connect((host, port))
                    if payload:
                        sock.sendall(payload)
                except OSError:
                    sock.close()
                    continue
                held.append(sock)
                opened += 1
            print(f"ok {opened}", flush=True)
        elif words[0] == "udp":
            host, port, count, where = words[1], int(words[2]), int(words[3]), words[4]
            batch, pause_ms = (int(words[5]), int(words[6])) if len(words) > 6 else (count, 0)
            sent = 0
            for n in range(count):
                if n and n % batch == 0:
                    time.sleep(pause_ms / 1000)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    try:
                        sock.bind((where, 0))
                        sock.sendto(b"x", (host, port))
                    except OSError:
                        continue
                    sent += 1
            print(f"ok {sent}", flush=True)
        elif words[0] in ("close", "rst"):
            for sock in held:
                with contextlib.suppress(OSError):
                    if words[0] == "rst":
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
                    sock.close()
            print(f"ok {len(held)}", flush=True)
            held.clear()
        else:
            print(f"error unknown command {words[0]!r}", flush=True)


if __name__ == "__main__":
    main()
