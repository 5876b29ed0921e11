"""What the machine running the tests offers, and what a test does when something is missing.

- `skip_or_fail(reason)`: a test that needs something this machine lacks (Go, curl, IPv6, root
  for network namespaces, uvloop) skips on a developer's machine but FAILS under CI, where a
  skip could hide a failure: CI installs everything (`scripts/install-system-deps.sh`, the
  `dev` and `fast` extras), so a missing piece there is a broken setup, not a choice.
- `import_or_skip(name)`: `pytest.importorskip` under the same rule.
- `raise_open_files_limit(wanted)`: tests that open thousands of sockets raise the soft
  RLIMIT_NOFILE (often 1024) toward the hard limit first.
"""

from __future__ import annotations

import os
import resource
from types import ModuleType
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """CI systems set CI (GitHub Actions, GitLab: "true"); "0" or "false" count as unset."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the calling test, or fail it under CI (where every dependency must be there)."""
    if in_ci():
        pytest.fail(f"cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str) -> ModuleType:
    """Import `name`, or `skip_or_fail`."""
    try:
        return __import__(name)
    except ImportError as exc:
        skip_or_fail(f"{name} is not installed: {exc}")


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to `wanted` (capped at the hard limit); returns the old
    (soft, hard) pair so the caller can put it back. Child processes inherit the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return soft, hard


#: Event loops the in-process async tests run on: plain asyncio, and uvloop as production does.
ANYIO_BACKENDS = ("asyncio", "uvloop")


def anyio_backend(name: str) -> tuple[str, dict[str, bool]]:
    """The `anyio_backend` fixture value for a name of `ANYIO_BACKENDS` (uvloop via
    `import_or_skip`)."""
    if name == "uvloop":
        import_or_skip("uvloop")
    return "asyncio", {"use_uvloop": name == "uvloop"}


def within_load(promise_s: float, baseline_s: float, factor: float = 4.0) -> float:
    """A time bound that holds on a loaded 2-core machine: what the code under test promises
    (`promise_s`: a timeout, a deadline, with what a quiet machine needs on top), plus `factor`
    times `baseline_s`, comparable work timed earlier in the same test. A machine slowed by
    other work is slow at both, so the bound stretches with it instead of flaking."""
    return promise_s + factor * baseline_s
