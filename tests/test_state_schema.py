"""Issue 9 §2: a state file written by schema 1 opens and migrates; the ledger's "done"
(which collided with the stage "done") becomes "succeeded", and stages are untouched."""

import sqlite3

import sqlite_utils

from loopsync.state import SCHEMA_VERSION, EffectStatus, Stage, Store
from loopsync.state.schema import MIGRATIONS, create_meta
from loopsync.testing import FakeClock


def _schema_1_file(path):
    db = sqlite_utils.Database(sqlite3.connect(str(path)))
    create_meta(db)
    MIGRATIONS[1](db)
    db.conn.execute("insert into meta values ('schema_version', '1')")
    db.conn.executemany(
        "insert into effects (key, return_id, kind, status, attempts, created_at, updated_at) "
        "values (?, '1', ?, ?, 1, 't', 't')",
        [
            ("create_rma:1", "create_rma", "done"),
            ("note_rma:1", "note", "settled"),
            ("process:1", "process", "done"),
            ("flag:2", "flag", "intent"),
        ],
    )
    db.conn.execute("insert into returns (id, stage, hash) values ('1', 'done', 'h')")
    db.conn.commit()
    db.close()


def test_a_schema_1_file_migrates_and_its_done_effects_become_succeeded(tmp_path):
    path = tmp_path / "old.sqlite"
    _schema_1_file(path)
    store = Store(path, FakeClock("2026-06-01T00:00:00Z"))
    assert store.schema_version == SCHEMA_VERSION == 4
    status = {e.key: e.status for e in store.ledger.for_return("1")}
    assert status == {
        "create_rma:1": EffectStatus.SUCCEEDED,
        "note_rma:1": EffectStatus.SETTLED,
        "process:1": EffectStatus.SUCCEEDED,
        "flag:2": EffectStatus.INTENT,
    }
    assert store.returns.get("1").stage is Stage.DONE  # the stage keeps its name
    store.close()
    again = Store(path, FakeClock("2026-06-01T00:00:00Z"))  # migrating twice changes nothing
    assert again.ledger.get("process:1").status is EffectStatus.SUCCEEDED
    again.close()


def test_a_new_file_is_created_at_the_current_schema(tmp_path):
    store = Store(tmp_path / "new.sqlite", FakeClock("2026-06-01T00:00:00Z"))
    assert store.initialised and store.schema_version == SCHEMA_VERSION
    store.close()
