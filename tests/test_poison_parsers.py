"""Every parser of remote data returns a valid record or raises the one `Unreadable`
error, naming the field; nothing else escapes (issue 15 §1).

Property tests (hypothesis) feed each parser arbitrary JSON (and XML, CSV where the remote
speaks them), both free-form and shaped like a real record with any field replaced by
arbitrary JSON; text includes lone surrogates, control characters and non-ASCII digits.
Targeted tests pin the examples named in the issue: timestamps whose UTC conversion
overflows, a lone surrogate, JSON nested thousands deep, "１００２" and "1001²" as ids, NUL
in a SKU.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopsync import errors
from loopsync.connectors import generic, peoplevox
from loopsync.connectors.generic import wire_http as generic_http
from loopsync.connectors.shiphero import mapping as shiphero
from loopsync.connectors.shiphero import wire as shiphero_wire
from loopsync.connectors.xoro import mapping as xoro
from loopsync.connectors.xoro import wire as xoro_wire
from loopsync.errors import ErrorBody, RemoteError, Unreadable
from loopsync.http import HttpResult
from loopsync.loop_client import _return_path, parse_returns_body
from loopsync.models import (
    MAX_UNITS,
    LoopReturn,
    MalformedReturn,
    RmaRef,
    RmaStatus,
    asn_row_problem,
    check_tree,
    identifier,
    parse_asn_row,
    return_facts,
    whole_number,
)
from loopsync.state import Store
from loopsync.testing import FakeClock
from loopsync.timeutil import parse_timestamp

FEW = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text as a hostile remote sends it: any code point, lone surrogates (JSON "\ud800") and
# control characters included, plus digits that are not ASCII.
hostile_chars = st.characters(exclude_categories=())
hostile_text = st.one_of(
    st.text(hostile_chars, max_size=12),
    st.sampled_from(
        [
            "\ud800",
            "a\x00b",
            "１００２",
            "1001²",
            "\ufffd",
            " 7 ",
            "",
            "x" * 300,
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-05-01T10:00:00Z",
            "2026-05-01 10:00:00",
            "NaN",
            "-1",
            "2.0",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
any_json = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def deep(depth: int = 5000) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return {"nested": value}


def maybe(valid: Any) -> st.SearchStrategy[Any]:
    """A field as a real remote sends it, or anything else."""
    return st.one_of(st.just(valid), any_json)


def shaped(record: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`record` with some fields replaced by arbitrary JSON, some dropped, some added."""
    return st.builds(
        lambda fields, extra: {**{k: v for k, v in fields.items() if v is not _DROP}, **extra},
        st.fixed_dictionaries(
            {k: st.one_of(st.just(v), any_json, st.just(_DROP)) for k, v in record.items()}
        ),
        st.dictionaries(hostile_text, any_json, max_size=2),
    )


_DROP = object()


def storable(value: Any) -> None:
    """What loopsync keeps and sends on must encode: SQLite text and JSON request bodies."""
    json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")


_DB = sqlite3.connect(":memory:")
_DB.execute("create table t (v text)")


def insertable(*texts: Any) -> None:
    for text in texts:
        _DB.execute("insert into t values (?)", [text])


# -- Loop -----------------------------------------------------------------------------------

LOOP_RETURN = {
    "id": 1001,
    "state": "open",
    "updated_at": "2026-05-01T10:00:00Z",
    "created_at": "2026-05-01T09:00:00Z",
    "order_id": "55",
    "provider_order_id": "9001",
    "order_name": "#1001",
    "order_number": "1001",
    "customer": "pat@example.com",
    "destination_id": 12,
    "carrier": "ups",
    "tracking_number": "1Z999",
    "line_items": [
        {
            "line_item_id": 7,
            "sku": "SKU-1",
            "title": "Shirt",
            "return_reason": "Big",
            "parent_return_reason": "",
            "return_comment": "",
            "barcode": "1",
            "outcome": "refund",
        }
    ],
}


def check_loop_return(ret: LoopReturn) -> None:
    assert ret.id.isascii() and ret.id.isdigit()
    assert ret.updated_at.tzinfo is not None and ret.state
    storable(ret.raw)
    insertable(ret.id, ret.state, ret.order_name, ret.destination_id, ret.customer)
    for line in ret.line_items:
        insertable(line.sku, line.line_item_id, line.title, line.comment)
        assert line.sku is None or "\x00" not in line.sku


def parse_loop_return(raw: Any) -> None:
    try:
        ret = LoopReturn.from_api(raw)
    except Unreadable as exc:
        assert str(exc)
        return
    check_loop_return(ret)


def facts_agree_with_the_whole_parse(raw: Any) -> None:
    """What the ingest checks (`return_facts`) refuses exactly what `LoopReturn.from_api`
    refuses, with the same reason; what it passes, the whole parse reads the same."""
    try:
        facts = return_facts(raw)
    except Unreadable as exc:
        with pytest.raises(Unreadable) as whole:
            LoopReturn.from_api(raw)
        assert str(whole.value) == str(exc)
        return
    ret = LoopReturn.from_api(raw)
    assert (facts.id, facts.state, facts.updated_at, facts.created_at) == (
        ret.id,
        ret.state,
        ret.updated_at,
        ret.created_at,
    )
    assert (facts.destination_id, facts.order_name, facts.encoded) == (
        ret.destination_id,
        ret.order_name,
        ret.encoded,
    )


@FEW
@given(any_json)
def test_what_ingest_checks_of_any_json_agrees_with_the_whole_parse(raw):
    facts_agree_with_the_whole_parse(raw)


@FEW
@given(shaped(LOOP_RETURN), st.lists(shaped(LOOP_RETURN["line_items"][0]), max_size=3))  # type: ignore[index]
def test_what_ingest_checks_of_a_return_with_any_field_wrong_agrees_with_the_whole_parse(
    raw, lines
):
    facts_agree_with_the_whole_parse({**raw, "line_items": lines} if lines else raw)


@FEW
@given(any_json)
def test_loop_return_from_any_json_is_a_valid_return_or_unreadable(raw):
    parse_loop_return(raw)


@FEW
@given(shaped(LOOP_RETURN), st.lists(shaped(LOOP_RETURN["line_items"][0]), max_size=3))  # type: ignore[index]
def test_loop_return_with_any_field_wrong_is_a_valid_return_or_unreadable(raw, lines):
    parse_loop_return({**raw, "line_items": lines} if lines else raw)


@FEW
@given(
    shaped(
        {
            "id": 1001,
            "return_line_item_id": 7,
            "tracking_number": "1Z9",
            "updated_at": "2026-05-01T10:00:00Z",
        }
    )
    | any_json
)
def test_loop_asn_row_is_a_valid_row_or_unreadable(row):
    try:
        parsed = parse_asn_row(row)
    except Unreadable:
        assert asn_row_problem(row)
        return
    assert asn_row_problem(row) is None
    storable(parsed)
    insertable(str(parsed["id"]), parsed.get("tracking_number"), parsed.get("updated_at"))


@FEW
@given(any_json | st.fixed_dictionaries({"returns": any_json, "nextPageUrl": any_json}))
def test_loop_list_page_is_returns_and_a_link_or_an_error_body(body):
    try:
        returns, next_url = parse_returns_body(body)
    except ErrorBody:
        return
    assert isinstance(returns, list) and (next_url is None or isinstance(next_url, str))


@pytest.mark.parametrize("updated_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_whose_utc_conversion_overflows_is_unreadable_naming_the_field(updated_at):
    with pytest.raises(Unreadable, match="return 1001: updated_at"):
        LoopReturn.from_api({**LOOP_RETURN, "updated_at": updated_at})
    with pytest.raises(Unreadable, match="created_at"):
        LoopReturn.from_api({**LOOP_RETURN, "created_at": updated_at})
    with pytest.raises(ValueError):  # not OverflowError
        parse_timestamp(updated_at)


@pytest.mark.parametrize("field", ["state", "order_name", "customer"])
def test_lone_surrogate_is_unreadable_at_parse_time_not_at_the_insert(field):
    with pytest.raises(Unreadable, match="surrogate"):
        LoopReturn.from_api({**LOOP_RETURN, field: "\ud800"})
    line = {**LOOP_RETURN["line_items"][0], "title": "caf\udce9"}  # type: ignore[index]
    with pytest.raises(Unreadable, match="surrogate"):
        LoopReturn.from_api({**LOOP_RETURN, "line_items": [line]})


def test_json_nested_thousands_deep_is_unreadable_not_a_recursion_error():
    with pytest.raises(Unreadable, match="nested"):
        LoopReturn.from_api({**LOOP_RETURN, "extra": deep()})
    with pytest.raises(Unreadable):
        parse_asn_row({"id": 1001, "tracking_number": "1Z", "x": deep()})
    with pytest.raises(Unreadable):
        check_tree(deep(), "body")
    with pytest.raises(ErrorBody):
        parse_returns_body(deep())


@pytest.mark.parametrize("rid", ["１００２", "1001²", "1001\x00", "-1001", "10 01", "٣"])
def test_numeric_ids_are_ascii_digits_only(rid):
    with pytest.raises(Unreadable, match="return id"):
        LoopReturn.from_api({**LOOP_RETURN, "id": rid})
    with pytest.raises(Unreadable, match="id"):
        parse_asn_row({"id": rid, "tracking_number": "1Z"})
    with pytest.raises(ValueError):
        _return_path(rid, "process")


@pytest.mark.parametrize("sku", ["A\x00B", "A\x1bB", "A\x7fB", "A\u2028B", "A\ud800"])
def test_control_characters_are_refused_in_skus_and_ids(sku):
    line = {**LOOP_RETURN["line_items"][0], "sku": sku}  # type: ignore[index]
    with pytest.raises(Unreadable, match="sku"):
        LoopReturn.from_api({**LOOP_RETURN, "line_items": [line]})
    with pytest.raises(Unreadable, match="order_name"):
        LoopReturn.from_api({**LOOP_RETURN, "order_name": sku})
    with pytest.raises(Unreadable):
        identifier(sku, "sku")


def test_free_text_keeps_line_breaks_and_loses_other_control_characters():
    first = LOOP_RETURN["line_items"][0]  # type: ignore[index]
    line = {**first, "return_comment": "too\x00 big\nreally\t\x0b"}
    ret = LoopReturn.from_api({**LOOP_RETURN, "line_items": [line]})
    assert ret.line_items[0].comment == "too big\nreally\t"


def test_unreadable_is_the_one_error_drawn_in_the_tree_and_a_value_error():
    assert MalformedReturn is Unreadable
    assert issubclass(Unreadable, errors.LoopsyncError) and issubclass(Unreadable, ValueError)
    assert "Unreadable" in (errors.__doc__ or "")
    assert Unreadable("sku is a dict", field="sku").field == "sku"


def test_stored_return_row_takes_every_accepted_return(tmp_path):
    store = Store(tmp_path / "s.sqlite", FakeClock())
    ret = LoopReturn.from_api({**LOOP_RETURN, "customer": "Zoë \x00", "x": ["é", {"k": 1.5}]})
    with store.atomic():
        store.returns.upsert(
            ret.id,
            ret.raw,
            state=ret.state,
            updated_at=ret.updated_at,
            created_at=ret.created_at,
            destination_id=ret.destination_id,
            order_name=ret.order_name,
        )
    assert store.returns.snapshot(ret.id)["x"] == ["é", {"k": 1.5}]
    store.close()


# -- counts ---------------------------------------------------------------------------------


@FEW
@given(any_json)
def test_whole_number_is_a_bounded_count_or_unreadable(value):
    try:
        n = whole_number(value, "quantity")
    except Unreadable:
        return
    assert isinstance(n, int) and 0 <= n <= MAX_UNITS


@pytest.mark.parametrize("value", ["１", "²", 10**400, float("inf"), "1e400", True, -1])
def test_whole_number_refuses_non_ascii_digits_and_absurd_values(value):
    with pytest.raises(Unreadable):
        whole_number(value, "quantity")


# -- ShipHero -------------------------------------------------------------------------------

REF = RmaRef("1001", "UmV0dXJuOjE=", {"legacy_id": 1})
SHIPHERO_RETURN = {
    "id": "UmV0dXJuOjE=",
    "legacy_id": 1,
    "partner_id": "1001",
    "status": "complete",
    "total_items_expected": 1,
    "total_items_received": 1,
    "line_items": [
        {"line_item": {"sku": "SKU-1"}, "quantity": 1, "quantity_received": 1, "condition": "good"}
    ],
}
SHIPHERO_ORDER = {
    "id": "T3JkZXI6MQ==",
    "legacy_id": 5,
    "order_number": "#1001",
    "line_items": {
        "edges": [{"node": {"sku": "SKU-1"}}],
        "pageInfo": {"hasNextPage": False, "endCursor": None},
    },
    "shipping_address": {"first_name": "Pat", "last_name": "Lee", "city": "X"},
}


def check_status(status: RmaStatus) -> None:
    assert status.status and status.expected_units >= 0 and status.received_units >= 0
    storable([status.status, status.detail, [(i.sku, i.condition) for i in status.items]])
    json.dumps(status.fingerprint())


@FEW
@given(
    st.one_of(
        any_json,
        st.fixed_dictionaries({"data": shaped(SHIPHERO_RETURN)}),
        st.fixed_dictionaries(
            {
                "data": st.fixed_dictionaries(
                    {
                        **{k: st.just(v) for k, v in SHIPHERO_RETURN.items()},
                        "line_items": st.lists(
                            shaped(SHIPHERO_RETURN["line_items"][0]), max_size=3
                        ),
                    }
                )
            }
        ),
    ),
    st.none() | hostile_text,
)
def test_shiphero_polled_return_is_a_valid_status_or_unreadable(entry, field_error):
    try:
        status = shiphero.polled_status(REF, entry, field_error)
    except Unreadable:
        return
    check_status(status)


@FEW
@given(any_json | shaped(SHIPHERO_ORDER))
def test_shiphero_order_is_read_or_unreadable(order):
    try:
        located, after = shiphero.read_order(order)
    except Unreadable:
        return
    storable(located)
    assert after is None or isinstance(after, str)
    assert all(isinstance(s, str) and "\x00" not in s for s in located["skus"])


@FEW
@given(
    any_json
    | st.fixed_dictionaries(
        {
            "data": st.fixed_dictionaries(
                {
                    "return_create": st.fixed_dictionaries(
                        {"return": any_json | shaped(SHIPHERO_RETURN)}
                    )
                }
            )
        }
    )
)
def test_shiphero_created_return_is_a_reference_or_unreadable(body):
    try:
        ref = shiphero.rma_ref("1001", shiphero.created_return(body))
    except Unreadable:
        return
    storable(ref.extra)
    insertable(ref.rma_id)


@FEW
@given(any_json)
def test_shiphero_answer_helpers_never_raise(body):
    if isinstance(body, dict):
        assert all(isinstance(v, str) for v in shiphero_wire.messages_by_root_key(body).values())
    cost = shiphero_wire._complexity(body)
    assert cost is None or cost >= 0
    wait = shiphero_wire._seconds(body)
    assert wait is None or wait >= 0
    assert isinstance(shiphero_wire._error_text(body), str)


# -- PeopleVox ------------------------------------------------------------------------------

COLS = peoplevox.ReturnsColumns()
PVX_REF = RmaRef("1001", "1001", {"expected": {"SKU-1": 1}})
PVX_ROW = {
    COLS.rma_number: "1001",
    COLS.rma_status: "Completed",
    COLS.item_code: "SKU-1",
    COLS.quantity: "1",
    COLS.condition: "Good",
    COLS.reusable: "Yes",
    COLS.date: "2026-05-01T10:00:00",
}
csv_cells = st.text(
    hostile_chars.filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF), max_size=8
) | st.sampled_from(["１", "²", "-1", "1e400", "2.0", "", "\x00"])


def pvx_status(rows: Any) -> None:
    try:
        status = peoplevox.rma_status_from_rows(PVX_REF, rows, COLS, frozenset({"damaged"}))
    except Unreadable:
        return
    check_status(status)


@FEW
@given(
    st.lists(
        st.fixed_dictionaries({k: st.one_of(st.just(v), csv_cells) for k, v in PVX_ROW.items()}),
        min_size=1,
        max_size=3,
    )
)
def test_peoplevox_rows_read_through_csv_are_a_valid_status_or_unreadable(rows):
    text = peoplevox.csv_text(list(PVX_ROW), rows)
    try:
        parsed = peoplevox.csv_rows(text)
    except Unreadable:
        return
    pvx_status(parsed)


@FEW
@given(st.lists(any_json | shaped(PVX_ROW), min_size=1, max_size=3))
def test_peoplevox_rows_of_any_json_are_a_valid_status_or_unreadable(rows):
    pvx_status(rows)


@FEW
@given(
    st.text(hostile_chars, max_size=60)
    | st.sampled_from(['a,"b', "x" * 200_000, 'h\n"' + "y" * 200_000 + '"'])
)
def test_peoplevox_csv_of_any_text_is_rows_or_unreadable(text):
    try:
        rows = peoplevox.csv_rows(text)
    except Unreadable:
        return
    assert all(isinstance(r, dict) for r in rows)


def test_peoplevox_csv_field_over_the_csv_limit_is_read_for_the_row_parser_to_judge():
    # Not Unreadable for the whole report: one long cell holds back only its own row.
    rows = peoplevox.csv_rows('h,k\n"' + "y" * 200_000 + '",1\nz,2\n')
    assert [len(r["h"]) for r in rows] == [200_000, 1] and rows[1]["k"] == "2"


def soap(result: str) -> str:
    return (
        '<?xml version="1.0"?><soap:Envelope xmlns:soap='
        '"http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><GetDataResponse '
        f'xmlns="http://www.peoplevox.net/"><GetDataResult>{result}</GetDataResult>'
        "</GetDataResponse></soap:Body></soap:Envelope>"
    )


xml_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)


@FEW
@given(
    st.one_of(
        st.text(max_size=80),
        st.builds(
            lambda rid, total, detail: soap(
                f"<ResponseId>{rid}</ResponseId><TotalCount>{total}</TotalCount><Detail>{detail}"
                "</Detail>"
            ),
            xml_text | st.sampled_from(["０", "²", "-1", "0"]),
            xml_text,
            xml_text,
        ),
        st.just(soap("<ResponseId>" + "<a>" * 3000 + "</a>" * 3000 + "</ResponseId>")),
    )
)
def test_peoplevox_answer_is_a_result_or_a_typed_remote_error(text):
    answer = HttpResult(200, {}, text, None)
    try:
        result = peoplevox.read_answer(answer, "GetData", idempotent=True, throttle_wait=1)
    except RemoteError:
        return
    assert result.response_id == 0 and isinstance(result.detail, str)


@FEW
@given(
    st.text(hostile_chars, max_size=30)
    | st.sampled_from(
        [
            "0001-01-01T00:00:00",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "01/01/0001 00:00:00",
        ]
    )
)
def test_peoplevox_report_date_is_a_sane_date_or_none(text):
    when = peoplevox.parse_report_date(text, "%d/%m/%Y %H:%M:%S")
    assert when is None or 1971 <= when.year <= 9000


# -- Xoro -----------------------------------------------------------------------------------

XORO = SimpleNamespace(
    conf=SimpleNamespace(asn_status_field="Status", received_qty_field="QtyReceived")
)
XORO_REF = RmaRef("1001", "1001", {"asn_number": "ASN-1"})
XORO_ASN = {
    "AsnHeaderData": {"AsnNumber": "ASN-1", "Status": "Closed", "RmaNumber": "1001"},
    "AsnDetailData": [{"ItemNumber": "SKU-1", "BaseQtyToReceive": 1.0, "QtyReceived": 1.0}],
}


@FEW
@given(
    st.one_of(
        any_json,
        shaped(XORO_ASN),
        st.fixed_dictionaries(
            {
                "AsnHeaderData": shaped(XORO_ASN["AsnHeaderData"]),
                "AsnDetailData": st.lists(
                    shaped(XORO_ASN["AsnDetailData"][0]),  # type: ignore[index]
                    max_size=3,
                ),
            }
        ),
    )
)
def test_xoro_asn_is_a_valid_status_or_unreadable(asn):
    if not isinstance(asn, dict):
        asn = {"Data": asn}
    try:
        status = xoro.asn_status(XORO_REF, asn, XORO.conf)  # type: ignore[arg-type]
    except Unreadable:
        return
    check_status(status)
    assert isinstance(xoro.asn_number_of(asn), str)


@FEW
@given(
    any_json
    | st.fixed_dictionaries(
        {"Result": any_json, "Message": any_json, "Data": any_json, "TotalPages": any_json}
    )
)
def test_xoro_envelope_is_accepted_or_a_typed_remote_error(body):
    try:
        xoro_wire.check_envelope(HttpResult(200, {}, "{}", body))
    except RemoteError:
        return
    assert isinstance(xoro.data_rows(body.get("Data")), list)
    total = xoro_wire._int_or_none(body.get("TotalPages"))
    assert total is None or isinstance(total, int)


def test_xoro_total_pages_of_infinity_is_no_page_count():
    assert xoro_wire._int_or_none(float("inf")) is None


# -- generic 3PL ----------------------------------------------------------------------------

RECEIPT = {
    "receipt_id": "r1",
    "rma_number": "1001",
    "sku": "SKU-1",
    "quantity": 1,
    "condition": "available",
    "received_at": "2026-05-01T10:00:00Z",
}


def check_receipt(line: generic.ReceiptLine) -> None:
    assert line.rma_number and line.sku and 0 <= line.quantity <= MAX_UNITS
    storable(line.to_json())
    insertable(line.key, line.rma_number, line.sku, line.condition)
    if line.received_at:
        assert parse_timestamp(line.received_at).year >= 1971


@FEW
@given(any_json | shaped(RECEIPT), st.booleans())
def test_generic_receipt_is_a_valid_line_or_unreadable(raw, require_time):
    if not isinstance(raw, dict):
        raw = {"receipt": raw}
    try:
        line = generic.parse_receipt(raw, fallback_key="file:x:1", require_time=require_time)
    except Unreadable:
        return
    check_receipt(line)


@FEW
@given(
    any_json | st.fixed_dictionaries({"receipts": st.lists(any_json | shaped(RECEIPT), max_size=3)})
)
def test_generic_receipts_page_is_lines_and_held_records_or_an_error_body(body):
    if not isinstance(body, dict):
        body = {"receipts": body}
    try:
        good, bad = generic_http._page_receipts(body, 1)
    except ErrorBody:
        return
    for line in good:
        check_receipt(line)
    for rma, why, at in bad:
        assert isinstance(why, str) and (at is None or at.year >= 1971)
        insertable(rma, why)


def receipts_csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(RECEIPT))
    writer.writerows(list(row.values()) for row in rows)
    return out.getvalue()


@FEW
@given(
    st.lists(
        st.fixed_dictionaries(
            {k: st.one_of(st.just(str(v)), csv_cells) for k, v in RECEIPT.items()}
        ),
        max_size=3,
    ).map(receipts_csv)
    | st.text(hostile_chars.filter(lambda c: not 0xD800 <= ord(c) <= 0xDFFF), max_size=80)
)
def test_generic_receipt_file_of_any_csv_is_lines_or_unreadable(text):
    for data in (text.encode("utf-8"), text.encode("utf-8")[:-1] + b"\xff"):
        try:
            lines = generic.parse_receipt_file(data)
        except Unreadable:
            continue
        for line in lines:
            check_receipt(line)


@pytest.mark.parametrize("quantity", ["１", "²", "1e400", str(10**30)])
def test_generic_receipt_quantity_is_ascii_digits_within_reason(quantity):
    with pytest.raises(Unreadable, match="quantity"):
        generic.parse_receipt({**RECEIPT, "quantity": quantity})


def test_generic_receipt_time_far_in_the_past_is_held_not_an_overflowing_cursor():
    record = {**RECEIPT, "received_at": "0001-01-01T00:00:00+01:00"}
    with pytest.raises(Unreadable, match="received_at"):
        generic.parse_receipt(record, require_time=True)
    good, bad = generic_http._page_receipts({"receipts": [record]}, 1)
    assert good == [] and bad[0][2] is None


def test_generic_receipt_file_with_a_field_over_the_csv_limit_is_unreadable():
    data = ('rma_number,sku,quantity,condition\n1001,"' + "x" * 200_000 + '",1,ok\n').encode()
    with pytest.raises(Unreadable):
        generic.parse_receipt_file(data)


def test_a_loop_time_in_year_one_is_unreadable_not_a_cursor_that_overflows():
    with pytest.raises(Unreadable, match="out of range"):
        LoopReturn.from_api({**LOOP_RETURN, "updated_at": "0001-01-01T00:00:00Z"})


def test_shiphero_order_with_a_lone_surrogate_in_its_address_is_unreadable():
    # The address is sent back in return_create: it would not encode in the request body.
    with pytest.raises(Unreadable, match="city"):
        shiphero.read_order({**SHIPHERO_ORDER, "shipping_address": {"city": "\ud800"}})


def test_line_item_ids_sent_to_loop_grading_are_numbers_only_when_ascii_digits():
    from loopsync import rules

    assert rules._int_or_str("42") == 42
    assert rules._int_or_str("²") == "²" and rules._int_or_str("４２") == "４２"
