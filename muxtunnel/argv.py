"""Mask secrets given on the command line in what other users see of it (`/proc/PID/cmdline`).

Python cannot do this in general: `sys.argv` (and `sys.orig_argv`) are copies, and no API
reaches the memory the kernel shows as the command line, the argument strings at the top of
the initial stack. On Linux `/proc/self/stat` gives their address (fields 48 and 49, `arg_start`
and `arg_end`), and that memory is the process's own: `hide_secrets` checks that it holds
exactly what `/proc/self/cmdline` shows, then overwrites each secret's bytes there with `*`
(same length, so the other arguments stay as they were). Elsewhere, or if anything does not
match, it leaves everything alone and says so.

This narrows the window, it does not close it: between exec and this call (the interpreter's
start-up, some 100 ms) the token is readable, and `ps` output or audit logs taken then keep it.
What counts is `--token-file` and the environment; a warning steers users there.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence

__all__ = ["hide_secrets"]

_STAT = "/proc/self/stat"
_CMDLINE = "/proc/self/cmdline"
#: Fields of /proc/self/stat (1-based, see proc(5)): where the argument strings start and end.
_ARG_START_FIELD, _ARG_END_FIELD = 48, 49
#: The fields after `(comm)` start with field 3.
_FIRST_FIELD_AFTER_COMM = 3


def _argument_area() -> tuple[int, bytes] | None:
    """The address and bytes of the process's argument strings, or None if not readable."""
    try:
        with open(_STAT, "rb") as handle:
            stat = handle.read()
        with open(_CMDLINE, "rb") as handle:
            shown = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    try:
        start = int(fields[_ARG_START_FIELD - _FIRST_FIELD_AFTER_COMM])
        end = int(fields[_ARG_END_FIELD - _FIRST_FIELD_AFTER_COMM])
    except (IndexError, ValueError):
        return None
    if not 0 < start < end or end - start != len(shown):
        return None
    if ctypes.string_at(start, end - start) != shown:
        return None  # not the memory we think it is: never write to it
    return start, shown


def _masked(arguments: list[bytes], secrets: Sequence[bytes]) -> list[bytes]:
    result = []
    for argument in arguments:
        flag, equals, value = argument.partition(b"=")
        if argument in secrets:
            argument = b"*" * len(argument)
        elif equals and flag.startswith(b"--") and value in secrets:
            argument = flag + equals + b"*" * len(value)
        result.append(argument)
    return result


def hide_secrets(secrets: Sequence[str]) -> bool:
    """Overwrite `secrets` where the kernel shows this process's command line.

    Returns True if `/proc/self/cmdline` shows none of them as an argument afterwards (or
    there were none), False where that cannot be done.
    """
    wanted = [secret.encode(sys.getfilesystemencoding(), "surrogateescape") for secret in secrets]
    wanted = [secret for secret in wanted if secret]
    if not wanted:
        return True
    if not sys.platform.startswith("linux"):
        return False
    area = _argument_area()
    if area is None:
        return False
    start, shown = area
    masked = b"\0".join(_masked(shown.split(b"\0"), wanted))
    if masked != shown:
        ctypes.memmove(start, masked, len(masked))
    now = _argument_area()
    return now is not None and _masked(now[1].split(b"\0"), wanted) == now[1].split(b"\0")
