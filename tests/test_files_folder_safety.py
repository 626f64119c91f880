"""Issue 14 §5: the folder transport never follows a link it did not create and never
writes outside its folders; CSV for the 3PL neutralises spreadsheet formulas; the
merchant lock is keyed by the state file's real path."""

import csv
import io
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync.connectors.generic.mapping import (
    FORMULA_START,
    neutralise,
    parse_receipt_file,
    rma_csv,
    rma_record,
    unneutralise,
)
from loopsync.connectors.generic.wire_folder import FolderTransport
from loopsync.errors import LockHeld, Rejected, StateUnwritable, TransientError
from loopsync.sandbox.generic import GenericEmulator
from loopsync.state import MerchantLock
from tests.test_generic import deliver, folder_connector, request, statuses

SECRET_TEXT = "root:SECRET-HASH-DO-NOT-QUOTE"


@pytest.fixture
def share(clock, tmp_path):
    emu = GenericEmulator(clock=clock)
    emu.config = emu.folder_config(tmp_path / "3pl")
    return emu


@pytest.fixture
def victim(tmp_path):
    """A file outside the share that a link planted by the 3PL points at."""
    path = tmp_path / "outside" / "victim.csv"
    path.parent.mkdir()
    path.write_text(f"rma_number,sku,quantity,condition\n1,{SECRET_TEXT},1,available\n")
    return path


def folders(emu):
    root = emu.root
    return root / "inbox", root / "outbox", root / "archive", root / "rejected"


def delivered(emu, clock):
    conn = folder_connector(emu, clock)
    req = request()
    return conn, deliver(conn, req)


def test_link_in_inbox_is_neither_read_nor_quoted(share, clock, victim):
    inbox, *_ = folders(share)
    conn, ref = delivered(share, clock)
    (inbox / "evil.csv").symlink_to(victim)
    result = statuses(conn, [ref])
    text = " ".join(result.problems) + " ".join(result.errors.values())
    assert "evil.csv" in text and "symbolic link" in text
    assert SECRET_TEXT not in text and str(victim) not in text
    assert (
        ref.return_id not in result.statuses
        or result.statuses[ref.return_id].items[0].received == 0
    )
    assert (inbox / "evil.csv").is_symlink() and victim.read_text().count(SECRET_TEXT) == 1


def test_fifo_in_inbox_is_refused_without_blocking(share, clock):
    inbox, *_ = folders(share)
    conn, ref = delivered(share, clock)
    os.mkfifo(inbox / "pipe.csv")
    done = []
    worker = threading.Thread(target=lambda: done.append(statuses(conn, [ref])), daemon=True)
    worker.start()
    worker.join(60)
    assert done, "reading the inbox blocked on a FIFO"
    assert any("pipe.csv" in p and "not a regular file" in p for p in done[0].problems)


def test_link_at_reason_file_name_is_not_written_through(share, clock, victim):
    inbox, _, _, rejected = folders(share)
    conn, ref = delivered(share, clock)
    before = victim.read_bytes()
    rejected.mkdir(exist_ok=True)
    (rejected / "bad.csv.reason.txt").symlink_to(victim)
    (inbox / "bad.csv").write_text("rma_number,sku,quantity,condition\n1,A,-3,available\n")
    statuses(conn, [ref])
    assert victim.read_bytes() == before
    assert (rejected / "bad.csv.reason.txt").is_symlink()
    moved = [p for p in rejected.iterdir() if p.name.endswith(".csv")]
    assert [p.name for p in moved] == ["bad.1.csv"]
    reason = rejected / "bad.1.csv.reason.txt"
    assert not reason.is_symlink() and "quantity" in reason.read_text()


def test_reason_file_link_planted_during_the_move_is_not_written_through(
    share, clock, victim, monkeypatch
):
    from loopsync import safefiles

    inbox, _, _, rejected = folders(share)
    conn, ref = delivered(share, clock)
    before = victim.read_bytes()
    (inbox / "bad.csv").write_text("rma_number,sku,quantity,condition\n1,A,x,available\n")
    real_move = safefiles.move_no_clobber

    def move_then_race(*args, **kw):  # the 3PL plants the link right after the move
        name = real_move(*args, **kw)
        (rejected / (name + ".reason.txt")).symlink_to(victim)
        return name

    monkeypatch.setattr(safefiles, "move_no_clobber", move_then_race)
    statuses(conn, [ref])
    assert victim.read_bytes() == before and (rejected / "bad.csv").is_file()


def test_link_at_archive_name_is_not_written_through(share, clock, victim):
    inbox, _, archive, _ = folders(share)
    conn, ref = delivered(share, clock)
    before = victim.read_bytes()
    archive.mkdir(exist_ok=True)
    (archive / "good.csv").symlink_to(victim)
    (inbox / "good.csv").write_text(
        f"rma_number,sku,quantity,condition,receipt_id\n{ref.rma_id},X,0,available,R1\n"
    )
    statuses(conn, [ref])
    assert victim.read_bytes() == before and (archive / "good.csv").is_symlink()
    assert (archive / "good.1.csv").is_file() and not (inbox / "good.csv").exists()


def test_archive_folder_swapped_for_a_link_is_not_followed(share, clock, tmp_path):
    inbox, _, archive, _ = folders(share)
    conn, ref = delivered(share, clock)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if archive.exists():
        archive.rmdir()
    archive.symlink_to(elsewhere, target_is_directory=True)
    (inbox / "good.csv").write_text(
        f"rma_number,sku,quantity,condition,receipt_id\n{ref.rma_id},X,0,available,R1\n"
    )
    statuses(conn, [ref])
    assert list(elsewhere.iterdir()) == [] and (inbox / "good.csv").is_file()


def test_link_at_outbox_name_is_refused_not_written_through(share, clock, victim):
    _, outbox, _, _ = folders(share)
    conn = folder_connector(share, clock)
    req = request()
    before = victim.read_bytes()
    (outbox / f"{req.ret.id}.csv").symlink_to(victim)
    assert conn.find_rma(req, {}) is None  # a link is not our RMA file
    with pytest.raises(TransientError, match="symbolic link"):
        deliver(conn, req)
    assert victim.read_bytes() == before and (outbox / f"{req.ret.id}.csv").is_symlink()
    assert [p.name for p in outbox.iterdir()] == [f"{req.ret.id}.csv"]  # no temp left


@pytest.mark.parametrize(
    "number", ["../escaped", "..", "a/b", ".hidden", "x\x00y", "x\ny", "..\\win", "/etc/passwd"]
)
def test_rma_number_that_is_not_a_plain_file_name_is_refused(share, clock, tmp_path, number):
    record = rma_record(request())
    record["rma_number"] = number
    transport = FolderTransport(folder_connector(share, clock).conf)
    with pytest.raises(Rejected):
        transport.deliver(record)
    with pytest.raises(Rejected):
        transport.has_rma(number)
    written = {p for p in tmp_path.rglob("*") if p.is_file()}
    assert not any("escaped" in p.name or p.name.endswith("passwd") for p in written)


def test_rma_csv_neutralises_formulas_and_keeps_quantities_numeric(share, clock):
    req = request()
    record = rma_record(req)
    record["customer"] = '=HYPERLINK("http://evil.example","click")'
    record["carrier"] = "@SUM(A1:A9)"
    record["tracking_number"] = "+1-555"
    record["order"]["name"] = "\tTAB"
    record["lines"][0]["sku"] = "-TEE"
    record["lines"][0]["title"] = "\r=1+1"
    rows = list(csv.DictReader(io.StringIO(rma_csv(record), newline="")))
    first = rows[0]
    assert first["customer"] == "'" + record["customer"]
    assert first["carrier"] == "'@SUM(A1:A9)" and first["tracking_number"] == "'+1-555"
    assert first["order_name"] == "'\tTAB" and first["sku"] == "'-TEE"
    assert first["title"] == "'\r=1+1"
    for row in rows:
        assert row["quantity"].isdigit() and row["line"].isdigit()
        assert not any(v.startswith(FORMULA_START) for v in row.values())


def test_receipt_file_reads_an_echoed_neutralised_cell_back():
    lines = parse_receipt_file(
        b"rma_number,sku,quantity,condition,receipt_id\n1001,'-TEE,2,available,R1\n"
    )
    assert lines[0].sku == "-TEE" and lines[0].quantity == 2


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=30))
def test_any_neutralised_text_is_inert_and_reads_back(text):
    cell = neutralise(text)
    assert not cell.startswith(FORMULA_START)
    if not text.startswith("'"):
        assert unneutralise(cell) == text
    assert neutralise(7) == 7


def test_two_paths_to_one_state_file_share_one_lock(tmp_path):
    real = tmp_path / "state" / "merchant.db"
    real.parent.mkdir()
    real.touch()
    (tmp_path / "alias").symlink_to(real.parent, target_is_directory=True)
    (tmp_path / "link.db").symlink_to(real)
    with MerchantLock(real):
        for other in (
            tmp_path / "alias" / "merchant.db",
            tmp_path / "link.db",
            tmp_path / "state" / ".." / "state" / "merchant.db",
        ):
            with pytest.raises(LockHeld):
                MerchantLock(other).acquire()


def test_lock_file_link_is_not_truncated_through(tmp_path, victim):
    state = tmp_path / "merchant.db"
    Path(str(state) + ".lock").symlink_to(victim)
    before = victim.read_bytes()
    with pytest.raises(StateUnwritable, match="symbolic link"):
        MerchantLock(state).acquire()
    assert victim.read_bytes() == before


def test_files_loopsync_writes_are_regular_files_inside_the_share(share, clock):
    inbox, outbox, archive, rejected = folders(share)
    conn, ref = delivered(share, clock)
    (inbox / "bad.csv").write_text("rma_number,sku,quantity,condition\n1,A,x,available\n")
    (inbox / "good.csv").write_text(
        f"rma_number,sku,quantity,condition,receipt_id\n{ref.rma_id},X,0,available,R1\n"
    )
    statuses(conn, [ref])
    for folder in (outbox, archive, rejected):
        for p in folder.iterdir():
            assert stat.S_ISREG(os.lstat(p).st_mode), p


def test_hard_link_in_inbox_to_an_outside_file_is_not_read(share, clock, victim):
    inbox, *_ = folders(share)
    conn, ref = delivered(share, clock)
    os.link(victim, inbox / "hard.csv")
    result = statuses(conn, [ref])
    text = " ".join(result.problems) + " ".join(result.errors.values())
    assert "hard.csv" in text and "link" in text and SECRET_TEXT not in text
    assert (inbox / "hard.csv").exists()


def test_moves_never_overwrite_even_without_renameat2(share, clock, victim, monkeypatch):
    from loopsync import safefiles

    monkeypatch.setattr(safefiles, "_renameat2", None)  # the hard-link path
    test_link_at_archive_name_is_not_written_through(share, clock, victim)


def test_configured_folder_that_is_a_link_is_a_config_error_naming_the_real_path(
    share, clock, tmp_path
):
    from loopsync.errors import ConfigError

    real = tmp_path / "real-inbox"
    real.mkdir()
    link = tmp_path / "inbox-link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(ConfigError, match="symbolic link.*real-inbox"):
        _connector_with(share, clock, inbox=link)


def _connector_with(emu, clock, **folders):
    from tests.test_generic import connector

    return connector({**emu.config, **{k: str(v) for k, v in folders.items()}}, clock)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_any_name_safe_name_accepts_stays_inside_its_folder(name):
    from loopsync.safefiles import safe_name

    try:
        accepted = safe_name(name)
    except ValueError:
        return
    folder = "/srv/share/outbox"
    assert os.path.dirname(os.path.normpath(os.path.join(folder, accepted))) == folder


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(
            st.sampled_from(
                ["1001", "'-TEE", "=1+1", "x", "", "-3", "2", "available", "'", "\ud800", "ä"]
            ),
            min_size=4,
            max_size=6,
        ),
        max_size=4,
    ),
    st.binary(max_size=20),
)
def test_any_receipt_file_gives_lines_or_value_error(rows, noise):
    text = "rma_number,sku,quantity,condition,receipt_id\n" + "\n".join(
        ",".join(row) for row in rows
    )
    data = text.encode("utf-8", "surrogatepass") + noise
    try:
        lines = parse_receipt_file(data)
    except ValueError:
        return
    for line in lines:
        assert line.quantity >= 0 and line.rma_number and line.sku
