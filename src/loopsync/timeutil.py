"""Aware-UTC time: parsing, formatting, durations and an injectable clock.

The test clock, `FakeClock`, lives in `loopsync.testing` (no runtime code uses it)."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from loopsync.errors import StopRequested

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | int | float) -> timedelta:
    """'15m', '2h', '120d', '30s', '500ms' -> timedelta. Bare numbers are seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"negative duration: {text!r}")
        return timedelta(seconds=text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"not a duration (use e.g. 30s, 15m, 2h, 7d): {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_timestamp(value: str | datetime, *, assume_utc: bool = False) -> datetime:
    """Parse ISO-8601 (also Loop's 'YYYY-MM-DD HH:MM:SS') into an aware UTC datetime.

    A timestamp without a zone raises ValueError unless assume_utc is set: Loop's
    Get Return Details shows naive times that are UTC; config values must carry a zone.
    """
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    if dt.tzinfo is None:
        if not assume_utc:
            raise ValueError(f"timestamp has no timezone: {value!r}")
        dt = dt.replace(tzinfo=UTC)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00: UTC would be before year 1
        raise ValueError(f"timestamp out of range in UTC: {value!r}") from None


def loop_wire(dt: datetime) -> str:
    """Loop's documented request format: 2024-01-01T00:00:00.000Z."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def iso(dt: datetime | None) -> str | None:
    """Canonical stored form: second-or-better precision, always UTC with 'Z'."""
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...

    def monotonic(self) -> float: ...

    @property
    def timeline(self) -> object:
        """Clocks with the same timeline read the same time (and may share a limiter)."""
        ...


class SystemClock:
    """Real time. `sleep` wakes early when `stop` is set and raises StopRequested, so
    shutdown is prompt: no retry or rate-limit wait outlives a SIGTERM."""

    # Every SystemClock reads the same time: a rate limiter may be shared between them.
    timeline: object = "system"

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self.stop is not None:
            if self.stop.wait(seconds):
                raise StopRequested(f"stop requested during a {seconds:.1f}s wait")
        else:
            time.sleep(seconds)

    def monotonic(self) -> float:
        return time.monotonic()
