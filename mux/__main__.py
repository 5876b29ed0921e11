"""`python -m mux echo-server|echo-client`: interop checks against any yamux peer."""

from __future__ import annotations

import argparse
import sys

import anyio

from mux._config import MuxConfig
from mux._echo import echo_client, echo_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mux", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("echo-server", help="echo every stream the peer opens")
    server.add_argument("--listen", required=True, metavar="HOST:PORT")
    server.add_argument("--client-side", action="store_true", help="take the client role")
    client = commands.add_parser("echo-client", help="open streams and verify their echo")
    client.add_argument("--connect", required=True, metavar="HOST:PORT")
    client.add_argument("--streams", type=int, default=1)
    client.add_argument("--bytes", type=int, default=1 << 20, dest="size")
    client.add_argument("--server-side", action="store_true", help="take the server role")
    client.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    for sub in (server, client):
        sub.add_argument(
            "--max-window",
            type=int,
            default=MuxConfig().max_stream_window_bytes,
            metavar="BYTES",
            help="largest receive window per stream",
        )
    args = parser.parse_args(argv)
    config = MuxConfig(max_stream_window_bytes=args.max_window)
    try:
        if args.command == "echo-server":
            anyio.run(echo_server, args.listen, args.client_side, config)
            return 0
        return anyio.run(
            echo_client,
            args.connect,
            args.streams,
            args.size,
            args.server_side,
            args.timeout,
            config,
        )
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
