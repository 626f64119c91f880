"""Loop cursors resist clock jumps: a cursor found in the future is pulled back, a window
is never recorded past Loop's own clock (`Date`), and no return is ever skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from loopsync.cycle import Engine
from loopsync.loop_client import ReturnsPage, server_date
from loopsync.status import merchant_status, render_status
from loopsync.state import Store
from loopsync.timeutil import iso, parse_timestamp
from loopsync.testing import FakeClock
from loopsync.windows import (
    DATE_ALLOWANCE,
    Window,
    check_cursor,
    clock_skew,
    completed_until,
    ingest_start,
)

from loopsync.testing import FakeWarehouse, loop_return, merchant_config

T0 = parse_timestamp("2026-05-02T00:00:00Z")
LOOKBACK = timedelta(minutes=15)
STATES = ("open", "closed")


# -- the pure rules --------------------------------------------------------------------------


def test_a_done_until_in_the_future_goes_back_to_the_last_seen_update_when_earlier() -> None:
    now = T0
    check = check_cursor(
        now + timedelta(days=3),
        None,
        None,
        now=now,
        lookback=LOOKBACK,
        last_seen=now - timedelta(hours=5),
    )
    assert check.pulled_back and check.done_until == now - timedelta(hours=5)
    assert "ahead of now" in check.reason


def test_a_done_until_in_the_future_goes_back_to_now_less_lookback_when_nothing_seen() -> None:
    check = check_cursor(
        T0 + timedelta(days=3), None, None, now=T0, lookback=LOOKBACK, last_seen=None
    )
    assert check.done_until == T0 - LOOKBACK


def test_an_unfinished_window_ending_in_the_future_is_dropped_with_its_page_cursor() -> None:
    window = Window(T0 - timedelta(hours=1), T0 + timedelta(days=1))
    check = check_cursor(
        T0 - timedelta(hours=1), window, "C9", now=T0, lookback=LOOKBACK, last_seen=None
    )
    assert check.pulled_back and check.window is None and check.page_cursor is None
    assert check.done_until == T0 - timedelta(hours=1)


def test_a_cursor_in_the_past_is_left_alone() -> None:
    window = Window(T0 - timedelta(hours=2), T0 - timedelta(hours=1))
    check = check_cursor(
        T0 - timedelta(hours=2), window, "C1", now=T0, lookback=LOOKBACK, last_seen=T0
    )
    assert not check.pulled_back and check.window == window and check.page_cursor == "C1"


def test_a_window_is_never_recorded_past_loops_clock() -> None:
    assert completed_until(T0 + timedelta(days=1), T0) == T0 + DATE_ALLOWANCE
    assert completed_until(T0, T0 + timedelta(days=1)) == T0  # Loop ahead: our end stands
    assert completed_until(T0, None) == T0
    assert clock_skew(T0 + timedelta(minutes=5), T0) == timedelta(minutes=5)
    assert clock_skew(T0 + timedelta(seconds=5), T0) is None


@settings(max_examples=50, deadline=None)
@given(
    hs.one_of(
        hs.none(),
        hs.text(max_size=40),
        hs.datetimes(timezones=hs.just(UTC)).map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    )
)
def test_server_date_reads_an_http_date_or_gives_none(value: str | None) -> None:
    got = server_date({} if value is None else {"Date": value})
    assert got is None or (got.tzinfo is not None and got.utcoffset() == timedelta(0))


# -- the engine against a Loop whose clock is the truth --------------------------------------


class TrueLoop:
    """A Loop list over returns updated at true times; pages carry Loop's `Date`."""

    def __init__(self, truth: FakeClock, *, send_date: bool = True) -> None:
        self.truth = truth
        self.send_date = send_date
        self.returns: dict[str, dict[str, Any]] = {}

    def update(self, rid: str, state: str) -> None:
        self.returns[rid] = loop_return(rid, state=state, updated=iso(self.truth.now()))

    def iter_returns(
        self, start: datetime, end: datetime, state: str, *, cursor: str | None = None
    ) -> Any:
        rows = sorted(
            (
                r
                for r in self.returns.values()
                if r["state"] == state and start <= parse_timestamp(r["updated_at"]) <= end
            ),
            key=lambda r: r["id"],
        )
        # One-second resolution, as an HTTP Date has.
        date = self.truth.now().replace(microsecond=0) if self.send_date else None
        offset = int(cursor or 0)
        while True:
            nxt = offset + 2 if offset + 2 < len(rows) else None
            yield ReturnsPage(
                rows[offset : offset + 2], None if nxt is None else str(nxt), cursor, date
            )
            if nxt is None:
                return
            offset = nxt

    def asn_report(self, start: datetime, end: datetime) -> list[Any]:
        return []


def run_ingest(cfg: Any, truth: FakeClock, offset: timedelta, loop: TrueLoop) -> Store:
    local = FakeClock(truth.now() + offset)
    store = Store(cfg.state_path, local)
    Engine(cfg, store, loop, FakeWarehouse(), clock=local, run_id="r").ingest()
    return store


def stored_current(store: Store, ret: dict[str, Any]) -> bool:
    row = store.returns.get(ret["id"])
    return row is not None and row.updated_at == ret["updated_at"] and row.state == ret["state"]


OFFSETS = hs.sampled_from(
    [
        timedelta(0),
        timedelta(minutes=3),
        timedelta(hours=2),
        timedelta(days=1),
        timedelta(days=40),
        -timedelta(hours=3),
        -timedelta(days=2),
    ]
)
STEPS = hs.lists(
    hs.tuples(
        hs.integers(min_value=0, max_value=3 * 86400),  # true seconds that pass
        OFFSETS,  # our clock's error
        hs.lists(hs.tuples(hs.integers(1, 6), hs.sampled_from(STATES)), max_size=3),
    ),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_no_return_updated_after_the_last_completed_window_is_ever_skipped(
    tmp_path_factory: Any, steps: list[Any]
) -> None:
    cfg = merchant_config(tmp_path_factory.mktemp("clock"), states=STATES)
    truth = FakeClock(T0)
    loop = TrueLoop(truth)
    for passed, offset, updates in steps:
        truth.advance(passed)
        for n, state in updates:
            loop.update(str(100 + n), state)
            truth.advance(1)
        store = run_ingest(cfg, truth, offset, loop)
        try:
            for ret in loop.returns.values():
                cur = store.cursors.get("returns", ret["state"])
                next_start = ingest_start(cur.done_until, cfg.loop.start_at, cfg.loop.lookback)
                if parse_timestamp(ret["updated_at"]) < next_start:
                    # The next cycle starts after this update: it must be stored already.
                    assert stored_current(store, ret), (
                        ret["id"],
                        ret["updated_at"],
                        iso(cur.done_until),
                    )
        finally:
            store.close()


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=STEPS)
def test_without_loops_date_every_return_is_read_once_the_clock_is_right_again(
    tmp_path_factory: Any, steps: list[Any]
) -> None:
    cfg = merchant_config(tmp_path_factory.mktemp("clock"), states=STATES)
    truth = FakeClock(T0)
    loop = TrueLoop(truth, send_date=False)
    for passed, offset, updates in steps:
        truth.advance(passed)
        for n, state in updates:
            loop.update(str(100 + n), state)
            truth.advance(1)
        run_ingest(cfg, truth, offset, loop).close()
    truth.advance(LOOKBACK)
    store = run_ingest(cfg, truth, timedelta(0), loop)
    try:
        assert all(stored_current(store, ret) for ret in loop.returns.values())
    finally:
        store.close()


def test_a_return_updated_after_a_clock_correction_is_read_and_status_says_why(
    tmp_path: Any,
) -> None:
    """Today's bug: the clock ran a day ahead, a cycle recorded done_until a day in the
    future, and every return updated after the correction was never read."""
    cfg = merchant_config(tmp_path, states=("open",))
    truth = FakeClock(T0)
    loop = TrueLoop(truth, send_date=False)  # a Loop answer without Date: pull-back alone
    loop.update("101", "open")
    truth.advance(60)
    run_ingest(cfg, truth, timedelta(days=1), loop).close()  # our clock a day ahead
    truth.advance(3600)
    loop.update("102", "open")
    truth.advance(60)
    store = run_ingest(cfg, truth, timedelta(0), loop)  # corrected
    try:
        assert stored_current(store, loop.returns["102"]), "a return after the fix was skipped"
        assert store.cursors.get("returns", "open").done_until <= truth.now()
        event = store.kv("cursors").get("pulled_back:returns/open")
        assert event and "ahead of now" in event["reason"]
    finally:
        store.close()
    text = render_status(merchant_status(cfg))
    assert "cursor returns/open was in the future; pulled back" in text


def test_a_clock_running_ahead_keeps_the_cursor_to_loops_date_and_status_shows_the_skew(
    tmp_path: Any,
) -> None:
    cfg = merchant_config(tmp_path, states=("open",))
    truth = FakeClock(T0)
    loop = TrueLoop(truth)
    loop.update("101", "open")
    store = run_ingest(cfg, truth, timedelta(days=2), loop)
    try:
        assert store.cursors.get("returns", "open").done_until <= truth.now() + DATE_ALLOWANCE
        assert store.kv("cursors").get("clock_skew")["ahead_seconds"] >= 2 * 86400 - 1
    finally:
        store.close()
    assert "clock skew: ours ran" in render_status(merchant_status(cfg))
