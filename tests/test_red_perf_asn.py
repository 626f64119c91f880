"""Loop's ASN report does not paginate: a window whose answer passes the body cap is read
in halves (bounded), and a part too large even at the floor is recorded once and passed,
so the ASN stage does not fail the same window in every cycle. In-memory fakes."""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from loopsync.errors import ResponseTooLarge
from loopsync.stages.asn import MAX_SPLITS, MIN_PART, asn_parts, halves
from loopsync.testing import FakeLoop
from loopsync.timeutil import parse_timestamp
from loopsync.windows import Window
from tests.test_poison_engine import World, problems

ROWS_PER_HOUR = 4


class BusyAsnLoop(FakeLoop):
    """An ASN report of ROWS_PER_HOUR rows an hour over the last 30 days, refused as too
    large for any window holding more than `cap_rows` rows."""

    def __init__(self, now: datetime, cap_rows: int) -> None:
        super().__init__([])
        self.cap_rows = cap_rows
        self.asked: list[tuple[datetime, datetime]] = []
        step = timedelta(hours=1) / ROWS_PER_HOUR
        self.times = [now - n * step for n in range(24 * ROWS_PER_HOUR * 30)][::-1]
        self.rows = [
            {
                "id": 1000 + n,
                "return_line_item_id": n,
                "tracking_number": f"1Z{n}",
                "updated_at": (now - n * step).isoformat(),
            }
            for n in range(24 * ROWS_PER_HOUR * 30)
        ]

    def asn_report(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        self.asked.append((start, end))
        first, last = bisect_left(self.times, start), bisect_right(self.times, end)
        rows = self.rows[::-1][first:last]
        if len(rows) > self.cap_rows:
            raise ResponseTooLarge("loop", "the answer passed 32 MiB")
        return rows


def asn_world(tmp_path: Any, cap_rows: int) -> tuple[World, BusyAsnLoop]:
    world = World(tmp_path, FakeLoop([]))
    loop = BusyAsnLoop(world.clock.now(), cap_rows)
    world.loop = loop
    world.cfg = dataclasses.replace(
        world.cfg, loop=dataclasses.replace(world.cfg.loop, asn_enabled=True)
    )
    return world, loop


def test_an_asn_window_past_the_body_cap_is_read_in_parts_and_every_row_is_kept(tmp_path):
    world, loop = asn_world(tmp_path, cap_rows=ROWS_PER_HOUR * 5)  # a day is ~5x the cap
    result = world.cycle()
    assert "asn" not in result.stage_errors
    store = world.store()
    stored = {r["tracking_number"] for r in store.db.query("select tracking_number from asn_rows")}
    done = store.cursors.get("asn", "all").done_until
    store.close()
    assert stored == {r["tracking_number"] for r in loop.rows}
    assert done == world.clock.now()
    assert not [p for p in problems(world) if p.stage == "asn"]


def test_an_asn_part_too_large_at_the_floor_is_recorded_once_and_not_failed_every_cycle(
    tmp_path,
):
    world, loop = asn_world(tmp_path, cap_rows=0)  # no answer with a row fits
    first = world.cycle()
    assert "asn" not in first.stage_errors
    refused = [p for p in problems(world) if p.stage == "asn"]
    assert refused and all("max_response_mb" in p.message for p in refused)
    assert len(loop.asked) <= 30 * (2 ** (MAX_SPLITS + 1) - 1)  # bounded per window
    store = world.store()
    assert store.cursors.get("asn", "all").done_until == world.clock.now()
    store.close()
    world.clock.advance(24 * 3600)  # a day later: only the new day (and lookback) is read
    asked_before = len(loop.asked)
    second = world.cycle()
    assert "asn" not in second.stage_errors
    assert len(loop.asked) - asked_before <= 2 * (2 ** (MAX_SPLITS + 1) - 1)
    assert all(
        start >= parse_timestamp("2026-05-01T23:00:00Z") for start, _ in loop.asked[asked_before:]
    )


@given(
    st.integers(min_value=1, max_value=10**6),  # window span, seconds
    st.integers(min_value=0, max_value=MAX_SPLITS + 2),
)
def test_asn_halves_cover_the_window_exactly_and_stop_at_the_floor(seconds, depth):
    start = parse_timestamp("2026-05-01T00:00:00Z")
    window = Window(start, start + timedelta(seconds=seconds))
    split = halves(window, depth)
    if split is None:
        assert depth >= MAX_SPLITS or (window.end - window.start) / 2 < MIN_PART
        return
    first, second = split
    assert first.start == window.start and second.end == window.end
    assert first.end == second.start and first.start < first.end < second.end
    assert first.end - first.start >= MIN_PART


def test_asn_parts_of_a_window_that_fits_is_the_window_read_once():
    loop = BusyAsnLoop(parse_timestamp("2026-05-02T00:00:00Z"), cap_rows=10**9)
    window = Window(
        parse_timestamp("2026-05-01T00:00:00Z"), parse_timestamp("2026-05-02T00:00:00Z")
    )
    parts = list(asn_parts(loop, window))
    assert [p.window for p in parts] == [window] and len(loop.asked) == 1
