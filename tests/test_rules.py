import pytest

from loopsync import rules
from loopsync.rules import GradingRules, StatusRules, normalize_status
from loopsync.models import ItemStatus, LoopReturn, RmaStatus


def loop_return(**over):
    raw = {
        "id": "1001",
        "state": "open",
        "updated_at": "2026-06-01T00:00:00Z",
        "destination_id": 12,
        "order_name": "#1001",
        "line_items": [
            {"line_item_id": 1, "sku": "A"},
            {"line_item_id": 2, "sku": "A"},
            {"line_item_id": 3, "sku": "B"},
        ],
    }
    raw.update(over)
    return LoopReturn.from_api(raw)


SHIPHERO = StatusRules.build(
    ["warehouse complete", "complete"], ["issue", "damaged"], ["pending", "rts"], [], ["damaged"]
)


def status(word, a=(2, 2), b=(1, 1), cond_b=None):
    items = (ItemStatus("A", a[0], a[1]), ItemStatus("B", b[0], b[1], condition=cond_b))
    return RmaStatus("1001", "R1", word, a[0] + b[0], a[1] + b[1], items)


@pytest.mark.parametrize(
    "label, st, action",
    [
        ("complete, all received -> process", status("Complete"), "process"),
        ("underscore and case are ignored", status("WAREHOUSE_COMPLETE"), "process"),
        ("complete but short -> flag", status("Complete", a=(2, 1)), "flag"),
        ("complete but over -> flag", status("complete", b=(1, 2)), "flag"),
        ("complete with a damaged item -> flag", status("complete", cond_b="Damaged"), "flag"),
        ("custom flag status", status("Issue"), "flag"),
        ("pending -> ignore", status("pending", a=(2, 0), b=(1, 0)), "ignore"),
        ("rts -> ignore", status("RTS"), "ignore"),
        ("unknown status waits", status("Quarantine"), "wait"),
    ],
)
def test_decide(label, st, action):
    assert rules.decide(st, SHIPHERO).action == action, label


def test_report_status_is_left_for_a_person():
    pv = StatusRules.build(["completed"], ["completed with discrepancies"], ["open"], ["cancelled"])
    d = rules.decide(status("Cancelled"), pv)
    assert d.action == "report" and d.final


def test_flag_note_says_why_and_fits_loops_limit():
    st = status("Complete", a=(2, 1), cond_b="Damaged")
    d = rules.decide(st, SHIPHERO)
    note = rules.flag_note(st, d)
    assert "Complete" in note and "A short 1/2" in note and "B Damaged" in note
    assert "expected 3" in note and "received 2" in note
    long = RmaStatus(
        "1",
        "R",
        "complete",
        1,
        0,
        tuple(ItemStatus(f"SKU-{i:04d}-" + "x" * 30, 1, 0) for i in range(20)),
    )
    assert len(rules.flag_note(long, rules.decide(long, SHIPHERO))) < 255


@pytest.mark.parametrize(
    "label, over, push, reason_part",
    [
        ("open and mapped", {}, True, None),
        ("closed is not pushed", {"state": "closed"}, False, "closed"),
        ("unmapped destination", {"destination_id": 99}, False, "destination 99 is not mapped"),
        ("no destination", {"destination_id": None}, False, "no destination"),
        ("no SKU", {"line_items": [{"line_item_id": 1, "sku": ""}]}, False, "SKU"),
    ],
)
def test_plan_push(label, over, push, reason_part):
    plan = rules.plan_push(loop_return(**over), {"12": "WH-1"})
    assert plan.push is push, label
    if push:
        assert plan.destination == "WH-1"
    else:
        assert reason_part in plan.skip_reason


def test_grading_maps_conditions_to_loop_line_items_per_unit():
    ret = loop_return()
    st = RmaStatus(
        "1001",
        "R1",
        "complete",
        3,
        3,
        (
            ItemStatus("A", 2, 2, condition="Good", disposition="restock"),
            ItemStatus("B", 1, 1, condition="Damaged"),
        ),
    )
    grading = GradingRules(
        {"good": "grade_a", "damaged": "grade_c"},
        {"restock": "back_to_stock", "damaged": "resale_hold"},
    )
    grades, assessments = rules.grading_items(ret, st, grading)
    assert sorted((g["line_item_id"], g["condition_category"]) for g in grades) == [
        (1, "grade_a"),
        (2, "grade_a"),
        (3, "grade_c"),
    ]
    assert sorted((a["line_item_id"], a["disposition_outcome"]) for a in assessments) == [
        (1, "back_to_stock"),
        (2, "back_to_stock"),
        (3, "resale_hold"),
    ]
    assert rules.grading_items(ret, st, GradingRules()) == ([], [])


def test_normalize_status():
    assert normalize_status(" Warehouse_Complete ") == "warehouse complete"
    assert normalize_status(None) == ""
