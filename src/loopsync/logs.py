"""structlog set-up: JSON lines when not on a terminal (containers, cron mail), readable
columns on a terminal. Every line carries merchant and run_id once bound, and `stage`
inside a stage (`stage_context`); known secret values (redaction.py) are replaced wherever
they appear.

Contract: one handler on the root `logging` logger renders every line, loopsync's own
(structlog, handed over by `ProcessorFormatter.wrap_for_formatter`) and every library's
(APScheduler, urllib3, ...: "foreign" records) alike, through the same processors: the same
JSON keys (`event`, `level`, `timestamp`, `logger`), a traceback as the `exception` field
(one JSON line, never raw text), and the redaction processor on both paths. APScheduler's
own INFO chatter ("Added job", "Running job") is held to WARNING: `scheduling.py` logs its
events in words instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor

from loopsync import redaction

REDACTED = redaction.REDACTED
# Libraries whose INFO lines repeat what loopsync logs in its own words.
_QUIET_LIBRARIES = ("apscheduler",)


def register_secret(value: str | None) -> None:
    """Never print this token obtained at run time: masked at every exit (redaction.py)
    while it is among the latest tokens registered."""
    redaction.register(value, transient=True)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> dict[str, Any]:
    redacted: dict[str, Any] = redaction.redact_obj(dict(event_dict))
    return redacted


def _redacting(renderer: Processor) -> Processor:
    """The rendered line redacted once more: values the processor could not see inside
    (an exception object, a repr) are rendered to text only here."""

    def render(logger: Any, method: str, event_dict: EventDict) -> Any:
        line = renderer(logger, method, event_dict)
        return redaction.redact(line) if isinstance(line, str) else line

    return render


def _foreign_event(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A library's record: its message (args already merged by ProcessorFormatter) is the
    event, as a string, so a JSON reader finds it where loopsync's own events are."""
    event_dict["event"] = str(event_dict.get("event", ""))
    return event_dict


@contextmanager
def stage_context(stage: str) -> Iterator[None]:
    """Every log line inside the block carries `stage` (a contextvars binding, so the
    lines of a stage's helpers, clients and connectors carry it too); restored on exit."""
    tokens = structlog.contextvars.bind_contextvars(stage=stage)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


# The root handler loopsync installed last (a list, so no `global` is needed to replace it).
_installed: list[logging.Handler] = []


def _install_handler(stream: TextIO, formatter: logging.Formatter, level: int) -> None:
    """One root handler, replaced on every `configure` (tests reconfigure many times)."""
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    _installed.append(handler)


def configure(
    *, json_output: bool | None = None, level: str = "info", stream: TextIO | None = None
) -> None:
    stream = stream or sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json_output
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _foreign_event],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # the traceback as the `exception` field
            redact_secrets,
            _redacting(renderer),
        ],
    )
    _install_handler(stream, formatter, numeric)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
