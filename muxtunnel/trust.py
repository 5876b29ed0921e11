"""Trust without a CA: the state directory, the server's own pair, the client's known servers.

TLS is on by default. `muxtunnel listen` keeps a self-signed certificate in its state
directory, made on the first start (`load_server_tls`) and kept; `muxtunnel up` has no CA to
check it against unless told, so it trusts on first use, as ssh does: the first time it meets
a server address it remembers the certificate's fingerprint in its `known_hosts` file, and from
then on refuses any other certificate for that address. The fingerprint is written only once
the server has proven it holds the token (the client calls `KnownHosts.remember` after a
registration succeeded), so a man in the middle of the very first connection, who cannot prove
the token, cannot get his certificate remembered either; and because the auth tags bind the
certificate (`tls`'s channel binding), one who relays to the real server fails as well.

The file is text, one server a line: `HOST:PORT sha256:HEX`; `#` starts a comment. Several
lines for one address are allowed (a certificate being replaced): any of them matches.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from muxtunnel import certgen, files
from muxtunnel.model import ServerTls
from muxtunnel.tls import (
    FINGERPRINT_PREFIX,
    ServerTlsContext,
    TlsConfigError,
    TlsVerifyError,
    generate_self_signed,
)

__all__ = [
    "KNOWN_HOSTS_FILE",
    "SERVER_CERT_FILE",
    "SERVER_KEY_FILE",
    "KnownHost",
    "KnownHosts",
    "KnownHostsError",
    "check_known_host",
    "default_state_dir",
    "load_server_tls",
]

KNOWN_HOSTS_FILE = "known_hosts"
SERVER_CERT_FILE, SERVER_KEY_FILE = "server.crt", "server.key"
#: The state directory under $XDG_STATE_HOME (or ~/.local/state, the XDG base directory
#: specification's default for "state data that should persist between restarts").
_STATE_SUBDIR = "muxtunnel"
#: Days the server's own certificate is valid: as `muxtunnel cert`'s default, ten years. Its
#: fingerprint is what clients pin or remember, so renewing it is a change they must accept.
SELF_SIGNED_DAYS = 3650


class KnownHostsError(TlsConfigError):
    """The known-hosts file cannot be read or written; the message says which line or why."""


def default_state_dir(env: Mapping[str, str]) -> str | None:
    """`$XDG_STATE_HOME/muxtunnel`, else `$HOME/.local/state/muxtunnel`; None without either."""
    base = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(base):  # the specification ignores relative values
        return os.path.join(base, _STATE_SUBDIR)
    home = env.get("HOME", "")
    if os.path.isabs(home):
        return os.path.join(home, ".local", "state", _STATE_SUBDIR)
    return None


@dataclass(frozen=True, slots=True)
class KnownHost:
    """One line of the file: where it is and what it says."""

    line: int
    address: str
    fingerprint: str


class KnownHosts:
    """The known-hosts file at `path` (it may not exist yet)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def entries(self) -> list[KnownHost]:
        """Every server the file remembers, in file order."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise KnownHostsError(f"cannot read {self.path}: {exc}") from None
        found = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].startswith(FINGERPRINT_PREFIX):
                raise KnownHostsError(
                    f"{self.path}:{number}: expected 'HOST:PORT sha256:HEX', got {line[:80]!r}"
                )
            found.append(KnownHost(number, parts[0], parts[1].lower()))
        return found

    def lookup(self, address: str) -> list[KnownHost]:
        """The lines that remember `address` (none: a server met for the first time)."""
        return [entry for entry in self.entries() if entry.address == address]

    def remember(self, address: str, fingerprint: str) -> None:
        """Add `address fingerprint` (the folder is created, private, if missing)."""
        if any(entry.fingerprint == fingerprint for entry in self.lookup(address)):
            return
        try:
            files.make_private_dir(os.path.dirname(self.path) or ".")
            files.append_line(self.path, f"{address} {fingerprint}")
        except OSError as exc:
            raise KnownHostsError(f"cannot write {self.path}: {exc.strerror or exc}") from None


def check_known_host(path: str, address: str, fingerprint: str) -> bool:
    """Is `address` known with `fingerprint` (True), or new (False)? `TlsVerifyError` if the
    file remembers it with another certificate: no retry can fix that, a person must look."""
    known = KnownHosts(path).lookup(address)
    if not known or any(entry.fingerprint == fingerprint for entry in known):
        return bool(known)
    first = known[0]
    raise TlsVerifyError(
        f"the server's certificate changed: {address} now presents {fingerprint}, but "
        f"{path}:{first.line} remembers {first.fingerprint}. Someone may be intercepting the "
        "connection. If the server's certificate was replaced on purpose (a new state "
        "directory, `muxtunnel cert --force`), compare the new fingerprint with the one the "
        f"server logs at start, then delete line {first.line} of {path} and connect again "
        "(or pin it: --server-fingerprint)"
    )


def load_server_tls(settings: ServerTls) -> tuple[ServerTlsContext, bool]:
    """The server's TLS context, and whether its self-signed pair was made just now.

    A `self_signed` pair that is missing is made (key 0600, in a folder made 0700 if missing);
    one half present without the other is an error, never silently replaced: clients know its
    fingerprint.
    """
    created = False
    if settings.self_signed:
        created = _ensure_pair(settings.cert, settings.key)
    return ServerTlsContext.load(settings), created


#: How long making a key pair in a child may take (0.1-0.2 s; a loaded machine, more).
_GENERATE_TIMEOUT_S = 60.0


def _generate_apart(names: list[str]) -> tuple[bytes, bytes]:
    """The self-signed pair, made in a child process: cryptography's OpenSSL binding would stay
    in the server's memory for its whole life (11 MiB of a 34 MiB idle `listen`) for a pair
    made once. The child runs `certgen.py` as a script (not the package: 0.15 s instead of
    0.7 s). Made here when cryptography is loaded already (nothing to save), or when no child
    can run (the same pair, only more memory)."""
    if "cryptography" in sys.modules:
        cert, key, _ = generate_self_signed(names, days=SELF_SIGNED_DAYS)
        return cert, key
    argv = [sys.executable, "-I", certgen.__file__, str(SELF_SIGNED_DAYS), *names]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=_GENERATE_TIMEOUT_S, check=True
        )
        cert_pem, key_pem = json.loads(done.stdout)
        return cert_pem.encode(), key_pem.encode()
    except (OSError, ValueError, subprocess.SubprocessError):
        cert, key, _ = generate_self_signed(names, days=SELF_SIGNED_DAYS)
        return cert, key


def _ensure_pair(cert: str, key: str) -> bool:
    present = [path for path in (cert, key) if os.path.lexists(path)]
    if len(present) == 2:
        return False
    if present:
        other = key if present[0] == cert else cert
        raise TlsConfigError(
            f"{present[0]} is there but {other} is not: restore it, or remove {present[0]} "
            "to make a new pair (clients that remember the old one will refuse the new one)"
        )
    names = [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    cert_pem, key_pem = _generate_apart(names)
    try:
        files.make_private_dir(os.path.dirname(cert) or ".")
        files.create({key: (key_pem, files.PRIVATE), cert: (cert_pem, files.PUBLIC)})
    except FileExistsError:
        return False  # another process made the pair meanwhile: use that one
    except OSError as exc:
        raise TlsConfigError(
            f"cannot make the server's certificate in {os.path.dirname(cert)}: "
            f"{exc.strerror or exc} (give another --state-dir, or --tls-cert/--tls-key)"
        ) from None
    return True
