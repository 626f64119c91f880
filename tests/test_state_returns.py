"""Issue 9 §2: returns move only along the transitions table, every stage update is
guarded, and rows leave the state package as frozen dataclasses."""

import dataclasses
from datetime import UTC, datetime

import pytest

from loopsync.errors import TransitionRefused
from loopsync.state import TRANSITIONS, ReturnRow, Stage, Store, Upserted
from loopsync.state.returns import RECONSIDER, SOURCES
from loopsync.testing import FakeClock

WHEN = datetime(2026, 6, 1, tzinfo=UTC)


def _store(tmp_path):
    return Store(tmp_path / "s.sqlite", FakeClock("2026-06-01T00:00:00Z"))


def _add(store, rid="1", **raw):
    return store.returns.upsert(
        rid,
        {"id": rid, **raw},
        state="open",
        updated_at=WHEN,
        created_at=WHEN,
        destination_id="d",
        order_name="#1",
    )


def test_the_transitions_table_names_every_stage_and_only_stages():
    assert set(TRANSITIONS) == set(Stage)
    assert all(tos <= set(Stage) for tos in TRANSITIONS.values())
    assert SOURCES[Stage.NEW] == ("new", "pushing", "skipped", "waiting")


def test_stages_compare_equal_to_their_old_strings():
    assert Stage.PUSHING == "pushing" and f"{Stage.DONE}" == "done"


def test_an_allowed_move_changes_the_stage_and_starts_the_wait_clock(tmp_path):
    store = _store(tmp_path)
    assert _add(store) == Upserted.NEW
    store.returns.move("1", Stage.WAITING, "order not found")
    row = store.returns.get("1")
    assert row.stage == Stage.WAITING and row.reason == "order not found" and row.wait_since


@pytest.mark.parametrize(
    ("start", "to"),
    [
        ((Stage.OPEN, Stage.ACTING, Stage.DONE), Stage.NEW),
        ((Stage.SKIPPED,), Stage.OPEN),
        ((Stage.REJECTED,), Stage.PUSHING),
        ((Stage.OPEN, Stage.ACTING), Stage.WAITING),
    ],
)
def test_a_move_from_the_wrong_stage_raises_and_changes_nothing(tmp_path, start, to):
    store = _store(tmp_path)
    _add(store)
    for stage in start:
        store.returns.move("1", stage, f"to {stage}")
    before = store.returns.get("1")
    with pytest.raises(TransitionRefused) as caught:
        store.returns.move("1", to, "wrong")
    assert caught.value.found == start[-1] and caught.value.wanted == to
    assert store.returns.get("1") == before


def test_a_move_of_a_return_not_stored_raises_naming_no_row(tmp_path):
    with pytest.raises(TransitionRefused) as caught:
        _store(tmp_path).returns.move("404", Stage.OPEN)
    assert caught.value.found is None and "404" in str(caught.value)


def test_a_changed_snapshot_reconsiders_a_skipped_return_and_only_a_skipped_one(tmp_path):
    assert RECONSIDER == (Stage.SKIPPED, Stage.NEW)
    store = _store(tmp_path)
    _add(store, "1")
    _add(store, "2")
    store.returns.move("1", Stage.SKIPPED, "destination not mapped")
    store.returns.move("2", Stage.WAITING, "order not found")
    assert _add(store, "1", note="changed") == Upserted.CHANGED
    assert _add(store, "2", note="changed") == Upserted.CHANGED
    one, two = store.returns.get("1"), store.returns.get("2")
    assert one.stage == Stage.NEW and one.reason is None
    assert two.stage == Stage.WAITING and two.reason == "order not found"


def test_return_rows_are_frozen_dataclasses_with_a_stage_enum(tmp_path):
    store = _store(tmp_path)
    _add(store)
    row = store.returns.get("1")
    assert isinstance(row, ReturnRow) and dataclasses.is_dataclass(row)
    assert isinstance(row.stage, Stage)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.stage = Stage.DONE
    assert store.returns.heads(["1", "2"])["1"].stage is Stage.NEW
    assert store.returns.stage_counts() == {Stage.NEW: 1}
