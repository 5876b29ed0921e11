"""`muxtunnel status` and `muxtunnel cert`: the commands that run no tunnel.

Exit codes as `muxtunnel.app`'s: 0, 2 for usage errors, 1 for runtime failures; each failure
is one line on stderr.
"""

from __future__ import annotations

import json
import os
import socket
import sys

from muxtunnel.app import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE

__all__ = ["cert", "status"]


def status(address: str, token: str | None, *, as_json: bool = False) -> int:
    """`muxtunnel status`: print what the `listen` or `up` whose admin API is `address` does."""
    from muxtunnel.statusview import StatusError, fetch_status, print_status

    try:
        data = fetch_status(address, token)
        if as_json:
            print(json.dumps(data, indent=1))
        else:
            print_status(data)
    except StatusError as exc:
        print(f"muxtunnel: {exc}", file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    return EXIT_OK


def cert(
    out: str, names: list[str] | None, *, days: int, client: bool = False, force: bool = False
) -> int:
    """`muxtunnel cert`: write a self-signed certificate and key; print its fingerprint.

    Files are created, never opened as they are: a link or a file someone else left at either
    path is refused, or with `force` replaced by a new file (see `muxtunnel.files`).
    """
    from muxtunnel import files
    from muxtunnel.tls import format_fingerprint, generate_self_signed

    names = names or [socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    base = "client" if client else "server"
    cert_path = os.path.join(out, f"{base}.crt")
    key_path = os.path.join(out, f"{base}.key")
    if days < 1:
        print("muxtunnel: --days must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    existing = [path for path in (cert_path, key_path) if os.path.lexists(path)]
    if existing and not force:
        print(f"muxtunnel: {existing[0]} exists (--force replaces it)", file=sys.stderr)
        return EXIT_USAGE
    cert_pem, key_pem, der = generate_self_signed(names, days=days, client=client)
    pair = {key_path: (key_pem, files.PRIVATE), cert_path: (cert_pem, files.PUBLIC)}
    try:
        files.make_private_dir(out)
        if force:
            files.replace(pair)
        else:
            files.create(pair)
    except FileExistsError as exc:  # appeared since the check above
        print(f"muxtunnel: {exc.filename} exists (--force replaces it)", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"muxtunnel: cannot write to {out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_RUNTIME
    fingerprint = format_fingerprint(der)
    print(f"wrote {cert_path} and {key_path} for {', '.join(names)}", file=sys.stderr)
    if client:
        print(f"on the server: --tls-client-ca {cert_path}", file=sys.stderr)
    else:
        print(f"on clients: --server-fingerprint {fingerprint}", file=sys.stderr)
    print(fingerprint, flush=True)
    return EXIT_OK
