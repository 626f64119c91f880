"""`state export` / `state import` (loopsync.state.backup): one self-contained file, taken
safely beside a running worker; an import that refuses anything but the merchant's own,
older-or-equal loopsync state, and that the lost-state protection accepts as its own."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopsync import cli
from loopsync.effects import FOUND_RMAS
from loopsync.errors import LockHeld, StateCorrupt, StateIOError, StateUnwritable
from loopsync.state import MerchantLock, Store
from loopsync.state.backup import export, import_state
from loopsync.testing import FakeClock


def _state(path: Path, clock: FakeClock, *, runs: int = 1, effects: int = 0) -> Path:
    store = Store(path, clock)
    for i in range(runs):
        clock.advance(60)
        store.runs.start(f"run-{i}", "run")
    with store.atomic():
        for i in range(effects):
            store.conn.execute(
                "insert into effects (key, return_id, kind, status, attempts, created_at, "
                "updated_at) values (?, ?, 'create_rma', 'succeeded', 1, ?, ?)",
                [f"create_rma:{i}", str(i), store.now(), store.now()],
            )
    store.close()
    return path


def _sql(path: Path, statement: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def _dump(path: Path) -> list[object]:
    conn = sqlite3.connect(path)
    try:
        return [
            conn.execute(f"select * from {t} order by 1").fetchall()
            for t in ("runs", "effects", "returns", "cursors")
        ]
    finally:
        conn.close()


def test_an_export_imported_elsewhere_is_the_same_state(tmp_path: Path, clock: FakeClock) -> None:
    source = _state(tmp_path / "a" / "acme.sqlite", clock, runs=2, effects=3)
    done = export("acme", source, tmp_path / "acme.export", clock)
    assert done.path.is_file() and not Path(f"{done.path}-wal").exists()
    assert oct(done.path.stat().st_mode & 0o777) == "0o600"
    got = import_state("acme", tmp_path / "b" / "acme.sqlite", done.path)
    assert not got.replaced
    assert _dump(got.path) == _dump(source)
    store = Store(got.path, clock)  # the worker opens it as its own
    assert store.conn.execute("pragma journal_mode").fetchone() == ("wal",)
    store.close()


def test_importing_the_same_file_twice_changes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    source = _state(tmp_path / "acme.sqlite", clock, effects=2)
    file = export("acme", source, tmp_path / "x.export", clock).path
    target = tmp_path / "b" / "acme.sqlite"
    import_state("acme", target, file)
    before = _dump(target)
    assert import_state("acme", target, file).replaced
    assert _dump(target) == before


def test_export_beside_a_running_worker_takes_a_consistent_copy(
    tmp_path: Path, clock: FakeClock
) -> None:
    source = _state(tmp_path / "acme.sqlite", clock, effects=1)
    worker = Store(source, clock)  # a worker holds the lock and has written to its WAL
    with MerchantLock(source):
        worker.runs.start("live", "serve")
        done = export("acme", source, tmp_path / "x.export", clock)
        worker.runs.start("after", "serve")
    worker.close()
    ids = {r for (r,) in sqlite3.connect(done.path).execute("select id from runs")}
    assert "live" in ids and "after" not in ids


def test_export_never_overwrites_a_file_and_leaves_no_temporary(
    tmp_path: Path, clock: FakeClock
) -> None:
    source = _state(tmp_path / "acme.sqlite", clock)
    (tmp_path / "out").mkdir()
    taken = tmp_path / "out" / "x.export"
    taken.write_text("someone's file")
    with pytest.raises(StateUnwritable):
        export("acme", source, taken, clock)
    assert taken.read_text() == "someone's file"
    assert os.listdir(tmp_path / "out") == ["x.export"]


def test_export_of_a_merchant_without_state_is_one_error(tmp_path: Path, clock: FakeClock) -> None:
    with pytest.raises(StateIOError):
        export("acme", tmp_path / "none.sqlite", tmp_path / "x.export", clock)


def test_import_refuses_to_overwrite_a_newer_state(tmp_path: Path, clock: FakeClock) -> None:
    source = _state(tmp_path / "acme.sqlite", clock)
    file = export("acme", source, tmp_path / "x.export", clock).path
    target = _state(tmp_path / "b" / "acme.sqlite", clock, runs=1)  # ran after the export
    before = _dump(target)
    with pytest.raises(StateUnwritable, match="newer"):
        import_state("acme", target, file)
    assert _dump(target) == before


def test_import_refuses_a_state_whose_ledger_knows_effects_the_file_does_not(
    tmp_path: Path,
) -> None:
    late = FakeClock("2026-07-01T00:00:00Z")
    source = _state(tmp_path / "acme.sqlite", late, runs=1)
    file = export("acme", source, tmp_path / "x.export", late).path
    early = FakeClock("2026-01-01T00:00:00Z")  # a clock behind: only the ledger tells
    target = _state(tmp_path / "b" / "acme.sqlite", early, runs=0, effects=1)
    with pytest.raises(StateUnwritable, match="effect"):
        import_state("acme", target, file)


def test_import_refuses_another_merchants_export(tmp_path: Path, clock: FakeClock) -> None:
    source = _state(tmp_path / "globex.sqlite", clock)
    file = export("globex", source, tmp_path / "x.export", clock).path
    with pytest.raises(StateCorrupt, match="globex"):
        import_state("acme", tmp_path / "b" / "acme.sqlite", file)
    assert not (tmp_path / "b" / "acme.sqlite").exists()


def test_import_refuses_a_live_file_with_its_wal_beside_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    source = tmp_path / "acme.sqlite"
    worker = Store(source, clock)
    worker.runs.start("live", "serve")  # in the -wal until a checkpoint
    try:
        with pytest.raises(StateCorrupt, match="-wal"):
            import_state("acme", tmp_path / "b" / "acme.sqlite", source)
    finally:
        worker.close()


def test_import_refuses_a_sqlite_file_that_is_not_a_loopsync_state(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    _sql(other, "create table t (x)")
    with pytest.raises(StateCorrupt, match="not a loopsync state"):
        import_state("acme", tmp_path / "acme.sqlite", other)


def test_import_refuses_a_state_from_a_newer_loopsync(tmp_path: Path, clock: FakeClock) -> None:
    file = export("acme", _state(tmp_path / "a.sqlite", clock), tmp_path / "x", clock).path
    _sql(file, "update meta set value = '999' where key = 'schema_version'")
    with pytest.raises(StateCorrupt, match="newer loopsync"):
        import_state("acme", tmp_path / "acme.sqlite", file)


def test_import_over_an_unreadable_state_asks_to_move_it_away(
    tmp_path: Path, clock: FakeClock
) -> None:
    file = export("acme", _state(tmp_path / "a.sqlite", clock), tmp_path / "x", clock).path
    target = tmp_path / "b" / "acme.sqlite"
    target.parent.mkdir()
    target.write_bytes(b"garbage" * 100)
    with pytest.raises(StateCorrupt, match="move it away"):
        import_state("acme", target, file)
    assert target.read_bytes() == b"garbage" * 100


def test_import_is_refused_while_a_worker_holds_the_merchant(
    tmp_path: Path, clock: FakeClock
) -> None:
    file = export("acme", _state(tmp_path / "a.sqlite", clock), tmp_path / "x", clock).path
    target = tmp_path / "b" / "acme.sqlite"
    with MerchantLock(target), pytest.raises(LockHeld):
        import_state("acme", target, file)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=3000), st.booleans())
def test_import_of_arbitrary_bytes_is_refused_and_leaves_the_state_untouched(
    tmp_path: Path, clock: FakeClock, data: bytes, sqlite_header: bool
) -> None:
    work = tmp_path / os.urandom(4).hex()
    work.mkdir()
    target = _state(work / "acme.sqlite", clock)
    before = _dump(target)
    bad = work / "in.export"
    bad.write_bytes((b"SQLite format 3\x00" if sqlite_header else b"") + data)
    with pytest.raises((StateCorrupt, StateIOError)):
        import_state("acme", target, bad)
    assert _dump(target) == before


def test_a_damaged_export_fails_the_integrity_check(tmp_path: Path, clock: FakeClock) -> None:
    source = _state(tmp_path / "a.sqlite", clock, runs=30, effects=300)
    file = export("acme", source, tmp_path / "x", clock).path
    raw = bytearray(file.read_bytes())
    for at in range(4096 * 2, len(raw), 97):  # past the header and schema page
        raw[at] ^= 0x5A
    file.write_bytes(bytes(raw))
    with pytest.raises(StateCorrupt):
        import_state("acme", tmp_path / "b.sqlite", file)


# -- the commands ------------------------------------------------------------------------------


def _config(tmp_path: Path, state_dir: Path, merchant: str = "acme") -> Path:
    from loopsync.testing.sandbox import Sandbox

    doc = Sandbox("generic").config_dict(merchant=merchant, state_path=state_dir / "s.sqlite")
    path = tmp_path / f"{merchant}-{state_dir.name}.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("make_bad", "code"),
    [
        (lambda p: p.write_bytes(b"not a database at all" * 10), 65),
        (lambda p: None, 74),  # no such file
    ],
)
def test_state_import_says_one_line_and_a_documented_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_bad: object, code: int
) -> None:
    bad = tmp_path / "in.export"
    make_bad(bad)  # type: ignore[operator]
    cfg = _config(tmp_path, tmp_path / "b")
    assert _state_command("import", cfg, bad, io.StringIO()) == code
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def _state_command(verb: str, config: Path, path: Path, out: io.StringIO) -> int:
    flag = "--to" if verb == "export" else "--from"
    return cli.main(["state", verb, "-c", str(config), flag, str(path)], out=out)


def test_state_export_then_import_through_the_cli(tmp_path: Path, clock: FakeClock) -> None:
    _state(tmp_path / "a" / "s.sqlite", clock, effects=2)
    out = io.StringIO()
    exported = tmp_path / "acme.export"
    source, target = _config(tmp_path, tmp_path / "a"), _config(tmp_path, tmp_path / "b")
    assert _state_command("export", source, exported, out) == 0
    assert _state_command("import", target, exported, out) == 0
    assert "exported to" in out.getvalue() and "created from" in out.getvalue()
    assert _dump(tmp_path / "b" / "s.sqlite") == _dump(tmp_path / "a" / "s.sqlite")
    # a second export onto the same file is refused: an export never overwrites (73)
    assert _state_command("export", source, exported, out) == 73


# -- lost-state protection ----------------------------------------------------------------------


def test_an_imported_state_is_the_merchants_own_not_a_lost_one(
    make_sandbox: object, tmp_path: Path, clock: FakeClock
) -> None:
    sb = make_sandbox("shiphero")  # type: ignore[operator]
    ids = [str(r["id"]) for r in sb.seed(3, states_weights=[("open", 1)])]
    old = sb.merchant_config(tmp_path / "old")
    clock.advance(60)
    assert sb.run_cycle(old).counts.pushed == 3
    file = export(old.merchant, old.state_path, tmp_path / "moved.export", clock).path

    new = sb.merchant_config(tmp_path / "new")  # another pod's volume
    import_state(new.merchant, new.state_path, file)
    clock.advance(60)
    again = sb.run_cycle(new)
    assert again.ok and again.counts.pushed == 0 and again.counts.linked == 0
    assert not _found_after_loss(new.state_path, clock), "an imported state taken for a lost one"
    for rid in ids:
        assert sb.warehouse.rma_count(rid) == 1 and len(sb.loop.notes_for(rid)) == 1
    # The same run on an empty state (no import) is what the protection is for:
    lost = sb.merchant_config(tmp_path / "empty")
    sb.run_cycle(lost)
    assert _found_after_loss(lost.state_path, clock) == set(ids)


def _found_after_loss(path: Path, clock: FakeClock) -> set[str]:
    """Returns the state found worked on by a run whose state is lost (effects.FOUND_RMAS)."""
    store = Store(path, clock, read_only=True)
    try:
        return {e.key for e in store.kv_with_prefix("") if e.namespace == FOUND_RMAS}
    finally:
        store.close()


def test_an_export_replaces_a_state_made_with_another_page_size(
    tmp_path: Path, clock: FakeClock
) -> None:
    # States made before 16 KiB pages keep 4 KiB ones; SQLite's backup cannot change the
    # page size of a file in WAL mode, so the import goes through the rollback journal.
    older = tmp_path / "b" / "acme.sqlite"
    older.parent.mkdir()
    conn = sqlite3.connect(older)
    conn.execute("pragma page_size=4096")
    conn.execute("vacuum")
    conn.close()
    _state(older, clock, runs=1)
    assert sqlite3.connect(older).execute("pragma page_size").fetchone() == (4096,)
    source = _state(tmp_path / "a" / "acme.sqlite", clock, runs=3, effects=2)
    file = export("acme", source, tmp_path / "x.export", clock).path
    assert import_state("acme", older, file).replaced
    assert _dump(older) == _dump(source)
    store = Store(older, clock)
    assert store.conn.execute("pragma journal_mode").fetchone() == ("wal",)
    assert store.conn.execute("pragma page_size").fetchone() == (16384,)
    store.close()
