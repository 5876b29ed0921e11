"""Files muxtunnel writes: keys, certificates, known hosts; never through a planted link.

Folders like the state directory or the one given to `muxtunnel cert` may be writable by
others, or hold what somebody left there. So every file is created with `O_CREAT | O_EXCL |
O_NOFOLLOW`: a dangling symlink at the key's path cannot redirect the private key elsewhere,
and an existing file is never reused (its owner could read what we write into it). Replacing
a file (`--force`) writes a new one beside it under a random name, with the same flags, and
renames it over the old one: the rename replaces a link or another user's file itself, it
never follows or reuses them, and readers see the old file or the new one, never half of one.

Modes are set with `fchmod` on the open descriptor, so the umask cannot widen them. Errors are
`OSError`s, for the caller to word.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping

__all__ = ["PRIVATE", "PUBLIC", "append_line", "create", "make_private_dir", "replace"]

#: Modes: a private key or known-hosts file; a certificate.
PRIVATE, PUBLIC = 0o600, 0o644
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def make_private_dir(path: str) -> None:
    """Create `path` (and its parents) if missing; a folder we create is ours only (0700)."""
    os.makedirs(path, mode=0o700, exist_ok=True)


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, _CREATE, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)


def create(files: Mapping[str, tuple[bytes, int]]) -> None:
    """Create each `path: (data, mode)`; `FileExistsError` if any path exists, even as a link.

    All or nothing: files created before a failure are removed again.
    """
    done: list[str] = []
    try:
        for path, (data, mode) in files.items():
            _write_new(path, data, mode)
            done.append(path)
    except BaseException:
        for path in done:
            os.unlink(path)
        raise


def replace(files: Mapping[str, tuple[bytes, int]]) -> None:
    """Write each `path: (data, mode)` as a new file that is renamed over whatever is there.

    Every new file is complete before the first rename.
    """
    staged: dict[str, str] = {}
    try:
        for path, (data, mode) in files.items():
            folder, name = os.path.split(os.path.abspath(path))
            temporary = os.path.join(folder, f".{name}.{secrets.token_hex(8)}.tmp")
            _write_new(temporary, data, mode)
            staged[temporary] = path
        for temporary, path in list(staged.items()):
            os.rename(temporary, path)
            del staged[temporary]
    finally:
        for temporary in staged:
            os.unlink(temporary)


def append_line(path: str, line: str) -> None:
    """Append one line to a private file, creating it (0600) if missing; never through a link."""
    fd = os.open(path, _APPEND, PRIVATE)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))  # one write: kept whole
        os.fsync(fd)
    finally:
        os.close(fd)
