"""Small helpers shared by the balance modules."""

from __future__ import annotations

from structlog.typing import FilteringBoundLogger

__all__ = ["log_doubling"]


def log_doubling(logger: FilteringBoundLogger, event: str, count: int, **context: object) -> None:
    """Warn at counts 1, 2, 4, 8, ...: a flood of refusals is a few lines, not one per visitor."""
    if count > 0 and count & (count - 1) == 0:
        logger.warning(event, count=count, **context)
