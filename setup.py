"""Build hook: the multiplexer's pure core compiled with mypyc, when asked for.

`MUXTUNNEL_MYPYC=1 pip install --no-build-isolation .` (with mypy installed, the `dev` extra)
compiles `MYPYC_MODULES` to C extensions: 20-25 % less CPU per new visitor and per small
message through a tunnel, 5 % per MiB of bulk (`python -m bench.cost --vs-exe`, bench/PROFILES.md).
Without the variable, or without mypy or a C compiler, the package is pure Python and works the
same: a module that cannot be compiled is simply left as source.

Opt-in rather than the default because an editable install would leave the compiled modules
beside their sources, and Python imports an extension before a `.py` of the same name: an edit
to the core would be ignored until the next build.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

#: The sans-IO core and what it calls per frame. Not `mux/_events.py`: mypyc's dataclasses
#: cannot resolve its postponed `memoryview` annotations (KeyError at import).
MYPYC_MODULES = [
    "mux/_connection.py",
    "mux/_window.py",
    "mux/_frame.py",
    "mux/_state.py",
    "mux/_replay.py",
    "mux/_limits.py",
]


class _OptionalBuildExt(build_ext):
    """Build the extensions if a compiler can; otherwise leave the modules as Python source.
    mypyc's shared library comes first: once one extension failed, none after it is built."""

    _failed = False

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            print(f"muxtunnel: not compiled ({exc}); the pure-Python core is used", file=sys.stderr)

    def build_extension(self, ext: Any) -> None:
        if self._failed:
            return
        try:
            super().build_extension(ext)
        except Exception as exc:  # a compiler error
            self._failed = True
            print(f"muxtunnel: {ext.name} not compiled ({exc})", file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("MUXTUNNEL_MYPYC") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        print(f"muxtunnel: mypyc not installed ({exc}); building pure Python", file=sys.stderr)
        return []
    return list(mypycify(MYPYC_MODULES, opt_level="3"))


setup(ext_modules=_extensions(), cmdclass={"build_ext": _OptionalBuildExt})
