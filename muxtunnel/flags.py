"""The `muxtunnel` argument parser: every flag, its help text and its default.

Flags only: what they mean for the configuration is `muxtunnel.cli`'s.
"""

from __future__ import annotations

import argparse

from muxtunnel import __version__
from muxtunnel.config import ENV_ADMIN_TOKEN, ENV_VISITOR_TOKEN, MIN_TOKEN_CHARS
from muxtunnel.model import DEFAULT_COMPRESSION_LEVEL, MAX_WEIGHT
from muxtunnel.status import DEFAULT_ADMIN_ADDRESS

__all__ = [
    "SECRET_FLAGS", "TLS_FLAGS", "build_parser", "secret_values", "secrets_on_command_line",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The `muxtunnel` argument parser."""
    parser = argparse.ArgumentParser(
        prog="muxtunnel",
        description="Reverse tunnel for TCP and UDP: every visitor rides one connection.",
    )
    parser.add_argument("--version", action="version", version=f"muxtunnel {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", help="YAML config file")
    tokens = common.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        help="shared token; visible to every local user in the process list: prefer "
        "--token-file or $MUXTUNNEL_TOKEN (default: $MUXTUNNEL_TOKEN or the config)",
    )
    tokens.add_argument(
        "--token-file", metavar="FILE", help="read the shared token from FILE (one line, mode 0600)"
    )
    common.add_argument(
        "--allow-weak-token",
        action="store_true",
        default=None,
        help=f"accept tokens shorter than {MIN_TOKEN_CHARS} characters (not recommended)",
    )
    common.add_argument("--log-format", choices=["auto", "console", "json"], default="auto")
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    common.add_argument(
        "--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here (off by default)"
    )
    common.add_argument(
        "--admin", metavar="HOST:PORT", help="serve the admin API here (off by default)"
    )
    _admin_token_flags(common, "bearer token for the admin API and metrics")
    common.add_argument(
        "--no-watch",
        action="store_true",
        help="do not reload when the config file changes (SIGHUP still reloads)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser("listen", parents=[common], help="run the public server")
    listen.add_argument(
        "--no-tls",
        action="store_true",
        help="plaintext carrier: everything clients send crosses the network readable "
        "(default: TLS, with a self-signed certificate made on the first start)",
    )
    listen.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the server keeps its own certificate (default: $XDG_STATE_HOME/muxtunnel "
        "or ~/.local/state/muxtunnel)",
    )
    listen.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate (PEM)")
    listen.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    listen.add_argument(
        "--tls-client-ca", metavar="FILE", help="mutual TLS: require client certificates of this CA"
    )
    listen.add_argument(
        "--bind", metavar="HOST:PORT", help="control address (default 0.0.0.0:7835)"
    )
    listen.add_argument(
        "--allow-ports", metavar="RANGES", help="public ports clients may use, e.g. 1024-65535,8080"
    )
    listen.add_argument(
        "--public-host",
        metavar="HOST",
        help="address public ports bind on (default: the --bind host)",
    )
    listen.add_argument(
        "--http-bind", metavar="HOST:PORT", help="the shared HTTP port of --http services"
    )
    listen.add_argument(
        "--https-bind",
        metavar="HOST:PORT",
        help="the shared TLS port: --https services by SNI (and --http ones with https.cert)",
    )
    listen.add_argument(
        "--domain", metavar="DOMAIN", help="web services are reached at NAME.DOMAIN"
    )
    listen.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve the web dashboard here (off by default; --admin-token guards it)",
    )

    listen.add_argument(
        "--cluster",
        metavar="URL",
        help="join a cluster of listen nodes sharing one name space through this registry: "
        "redis://HOST:PORT/DB",
    )
    listen.add_argument(
        "--node-id", metavar="ID", help="this node's name in the cluster (default HOSTNAME-PORT)"
    )
    listen.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="where other nodes reach this one (default: the --bind host, control port + 1)",
    )
    listen.add_argument(
        "--cluster-secret-file",
        metavar="FILE",
        help="what nodes prove to each other (default: derived from the server's token)",
    )

    up = commands.add_parser("up", parents=[common], help="expose local services")
    up.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        help="server address (default port 7835); repeatable: every service on each server",
    )
    up.add_argument(
        "--path",
        action="append",
        metavar="NAME=SOURCE[@HOST:PORT]",
        help="a way to reach the server: from a local address (or dev:INTERFACE), optionally to "
        "another address of it; repeatable: the session runs on the best path (client.paths)",
    )
    up.add_argument(
        "--switch-after",
        type=float,
        metavar="SECONDS",
        help="a better path must stay better this long before the session moves (default 5)",
    )
    up.add_argument(
        "--tcp",
        action="append",
        default=[],
        metavar="SPEC",
        help="[NAME=][LOCAL_HOST:]LOCAL_PORT[:REMOTE_PORT]; repeatable",
    )
    up.add_argument(
        "--udp", action="append", default=[], metavar="SPEC", help="like --tcp, for a UDP service"
    )
    up.add_argument(
        "--http",
        action="append",
        default=[],
        metavar="SPEC",
        help="[NAME=][LOCAL_HOST:]LOCAL_PORT: an HTTP service at NAME.DOMAIN; repeatable",
    )
    up.add_argument(
        "--https",
        action="append",
        default=[],
        metavar="SPEC",
        help="like --http, for a service that speaks TLS itself (routed by SNI); repeatable",
    )
    up.add_argument(
        "--group",
        metavar="NAME",
        help="the --tcp/--udp/--http/--https services join the load-balancing group NAME",
    )
    up.add_argument(
        "--group-token",
        metavar="TOKEN",
        help="the group's token, if it has one (--group-token-file keeps it out of ps)",
    )
    up.add_argument("--group-token-file", metavar="FILE", help="read the group's token from FILE")
    up.add_argument(
        "--weight",
        type=int,
        metavar="N",
        help=f"this member's share of new visitors (0-{MAX_WEIGHT}, default 1; needs --group)",
    )
    inspect = up.add_mutually_exclusive_group()
    inspect.add_argument(
        "--inspect",
        metavar="HOST:PORT",
        help="serve the HTTP inspector here (default: 127.0.0.1:4040, or the next free port, "
        "when there are --http services)",
    )
    inspect.add_argument(
        "--no-inspect", action="store_true", help="no HTTP inspector (and no request capture)"
    )
    up.add_argument(
        "--no-console",
        action="store_true",
        help="plain log lines even on a terminal (no live panel)",
    )
    up.add_argument(
        "--private",
        action="store_true",
        help="the --tcp/--udp services get no public port: they are reached with muxtunnel "
        "visit and a visitor token",
    )
    visitor_tokens = up.add_mutually_exclusive_group()
    visitor_tokens.add_argument(
        "--visitor-token",
        action="append",
        metavar="TOKEN",
        help=f"a visitor token of the --private services; repeatable; visible in the process "
        f"list: prefer --visitor-token-file or ${ENV_VISITOR_TOKEN} (its default)",
    )
    visitor_tokens.add_argument(
        "--visitor-token-file",
        action="append",
        metavar="FILE",
        help="read a visitor token of the --private services from FILE; repeatable",
    )
    _client_tls_flags(up)
    _compress_flag(up, "every TCP and web service")

    visit = commands.add_parser(
        "visit", parents=[common], help="reach a private service through the server"
    )
    visit.add_argument(
        "name", nargs="?", metavar="NAME", help="the private service (or visitor.services)"
    )
    visit.add_argument("--server", metavar="HOST:PORT", help="server address (default port 7835)")
    visit.add_argument(
        "--bind",
        metavar="HOST:PORT",
        help="where NAME is served locally (default 127.0.0.1 and a free port, printed)",
    )
    visit.add_argument("--udp", action="store_true", help="NAME is a UDP service")
    _client_tls_flags(visit)
    _compress_flag(visit, "NAME's connections to the server (TCP)")

    status = commands.add_parser("status", help="show what a running listen/up/visit is doing")
    status.add_argument(
        "--admin",
        metavar="HOST:PORT",
        default=DEFAULT_ADMIN_ADDRESS,
        help="its admin API address",
    )
    _admin_token_flags(status, "bearer token")
    status.add_argument("--json", action="store_true", help="print the JSON document as it is")

    cert = commands.add_parser("cert", help="make a self-signed certificate and key")
    cert.add_argument("--out", metavar="DIR", required=True, help="folder to write them to")
    cert.add_argument(
        "--name",
        action="append",
        metavar="NAME",
        help="host name or IP the certificate is for; repeatable (default: this host's name, "
        "localhost, 127.0.0.1, ::1)",
    )
    cert.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    cert.add_argument(
        "--client", action="store_true", help="a client certificate (client.crt/.key)"
    )
    cert.add_argument("--force", action="store_true", help="overwrite existing files")
    return parser


def _client_tls_flags(parser: argparse.ArgumentParser) -> None:
    """How `up` and `visit` connect to the server: TLS (by default), and how it is verified."""
    parser.add_argument(
        "--no-tls",
        action="store_true",
        help="plaintext carrier, for a server run with --no-tls (default: TLS; without a CA or "
        "a pinned fingerprint the server's certificate is trusted on first use)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the client remembers servers' fingerprints, known_hosts (default: "
        "$XDG_STATE_HOME/muxtunnel or ~/.local/state/muxtunnel)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (the default)")
    parser.add_argument(
        "--tls-ca", metavar="FILE", help="verify the server with this CA file, or 'system'"
    )
    parser.add_argument(
        "--server-fingerprint",
        action="append",
        metavar="sha256:HEX",
        help="pin the server certificate's SHA-256 fingerprint; repeatable",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="TLS without verifying the server's certificate (not recommended)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate for mutual TLS")
    parser.add_argument("--tls-key", metavar="FILE", help="the client certificate's key")
    parser.add_argument(
        "--tls-server-name", metavar="NAME", help="name to check in the certificate (with --tls-ca)"
    )


def _compress_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--compress",
        nargs="?",
        const=DEFAULT_COMPRESSION_LEVEL,
        type=int,
        metavar="LEVEL",
        help=f"zstd-compress {what} (level 1-22, default {DEFAULT_COMPRESSION_LEVEL})",
    )


def _admin_token_flags(parser: argparse.ArgumentParser, what: str) -> None:
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help=f"{what}; visible in the process list: prefer --admin-token-file or "
        f"${ENV_ADMIN_TOKEN} (default: ${ENV_ADMIN_TOKEN})",
    )
    tokens.add_argument(
        "--admin-token-file", metavar="FILE", help=f"read the {what} from FILE (one line)"
    )


#: Flags whose value is a secret: given on the command line, any local user can read it.
SECRET_FLAGS = ("--token", "--admin-token", "--visitor-token")


def secrets_on_command_line(args: argparse.Namespace) -> tuple[str, ...]:
    """The secret flags that were given a value on the command line."""
    return tuple(flag for flag in SECRET_FLAGS if getattr(args, flag[2:].replace("-", "_"), None))


def secret_values(args: argparse.Namespace, flags: tuple[str, ...]) -> list[str]:
    """The values `flags` were given (a repeatable flag's every one)."""
    values: list[str] = []
    for flag in flags:
        given = getattr(args, flag[2:].replace("-", "_"))
        values += given if isinstance(given, list) else [given]
    return values


#: Flags that say how to do TLS, which `--no-tls` contradicts.
TLS_FLAGS = (
    "tls", "tls_cert", "tls_key", "tls_client_ca", "tls_ca", "server_fingerprint", "insecure",
    "tls_server_name",
)  # fmt: skip
