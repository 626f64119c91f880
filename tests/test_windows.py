from datetime import timedelta

import pytest

from loopsync.timeutil import parse_timestamp as ts
from loopsync.windows import MAX_SPAN, Window, ingest_start, plan_windows


@pytest.mark.parametrize(
    "label, start, end, span, expected",
    [
        (
            "exactly 120 days is one window",
            "2026-01-01T00:00:00Z",
            "2026-05-01T00:00:00Z",
            MAX_SPAN,
            1,
        ),
        (
            "one second past 120 days is two",
            "2026-01-01T00:00:00Z",
            "2026-05-01T00:00:01Z",
            MAX_SPAN,
            2,
        ),
        ("a year in 120-day windows", "2025-01-01T00:00:00Z", "2026-01-01T00:00:00Z", MAX_SPAN, 4),
        ("one-day windows", "2026-01-01T00:00:00Z", "2026-01-04T12:00:00Z", timedelta(days=1), 4),
        (
            "end before start plans nothing",
            "2026-02-01T00:00:00Z",
            "2026-01-01T00:00:00Z",
            MAX_SPAN,
            0,
        ),
    ],
)
def test_plan_windows_counts(label, start, end, span, expected):
    assert len(plan_windows(ts(start), ts(end), span)) == expected, label


def test_windows_never_exceed_the_api_range_cap_and_cover_the_range():
    start, end = ts("2024-03-01T00:00:00Z"), ts("2026-11-22T10:11:12Z")
    windows = plan_windows(start, end, timedelta(days=500))  # asked for more than Loop allows
    assert all(w.span <= MAX_SPAN for w in windows)
    assert windows[0].start == start and windows[-1].end == end
    # consecutive windows share their boundary instant: both bounds are inclusive toward Loop
    assert all(a.end == b.start for a, b in zip(windows, windows[1:], strict=False))


def test_ingest_start_applies_lookback_but_not_before_start_at():
    start_at = ts("2026-01-01T00:00:00Z")
    done = ts("2026-03-01T12:00:00Z")
    assert ingest_start(None, start_at, timedelta(minutes=15)) == start_at
    assert ingest_start(done, start_at, timedelta(minutes=15)) == ts("2026-03-01T11:45:00Z")
    assert ingest_start(ts("2026-01-01T00:05:00Z"), start_at, timedelta(hours=1)) == start_at


def test_window_span():
    w = Window(ts("2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:00Z"))
    assert w.span == timedelta(days=1)
