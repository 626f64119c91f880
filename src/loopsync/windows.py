"""Pure window arithmetic for Loop's Detailed Returns List and ASN report.

Both bounds of a window are inclusive toward Loop, and consecutive windows share their
boundary instant, so a return updated exactly at a boundary is read (twice, harmlessly:
the store dedupes by id). Each run re-reads `lookback` before the last completed window
to catch records whose updated_at was written late.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from loopsync.loop_facts import MAX_WINDOW

MAX_SPAN = MAX_WINDOW  # a window never spans more than Loop's list accepts


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


def resume_point(
    window_from: datetime | None, window_to: datetime | None, page_cursor: str | None
) -> ResumePoint:
    if window_from is None or window_to is None:
        return ResumePoint(None, None)
    return ResumePoint(Window(window_from, window_to), page_cursor)


# -- clocks that lie -----------------------------------------------------------------------
# A Loop `Date` header has one-second resolution and is stamped after the list query ran:
# a completed window may claim up to this much past it.
DATE_ALLOWANCE = timedelta(seconds=2)
# Our clock and Loop's disagreeing by more than this is worth a log line and a status line.
SKEW_THRESHOLD = timedelta(seconds=60)


@dataclass(frozen=True)
class CursorCheck:
    """A stored cursor after `check_cursor`: where this run may resume from."""

    done_until: datetime | None
    window: Window | None  # the unfinished window to resume, if it is still valid
    page_cursor: str | None
    pulled_back: bool  # done_until moved back, or a window was dropped
    reason: str = ""


def check_cursor(
    done_until: datetime | None,
    window: Window | None,
    page_cursor: str | None,
    *,
    now: datetime,
    lookback: timedelta,
    last_seen: datetime | None,
) -> CursorCheck:
    """Pull a cursor that lies in the future back to the truth.

    A cursor beyond `now` was written while the worker's clock ran ahead; kept, it would
    hide every record updated between the real time and that future instant. It goes back
    to the earlier (safer) of `now - lookback` and the last `updated_at` actually stored
    for the stream (records after it may be the ones that were never read). An unfinished
    window that ends in the future is dropped with its page cursor: its pages were stored,
    and planning from `done_until` reads the span again with an honest end.
    """
    reasons = []
    pulled = False
    if done_until is not None and done_until > now:
        target = now - lookback
        if last_seen is not None:
            target = min(target, last_seen)
        reasons.append(
            f"done_until {done_until.isoformat()} was ahead of now "
            f"{now.isoformat()}; moved back to {target.isoformat()}"
        )
        done_until, pulled = target, True
    if window is not None and window.end > now:
        reasons.append(
            f"unfinished window {window.start.isoformat()} -> "
            f"{window.end.isoformat()} ended in the future; dropped"
        )
        window, page_cursor, pulled = None, None, True
    return CursorCheck(done_until, window, page_cursor, pulled, "; ".join(reasons))


def completed_until(window_end: datetime, server_now: datetime | None) -> datetime:
    """How far a window read up to `window_end` may be recorded as done: never past the
    remote's own clock (its `Date` at the walk's first page, plus the header's
    resolution). Our clock may run ahead; Loop cannot hold records from its future."""
    if server_now is None:
        return window_end
    return min(window_end, server_now + DATE_ALLOWANCE)


def clock_skew(local: datetime, remote: datetime | None) -> timedelta | None:
    """How far our clock runs ahead of the remote's (negative: behind), when the two
    disagree by more than SKEW_THRESHOLD; None when they agree or the remote gave none."""
    if remote is None:
        return None
    skew = local - remote
    return skew if abs(skew) > SKEW_THRESHOLD else None
