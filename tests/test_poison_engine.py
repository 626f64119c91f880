"""A poison record holds back only itself (issue 15 §1): the engine records one return's
unreadable data or unexpected error against that return and goes on with the next; an
ingest page is checkpointed with the poison record recorded, never re-read forever.
In-memory fakes, a FakeClock, no network."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import pytest

from loopsync.connectors.base import NotReady, PollStopped
from loopsync.cycle import Engine
from loopsync.errors import DryRunViolation, LockHeld, UnknownReturn, Unreadable
from loopsync.stages import context as engine_mod
from loopsync.stages.context import one_records_fault
from loopsync.state import ProblemRow, Store
from loopsync.state.returns import ReturnRepository
from loopsync.testing import FakeClock, FakeLoop, FakeWarehouse, Page, loop_return, merchant_config


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


POISONS = {
    "utc overflow": lambda r: {**r, "updated_at": "0001-01-01T00:00:00+01:00"},
    "utc overflow at the top": lambda r: {**r, "updated_at": "9999-12-31T23:59:59-01:00"},
    "lone surrogate in state": lambda r: {**r, "state": "\ud800"},
    "lone surrogate in a title": lambda r: {
        **r,
        "line_items": [{**r["line_items"][0], "title": "caf\udce9"}],
    },
    "nested thousands deep": lambda r: {**r, "extra": nested(5000)},
    "full-width digits as id": lambda r: {**r, "id": "１０５０"},
    "superscript in id": lambda r: {**r, "id": "1050²"},
    "NUL in a SKU": lambda r: {**r, "line_items": [{**r["line_items"][0], "sku": "A\x00"}]},
    "id too large to print": lambda r: {**r, "id": 10**5000},
    "not an object": lambda r: ["1050"],
}


class PagedLoop(FakeLoop):
    """Serves fixed pages for the `open` pass (whatever the window), empty ones for the
    other states; counts the pages read."""

    def __init__(self, pages: list[list[Any]]) -> None:
        super().__init__(
            [
                r
                for page in pages
                for r in page
                if isinstance(r, dict) and r.get("id") in ("101", "102", "103")
            ]
        )
        self.pages = pages

    def iter_returns(self, start, end, state, *, cursor=None):
        self._check()
        if state != "open":
            self.pages_read += 1
            yield Page([], None)
            return
        for n in range(int(cursor or 0), len(self.pages)):
            nxt = str(n + 1) if n + 1 < len(self.pages) else None
            self.pages_read += 1
            yield Page(self.pages[n], nxt, cursor)


class World:
    def __init__(self, tmp_path, loop: FakeLoop, wh: FakeWarehouse | None = None, **cfg_kw) -> None:
        self.clock = FakeClock("2026-05-02T00:00:00Z")
        self.cfg = merchant_config(tmp_path, **cfg_kw)
        self.loop = loop
        self.wh = wh or FakeWarehouse()
        self.wh.orders = {f"#{rid}" for rid in ("101", "102", "103", "1050")}
        self.runs = 0

    def cycle(self):
        self.runs += 1
        store = Store(self.cfg.state_path, self.clock)
        try:
            return Engine(
                self.cfg, store, self.loop, self.wh, clock=self.clock, run_id=f"r{self.runs}"
            ).run_cycle()
        finally:
            store.close()

    def store(self) -> Store:
        return Store(self.cfg.state_path, self.clock)


def problems(world: World) -> list[ProblemRow]:
    store = world.store()
    try:
        return store.runs.problems(100)
    finally:
        store.close()


@pytest.mark.parametrize("poison", POISONS.values(), ids=list(POISONS))
def test_poison_record_among_good_ones_is_recorded_and_the_page_is_checkpointed(tmp_path, poison):
    bad = poison(loop_return("1050"))
    loop = PagedLoop([[loop_return("101"), bad, loop_return("102")], [loop_return("103")]])
    w = World(tmp_path, loop)
    result = w.cycle()
    assert sorted(w.wh.rmas) == ["101", "102", "103"]  # the good ones are pushed
    assert result.counts.pushed == 3 and not result.stage_errors
    listed = [p for p in problems(w) if p.stage == "ingest"]
    assert len(listed) == 1 and listed[0].message
    store = w.store()
    cur = store.cursors.get("returns", "open")
    assert store.returns.get("1050") is None
    store.close()
    # The window was completed past the poison page: nothing is left to resume from.
    assert (cur.window_from, cur.page_cursor) == (None, None)
    assert cur.done_until == w.clock.now()
    w.clock.advance(3600)
    read_before = loop.pages_read
    second = w.cycle()
    assert not second.stage_errors and w.wh.created == 3
    assert loop.pages_read - read_before == 2 + 4  # one new window per state, read once


def test_a_return_that_cannot_be_stored_is_recorded_and_its_page_still_commits(
    tmp_path, monkeypatch
):
    real, real_batch = ReturnRepository.upsert, ReturnRepository.insert_new

    def upsert(self, rid, raw, **kw):
        if rid == "102":
            raise RuntimeError("no one foresaw this")
        return real(self, rid, raw, **kw)

    def insert_new(self, returns, now):
        # The page's new returns go in together; the batch fails on 102 as well, and
        # each is then stored alone.
        if any(r.id == "102" for r in returns):
            raise RuntimeError("no one foresaw this")
        return real_batch(self, returns, now)

    monkeypatch.setattr(ReturnRepository, "upsert", upsert)
    monkeypatch.setattr(ReturnRepository, "insert_new", insert_new)
    loop = PagedLoop([[loop_return("101"), loop_return("102")], [loop_return("103")]])
    w = World(tmp_path, loop)
    result = w.cycle()
    assert sorted(w.wh.rmas) == ["101", "103"]
    assert [(p.return_id, p.stage) for p in problems(w)] == [("102", "ingest")]
    assert "RuntimeError: no one foresaw this" in problems(w)[0].message
    assert result.counts.errors == 1
    store = w.store()
    assert store.cursors.get("returns", "open").page_cursor is None
    store.close()


def test_a_local_fault_while_storing_is_not_blamed_on_one_return(tmp_path, monkeypatch):
    def upsert(self, rid, raw, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    def insert_new(self, returns, now):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ReturnRepository, "upsert", upsert)
    monkeypatch.setattr(ReturnRepository, "insert_new", insert_new)
    w = World(tmp_path, PagedLoop([[loop_return("101")]]))
    with pytest.raises(sqlite3.OperationalError):
        w.cycle()
    store = w.store()
    assert store.cursors.get("returns", "open").done_until is None  # nothing checkpointed
    store.close()


class BuggyWarehouse(FakeWarehouse):
    """Raises what no one raised on purpose for the returns in `broken`, per call."""

    def __init__(self, broken: dict[str, str]) -> None:
        super().__init__()
        self.broken = broken

    def locate(self, req):
        if self.broken.get(req.ret.id) == "locate":
            raise TypeError("'NoneType' object is not subscriptable")
        return super().locate(req)

    def poll(self, rmas):
        if any(self.broken.get(r.return_id) == "poll" for r in rmas):
            raise AttributeError("'list' object has no attribute 'get'")
        return super().poll(rmas)


def test_an_unexpected_error_pushing_one_return_is_recorded_and_the_rest_are_pushed(tmp_path):
    loop = PagedLoop([[loop_return("101"), loop_return("102"), loop_return("103")]])
    w = World(tmp_path, loop, BuggyWarehouse({"102": "locate"}))
    result = w.cycle()
    assert sorted(w.wh.rmas) == ["101", "103"]
    assert [(p.return_id, p.stage) for p in problems(w)] == [("102", "push")]
    assert "TypeError" in problems(w)[0].message and result.counts.errors == 1
    w.wh.broken.clear()  # fixed: the held return goes on next cycle
    w.cycle()
    assert sorted(w.wh.rmas) == ["101", "102", "103"]


def test_an_unexpected_error_acting_on_one_return_is_recorded_and_the_rest_are_acted_on(
    tmp_path, monkeypatch
):
    loop = PagedLoop([[loop_return("101"), loop_return("102"), loop_return("103")]])
    w = World(tmp_path, loop)
    w.cycle()
    for rid in ("101", "102", "103"):
        w.wh.finish(rid)
    real = FakeLoop.process

    def process(self, rid):
        if rid == "102":
            raise KeyError("state")
        return real(self, rid)

    monkeypatch.setattr(FakeLoop, "process", process)
    result = w.cycle()
    assert ("process", "101") in loop.writes and ("process", "103") in loop.writes
    assert result.counts.processed == 2 and result.counts.errors == 1
    assert next((p.return_id, p.stage) for p in problems(w)) == ("102", "act")
    monkeypatch.setattr(FakeLoop, "process", real)
    # The attempt's outcome is unknown: two reads of the return 10 minutes apart must
    # agree that nothing happened before it is made, once.
    w.clock.advance(3600)
    w.cycle()
    w.clock.advance(3600)
    w.cycle()
    assert loop.writes.count(("process", "102")) == 1


def test_a_poll_answer_no_parser_foresaw_holds_its_chunk_and_the_stage_goes_on(tmp_path):
    loop = PagedLoop([[loop_return("101"), loop_return("102")]])
    wh = BuggyWarehouse({})
    w = World(tmp_path, loop, wh)
    w.cycle()
    w.wh.finish("101")
    wh.broken["101"] = "poll"
    result = w.cycle()
    assert not result.stage_errors and result.counts.errors == 1
    assert any("AttributeError" in p.message for p in problems(w) if p.stage == "poll")
    wh.broken.clear()
    assert w.cycle().counts.processed == 1


def test_a_stored_return_that_no_longer_reads_is_held_at_poll_and_the_rest_are_decided(tmp_path):
    loop = PagedLoop([[loop_return("101"), loop_return("102")]])
    w = World(tmp_path, loop)
    w.cycle()
    store = w.store()  # stored by an older loopsync that took a NUL in a SKU
    store.db.execute(
        'update returns set snapshot = replace(snapshot, \'"sku":"A"\', '
        "'\"sku\":\"A\\u0000\"') where id = '101'"
    )
    store.db.conn.commit()
    store.close()
    w.wh.finish("101")
    w.wh.finish("102")
    result = w.cycle()
    assert not result.stage_errors
    assert result.counts.processed == 1 and ("process", "102") in loop.writes
    assert ("process", "101") not in loop.writes
    assert any(p.return_id == "101" and "control character" in p.message for p in problems(w))


class AsnLoop(FakeLoop):
    def __init__(self, rows: list[Any]) -> None:
        super().__init__([])
        self.rows = rows

    def asn_report(self, start, end):
        return list(self.rows)


def test_asn_rows_that_cannot_be_stored_are_recorded_and_the_rest_are_kept(tmp_path):
    rows = [
        {"id": 101, "return_line_item_id": 1, "tracking_number": "1Z1"},
        {"id": 102, "return_line_item_id": 2, "tracking_number": 2**63},  # int in text
        {"id": "１０３", "tracking_number": "1Z3"},
        {"id": 104, "tracking_number": "1Z4", "updated_at": {"date": "today"}},
        {"id": 105, "tracking_number": "1Z5", "extra": nested(5000)},
        {"id": 106, "return_line_item_id": 6, "tracking_number": "1Z\ud8006"},
    ]
    w = World(tmp_path, AsnLoop(rows))
    w.cfg = dataclasses.replace(w.cfg, loop=dataclasses.replace(w.cfg.loop, asn_enabled=True))
    result = w.cycle()
    assert not result.stage_errors
    store = w.store()
    kept = {
        r["return_id"]: r["tracking_number"]
        for r in store.db.query("select return_id, tracking_number from asn_rows")
    }
    assert store.cursors.get("asn", "all").done_until is not None
    store.close()
    assert kept == {"101": "1Z1", "102": str(2**63)}
    # Each one-day ASN window answers the same rows here: each bad one is listed per read.
    assert {p.return_id for p in problems(w) if p.stage == "asn"} == {None, "104", "105", "106"}


@pytest.mark.parametrize(
    "exc",
    [
        NotReady("later"),
        PollStopped(),
        DryRunViolation("x"),
        LockHeld("x"),
        MemoryError(),
        OSError(28, "No space"),
        sqlite3.OperationalError("disk I/O error"),
        KeyboardInterrupt(),
    ],
)
def test_signals_and_local_faults_are_not_one_records_fault(exc):
    assert not one_records_fault(exc)


@pytest.mark.parametrize(
    "exc",
    [
        TypeError(),
        KeyError("x"),
        AttributeError(),
        RecursionError(),
        OverflowError(),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x"),
        Unreadable("sku is a dict"),
        sqlite3.ProgrammingError(),
    ],
)
def test_errors_from_one_records_data_are_that_records_fault(exc):
    assert one_records_fault(exc)


def test_problem_text_with_a_lone_surrogate_is_stored(tmp_path):
    store = Store(tmp_path / "s.sqlite", FakeClock())
    eng = Engine(
        merchant_config(tmp_path),
        store,
        FakeLoop(),
        FakeWarehouse(),
        clock=FakeClock(),
        run_id="r1",
    )
    eng._problem("1\ud800", "poll", "status '\ud800' unknown")
    assert store.runs.problems()[0].message == "status '\\ud800' unknown"
    store.close()
    assert engine_mod.NOT_ONE_RECORDS_FAULT


class StrictLoop(FakeLoop):
    """Refuses a state the list does not filter on, as LoopClient does."""

    def __init__(self, returns, details: dict[str, Any]) -> None:
        super().__init__(returns)
        self.details = details

    def iter_returns(self, start, end, state, *, cursor=None):
        from loopsync.loop_client import LOOP_STATES

        if state not in LOOP_STATES:
            raise ValueError(f"unknown Loop state {state!r}")
        return super().iter_returns(start, end, state, cursor=cursor)

    def return_details(self, rid):
        return dict(self.details)


def import_one(tmp_path, details: dict[str, Any]) -> set[str]:
    w = World(tmp_path, StrictLoop([loop_return("101")], details))
    store = w.store()
    try:
        return Engine(w.cfg, store, w.loop, w.wh, clock=w.clock, run_id="i1").import_return("101")
    finally:
        store.close()


def test_import_of_a_return_whose_details_name_no_list_state_searches_the_configured_ones(tmp_path):
    details = {"id": 101, "state": "Weird\x00", "updated_at": "2026-05-01T10:00:00Z"}
    assert import_one(tmp_path, details) == {"101"}


class MovingLoop(StrictLoop):
    """Details that name an updated_at the list no longer has (the return changed between
    the two reads), for the first `stale` reads of the details."""

    def __init__(self, returns, details, stale: int) -> None:
        super().__init__(returns, details)
        self.stale, self.details_read = stale, 0

    def return_details(self, rid):
        self.details_read += 1
        if self.details_read <= self.stale:
            return dict(self.details)
        return dict(self.returns[rid])


def _import_moving(tmp_path, stale: int) -> tuple[MovingLoop, Any]:
    earlier = {"id": 101, "state": "open", "updated_at": "2026-05-01T09:00:00Z"}
    loop = MovingLoop([loop_return("101")], earlier, stale)
    w = World(tmp_path, loop)
    store = w.store()
    try:
        engine = Engine(w.cfg, store, w.loop, w.wh, clock=w.clock, run_id="i1")
        try:
            return loop, engine.import_return("101")
        except UnknownReturn as exc:
            return loop, exc
    finally:
        store.close()


def test_import_of_a_return_that_changed_between_details_and_list_reads_the_details_again(
    tmp_path,
):
    loop, got = _import_moving(tmp_path, stale=1)
    assert got == {"101"} and loop.details_read == 2


def test_import_of_a_return_the_list_never_shows_is_unknown_not_a_crash(tmp_path):
    # A webhook's import (or `import --return-id`) ends in one line; the cycle's own
    # pull reads the return in its updated_at window.
    loop, got = _import_moving(tmp_path, stale=2)
    assert isinstance(got, UnknownReturn) and loop.details_read == 2
    assert "not in Loop's returns list" in str(got) and "next cycle" in str(got)


def test_import_of_a_return_whose_details_time_overflows_is_unreadable(tmp_path):
    with pytest.raises(Unreadable, match="updated_at"):
        import_one(tmp_path, {"id": 101, "updated_at": "0001-01-01T00:00:00+01:00"})
