"""The generic 3PL connector against the sandbox 3PL: HTTP on 127.0.0.1 and real folders."""

import csv
import hashlib
import hmac
import io
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from loopsync import rules
from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    MemoryKeyValue,
    PushRequest,
    WarehouseSettings,
)
from loopsync.rules import GradingRules, StatusRules
from loopsync.connectors.generic.mapping import RMA_COLUMNS
from loopsync.connectors.generic.connector import GenericConnector
from loopsync.errors import (
    AuthError,
    ConfigError,
    ErrorBody,
    OutcomeUnknown,
    Rejected,
    TransientError,
)
from loopsync.http import RetryPolicy
from loopsync.models import LoopReturn
from loopsync.sandbox.generic import GenericEmulator
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import ApiServer, Fault, Recorder
from loopsync.timeutil import iso

RULES = StatusRules.build(
    **GenericConnector.default_statuses, flag_conditions=GenericConnector.default_flag_conditions
)


@pytest.fixture
def threepl(clock):
    emu = GenericEmulator(clock=clock, page_size=2)
    emu.recorder = Recorder()
    server = ApiServer(emu).start()
    emu.url = server.url
    yield emu
    server.stop()


@pytest.fixture
def folder_3pl(clock, tmp_path):
    emu = GenericEmulator(clock=clock)
    emu.config = emu.folder_config(tmp_path / "3pl")
    return emu


def connector(warehouse, clock, *, env=None, kv=None, dry_run=False, **keys):
    """A connector built from the emulator's own `warehouse:` section plus `keys`."""
    data = {k: v for k, v in warehouse.items() if k not in ("kind", "destinations")}
    data.update(keys)
    section = Section(data, file="test.yaml", path="warehouse", env=env or {})
    conf = GenericConnector.parse_settings(section)
    section.done()
    settings = WarehouseSettings(
        kind="generic",
        base_url="",
        destinations={},
        statuses=RULES,
        grading=GradingRules(),
        order_wait=timedelta(days=7),
        poll_batch=50,
        timeout=5.0,
        connector=conf,
    )
    ctx = ConnectorContext(
        merchant="t",
        clock=clock,
        kv=kv or MemoryKeyValue(),
        policy=RetryPolicy(attempts=3, base=0.01, cap=0.05),
        dry_run=dry_run,
    )
    return GenericConnector(settings, ctx)


def http_connector(emu, clock, **kw):
    return connector(emu.warehouse_config(emu.url), clock, env=emu.secret_env(), **kw)


def folder_connector(emu, clock, **kw):
    return connector(emu.config, clock, **kw)


def request(return_id=99904598, units=3):
    raw = make_return(return_id=return_id, units=units)
    return PushRequest(LoopReturn.from_api(raw), "WH-EAST")


def one_sku_request(return_id=99904598, units=2):
    raw = make_return(return_id=return_id, units=1)
    raw["line_items"] = raw["line_items"] * units
    return PushRequest(LoopReturn.from_api(raw), "WH-EAST")


def deliver(conn, req):
    return conn.create_rma(req, conn.locate(req))


def statuses(conn, refs, *, commit=True):
    result = conn.poll(refs)
    if commit:
        result.commit()
    return result


def item(status, sku):
    return next(i for i in status.items if i.sku == sku)


# -- HTTP: delivery -------------------------------------------------------------------------


def test_rma_post_is_signed_over_timestamp_method_path_and_exact_body(threepl, clock):
    req = request()
    ref = deliver(http_connector(threepl, clock), req)
    assert ref.rma_id == req.ret.id and ref.extra["units"] == req.ret.units_by_sku()
    post = threepl.recorder.calls("generic", method="POST")[0]
    stamp = post.headers["X-Loopsync-Timestamp"]
    assert int(stamp) == int(clock.now().timestamp())
    signed = f"v1\n{stamp}\nPOST\n/rmas\n".encode() + post.body
    digest = hmac.new(threepl.signing_secret.encode(), signed, hashlib.sha256).hexdigest()
    assert post.headers["X-Loopsync-Signature"] == f"sha256={digest}"
    assert post.headers["X-Api-Key"] == threepl.token
    body = post.json()
    assert body["rma_number"] == req.ret.id and body["destination"] == "WH-EAST"
    assert {(li["sku"], li["quantity"]) for li in body["lines"]} == set(
        req.ret.units_by_sku().items()
    )
    assert threepl.rma_count(req.ret.id) == 1 and threepl.bad_signatures == []


def test_wrong_signing_secret_is_refused(threepl, clock):
    env = {**threepl.secret_env(), "THREEPL_SIGNING_SECRET": "not-the-secret"}
    conn = connector(threepl.warehouse_config(threepl.url), clock, env=env)
    with pytest.raises(AuthError):
        deliver(conn, request())
    assert len(threepl.bad_signatures) == 1
    assert not threepl.rmas


@pytest.mark.parametrize("duplicate_status", [409, 200])
def test_repeated_post_is_idempotent_by_rma_number(threepl, clock, duplicate_status):
    threepl.duplicate_status = duplicate_status
    conn = http_connector(threepl, clock)
    req = request()
    deliver(conn, req)
    deliver(conn, req)
    assert threepl.deliveries[req.ret.id] == 2 and threepl.rma_count(req.ret.id) == 1


def test_lost_post_answer_is_outcome_unknown_then_found(threepl, clock):
    conn = http_connector(threepl, clock)
    req = request()
    threepl.faults.inject(Fault("reset_after"), when=lambda r: r.method == "POST")
    with pytest.raises(OutcomeUnknown):
        deliver(conn, req)
    assert len(threepl.recorder.calls("generic", method="POST")) == 1  # not blindly repeated
    ref = conn.find_rma(req, {})
    assert ref is not None and ref.rma_id == req.ret.id
    assert conn.find_rma(request(99904599), {}) is None


def test_refused_rma_is_rejected(threepl, clock):
    threepl.faults.inject(Fault("status", status=422, body={"error": "unknown SKU"}))
    with pytest.raises(Rejected, match="unknown SKU"):
        deliver(http_connector(threepl, clock), request())


# -- HTTP: receipts -------------------------------------------------------------------------


def test_receipts_paged_into_statuses(threepl, clock):
    conn = http_connector(threepl, clock, page_size=2)
    ids = {"full": 99904601, "short": 99904602, "damaged": 99904603, "over": 99904604}
    refs = {s: deliver(conn, request(rid, units=2)) for s, rid in ids.items()}
    for scenario, rid in ids.items():
        threepl.receive(str(rid), scenario)
    threepl.recorder.clear()
    result = statuses(conn, list(refs.values()))
    pages = [c.query["page"] for c in threepl.recorder.calls("generic", path="/receipts")]
    assert len(pages) > 2 and pages == [str(n) for n in range(1, len(pages) + 1)]
    got = {s: result.statuses[ref.return_id] for s, ref in refs.items()}
    assert {s: st.status for s, st in got.items()} == {
        "full": "complete",
        "short": "complete",
        "damaged": "complete",
        "over": "complete",
    }
    assert {s: rules.decide(st, RULES).action for s, st in got.items()} == {
        "full": rules.PROCESS,
        "short": rules.FLAG,
        "damaged": rules.FLAG,
        "over": rules.FLAG,
    }
    assert got["full"].received_units == 2 and got["over"].received_units == 3
    assert got["short"].received_units == 1 and got["damaged"].received_units == 2
    assert {i.condition for i in got["short"].items} >= {"missing"}
    assert "damaged" in rules.decide(got["damaged"], RULES).reason


def test_partial_receipts_add_up_across_polls(threepl, clock):
    conn = http_connector(threepl, clock)
    req = one_sku_request(units=3)
    sku = req.ret.line_items[0].sku
    ref = deliver(conn, req)
    assert statuses(conn, [ref]).statuses[ref.return_id].status == "partial"
    first_at = clock.now()
    for received in (1, 2):
        threepl.add_receipts(ref.rma_id, [(sku, 1, "available")])
        status = statuses(conn, [ref]).statuses[ref.return_id]
        assert (status.status, status.received_units) == ("partial", received)
        clock.advance(timedelta(hours=1))
    threepl.add_receipts(ref.rma_id, [(sku, 1, "available")])
    threepl.recorder.clear()
    status = statuses(conn, [ref]).statuses[ref.return_id]
    # The first receipt is no longer in the answer; it counts from what was kept.
    since = threepl.recorder.calls("generic", path="/receipts")[0].query["since"]
    assert since > iso(first_at)
    assert status.status == "complete" and item(status, sku).received == 3
    assert rules.decide(status, RULES).action == rules.PROCESS


def test_overlapping_answers_do_not_double_count(threepl, clock):
    conn = http_connector(threepl, clock)
    ref = deliver(conn, request(units=2))
    threepl.receive(ref.rma_id, "full")
    uncommitted = conn.poll([ref])  # not committed: the cursor must not move
    again = statuses(conn, [ref])
    twice = statuses(conn, [ref])  # inside the overlap: the same records come again
    for result in (uncommitted, again, twice):
        assert result.statuses[ref.return_id].received_units == 2
    sinces = [c.query["since"] for c in threepl.recorder.calls("generic", path="/receipts")]
    assert sinces[0] == sinces[1] and sinces[2] > sinces[1]


def test_unmapped_condition_waits_until_mapped(threepl, clock):
    conn = http_connector(threepl, clock)
    ref = deliver(conn, request(units=1))
    sku = next(iter(ref.extra["units"]))
    threepl.add_receipts(ref.rma_id, [(sku, 1, "Scratched")])
    result = statuses(conn, [ref], commit=False)
    assert not result.statuses and "condition_map" in result.errors[ref.return_id]
    mapped = http_connector(threepl, clock, condition_map={"scratched": "damaged"})
    status = statuses(mapped, [ref]).statuses[ref.return_id]
    assert item(status, sku).condition == "damaged" and "scratched 1" in item(status, sku).note
    assert rules.decide(status, RULES).action == rules.FLAG


def test_receipt_breaking_the_schema_holds_its_rma(threepl, clock):
    conn = http_connector(threepl, clock)
    ref = deliver(conn, request(units=1))
    threepl.receipts.append(
        {
            "receipt_id": "X1",
            "rma_number": ref.rma_id,
            "sku": "A",
            "quantity": "two",
            "condition": "available",
            "received_at": "2026-06-01T12:00:00Z",
        }
    )
    result = conn.poll([ref])
    assert ref.return_id not in result.statuses
    assert "quantity 'two'" in result.errors[ref.return_id]


# -- folder: RMA files ----------------------------------------------------------------------


def test_rma_file_is_written_atomically(folder_3pl, clock, monkeypatch):
    conn = folder_connector(folder_3pl, clock)
    req = request()
    outbox = folder_3pl.root / "outbox"
    final = outbox / f"{req.ret.id}.csv"
    real_replace = os.replace
    seen = []

    def replace(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
        # The moment before the file gets its final name: complete, hidden, same folder
        # (named relative to the folder's descriptor, so no link on the way is followed).
        folder = os.readlink(f"/proc/self/fd/{src_dir_fd}") if src_dir_fd is not None else ""
        src = os.path.join(folder, os.fspath(src))
        assert not final.exists() and src_dir_fd == dst_dir_fd
        assert os.path.dirname(src) == str(outbox) and os.path.basename(src).startswith(".")
        seen.append(Path(src).read_text(encoding="utf-8"))
        real_replace(src, os.path.join(folder, os.fspath(dst)))

    monkeypatch.setattr(os, "replace", replace)
    deliver(conn, req)
    assert seen == [final.read_text(encoding="utf-8")]
    rows = list(csv.DictReader(io.StringIO(seen[0], newline="")))
    assert tuple(rows[0]) == RMA_COLUMNS
    assert {(r["sku"], int(r["quantity"])) for r in rows} == set(req.ret.units_by_sku().items())
    assert [p.name for p in outbox.iterdir()] == [final.name]


def test_failed_rma_write_leaves_nothing_under_the_final_name(folder_3pl, clock, monkeypatch):
    conn = folder_connector(folder_3pl, clock)

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(TransientError, match="No space"):
        deliver(conn, request())
    assert list((folder_3pl.root / "outbox").iterdir()) == []


def test_find_rma_sees_outbox_and_archive(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock)
    req = request()
    assert conn.find_rma(req, {}) is None
    deliver(conn, req)
    assert conn.find_rma(req, {}).rma_id == req.ret.id
    assert folder_3pl.import_outbox(archive=True) == [req.ret.id]
    assert conn.find_rma(req, {}) is not None


# -- folder: receipt files ------------------------------------------------------------------


def inbox(emu):
    return sorted(p.name for p in (emu.root / "inbox").iterdir())


def archive(emu):
    return sorted(p.name for p in (emu.root / "archive").iterdir())


def test_receipt_files_are_archived_only_after_commit(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock)
    ref = deliver(conn, request(units=2))
    folder_3pl.import_outbox(archive=True)
    folder_3pl.receive(ref.rma_id, "full")
    files = inbox(folder_3pl)
    result = conn.poll([ref])
    assert result.statuses[ref.return_id].status == "complete"
    assert inbox(folder_3pl) == files and len(files) == 1
    result.commit()
    assert inbox(folder_3pl) == [] and files[0] in archive(folder_3pl)
    again = statuses(conn, [ref]).statuses[ref.return_id]  # from what was kept
    assert again.received_units == 2 and again.status == "complete"


def test_dry_run_leaves_the_inbox_alone(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock, dry_run=True)
    ref = deliver(conn, request(units=1))
    folder_3pl.receive(ref.rma_id, "full")
    statuses(conn, [ref])
    assert len(inbox(folder_3pl)) == 1


def test_malformed_file_is_rejected_with_a_reason_and_the_rest_apply(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock)
    good = deliver(conn, request(99904611, units=1))
    other = deliver(conn, request(99904612, units=1))
    folder_3pl.receive(good.rma_id, "full")
    sku = next(iter(other.extra["units"]))
    folder_3pl.write_inbox_file(
        "bad.csv", f"rma_number,sku,quantity,condition\n{other.rma_id},{sku},two,available\n"
    )
    folder_3pl.write_inbox_file("noheader.csv", "")
    result = statuses(conn, [good, other])
    assert result.statuses[good.return_id].status == "complete"
    assert result.statuses[other.return_id].received_units == 0
    rejected = folder_3pl.root / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == [
        "bad.csv",
        "bad.csv.reason.txt",
        "noheader.csv",
        "noheader.csv.reason.txt",
    ]
    assert "line 2: quantity 'two'" in (rejected / "bad.csv.reason.txt").read_text()
    assert "header" in (rejected / "noheader.csv.reason.txt").read_text()
    assert inbox(folder_3pl) == [] and len(archive(folder_3pl)) == 1


def test_duplicate_receipt_files_do_not_double_count(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock)
    ref = deliver(conn, request(units=2))
    sku = next(iter(ref.extra["units"]))
    with_ids = folder_3pl.add_receipts(ref.rma_id, [(sku, 1, "available")])
    first = next((folder_3pl.root / "inbox").iterdir())
    shutil.copy(first, first.with_name("copy-" + first.name))  # same records, new name
    no_ids = f"rma_number,sku,quantity,condition\n{ref.rma_id},{sku},1,damaged\n"
    folder_3pl.write_inbox_file("no-ids.csv", no_ids)
    folder_3pl.write_inbox_file("no-ids-again.csv", no_ids)  # an exact duplicate file
    status = statuses(conn, [ref]).statuses[ref.return_id]
    assert item(status, sku).received == 2 and item(status, sku).condition == "damaged"
    # A copy arriving after the first files were archived: still counted once, and what
    # the archived files said is kept.
    folder_3pl.write_receipt_file("late-copy.csv", with_ids)
    status = statuses(conn, [ref]).statuses[ref.return_id]
    assert item(status, sku).received == 2 and item(status, sku).condition == "damaged"
    assert archive(folder_3pl) == sorted(
        [first.name, "copy-" + first.name, "no-ids.csv", "no-ids-again.csv", "late-copy.csv"]
    )


def test_archive_never_overwrites(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock)
    ref = deliver(conn, request(units=1))
    header = "rma_number,sku,quantity,condition\n"
    for _ in range(2):
        folder_3pl.write_inbox_file("receipts.csv", header)
        statuses(conn, [ref])
    assert archive(folder_3pl) == ["receipts.1.csv", "receipts.csv"]


def test_file_rewritten_after_it_was_read_stays_in_the_inbox(folder_3pl, clock):
    conn = folder_connector(folder_3pl, clock)
    ref = deliver(conn, request(units=1))
    sku = next(iter(ref.extra["units"]))
    path = folder_3pl.write_inbox_file("daily.csv", "rma_number,sku,quantity,condition\n")
    result = conn.poll([ref])
    folder_3pl.write_inbox_file(
        "daily.csv", f"rma_number,sku,quantity,condition\n{ref.rma_id},{sku},1,available\n"
    )
    result.commit()
    assert inbox(folder_3pl) == [path.name]
    assert statuses(conn, [ref]).statuses[ref.return_id].status == "complete"


# -- settings -------------------------------------------------------------------------------


def test_settings_errors_name_the_key(folder_3pl, clock, tmp_path):
    with pytest.raises(ConfigError, match=r"warehouse\.outbox: applies only to transport: folder"):
        connector(
            {"transport": "http", "rma_url": "http://x", "receipts_url": "http://x", "outbox": "o"},
            clock,
        )
    with pytest.raises(ConfigError, match=r"warehouse\.inbox: folder .* does not exist"):
        connector({**folder_3pl.config, "inbox": str(tmp_path / "nope")}, clock)
    with pytest.raises(ConfigError, match=r"warehouse\.condition_map\.worn: 'ok' is not one of"):
        connector(folder_3pl.config, clock, condition_map={"worn": "ok"})
    with pytest.raises(ConfigError, match="signing_secret: must reference an environment"):
        connector(
            {
                "transport": "http",
                "rma_url": "http://x",
                "receipts_url": "http://x",
                "signing_secret": "plain",
            },
            clock,
        )
