"""Pure window arithmetic for Loop's Detailed Returns List and ASN report.

Both bounds of a window are inclusive toward Loop, and consecutive windows share their
boundary instant, so a return updated exactly at a boundary is read (twice, harmlessly:
the store dedupes by id). Each run re-reads `lookback` before the last completed window
to catch records whose updated_at was written late.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_SPAN = timedelta(days=120)


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start


def ingest_start(done_until: datetime | None, start_at: datetime, lookback: timedelta) -> datetime:
    """Where this run's first window starts: the configured start on the first run, else
    `lookback` before the last completed window's end, never before the configured start."""
    if done_until is None:
        return start_at
    return max(start_at, done_until - lookback)


def plan_windows(start: datetime, end: datetime, span: timedelta = MAX_SPAN) -> list[Window]:
    """Cover [start, end] with windows of at most `span` (capped at Loop's 120 days).

    An `end` at or before `start` (clock skew, a start in the future) plans nothing rather
    than a window with to < from.
    """
    span = min(span, MAX_SPAN)
    if span <= timedelta(0):
        raise ValueError("window span must be positive")
    windows: list[Window] = []
    cursor = start
    while cursor < end:
        stop = min(cursor + span, end)
        windows.append(Window(cursor, stop))
        cursor = stop
    return windows


@dataclass(frozen=True)
class ResumePoint:
    """Where a state pass continues: inside an unfinished window, or at a fresh start."""

    window: Window | None  # the unfinished window, if any
    page_cursor: str | None


def resume_point(window_from: datetime | None, window_to: datetime | None,
                 page_cursor: str | None) -> ResumePoint:
    if window_from is None or window_to is None:
        return ResumePoint(None, None)
    return ResumePoint(Window(window_from, window_to), page_cursor)
