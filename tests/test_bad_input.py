"""Malformed data from each remote: Loop (returns list objects, ASN rows), ShipHero,
PeopleVox, Xoro and the generic 3PL (HTTP and folders).

Each bad record is recorded with its reason (the store's problems, or the return's stage
reason), `loopsync status` shows that reason, and the rest of the batch goes on: the other
returns of the same cycle are still pushed, processed or flagged. The worker runs against
the sandbox over real HTTP on 127.0.0.1 (a FakeClock shared with the emulators); bad data
comes in through emulator hooks or a `Fault("custom")` that edits a real answer.

Kinds that cannot occur at a remote are left out and say why where they would go: Loop
lists one line item per unit (no quantity field), and a warehouse answer carries no Loop
destination.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from loopsync.sandbox.server import Fault, Request, Response
from loopsync.status import merchant_status, render_status
from loopsync.state import Store

INVALID = "@@INVALID-UTF8@@"  # replaced by bytes that are not UTF-8 on the wire
INVALID_BYTES = b"Caf\xe9 \xff\xfe"  # Latin-1 e-acute and a stray BOM


# -- helpers ----------------------------------------------------------------------------------


def config(sb: Any, tmp_path: Any) -> Any:
    # The seeded returns are at most 3 days old: 4 days of ASN windows, not 30.
    return sb.merchant_config(tmp_path, start_days=4)


def open_returns(sb: Any, n: int) -> list[str]:
    return [str(r["id"]) for r in sb.seed(n, states_weights=[("open", 1)])]


def status_text(cfg: Any) -> str:
    return render_status(merchant_status(cfg))


def rewrite(api: Any, when: Callable[[Request], bool], edit: Callable[[Any], Any]) -> None:
    """Every answer of `api` to a matching request passes through `edit(decoded JSON)`
    (which changes it in place or returns a replacement); INVALID becomes bytes that are
    not UTF-8."""

    def respond(req: Request) -> Response:
        with api.lock:
            resp = api.handle(req)
        body = json.loads(resp.body)
        edited = edit(body)
        raw = json.dumps(body if edited is None else edited).encode()
        return Response(resp.status, raw.replace(INVALID.encode(), INVALID_BYTES), resp.headers)

    api.faults.inject(Fault("custom", response=respond), times=10**6, when=when)


def reported(cfg: Any, pattern: str) -> None:
    """`loopsync status` shows a line matching `pattern`."""
    text = status_text(cfg)
    assert re.search(pattern, text), f"{pattern!r} not in loopsync status:\n{text}"


def finish(sb: Any, ids: list[str], scenario: str = "full") -> None:
    for rid in ids:
        assert sb.warehouse.receive(rid, scenario), rid


def actions(sb: Any, rid: str) -> list[str]:
    return sb.loop.actions_for(rid)


def assert_bad_one_held(
    make_sandbox: Any,
    tmp_path: Any,
    clock: Any,
    kind: str,
    serve_bad: Callable[[Any, str], None],
    reason: str,
    created: str = "pushed",
) -> tuple[Any, Any, str]:
    """Four open returns get RMAs (`counts.<created>`) and are all received; then the
    answer about the last one is malformed (`serve_bad(sb, bad)` sets that up). The other
    three are still processed, the bad one is held and `loopsync status` shows `reason`.
    Returns (sandbox, config, bad return id)."""
    sb = make_sandbox(kind)
    good = open_returns(sb, 3)
    bad = open_returns(sb, 1)[0]
    cfg = config(sb, tmp_path)
    assert getattr(sb.run_cycle(cfg).counts, created) == 4
    finish(sb, good + [bad])
    serve_bad(sb, bad)
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.counts.processed == 3, result.stage_errors
    assert all(actions(sb, rid) == ["process"] for rid in good)
    assert actions(sb, bad) == []
    reported(cfg, rf"{bad}\s+poll\s+.*{reason}")
    return sb, cfg, bad


def assert_extras_ignored(
    make_sandbox: Any, tmp_path: Any, clock: Any, kind: str, serve_extra: Callable[[Any, str], None]
) -> None:
    """Two received returns, the answer about the first carrying unknown extra fields
    (`serve_extra(sb, rid)`): both are processed."""
    sb = make_sandbox(kind)
    ids = open_returns(sb, 2)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    finish(sb, ids)
    serve_extra(sb, ids[0])
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.ok and result.counts.processed == 2, result.stage_errors


# -- Loop: returns list objects -----------------------------------------------------------------


def is_list(req: Request) -> bool:
    return req.path.endswith("/warehouse/return/list")


def loop_return_served_as(sb: Any, rid: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    def edit_page(body: Any) -> None:
        rows = body["returns"] if isinstance(body, dict) else body
        for i, row in enumerate(rows):
            if str(row.get("id")) == rid:
                new = edit(row)
                rows[i] = row if new is None else new

    rewrite(sb.loop, is_list, edit_page)


def set_lines(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(row: dict[str, Any]) -> None:
        for li in row["line_items"]:
            if value is _DELETE:
                li.pop(key, None)
            else:
                li[key] = value

    return edit


def set_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(row: dict[str, Any]) -> None:
        row[key] = value

    return edit


def first_line(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(row: dict[str, Any]) -> None:
        row["line_items"][0][key] = value

    return edit


_DELETE = object()
LONG_ID = "4" * 400

# (case, edit of the bad return as Loop lists it, reason `loopsync status` must show)
LOOP_REJECTED = [
    ("missing SKU", set_lines("sku", _DELETE), r"no line item with a SKU"),
    ("blank SKU", set_lines("sku", "   "), r"no line item with a SKU"),
    ("unknown destination", set_field("destination_id", "99"), r"destination 99 is not mapped"),
    ("zero units: no line items", set_field("line_items", []), r"no line item with a SKU"),
    ("oversized id", set_field("id", LONG_ID), r"return id .*400 characters"),
    (
        "oversized SKU",
        first_line("sku", "SKU-" + "X" * 5000),
        r"line item 0: sku is 5004 characters long",
    ),
    (
        "invalid UTF-8 in the SKU",
        first_line("sku", "TEE-" + INVALID),
        r"line item 0: sku is not valid UTF-8",
    ),
    (
        "wrong type: line_items is an object",
        set_field("line_items", {"0": {}}),
        r"line_items is not a list",
    ),
    (
        "wrong type: a line item is a string",
        set_field("line_items", ["TEE-BLK-M"]),
        r"line item 0 is not an object",
    ),
    (
        "wrong type: sku is an object",
        first_line("sku", {"code": "TEE-BLK-M"}),
        r"line item 0: sku is a dict, not text",
    ),
    (
        "wrong type: order_name is a list",
        set_field("order_name", ["#1001"]),
        r"order_name is a list, not text",
    ),
    (
        "wrong type: destination_id is an object",
        set_field("destination_id", {"id": 12}),
        r"destination_id is a dict, not text",
    ),
    ("wrong type: state is a number", set_field("state", 1), r"state missing"),
    (
        "wrong type: updated_at is a number",
        set_field("updated_at", 1767225600),
        r"updated_at not an ISO-8601 timestamp",
    ),
    (
        "timestamp without a zone: updated_at",
        set_field("updated_at", "2026-06-01T11:00:00"),
        r"updated_at timestamp has no timezone",
    ),
    (
        "timestamp without a zone: created_at",
        set_field("created_at", "2026-05-30T09:00:00"),
        r"created_at timestamp has no timezone",
    ),
]


@pytest.mark.parametrize("case, edit, reason", LOOP_REJECTED, ids=[c[0] for c in LOOP_REJECTED])
def test_loop_return_malformed_is_recorded_and_the_batch_goes_on(
    make_sandbox, tmp_path, case, edit, reason
):
    sb = make_sandbox("shiphero")
    good = open_returns(sb, 3)
    bad = open_returns(sb, 1)[0]
    loop_return_served_as(sb, bad, edit)
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.counts.pushed == 3, result.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good)
    assert sb.warehouse.rma_count(bad) == 0
    reported(cfg, reason)
    # The next cycle neither repeats the good ones nor chokes on the bad one.
    again = sb.run_cycle(cfg)
    assert again.counts.pushed == 0 and all(sb.warehouse.rma_count(r) == 1 for r in good)


LOOP_ACCEPTED = [
    (
        "unknown extra fields",
        lambda row: {
            **row,
            "x_new": {"nested": [1, 2]},
            "line_items": [{**li, "x_line": True, "quantity": -2} for li in row["line_items"]],
        },
    ),
    ("oversized free text", first_line("title", "T" * 200_000)),
    ("invalid UTF-8 in free text", first_line("return_comment", "fits " + INVALID)),
]


@pytest.mark.parametrize("case, edit", LOOP_ACCEPTED, ids=[c[0] for c in LOOP_ACCEPTED])
def test_loop_return_oddities_that_are_not_errors_go_through(make_sandbox, tmp_path, case, edit):
    """Loop adds fields without notice (a `quantity` on a line item is one of them: Loop
    lists one line per unit), and free text is not checked: such returns are pushed."""
    sb = make_sandbox("shiphero")
    ids = open_returns(sb, 3)
    loop_return_served_as(sb, ids[0], edit)
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.ok and result.counts.pushed == 3, result.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)


def test_some_line_items_without_a_sku_are_reported(make_sandbox, tmp_path):
    """The lines with a SKU go to the warehouse; the others are named in a problem."""
    sb = make_sandbox("shiphero")
    good = open_returns(sb, 2)
    bad = open_returns(sb, 1)[0]

    def drop_one_sku(row: dict[str, Any]) -> None:
        row["line_items"].append({**row["line_items"][0], "line_item_id": 777001, "sku": None})

    loop_return_served_as(sb, bad, drop_one_sku)
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.counts.pushed == 3
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good + [bad])
    reported(cfg, rf"{bad}\s+push\s+line item 777001 has no SKU")


# -- Loop: ASN rows ---------------------------------------------------------------------------


def is_asn(req: Request) -> bool:
    return req.path.endswith("/warehouse/reporting/asn")


def asn_rows_served_as(sb: Any, rid: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    def edit_rows(rows: list[Any]) -> None:
        for i, row in enumerate(rows):
            if isinstance(row, dict) and str(row.get("id")) == rid:
                new = edit(row)
                rows[i] = row if new is None else new

    rewrite(sb.loop, is_asn, edit_rows)


def asn_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(row: dict[str, Any]) -> None:
        if value is _DELETE:
            row.pop(key, None)
        else:
            row[key] = value

    return edit


ASN_REJECTED = [
    ("missing id", asn_field("id", _DELETE), r"malformed ASN row: id is missing"),
    (
        "wrong type: a row is a string",
        lambda row: "id,tracking",
        r"malformed ASN row: not an object",
    ),
    (
        "wrong type: id is an object",
        asn_field("id", {"v": 1}),
        r"malformed ASN row: id .*not numeric",
    ),
    ("oversized id", asn_field("id", LONG_ID), r"malformed ASN row: id .*400 characters"),
    (
        "wrong type: tracking_number is a list",
        asn_field("tracking_number", ["1Z", "9400"]),
        r"malformed ASN row: .*tracking_number is a list, not text",
    ),
    (
        "oversized tracking number",
        asn_field("tracking_number", "1Z" * 600),
        r"malformed ASN row: .*tracking_number is 1200 characters long",
    ),
    (
        "invalid UTF-8 in the tracking number",
        asn_field("tracking_number", "1Z" + INVALID),
        r"malformed ASN row: .*tracking_number is not valid UTF-8",
    ),
]


@pytest.mark.parametrize("case, edit, reason", ASN_REJECTED, ids=[c[0] for c in ASN_REJECTED])
def test_loop_asn_row_malformed_is_recorded_and_the_rest_are_kept(
    make_sandbox, tmp_path, case, edit, reason
):
    sb = make_sandbox("peoplevox")
    good = open_returns(sb, 2)
    bad = open_returns(sb, 1)[0]
    asn_rows_served_as(sb, bad, edit)
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.counts.pushed == 3, result.stage_errors
    reported(cfg, reason)
    store = Store(cfg.state_path, sb.clock)
    try:
        assert all(store.asn.rows_for(rid) for rid in good)
        assert store.asn.rows_for(bad) == []
    finally:
        store.close()
    # the bad row's return is still pushed: ASN rows only add a tracking number
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good + [bad])


@pytest.mark.parametrize(
    "edit",
    [
        lambda row: {**row, "x_new_column": [1], "updated_at": "2026-06-01 10:00:00"},
    ],
    ids=["unknown extra fields and a zone-less updated_at (not read by loopsync)"],
)
def test_loop_asn_row_oddities_that_are_not_errors_are_kept(make_sandbox, tmp_path, edit):
    sb = make_sandbox("peoplevox")
    ids = open_returns(sb, 2)
    asn_rows_served_as(sb, ids[0], edit)
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.ok and result.counts.pushed == 2, result.stage_errors
    store = Store(cfg.state_path, sb.clock)
    try:
        assert all(store.asn.rows_for(rid) for rid in ids)
    finally:
        store.close()


# -- ShipHero: polled returns -------------------------------------------------------------------


def is_poll(req: Request) -> bool:
    return req.path == "/graphql" and b"LoopsyncPoll" in req.body


def shiphero_return_served_as(sb: Any, rid: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    def edit_answer(body: dict[str, Any]) -> None:
        for field in (body.get("data") or {}).values():
            node = (field or {}).get("data")
            if node and node.get("partner_id") == rid:
                edit(node)

    rewrite(sb.warehouse, is_poll, edit_answer)


def sh_line(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(node: dict[str, Any]) -> None:
        node["line_items"][0][key] = value

    return edit


def sh_field(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(node: dict[str, Any]) -> None:
        node[key] = value

    return edit


SHIPHERO_REJECTED = [
    (
        "negative quantity_received",
        sh_line("quantity_received", -1),
        r"quantity_received -1 is not a whole number >= 0",
    ),
    (
        "negative quantity expected",
        sh_line("quantity", -2),
        r"quantity -2 is not a whole number >= 0",
    ),
    (
        "wrong type: quantity_received is text",
        sh_line("quantity_received", "two"),
        r"quantity_received 'two' is not a whole number >= 0",
    ),
    (
        "wrong type: total_items_expected is an object",
        sh_field("total_items_expected", {}),
        r"total_items_expected \{\} is not a whole number >= 0",
    ),
    ("null status", sh_field("status", None), r"has no status"),
    ("wrong type: status is a number", sh_field("status", 3), r"status 3 is not text"),
    ("missing SKU on a line", sh_line("line_item", None), r"line 0 has no SKU"),
    ("oversized status", sh_field("status", "W" * 3800), r"status is 3800 characters long"),
    (
        "invalid UTF-8 in the status",
        sh_field("status", "Warehouse Compl" + INVALID),
        r"status is not valid UTF-8",
    ),
]


@pytest.mark.parametrize(
    "case, edit, reason", SHIPHERO_REJECTED, ids=[c[0] for c in SHIPHERO_REJECTED]
)
def test_shiphero_return_malformed_is_held_and_the_batch_goes_on(
    make_sandbox, tmp_path, clock, case, edit, reason
):
    assert_bad_one_held(
        make_sandbox,
        tmp_path,
        clock,
        "shiphero",
        lambda sb, bad: shiphero_return_served_as(sb, bad, edit),
        reason,
    )


def test_shiphero_unknown_extra_fields_are_ignored(make_sandbox, tmp_path, clock):
    def extra(node: dict[str, Any]) -> None:
        node["x_new"] = {"a": 1}
        node["line_items"][0]["x_bin"] = "A-12"

    assert_extras_ignored(
        make_sandbox,
        tmp_path,
        clock,
        "shiphero",
        lambda sb, rid: shiphero_return_served_as(sb, rid, extra),
    )


# -- PeopleVox: the returns report --------------------------------------------------------------


def is_report(req: Request) -> bool:
    return b"GetReportData" in (req.headers.get("SOAPAction") or "").encode()


def pvx_rows_served_as(
    sb: Any,
    rid: str,
    edit: Callable[[list[str], dict[str, str]], None],
    *,
    extra_column: str | None = None,
) -> None:
    """Edit the bad RA's rows of the returns report CSV inside the SOAP answer."""
    emu = sb.warehouse

    def respond(req: Request) -> Response:
        with emu.lock:
            resp = emu.handle(req)
        root = ET.fromstring(resp.body)
        detail = next(el for el in root.iter() if el.tag.endswith("}Detail"))
        rows = list(csv.DictReader(io.StringIO(detail.text or "", newline="")))
        header = list(rows[0].keys()) if rows else []
        if extra_column and header:
            header.append(extra_column)
            for row in rows:
                row[extra_column] = "bin A-12"
        for row in rows:
            if row.get("RMA number") == rid:
                edit(header, row)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=header, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
        detail.text = out.getvalue()
        body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
        return Response(resp.status, body.replace(INVALID.encode(), INVALID_BYTES), resp.headers)

    emu.faults.inject(Fault("custom", response=respond), times=10**6, when=is_report)


def pvx_cell(column: str, value: str) -> Callable[[list[str], dict[str, str]], None]:
    def edit(header: list[str], row: dict[str, str]) -> None:
        row[column] = value

    return edit


PEOPLEVOX_REJECTED = [
    (
        "non-numeric quantity",
        pvx_cell("Quantity", "two"),
        r"row .*: quantity 'two' is not a whole number >= 0",
    ),
    (
        "negative quantity",
        pvx_cell("Quantity", "-1"),
        r"row .*: quantity '-1' is not a whole number >= 0",
    ),
    (
        "invalid UTF-8 in the condition",
        pvx_cell("Return condition", "Dam" + INVALID),
        r"row .*: Return condition is not valid UTF-8",
    ),
    (
        "invalid UTF-8 in the quantity",
        pvx_cell("Quantity", "1" + INVALID),
        r"row .*: quantity .* is not a whole number >= 0",
    ),
    ("missing SKU", pvx_cell("Item code", ""), r"row .*: no Item code"),
    ("null status", pvx_cell("RMA status", ""), r"no RMA status"),
]


@pytest.mark.parametrize(
    "case, edit, reason", PEOPLEVOX_REJECTED, ids=[c[0] for c in PEOPLEVOX_REJECTED]
)
def test_peoplevox_row_malformed_is_held_and_the_batch_goes_on(
    make_sandbox, tmp_path, clock, case, edit, reason
):
    assert_bad_one_held(
        make_sandbox,
        tmp_path,
        clock,
        "peoplevox",
        lambda sb, bad: pvx_rows_served_as(sb, bad, edit),
        reason,
    )


def test_peoplevox_unknown_extra_columns_are_ignored(make_sandbox, tmp_path, clock):
    assert_extras_ignored(
        make_sandbox,
        tmp_path,
        clock,
        "peoplevox",
        lambda sb, rid: pvx_rows_served_as(
            sb, rid, lambda header, row: None, extra_column="Bin location"
        ),
    )


# -- Xoro: ASNs ---------------------------------------------------------------------------------


def is_getasn(req: Request) -> bool:
    return req.path.lower().endswith("/asn/getasn")


def xoro_asn_served_as(sb: Any, rid: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    def edit_page(body: dict[str, Any]) -> None:
        for asn in body.get("Data") or []:
            if asn["AsnHeaderData"].get("RmaNumber") == rid:
                edit(asn)

    rewrite(sb.warehouse, is_getasn, edit_page)


def xoro_line(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(asn: dict[str, Any]) -> None:
        if value is _DELETE:
            asn["AsnDetailData"][0].pop(key, None)
        else:
            asn["AsnDetailData"][0][key] = value

    return edit


def xoro_header(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(asn: dict[str, Any]) -> None:
        asn["AsnHeaderData"][key] = value

    return edit


XORO_REJECTED = [
    (
        "wrong type: string quantity",
        xoro_line("QtyReceived", "two"),
        r"'QtyReceived' is 'two', not a quantity",
    ),
    ("negative quantity", xoro_line("QtyReceived", -1.0), r"'QtyReceived' is -1.0, not a quantity"),
    ("fractional quantity", xoro_line("QtyReceived", 1.5), r"'QtyReceived' is 1.5, not a quantity"),
    ("missing SKU", xoro_line("ItemNumber", _DELETE), r"line 1 has no ItemNumber"),
    (
        "wrong type: detail lines are a string",
        lambda asn: asn.update(AsnDetailData="none"),
        r"ASN-\d+ has no lines",
    ),
    ("null status", xoro_header("Status", None), r"has no 'Status' field"),
    (
        "invalid UTF-8 in the status",
        xoro_header("Status", "Clo" + INVALID),
        r"'Status' is not valid UTF-8",
    ),
]


@pytest.mark.parametrize("case, edit, reason", XORO_REJECTED, ids=[c[0] for c in XORO_REJECTED])
def test_xoro_asn_malformed_is_held_and_the_batch_goes_on(
    make_sandbox, tmp_path, clock, case, edit, reason
):
    assert_bad_one_held(
        make_sandbox,
        tmp_path,
        clock,
        "xoro",
        lambda sb, bad: xoro_asn_served_as(sb, bad, edit),
        reason,
        created="linked",
    )


def test_xoro_unknown_extra_fields_are_ignored(make_sandbox, tmp_path, clock):
    assert_extras_ignored(
        make_sandbox,
        tmp_path,
        clock,
        "xoro",
        lambda sb, rid: xoro_asn_served_as(
            sb,
            rid,
            lambda asn: asn.update(X_New={"a": 1}) or asn["AsnDetailData"][0].update(UnitCost=9.5),
        ),
    )


# -- the generic 3PL over HTTP: the receipt feed -----------------------------------------------


def receipt(rid: str, sku: str, **fields: Any) -> dict[str, Any]:
    return {
        "receipt_id": f"BAD-{rid}",
        "rma_number": rid,
        "sku": sku,
        "quantity": 1,
        "condition": "available",
        "received_at": "2026-06-01T12:00:30Z",
        **fields,
    }


def first_sku(sb: Any, rid: str) -> str:
    assert sb.warehouse.has_rma(rid)  # the folder 3PL reads its outbox here
    return str(sb.warehouse.rmas[rid]["lines"][0]["sku"])


def is_receipts(req: Request) -> bool:
    return req.path.endswith("/receipts")


def feed_also_serves(sb: Any, served: dict[str, Any]) -> None:
    """The receipt feed's last page also carries `served["record"]` (anything at all)."""

    def edit(body: dict[str, Any]) -> None:
        if body.get("next_page") is None and "record" in served:
            body["receipts"].append(served["record"])

    rewrite(sb.warehouse, is_receipts, edit)


GENERIC_REJECTED = [
    ("negative quantity", {"quantity": -1}, r"quantity -1 is not a whole number >= 0"),
    ("non-numeric quantity", {"quantity": "two"}, r"quantity 'two' is not a whole number >= 0"),
    ("missing SKU", {"sku": None}, r"sku is missing"),
    ("wrong type: sku is an object", {"sku": {"code": "TEE"}}, r"sku is a dict, not text"),
    (
        "wrong type: condition is a list",
        {"condition": ["available"]},
        r"condition is a list, not text",
    ),
    (
        "timestamp without a zone",
        {"received_at": "2026-06-01T12:00:30"},
        r"received_at: timestamp has no timezone",
    ),
    ("invalid UTF-8 in the SKU", {"sku": "TEE-" + INVALID}, r"sku is not valid UTF-8"),
    ("oversized SKU", {"sku": "S" * 3000}, r"sku is 3000 characters long"),
]


@pytest.mark.parametrize(
    "case, fields, reason", GENERIC_REJECTED, ids=[c[0] for c in GENERIC_REJECTED]
)
def test_generic_receipt_malformed_holds_its_rma_only(
    make_sandbox, tmp_path, clock, case, fields, reason
):
    served: dict[str, Any] = {}

    def serve_bad(sb: Any, bad: str) -> None:
        served["record"] = {**receipt(bad, first_sku(sb, bad)), **fields}
        feed_also_serves(sb, served)

    sb, cfg, bad = assert_bad_one_held(make_sandbox, tmp_path, clock, "generic", serve_bad, reason)
    # Once the 3PL corrects the record (same receipt id), the RMA goes on.
    served["record"] = receipt(bad, first_sku(sb, bad), quantity=0)
    clock.advance(60)
    sb.run_cycle(cfg)
    assert actions(sb, bad) == ["process"]


def test_generic_correction_of_an_older_bad_receipt_is_read(make_sandbox, tmp_path, clock):
    """The feed is read from a little before the newest receipt seen; a bad record keeps
    that cursor from passing it, so its correction is read though newer receipts came."""
    sb = make_sandbox("generic")
    (rid,) = open_returns(sb, 1)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    sku = first_sku(sb, rid)
    lines = sb.warehouse.rmas[rid]["lines"]
    with sb.warehouse.lock:
        sb.warehouse.receipts.append(
            receipt(rid, sku, quantity=-1, received_at="2026-06-01T12:00:00Z")
        )
    clock.advance(3600)  # the other units arrive an hour later
    sb.warehouse.add_receipts(rid, [(li["sku"], li["quantity"], "available") for li in lines])
    sb.run_cycle(cfg)
    assert actions(sb, rid) == []
    reported(cfg, rf"{rid}\s+poll\s+.*quantity -1")
    with sb.warehouse.lock:  # corrected in place: same id, same (old) time
        sb.warehouse.receipts[0]["quantity"] = 0
    clock.advance(60)
    sb.run_cycle(cfg)
    assert actions(sb, rid) == ["process"]


def test_generic_receipt_that_is_not_an_object_is_reported(make_sandbox, tmp_path, clock):
    sb = make_sandbox("generic")
    ids = open_returns(sb, 2)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    finish(sb, ids)
    feed_also_serves(sb, {"record": "R1,40000001,TEE,1"})
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.counts.processed == 2, result.stage_errors
    reported(cfg, r"-\s+poll\s+.*receipts page 1, record \d+: not an object")


def test_generic_receipt_unknown_extra_fields_are_ignored(make_sandbox, tmp_path, clock):
    sb = make_sandbox("generic")
    ids = open_returns(sb, 2)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    finish(sb, ids)
    with sb.warehouse.lock:
        for r in sb.warehouse.receipts:
            r["x_bin"] = {"aisle": 4}
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.ok and result.counts.processed == 2, result.stage_errors


# -- the generic 3PL over folders: receipt files ------------------------------------------------

GENERIC_FILES = [
    (
        "negative quantity",
        lambda rid, sku: (
            f"rma_number,sku,quantity,condition,receipt_id\n{rid},{sku},-1,available,F1\n".encode()
        ),
        r"line 2: quantity '-1' is not a whole number >= 0",
    ),
    (
        "non-numeric quantity",
        lambda rid, sku: (
            f"rma_number,sku,quantity,condition,receipt_id\n{rid},{sku},1.0,available,F1\n".encode()
        ),
        r"line 2: quantity '1.0' is not a whole number >= 0",
    ),
    (
        "invalid UTF-8",
        lambda rid, sku: (
            b"rma_number,sku,quantity,condition\n"
            + f"{rid},{sku},1,".encode()
            + INVALID_BYTES
            + b"\n"
        ),
        r"not UTF-8 text",
    ),
    (
        "missing SKU",
        lambda rid, sku: (
            f"rma_number,sku,quantity,condition,receipt_id\n{rid},,1,available,F1\n".encode()
        ),
        r"sku is missing",
    ),
    (
        "missing column",
        lambda rid, sku: f"rma_number,quantity,condition\n{rid},1,available\n".encode(),
        r"header lacks column\(s\) sku",
    ),
]


@pytest.mark.parametrize("case, content, reason", GENERIC_FILES, ids=[c[0] for c in GENERIC_FILES])
def test_generic_receipt_file_malformed_is_rejected_reported_and_the_rest_apply(
    make_sandbox, tmp_path, clock, case, content, reason
):
    sb = make_sandbox("generic", transport="folder", folder_root=tmp_path / "3pl")
    good = open_returns(sb, 3)
    bad = open_returns(sb, 1)[0]
    cfg = config(sb, tmp_path)
    assert sb.run_cycle(cfg).counts.pushed == 4
    finish(sb, good)
    sb.warehouse.write_inbox_file("bad-receipts.csv", content(bad, first_sku(sb, bad)))
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.counts.processed == 3, result.stage_errors
    assert actions(sb, bad) == []
    assert (tmp_path / "3pl" / "rejected" / "bad-receipts.csv").exists()
    reported(cfg, rf"receipt file bad-receipts.csv rejected: .*{reason}")


def test_generic_receipt_file_time_without_zone_is_utc_by_contract(make_sandbox, tmp_path, clock):
    sb = make_sandbox("generic", transport="folder", folder_root=tmp_path / "3pl")
    (rid,) = open_returns(sb, 1)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    assert sb.warehouse.has_rma(rid)  # the 3PL reads its outbox
    lines = sb.warehouse.rmas[rid]["lines"]
    text = "rma_number,sku,quantity,condition,receipt_id,received_at,x_extra\n" + "".join(
        f"{rid},{li['sku']},{li['quantity']},available,F{n},2026-06-01T12:00:00,zz\n"
        for n, li in enumerate(lines)
    )
    sb.warehouse.write_inbox_file("naive-times.csv", text)
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.ok and actions(sb, rid) == ["process"], result.stage_errors
