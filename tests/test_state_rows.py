"""Issue 9 §2: every row leaves the state package as a frozen dataclass, not a dict."""

import dataclasses
from datetime import UTC, datetime

from loopsync.state import CursorRow, KvEntry, ProblemRow, RmaRow, RunRow, Store
from loopsync.testing import FakeClock

WHEN = datetime(2026, 6, 1, tzinfo=UTC)


def _frozen(row):
    return dataclasses.is_dataclass(row) and type(row).__dataclass_params__.frozen


def test_runs_problems_cursors_rmas_and_kv_entries_are_frozen_dataclasses(tmp_path):
    store = Store(tmp_path / "s.sqlite", FakeClock("2026-06-01T00:00:00Z"))
    store.runs.start("r1", "run")
    store.runs.finish("r1", "ok", {"pulled": 3}, 0)
    store.runs.add_problem("1", "push", "bad SKU", "r1")
    store.cursors.complete_window("returns", "open", WHEN)
    store.returns.upsert(
        "1",
        {"id": "1"},
        state="open",
        updated_at=WHEN,
        created_at=WHEN,
        destination_id="d",
        order_name="#1",
    )
    store.rmas.link("1", "RMA-1", {"asn": 7})
    store.kv("cursors").set("walk:x", {"pages": 2})
    (run,) = store.runs.last(1)
    (problem,) = store.runs.problems()
    (cursor,) = store.cursors.all()
    rma = store.rmas.get("1")
    (entry,) = store.kv_with_prefix("walk:")
    assert isinstance(run, RunRow) and run.counts == {"pulled": 3} and run.status == "ok"
    assert isinstance(problem, ProblemRow) and problem.message == "bad SKU"
    assert isinstance(cursor, CursorRow) and cursor.done_until == "2026-06-01T00:00:00Z"
    assert isinstance(rma, RmaRow) and rma.extra == {"asn": 7}
    assert isinstance(entry, KvEntry) and entry.value == {"pages": 2}
    assert all(_frozen(r) for r in (run, problem, cursor, rma, entry))
    store.close()
