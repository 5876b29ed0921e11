"""Logging: structlog to stderr, readable on a terminal, JSON lines for machines.

`configure_logging` is called once by the CLI; library code only calls `get_logger`, at import
time if it likes (the logger is bound lazily, so it follows whatever configuration is current).
Standard-library loggers (anyio, asyncio) are routed through the same renderer.

Secrets: `model.Secret` already hides its value in repr; the `_redact` step below also replaces
any Secret and any value logged under a key such as `token` with `<secret>`, and tracebacks are
rendered without local variables, since a local may hold a raw token.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from muxtunnel.model import Secret

__all__ = [
    "LogFormat",
    "Refusals",
    "configure_logging",
    "debug_enabled",
    "get_logger",
    "log_doubling",
    "logs_on_terminal",
    "redirect",
    "safe_text",
]

LogFormat = Literal["console", "json", "auto"]
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_SECRET_KEYS = frozenset({"token", "secret", "password", "key"})
_REDACTED = "<secret>"
_handler: logging.Handler | None = None  # the stdlib handler we installed, replaced on reconfigure
_threshold = logging.DEBUG  # the configured level; every level passes until configured
_on_terminal = False  # the last configuration renders for a person at a terminal


class _Sink:
    """Where log lines go: the configured stream, or, while a live panel holds the terminal,
    a writer that prints them above it (`redirect`): a line written straight to the terminal
    under a live display would leave a stale copy of the display behind."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.writer: Callable[[str], None] | None = None

    def write(self, text: str) -> int:
        if self.writer is not None:
            self.writer(text)
        else:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        if self.writer is None:
            self.stream.flush()

    def isatty(self) -> bool:
        return _isatty(self.stream)


_sink: _Sink | None = None


@contextmanager
def redirect(writer: Callable[[str], None]) -> Iterator[None]:
    """Hand every log line (rendered, with its line break) to `writer` inside the block."""
    sink = _sink
    if sink is None:
        yield
        return
    sink.writer = writer
    try:
        yield
    finally:
        sink.writer = None


def _redact(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    for name, value in event.items():
        if isinstance(value, Secret) or (name in _SECRET_KEYS and isinstance(value, str | bytes)):
            event[name] = _REDACTED
    return event


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def parse_level(level: str) -> int:
    """`debug`/`info`/`warning`/`error`/`critical` (any case) as a logging level number."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(_LEVELS)}") from None


def configure_logging(
    format: LogFormat = "auto", level: str = "info", *, stream: TextIO | None = None
) -> None:
    """Send logs at `level` and above to `stream` (default stderr).

    `console`: aligned, coloured when `stream` is a terminal. `json`: one JSON object per line.
    `auto`: console on a terminal, JSON otherwise (a pipe, a file, a service manager).
    """
    global _handler, _on_terminal, _sink, _threshold
    out = sys.stderr if stream is None else stream
    threshold = parse_level(level)
    _threshold = threshold
    if format not in ("console", "json", "auto"):
        raise ValueError(f"unknown log format {format!r}; use console, json or auto")
    console = format == "console" or (format == "auto" and _isatty(out))
    renderer: Processor
    _on_terminal = console and _isatty(out)
    if console:
        tty = _isatty(out)
        exception_formatter = structlog.dev.plain_traceback
        if tty:
            from muxtunnel.termlog import rich_traceback  # rich: only for a terminal

            exception_formatter = rich_traceback
        renderer = structlog.dev.ConsoleRenderer(
            colors=tty, exception_formatter=exception_formatter
        )
    else:
        renderer = structlog.processors.JSONRenderer()
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    finishing: list[Processor] = [structlog.processors.StackInfoRenderer()]
    if not console:
        finishing.append(structlog.processors.format_exc_info)
    sink = _sink = _Sink(out)
    structlog.configure(
        processors=[*shared, *finishing, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, sink)),
        # Off so a reconfiguration (tests, --log-level at startup) reaches existing loggers;
        # our log volume is far too low for the lookup to matter.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *finishing,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(threshold)
    _handler = handler


def logs_on_terminal() -> bool:
    """Do log lines go to a terminal, rendered for a person (not JSON)?"""
    return _on_terminal


def debug_enabled() -> bool:
    """Do debug lines go anywhere? For per-visitor lines on hot paths: a filtered call still
    costs a logger lookup (loggers are not cached, so that reconfiguration reaches them)."""
    return _threshold <= logging.DEBUG


def get_logger(component: str | None = None, **context: object) -> FilteringBoundLogger:
    """A logger whose every line carries `component=...` (if given) and `context`.

    Lines from standard-library loggers carry `logger=<their name>` instead.
    """
    initial: MutableMapping[str, Any] = dict(context)
    if component is not None:
        initial["component"] = component
    return cast(FilteringBoundLogger, structlog.get_logger(**initial))


def log_doubling(logger: Any, event: str, count: int, **context: object) -> None:
    """Log the `count`-th refusal of something at counts 1, 2, 4, 8, ...: a flood is not a log.

    For every limit that refuses or drops: the caller counts (for its metrics), this decides
    which counts get a warning line.
    """
    if count > 0 and count & (count - 1) == 0:
        logger.warning(event, count=count, **context)


class Refusals:
    """Every refusal of one process, counted by reason and logged at counts 1, 2, 4, 8, ...

    One instance per process side (the server, the client, an HTTP endpoint): limits call
    `refuse`, and the status snapshot hands `counts` up to the metrics
    (`muxtunnel_refusals_total{reason=...}`) and the admin API. Reasons are a fixed vocabulary
    of the code (never text a peer chose), so the table stays small.
    """

    __slots__ = ("_logger", "counts")

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self.counts: dict[str, int] = {}

    def refuse(self, reason: str, event: str, *, n: int = 1, **context: object) -> int:
        """Count `n` refusals for `reason`; log `event` if the count passed a power of two."""
        before = self.counts.get(reason, 0)
        count = self.counts[reason] = before + n
        if n > 0 and count.bit_length() > before.bit_length():
            self._logger.warning(event, count=count, reason=reason, **context)
        return count

    def __getitem__(self, reason: str) -> int:
        return self.counts.get(reason, 0)


def safe_text(text: str, max_chars: int, max_bytes: int) -> str:
    """`text` with its unprintable characters escaped (a line break becomes `\\n`: no text
    can forge a log line), shortened to `max_chars` characters and `max_bytes` of UTF-8 with
    a final "..." if it was longer."""
    if not text.isprintable():
        text = "".join(
            c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
        )
    if len(text) > max_chars:
        text = text[: max_chars - 3] + "..."
    encoded = text.encode("utf-8")
    if len(encoded) > max_bytes:  # cut on a character boundary ("ignore" drops a split one)
        text = encoded[: max_bytes - 3].decode("utf-8", "ignore") + "..."
    return text
