"""The ingest stage's hot path on the typed state API: a page of returns costs one look-up
query for the whole page, then one write per return (no per-return reads)."""

from __future__ import annotations

import pytest

from loopsync.cycle import Engine
from loopsync.stages.ingest import ingest_page
from loopsync.state import Store
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


def test_a_page_of_new_returns_costs_one_look_up_and_one_insert_each(engine):
    page = [loop_return(str(i)) for i in range(101, 151)]
    assert _statements(engine, page) == ["select"] + ["insert"] * 50
    assert engine.counts.new == 50


def test_a_page_read_again_unchanged_costs_one_look_up_and_one_touch_each(engine):
    page = [loop_return(str(i)) for i in range(101, 151)]
    _statements(engine, page)
    assert _statements(engine, page) == ["select"] + ["update"] * 50
    assert engine.counts.changed == 0
