"""Plumbing for the whole test tree. Keep it small: folders have conftests of their own.

- The figures table (`stress_report.py`): attack and fault tests record peak RSS, fds, CPU
  seconds and honest-session latency through the `figures` fixture; the table is printed at
  the end of the run (`make stress` runs them all).
- The state directory: `listen` keeps its own certificate and `up` its known hosts under
  $XDG_STATE_HOME. The whole run points it at a temporary folder, so that no test, and no
  process a test starts, ever writes to the real home; the e2e harness gives each test a
  folder of its own on top.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from stress_report import configure, figures, terminal_summary

__all__ = ["figures"]


_state_home: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    configure(config)
    _state_home.append(tempfile.mkdtemp(prefix="muxtunnel-test-state-"))
    os.environ["XDG_STATE_HOME"] = _state_home[-1]


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _state_home:
        shutil.rmtree(folder, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminal_summary(terminalreporter, config)
