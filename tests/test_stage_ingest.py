"""The ingest stage's hot path on the typed state API: a page of returns costs one look-up
query for the whole page, then one write per return (no per-return reads)."""

from __future__ import annotations

import pytest

from loopsync.cycle import Engine
from loopsync.stages.ingest import ingest_page
from loopsync.state import Store
from loopsync.state.returns import ReturnRepository
from loopsync.testing import FakeClock, FakeLoop, FakeWarehouse, loop_return, merchant_config


@pytest.fixture
def engine(tmp_path):
    clock = FakeClock("2026-05-02T00:00:00Z")
    store = Store(tmp_path / "s.sqlite", clock)
    eng = Engine(
        merchant_config(tmp_path), store, FakeLoop(), FakeWarehouse(), clock=clock, run_id="r"
    )
    yield eng
    store.close()


def _statements(eng: Engine, page: list[dict]) -> list[str]:
    seen: list[str] = []
    eng.store.conn.set_trace_callback(seen.append)
    try:
        with eng.store.atomic():
            ingest_page(eng.ctx, page)
    finally:
        eng.store.conn.set_trace_callback(None)
    return [
        s.split()[0].lower()
        for s in seen
        if not s.lower().startswith(("savepoint", "release", "begin", "commit"))
    ]


def test_a_page_of_new_returns_costs_one_look_up_and_one_insert(engine):
    page = [loop_return(str(i)) for i in range(101, 151)]
    assert _statements(engine, page) == ["select", "insert"]
    assert engine.counts.new == 50


def test_a_page_read_again_unchanged_costs_one_look_up_and_one_touch_each(engine):
    page = [loop_return(str(i)) for i in range(101, 151)]
    _statements(engine, page)
    assert _statements(engine, page) == ["select"] + ["update"] * 50
    assert engine.counts.changed == 0


def _engine(path) -> Engine:
    clock = FakeClock("2026-05-02T00:00:00Z")
    store = Store(path / "s.sqlite", clock)
    return Engine(
        merchant_config(path), store, FakeLoop(), FakeWarehouse(), clock=clock, run_id="r"
    )


def _stored(eng: Engine) -> list[tuple]:
    return eng.store.conn.execute(
        "select id, state, updated_at, created_at, destination_id, order_name, snapshot, "
        "hash, stage from returns order by id"
    ).fetchall()


def test_a_page_stored_together_is_stored_as_one_by_one(tmp_path, monkeypatch):
    # New returns seen once in a page go in with one statement; the rest (known, repeated
    # in the page, unreadable) one by one. The batch failing for a reason one record may
    # cause stores each alone: the same rows and counts as storing all one by one.
    first = [loop_return("101"), loop_return("102")]
    page = [
        loop_return("101", state="closed", updated="2026-05-01T11:00:00Z"),  # changed
        loop_return("102"),  # unchanged
        loop_return("103"),
        {"id": "104", "state": "open"},  # no updated_at: unreadable
        loop_return("105", updated="2026-05-01T09:00:00Z"),
        loop_return("105", state="closed", updated="2026-05-01T12:00:00Z"),  # twice
        loop_return("106", skus=("C",)),
    ]
    results = []
    for name, batch_fails in (("together", False), ("alone", True)):
        (tmp_path / name).mkdir()
        eng = _engine(tmp_path / name)
        if batch_fails:

            def refuse(self, returns, now):
                raise RuntimeError("one record's trouble")

            monkeypatch.setattr(ReturnRepository, "insert_new", refuse)
        for batch in (first, page):
            with eng.store.atomic():
                ids = ingest_page(eng.ctx, batch)
        c = eng.counts
        results.append((_stored(eng), sorted(ids), c.pulled, c.new, c.changed, c.malformed))
        eng.store.close()
    together, alone = results
    assert together == alone
    assert together[1] == ["101", "102", "103", "105", "105", "106"]
    assert [row[:2] for row in together[0]] == [
        ("101", "closed"),
        ("102", "open"),
        ("103", "open"),
        ("105", "closed"),
        ("106", "open"),
    ]
