"""Plumbing for the whole test tree. Keep it small: folders have conftests of their own.

- The figures table (`stress_report.py`): attack and fault tests record peak RSS, fds, CPU
  seconds and honest-session latency through the `figures` fixture; the table is printed at
  the end of the run (`make stress` runs them all).
"""

from __future__ import annotations

from typing import Any

import pytest
from stress_report import configure, figures, terminal_summary

__all__ = ["figures"]


def pytest_configure(config: pytest.Config) -> None:
    configure(config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminal_summary(terminalreporter, config)
