"""structlog set-up: JSON lines when not on a terminal (containers, cron mail), readable
columns on a terminal. Every line carries merchant and run_id once bound; known secret
values (redaction.py) are replaced wherever they appear."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

from loopsync import redaction

REDACTED = redaction.REDACTED


def register_secret(value: str | None) -> None:
    """Never print this token obtained at run time: masked at every exit (redaction.py)
    while it is among the latest tokens registered."""
    redaction.register(value, transient=True)


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    redacted: dict[str, Any] = redaction.redact_obj(event_dict)
    return redacted


def _redacting(renderer: Any) -> Any:
    """The rendered line redacted once more: values the processor could not see inside
    (an exception object, a repr) are rendered to text only here."""

    def render(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        line = renderer(logger, method, event_dict)
        return redaction.redact(line) if isinstance(line, str) else line

    return render


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redaction.redact(super().format(record))


_stdlib_handler: logging.Handler | None = None


def _route_stdlib_logging(stream: TextIO) -> None:
    """Libraries log through `logging` (APScheduler logs a crashed job's traceback, with
    the exception's message): give the root logger one redacting handler, so those lines
    are masked too instead of reaching stderr through logging's last-resort handler."""
    global _stdlib_handler
    root = logging.getLogger()
    if _stdlib_handler is not None:
        root.removeHandler(_stdlib_handler)
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    _stdlib_handler = handler


def configure(
    *, json_output: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    _route_stdlib_logging(stream)
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            _redacting(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
