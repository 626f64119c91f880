"""The whole worker against the sandbox's emulated Loop and PeopleVox over real HTTP on
127.0.0.1 (issue 3, "How it is shown"). Time is a FakeClock shared by worker and emulators,
so the PeopleVox limiter (15 requests in 15 s) and session expiry run on fake time."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from loopsync.sandbox.peoplevox import PeopleVoxEmulator
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import Fault, Request
from loopsync.state import Store


def peoplevox(make_sandbox: Any) -> Any:
    return make_sandbox("peoplevox")


def open_returns(sb: Any, n: int, **kw: Any) -> list[dict[str, Any]]:
    return sb.seed(n, states_weights=[("open", 1)], **kw)


def add_open(sb: Any, rid: int, *, with_order: bool = True, **kw: Any) -> dict[str, Any]:
    raw = make_return(rng=sb.rng, return_id=rid, state="open", updated_at=sb.clock.now(), **kw)
    return sb.add_return(raw, with_order=with_order)


def loop_writes(sb: Any) -> list[Any]:
    return [c for c in sb.recorder.calls("loop") if c.write]


def saves_to(template: str):  # noqa: ANN201 - a fault predicate
    return lambda req: (
        PeopleVoxEmulator.operation(req) == "SaveData"
        and f"<pvx:TemplateName>{template}</pvx:TemplateName>".encode() in req.body
    )


def test_a_return_becomes_an_ra_with_its_items_and_a_note_in_loop(make_sandbox, tmp_path):
    sb = peoplevox(make_sandbox)
    seeded = open_returns(sb, 5)
    r = sb.run_cycle(sb.merchant_config(tmp_path))
    assert r.ok, r.stage_errors
    assert r.counts.pushed == 5 and sb.warehouse.throttled == 0
    reasons = {
        "Too small": "SIZE",
        "Too large": "SIZE",
        "Damaged on arrival": "DAMAGED",
        "Not as described": "NOT_AS_DESCRIBED",
    }
    for raw in seeded:
        rid = str(raw["id"])
        ra = sb.warehouse.ra(rid)
        assert sb.warehouse.rma_count(rid) == 1
        assert ra["header"]["SalesOrderNumber"] == raw["order_name"].lstrip("#")
        assert (
            ra["header"]["SiteReference"]
            == {"12": "MAIN", "13": "RETURNS-UK"}[str(raw["destination_id"])]
        )
        units = Counter(li["sku"] for li in raw["line_items"])
        assert {i["ItemCode"]: int(i["Quantity"]) for i in ra["items"]} == dict(units)
        first_reason = {}
        for li in raw["line_items"]:
            first_reason.setdefault(li["sku"], reasons.get(li["return_reason"], ""))
        assert {i["ItemCode"]: i["ReturnReason"] for i in ra["items"]} == first_reason
        assert sb.loop.notes_for(rid) == [
            f"loopsync: created PeopleVox return authorization {rid} in the warehouse."
        ]


def test_receipt_status_drives_loop_and_a_rerun_writes_nothing(make_sandbox, tmp_path, clock):
    sb = peoplevox(make_sandbox)
    ids = [str(r["id"]) for r in open_returns(sb, 6)]
    cfg = sb.merchant_config(tmp_path)
    assert sb.run_cycle(cfg).ok
    full, short, damaged, over, cancelled, untouched = ids
    for rid, scenario in (
        (full, "full"),
        (short, "short"),
        (damaged, "damaged"),
        (over, "over"),
        (cancelled, "cancelled"),
    ):
        assert sb.warehouse.receive(rid, scenario)
    clock.advance(60)
    before = len(loop_writes(sb))

    r = sb.run_cycle(cfg)

    assert r.ok, r.stage_errors
    assert (r.counts.processed, r.counts.flagged, r.counts.reported) == (1, 3, 1)
    assert sb.loop.actions_for(full) == ["process"]
    for rid in (short, over):  # completed with discrepancies -> flag, with a note saying why
        assert sb.loop.actions_for(rid) == ["flag"]
        assert "Completed with discrepancies" in sb.loop.notes_for(rid)[-1]
    # Completed, but an item's condition is in the flag rules.
    assert sb.loop.actions_for(damaged) == ["flag"]
    assert "Damaged" in sb.loop.notes_for(damaged)[-1]
    # Cancelled in PeopleVox: no Loop call at all, reported for a person.
    cancelled_calls = [c for c in loop_writes(sb)[before:] if f"/{cancelled}/" in c.path]
    assert cancelled_calls == [] and sb.loop.actions_for(cancelled) == []
    store = Store(cfg.state_path, clock)
    assert store.returns.get(cancelled).stage == "reported"
    assert any(p.return_id == cancelled and "Cancelled" in p.message for p in store.runs.problems())
    assert sb.loop.actions_for(untouched) == []

    writes = len(loop_writes(sb))
    clock.advance(60)
    assert sb.run_cycle(cfg).ok
    assert len(loop_writes(sb)) == writes, "a rerun wrote to Loop again"


def test_grades_reach_loop_in_batches_of_at_most_20(make_sandbox, tmp_path, clock):
    sb = peoplevox(make_sandbox)
    big = add_open(sb, 6001, units=25)
    rid = str(big["id"])
    cfg = sb.merchant_config(tmp_path)
    assert sb.run_cycle(cfg).ok
    first_sku = sb.warehouse.ra(rid)["items"][0]["ItemCode"]
    sb.warehouse.receive(rid, "damaged")
    clock.advance(60)
    assert sb.run_cycle(cfg).ok

    grade_calls = sb.recorder.calls("loop", path="/dispositioning/grade")
    assess_calls = sb.recorder.calls("loop", path="/dispositioning/assess")
    assert [len(c.json()["items"]) for c in grade_calls] == [20, 5]
    assert [len(c.json()["items"]) for c in assess_calls] == [20, 5]
    grades = {str(g["line_item_id"]): g["condition_category"] for g in sb.loop.grades_for(rid)}
    damaged = {str(li["line_item_id"]) for li in big["line_items"] if li["sku"] == first_sku}
    assert set(grades) == {str(li["line_item_id"]) for li in big["line_items"]}
    assert {grades[line] for line in damaged} == {"grade_d"}
    assert {grade for line, grade in grades.items() if line not in damaged} == {"grade_a"}
    assert {a["disposition_outcome"] for a in sb.loop.assessments_for(rid)} == {
        "recycle",
        "back_to_stock",
    }
    assert sb.loop.actions_for(rid) == ["flag"]


def test_unmatched_order_is_retried_then_reported(make_sandbox, tmp_path, clock):
    sb = peoplevox(make_sandbox)
    late = add_open(sb, 6101, with_order=False)
    never = add_open(sb, 6102, with_order=False)
    cfg = sb.merchant_config(tmp_path)
    r = sb.run_cycle(cfg)
    assert r.counts.waiting == 2 and r.counts.pushed == 0
    store = Store(cfg.state_path, clock)
    assert "not found in PeopleVox" in store.returns.get("6102").reason

    sb.warehouse.on_loop_return(late)  # the order reaches PeopleVox late
    clock.advance(timedelta(hours=1))
    assert sb.run_cycle(cfg).counts.pushed == 1
    assert sb.warehouse.has_rma("6101") and not sb.warehouse.has_rma(str(never["id"]))

    clock.advance(timedelta(days=8))  # past warehouse.order_wait (7d)
    sb.run_cycle(cfg)
    row = Store(cfg.state_path, clock).returns.get("6102")
    assert row.stage == "stale" and "gave up after waiting" in row.reason


def test_unmapped_destination_is_not_pushed(make_sandbox, tmp_path):
    sb = peoplevox(make_sandbox)
    raw = make_return(rng=sb.rng, return_id=6201, state="open", updated_at=sb.clock.now())
    raw["destination_id"] = 99
    sb.add_return(raw)
    cfg = sb.merchant_config(tmp_path)
    r = sb.run_cycle(cfg)
    assert r.counts.skipped == 1 and not sb.warehouse.has_rma("6201")
    assert sb.recorder.calls("peoplevox", writes=True) == []
    assert (
        "destination 99 is not mapped" in Store(cfg.state_path, sb.clock).returns.get("6201").reason
    )


def test_session_expiry_in_the_middle_of_a_cycle(make_sandbox, tmp_path):
    sb = peoplevox(make_sandbox)
    ids = [str(r["id"]) for r in open_returns(sb, 4)]
    emu = sb.warehouse

    def session_dies_now(req: Request):  # noqa: ANN202
        emu.expire_sessions()
        return emu.handle(req)

    emu.faults.inject(
        Fault("custom", response=session_dies_now),
        times=1,
        when=saves_to("Return authorizations items"),
    )
    r = sb.run_cycle(sb.merchant_config(tmp_path))
    assert r.ok, r.stage_errors
    assert r.counts.pushed == 4
    assert emu.operations.count("Authenticate") == 2
    assert all(emu.rma_count(rid) == 1 for rid in ids)
    assert all(
        len(emu.ra(rid)["items"]) == len({li["ItemCode"] for li in emu.ra(rid)["items"]})
        for rid in ids
    )


def test_one_rejected_row_does_not_stop_the_batch(make_sandbox, tmp_path):
    sb = peoplevox(make_sandbox)
    bad = make_return(rng=sb.rng, return_id=6301, state="open", updated_at=sb.clock.now())
    bad["line_items"][0]["sku"] = "GHOST-SKU"
    sb.add_return(bad)
    del sb.warehouse.items["GHOST-SKU"]  # PeopleVox does not know this SKU
    good = [str(r["id"]) for r in open_returns(sb, 3)]
    cfg = sb.merchant_config(tmp_path)
    r = sb.run_cycle(cfg)
    assert (r.counts.rejected, r.counts.pushed) == (1, 3)
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good)
    row = Store(cfg.state_path, sb.clock).returns.get("6301")
    assert row.stage == "rejected" and "Item code 'GHOST-SKU' does not exist" in row.reason


def test_lost_save_answer_then_rerun_creates_no_second_ra(make_sandbox, tmp_path, clock):
    sb = peoplevox(make_sandbox)
    (raw,) = open_returns(sb, 1)
    rid = str(raw["id"])
    sb.warehouse.faults.inject(Fault("reset_after"), when=saves_to("Return authorizations"))
    cfg = sb.merchant_config(tmp_path)
    first = sb.run_cycle(cfg)
    assert first.counts.pushed == 0 and sb.warehouse.rma_count(rid) == 1
    clock.advance(60)
    second = sb.run_cycle(cfg)
    assert second.ok, second.stage_errors
    assert sb.warehouse.rma_count(rid) == 1
    units = Counter(li["sku"] for li in raw["line_items"])
    assert {i["ItemCode"]: int(i["Quantity"]) for i in sb.warehouse.ra(rid)["items"]} == dict(units)
    assert len(sb.loop.notes_for(rid)) == 1


def test_dry_run_saves_nothing_in_peoplevox(make_sandbox, tmp_path):
    sb = peoplevox(make_sandbox)
    open_returns(sb, 3)
    r = sb.run_cycle(sb.merchant_config(tmp_path), dry_run=True)
    assert sb.recorder.calls("peoplevox", writes=True) == []
    assert sb.warehouse.operations.count("GetData") > 0  # it did look orders up
    assert sum("would create a peoplevox RMA" in p for p in r.planned) == 3
