"""structlog set-up: JSON lines when not on a terminal (containers, cron mail), readable
columns on a terminal. Every line carries merchant and run_id once bound; known secret
values are replaced wherever they appear."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()
_lock = threading.Lock()
REDACTED = "***"


def register_secret(value: str | None) -> None:
    """Never print this value: it is masked in every log field from now on."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        for secret in _secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if not _secrets:
        return event_dict
    return {k: _redact_value(v) for k, v in event_dict.items()}


def configure(*, json_output: bool | None = None, level: str = "info",
              stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Any = (structlog.processors.JSONRenderer() if json_output
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
