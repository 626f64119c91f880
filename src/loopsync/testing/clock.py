"""A clock for tests: time moves only when told to, or when something sleeps on it.

It satisfies `loopsync.timeutil.Clock`, so anything that takes a clock (the engine, the
HTTP client's retries and limiter, the emulators) runs on it without a real wait."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from loopsync.timeutil import parse_timestamp


class FakeClock:
    """Test clock: time moves only when told to (or when something sleeps)."""

    @property
    def timeline(self) -> object:
        return self  # each fake clock keeps a time of its own

    def __init__(self, start: datetime | str = "2026-06-01T00:00:00Z") -> None:
        self._now = parse_timestamp(start) if isinstance(start, str) else start
        self._mono = 1000.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float | timedelta) -> None:
        if isinstance(seconds, timedelta):
            seconds = seconds.total_seconds()
        with self._lock:
            self._now += timedelta(seconds=seconds)
            self._mono += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds > 0:
            self.advance(seconds)

    def set(self, when: datetime | str) -> None:
        with self._lock:
            new = parse_timestamp(when) if isinstance(when, str) else when
            self._mono += max(0.0, (new - self._now).total_seconds())
            self._now = new
