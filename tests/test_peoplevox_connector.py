"""PeopleVox connector: pure XML/CSV/settings pieces, then the connector over real HTTP
against the emulated PeopleVox on 127.0.0.1."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    MemoryKeyValue,
    NotReady,
    PushRequest,
    WarehouseSettings,
)
from loopsync.rules import GradingRules, StatusRules
from loopsync.connectors.peoplevox.wire import (
    PVX_NS,
    SOAP_NS,
    SessionCredentials,
    SoapFault,
    any_of_clause,
    build_envelope,
    csv_rows,
    csv_text,
    equals_clause,
    fault_error,
    field_ref,
    parse_fault,
    parse_result,
    read_answer,
    service_url,
    since_clause,
)
from loopsync.connectors.peoplevox.connector import PeopleVoxConnector
from loopsync.connectors.peoplevox.settings import ReturnsColumns
from loopsync.connectors.peoplevox.mapping import rma_status_from_rows
from loopsync.errors import (
    AuthError,
    ConfigError,
    DryRunViolation,
    InvalidSession,
    PeopleVoxError,
    OutcomeUnknown,
    PermanentError,
    RateLimited,
    Rejected,
    TransientError,
)
from loopsync.http import HttpResult, RetryPolicy
from loopsync.logs import configure as configure_logs
from loopsync.models import LoopReturn, RmaRef
from loopsync.sandbox.peoplevox import PeopleVoxEmulator, soap_fault
from loopsync.sandbox.server import Fault, Request
from loopsync.testing import FakeClock, in_process_url, mount

HARD_TEXT = 'O\'Brien, "Bob" —\nZoë 山田, Ünïcode\r\nline 3'


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock("2026-06-01T12:00:00Z")


class ServedEmulator(PeopleVoxEmulator):
    url = ""  # where it answers: in process (loopsync.testing.mount), no socket


@pytest.fixture
def emu(fake_clock: FakeClock) -> ServedEmulator:
    emulator = ServedEmulator(clock=fake_clock)
    emulator.url = in_process_url(emulator)
    return emulator


def make_connector(
    emu: ServedEmulator,
    clock: FakeClock,
    *,
    env: dict[str, str] | None = None,
    kv: MemoryKeyValue | None = None,
    dry_run: bool = False,
    **overrides: Any,
) -> PeopleVoxConnector:
    """A connector configured the way the core would from the emulator's config."""
    raw = emu.warehouse_config(emu.url)
    destinations = raw.pop("destinations")
    for core_key in ("kind", "grading"):
        raw.pop(core_key)
    raw.update(overrides)
    section = Section(raw, file="test.yaml", path="warehouse", env=env or emu.secret_env())
    base_url = section.url("base_url", PeopleVoxConnector.default_base_url)  # the core's key
    own = PeopleVoxConnector.parse_settings(section)
    section.done()
    d = PeopleVoxConnector.default_statuses
    settings = WarehouseSettings(
        kind="peoplevox",
        base_url=base_url,
        destinations=destinations,
        statuses=StatusRules.build(
            d["process"],
            d["flag"],
            d["ignore"],
            d["report"],
            PeopleVoxConnector.default_flag_conditions,
        ),
        grading=GradingRules(),
        order_wait=timedelta(days=7),
        poll_batch=50,
        timeout=5.0,
        connector=own,
    )
    ctx = ConnectorContext(
        "test",
        clock,
        kv=kv or MemoryKeyValue(),
        dry_run=dry_run,
        policy=RetryPolicy(attempts=4, base=0.01, cap=0.05, retry_after_cap=60),
    )
    conn = PeopleVoxConnector(settings, ctx)
    mount(conn.client.http.session, emu)
    return conn


def loop_return(
    rid: str = "501",
    *,
    order: str = "#1001",
    customer: str = "Ann Example",
    tracking: str | None = "1Z999AA10123456784",
    lines: tuple[tuple[str, str, str], ...] = (("SKU-1", "Too small", ""),),
) -> dict[str, Any]:
    """A Loop return (Detailed Returns List shape); lines are (sku, reason, comment)."""
    return {
        "id": rid,
        "state": "open",
        "updated_at": "2026-06-01T10:00:00Z",
        "order_name": order,
        "order_number": order.lstrip("#"),
        "provider_order_id": f"gid-{rid}",
        "order_id": f"loop-order-{rid}",
        "customer": customer,
        "destination_id": "12",
        "tracking_number": tracking,
        "line_items": [
            {
                "line_item_id": f"{rid}-{n}",
                "sku": sku,
                "title": f"Item {sku}",
                "return_reason": reason,
                "return_comment": comment,
            }
            for n, (sku, reason, comment) in enumerate(lines)
        ],
    }


def push_request(
    raw: dict[str, Any], site: str = "MAIN", asn_rows: tuple[dict[str, Any], ...] = ()
) -> PushRequest:
    return PushRequest(LoopReturn.from_api(raw), site, asn_rows)


def connected(
    emu: ServedEmulator, clock: FakeClock, raw: dict[str, Any] | None = None
) -> tuple[dict[str, Any], PeopleVoxConnector]:
    """The return `raw` (default: `loop_return()`) with its order in PeopleVox, and a
    connector."""
    raw = loop_return() if raw is None else raw
    emu.on_loop_return(raw)
    return raw, make_connector(emu, clock)


def create(con: PeopleVoxConnector, req: PushRequest) -> RmaRef:
    return con.create_rma(req, con.locate(req))


def ops(emu: ServedEmulator, name: str) -> int:
    return emu.operations.count(name)


def is_save_to(template: str):  # noqa: ANN201 - a fault predicate
    return lambda req: (
        PeopleVoxEmulator.operation(req) == "SaveData"
        and f"<pvx:TemplateName>{template}</pvx:TemplateName>".encode() in req.body
    )


# -- pure: XML --------------------------------------------------------------------------


def test_envelope_carries_session_header_and_namespaced_operation() -> None:
    raw = build_envelope(
        "GetData",
        {"getRequest": {"TemplateName": "Sales orders", "PageNo": 1}},
        SessionCredentials("abc1234", "sess-1"),
    )
    root = ET.fromstring(raw)
    creds = root.find(f"{{{SOAP_NS}}}Header/{{{PVX_NS}}}UserSessionCredentials")
    assert creds is not None
    assert [(el.tag.split("}")[1], el.text) for el in creds] == [
        ("UserId", "0"),
        ("ClientId", "abc1234"),
        ("SessionId", "sess-1"),
    ]
    page = root.find(
        f"{{{SOAP_NS}}}Body/{{{PVX_NS}}}GetData/{{{PVX_NS}}}getRequest/{{{PVX_NS}}}PageNo"
    )
    assert page is not None and page.text == "1"


def test_envelope_without_credentials_has_no_header() -> None:
    root = ET.fromstring(build_envelope("Authenticate", {"clientId": "c"}))
    assert root.find(f"{{{SOAP_NS}}}Header") is None


def test_envelope_keeps_carriage_returns_and_non_ascii_in_text() -> None:
    raw = build_envelope("SaveData", {"saveRequest": {"CsvData": HARD_TEXT}})
    el = ET.fromstring(raw).find(f".//{{{PVX_NS}}}CsvData")
    assert el is not None and el.text == HARD_TEXT


def _answer(op: str, response_id: str, detail: str, total: str = "0") -> str:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}">'
        f'<soap:Body><{op}Response xmlns="{PVX_NS}"><{op}Result>'
        f"<ResponseId>{response_id}</ResponseId><TotalCount>{total}</TotalCount>"
        f"<Detail>{detail}</Detail></{op}Result></{op}Response></soap:Body></soap:Envelope>"
    )


def test_parse_result_reads_response_id_detail_and_total() -> None:
    result = parse_result(_answer("GetData", "0", "A,B\n1,&quot;x, y&quot;", "7"), "GetData")
    assert (result.response_id, result.detail, result.total_count) == (0, 'A,B\n1,"x, y"', 7)
    with pytest.raises(ValueError):
        parse_result(_answer("GetData", "0", ""), "SaveData")
    with pytest.raises(ValueError):
        parse_result("<html>502</html>", "GetData")


def test_parse_fault() -> None:
    text = soap_fault("Client", "Server was unable to read request.").body.decode()
    assert parse_fault(text) == SoapFault("soap:Client", "Server was unable to read request.")
    assert parse_fault(_answer("GetData", "0", "")) is None
    assert parse_fault("not xml") is None


@pytest.mark.parametrize(
    "fault, idempotent, expected",
    [
        (SoapFault("soap:Client", "bad request"), True, PermanentError),
        (SoapFault("soap:Server", "boom"), True, TransientError),
        (SoapFault("soap:Server", "boom"), False, OutcomeUnknown),
        (SoapFault("soap:Server", "Request limit exceeded: too many requests"), False, RateLimited),
    ],
)
def test_fault_error_classes(fault: SoapFault, idempotent: bool, expected: type) -> None:
    error = fault_error(fault, idempotent=idempotent, retry_after=15.0)
    assert type(error) is expected
    if expected is RateLimited:
        assert error.retry_after == 15.0


def test_response_id_minus_one_is_a_typed_error_with_detail(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    con = make_connector(emu, fake_clock)
    with pytest.raises(PeopleVoxError) as info:
        con.client.get_save_template("No such template")
    assert info.value.detail == "Template 'No such template' does not exist"
    assert info.value.system == "peoplevox"


# -- pure: CSV, SearchClause ------------------------------------------------------------


def test_csv_text_follows_the_template_columns() -> None:
    text = csv_text(["A", "Unknown", "B"], [{"A": "1", "B": "2", "Extra": "dropped"}])
    assert text == "A,Unknown,B\n1,,2\n"


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "with, comma",
        'with "quotes"',
        "multi\nline",
        "crlf\r\ninside",
        "Zoë 山田 — ünïcode",
        "",
        " spaced ",
    ],
)
def test_csv_round_trip(value: str) -> None:
    text = csv_text(["Name", "Other"], [{"Name": value, "Other": "x"}])
    assert csv_rows(text) == [{"Name": value, "Other": "x"}]


def test_csv_rows_reads_crlf_files_and_empty_details() -> None:
    assert csv_rows('A,B\r\n"1\r\n2",3\r\n') == [{"A": "1\r\n2", "B": "3"}]
    assert csv_rows("") == [] and csv_rows("A,B\r\n") == []


def test_search_clause_building() -> None:
    assert equals_clause("Attribute1", 'a"b\\c') == 'Attribute1.Equals("a\\"b\\\\c")'
    assert field_ref("RMA number") == "[RMA number]"
    assert any_of_clause("RMA number", ["1", "2"]) == '[RMA number] == "1" OR [RMA number] == "2"'
    assert (
        since_clause("Return date", datetime(2026, 6, 1, 9, 5, 0))
        == "[Return date] >= DateTime(2026,06,01,09,05,00)"
    )


# -- pure: settings ---------------------------------------------------------------------


def _settings(raw: dict[str, Any]) -> Any:
    section = Section(raw, file="m.yaml", path="warehouse", env={"PVX_PW": "pvx-password"})
    own = PeopleVoxConnector.parse_settings(section)
    section.done()
    return own


BASE = {"region": "emea", "client_id": "abc1234", "username": "api", "password": "${PVX_PW}"}


def test_settings_defaults() -> None:
    own = _settings(dict(BASE))
    assert own.templates.return_authorizations == "Return authorizations"
    assert own.templates.return_authorization_items == "Return authorizations items"
    assert own.returns.name == "Loop returns" and own.returns.operation == "GetReportData"
    assert own.returns.columns == ReturnsColumns()
    assert (own.rate_limit, own.rate_period, own.items_per_page) == (15, 15.0, 200)
    assert (own.order_reference, own.loop_order_field) == ("SalesOrderNumber", "order_name")
    assert "pw" not in repr(own)


def test_settings_overrides_and_reason_keys() -> None:
    own = _settings(
        BASE
        | {
            "order_reference": "Attribute3",
            "loop_order_field": "provider_order_id",
            "return_reasons": {"Too  Small": "SIZE"},
            "rate_limit": {"requests": 10, "per": "20s"},
            "templates": {
                "return_authorizations": "Return authorisations",
                "returns": {
                    "operation": "GetData",
                    "name": "Returns export",
                    "columns": {"rma_status": "Status"},
                    "incremental": False,
                },
            },
        }
    )
    assert own.templates.return_authorizations == "Return authorisations"
    assert own.returns.columns.rma_status == "Status" and not own.returns.incremental
    assert own.return_reasons == {"too small": "SIZE"}
    assert (own.rate_limit, own.rate_period) == (10, 20.0)


@pytest.mark.parametrize(
    "raw, key",
    [
        ({k: v for k, v in BASE.items() if k != "region"}, "warehouse.region"),
        (BASE | {"order_reference": "Attribute9"}, "warehouse.order_reference"),
        (BASE | {"templates": {"sales_order": "x"}}, "warehouse.templates.sales_order"),
        (
            BASE | {"templates": {"returns": {"date_format": "%H"}}},
            "warehouse.templates.returns.date_format",
        ),
        (BASE | {"password": "plain"}, "warehouse.password"),
    ],
)
def test_settings_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _settings(raw)
    assert info.value.key == key


def test_region_is_optional_with_a_base_url_override() -> None:
    raw = {k: v for k, v in BASE.items() if k != "region"} | {"base_url": "https://wms.x"}
    section = Section(raw, file="m.yaml", path="warehouse", env={"PVX_PW": "pvx-password"})
    section.url("base_url")
    assert PeopleVoxConnector.parse_settings(section).region is None


def test_service_url() -> None:
    default = PeopleVoxConnector.default_base_url
    assert (
        service_url(default, "emea", "abc1234")
        == "https://emea.peoplevox.net/abc1234/resources/integrationservicev4.asmx"
    )
    assert (
        service_url("https://wms.peoplevox.net/", None, "abc")
        == "https://wms.peoplevox.net/abc/resources/integrationservicev4.asmx"
    )
    full = "https://qac.peoplevox.net/lopQa1287/Resources/IntegrationServicev4.asmx"
    assert service_url(full, None, "ignored") == full


# -- pure: poll rows --------------------------------------------------------------------


def test_rma_status_from_rows_aggregates_per_sku() -> None:
    cols = ReturnsColumns()
    ref = RmaRef("501", "501", {"expected": {"A": 2, "B": 1, "C": 1}})
    rows = [
        {
            cols.rma_number: "501",
            cols.rma_status: "Completed",
            cols.item_code: "A",
            cols.quantity: "1",
            cols.condition: "Damaged",
            cols.reusable: "No",
        },
        {
            cols.rma_number: "501",
            cols.rma_status: "Completed",
            cols.item_code: "A",
            cols.quantity: "1",
            cols.condition: "Good",
            cols.reusable: "Yes",
        },
        {
            cols.rma_number: "501",
            cols.rma_status: "Completed",
            cols.item_code: "B",
            cols.quantity: "1.0",
            cols.condition: "Good",
            cols.reusable: "Yes",
        },
    ]
    status = rma_status_from_rows(ref, rows, cols, frozenset({"damaged"}))
    assert (status.status, status.expected_units, status.received_units) == ("Completed", 4, 3)
    by_sku = {i.sku: i for i in status.items}
    assert (by_sku["A"].condition, by_sku["A"].disposition) == ("Damaged", "not reusable")
    assert (by_sku["B"].condition, by_sku["B"].disposition) == ("Good", "reusable")
    assert (by_sku["C"].received, by_sku["C"].condition, by_sku["C"].disposition) == (0, None, None)
    # Without a flag rule for it, the latest condition stands.
    assert rma_status_from_rows(ref, rows, cols).items[0].condition == "Good"


# -- over HTTP: creating return authorizations ------------------------------------------


def test_return_becomes_an_ra_with_its_items(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    raw, con = connected(
        emu,
        fake_clock,
        loop_return(
            lines=(
                ("SKU-1", "Too small", "tight"),
                ("SKU-1", "Too small", "tight"),
                ("SKU-2", "Damaged on arrival", "torn seam"),
            )
        ),
    )
    req = push_request(raw)
    located = con.locate(req)
    assert located == {"sales_order_number": "1001", "customer_po_reference": "1001"}
    assert con.find_rma(req, located) is None

    ref = con.create_rma(req, located)

    assert ref == RmaRef(
        "501", "501", {"sales_order_number": "1001", "expected": {"SKU-1": 2, "SKU-2": 1}}
    )
    ra = emu.ra("501")
    assert ra is not None and ra["header"] == {
        "ReturnAuthorizationNumber": "501",
        "SalesOrderNumber": "1001",
        "ReturnTrackingNumber": "1Z999AA10123456784",
        "ReturnSenderName": "Ann Example",
        "ReturnAuthorizationComments": "Loop return 501 for order #1001",
        "SiteReference": "MAIN",
        "CustomerPurchaseOrderReferenceNumber": "1001",
        "ExternalReference": "#1001",
    }
    assert [
        (
            i["ItemCode"],
            i["ReturnAuthorizationItemLineNumber"],
            i["Quantity"],
            i["ReturnReason"],
            i["ReturnAuthorizationItemComments"],
        )
        for i in ra["items"]
    ] == [("SKU-1", "1", "2", "SIZE", "tight"), ("SKU-2", "2", "1", "DAMAGED", "torn seam")]
    assert con.find_rma(req, located) == ref
    assert con.rma_label(ref) == "PeopleVox return authorization 501"


def test_tracking_number_comes_from_asn_rows_when_the_return_has_none(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw, con = connected(emu, fake_clock, loop_return(tracking=None))
    create(
        con,
        push_request(raw, asn_rows=({"tracking_number": ""}, {"tracking_number": "TRACK-ASN-1"})),
    )
    assert emu.ra("501")["header"]["ReturnTrackingNumber"] == "TRACK-ASN-1"


def test_unmatched_order_is_not_ready_until_it_reaches_peoplevox(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw = loop_return()
    emu.on_loop_return(raw, with_order=False)
    con = make_connector(emu, fake_clock)
    with pytest.raises(NotReady, match="sales order .*1001.* not found in PeopleVox"):
        con.locate(push_request(raw))
    emu.on_loop_return(raw)  # the order arrives late
    assert con.locate(push_request(raw))["sales_order_number"] == "1001"


def test_match_on_an_attribute_with_the_shopify_order_id(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw = loop_return()
    emu.on_loop_return(raw)  # Attribute1 holds the Shopify order id
    con = make_connector(
        emu, fake_clock, order_reference="Attribute1", loop_order_field="provider_order_id"
    )
    assert con.locate(push_request(raw))["sales_order_number"] == "1001"
    other = make_connector(emu, fake_clock, order_reference="Attribute1")
    with pytest.raises(NotReady):
        other.locate(push_request(raw))  # order name is not in Attribute1


def test_return_without_the_matched_field_is_rejected(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw = loop_return() | {"provider_order_id": None}
    con = make_connector(emu, fake_clock, loop_order_field="provider_order_id")
    with pytest.raises(Rejected, match="no provider_order_id"):
        con.locate(push_request(raw))


def test_unmapped_reason_passes_none(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    raw = loop_return(
        lines=(
            ("SKU-1", "Style not for me", ""),
            ("SKU-2", "too SMALL", ""),
            ("SKU-3", "Colour", ""),
            ("SKU-4", "Late", ""),
        )
    )
    emu.on_loop_return(raw)
    con = make_connector(
        emu,
        fake_clock,
        return_reasons={
            "Too small": "SIZE",  # a code
            "Colour": "Not as described",  # a description stands for its code
            "Late": "NO-SUCH-CODE",
        },
    )  # unknown in PeopleVox: passes none
    create(con, push_request(raw))
    reasons = {i["ItemCode"]: i["ReturnReason"] for i in emu.ra("501")["items"]}
    assert reasons == {"SKU-1": "", "SKU-2": "SIZE", "SKU-3": "NOT_AS_DESCRIBED", "SKU-4": ""}


def test_columns_come_from_get_save_template(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    # This tenant's import template has no ExternalReference and an extra column.
    emu.save_templates[emu.ra_template] = [
        c for c in emu.save_templates[emu.ra_template] if c != "ExternalReference"
    ] + ["Attribute1"]
    con = make_connector(emu, fake_clock)
    for rid in ("501", "502"):
        raw = loop_return(rid, order=f"#{rid}")
        emu.on_loop_return(raw)
        create(con, push_request(raw))
    header = emu.ra("502")["header"]
    assert "ExternalReference" not in header and header["Attribute1"] == ""
    assert ops(emu, "GetSaveTemplate") == 2  # once per template, cached


def test_template_without_a_required_column_is_a_permanent_error(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    emu.save_templates[emu.ra_items_template].remove("Quantity")
    raw, con = connected(emu, fake_clock)
    with pytest.raises(PermanentError, match="lacks column.*Quantity"):
        create(con, push_request(raw))


def test_csv_hard_cases_round_trip(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    raw, con = connected(
        emu, fake_clock, loop_return(customer=HARD_TEXT, lines=(("SKU-1", "", HARD_TEXT),))
    )
    create(con, push_request(raw))
    assert emu.ra("501")["header"]["ReturnSenderName"] == HARD_TEXT
    assert emu.ra("501")["items"][0]["ReturnAuthorizationItemComments"] == HARD_TEXT
    read_back = con.client.read_all(
        "GetData", "Return authorizations", where=equals_clause("ReturnSenderName", HARD_TEXT)
    )
    assert [r["ReturnSenderName"] for r in read_back] == [HARD_TEXT]


# -- rejections and lost answers --------------------------------------------------------


def test_rejected_row_does_not_stop_the_next_return(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    bad = loop_return("501", lines=(("SKU-1", "", ""), ("GHOST-SKU", "", "")))
    good = loop_return("502", order="#1002")
    emu.on_loop_return(bad)
    emu.on_loop_return(good)
    del emu.items["GHOST-SKU"]  # a SKU PeopleVox does not know
    con = make_connector(emu, fake_clock)

    with pytest.raises(Rejected, match="Item code 'GHOST-SKU' does not exist"):
        create(con, push_request(bad))
    assert create(con, push_request(good)).rma_id == "502"
    assert len(emu.ra("502")["items"]) == 1

    # Once the SKU exists a retry finishes the RA without a second header or item row.
    emu.add_item("GHOST-SKU")
    create(con, push_request(bad))
    assert emu.rma_count("501") == 1
    assert sorted(i["ItemCode"] for i in emu.ra("501")["items"]) == ["GHOST-SKU", "SKU-1"]


def test_rejected_header_names_the_problem(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    raw, con = connected(emu, fake_clock)
    with pytest.raises(Rejected, match="Site 'NOWHERE' does not exist"):
        create(con, push_request(raw, site="NOWHERE"))
    assert not emu.has_rma("501")


def lose_save_answer(
    emu: ServedEmulator,
    clock: FakeClock,
    template: str,
) -> tuple[PeopleVoxConnector, PushRequest, dict[str, str]]:
    """Create the RA of `loop_return()` with the connection reset after the SaveData to
    `template` (saved, answer lost): OutcomeUnknown. Returns (connector, request, located)."""
    raw, con = connected(emu, clock)
    req = push_request(raw)
    located = con.locate(req)
    emu.faults.inject(Fault("reset_after"), when=is_save_to(template))
    with pytest.raises(OutcomeUnknown):
        con.create_rma(req, located)
    return con, req, located


def test_lost_header_answer_then_the_rerun_finishes_without_a_second_ra(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    con, req, located = lose_save_answer(emu, fake_clock, "Return authorizations")
    assert emu.rma_count("501") == 1 and emu.ra("501")["items"] == []

    assert con.find_rma(req, located) is None  # header without items is not finished
    ref = con.create_rma(req, located)
    assert ref.rma_id == "501"
    assert emu.rma_count("501") == 1 and len(emu.ra("501")["items"]) == 1


def test_lost_items_answer_then_find_rma_finds_it(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    con, req, located = lose_save_answer(emu, fake_clock, "Return authorizations items")
    saves = ops(emu, "SaveData")

    assert con.find_rma(req, located) == RmaRef(
        "501", "501", {"sales_order_number": "1001", "expected": {"SKU-1": 1}}
    )
    assert ops(emu, "SaveData") == saves  # looked up, not saved again
    assert emu.rma_count("501") == 1 and len(emu.ra("501")["items"]) == 1


def test_no_save_in_a_dry_run(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    raw = loop_return()
    emu.on_loop_return(raw)
    con = make_connector(emu, fake_clock, dry_run=True)
    with pytest.raises(DryRunViolation):
        create(con, push_request(raw))
    assert ops(emu, "SaveData") == 0 and not emu.has_rma("501")


def test_unreadable_write_answer_is_outcome_unknown(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw, con = connected(emu, fake_clock)
    emu.faults.inject(Fault("malformed"), when=is_save_to("Return authorizations"))
    with pytest.raises(OutcomeUnknown, match="unreadable answer"):
        create(con, push_request(raw))


# -- sessions, faults, throttling -------------------------------------------------------


def test_session_expiry_in_the_middle_reauthenticates_and_retries_once(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw, con = connected(emu, fake_clock)
    req = push_request(raw)
    located = con.locate(req)

    def session_dies_now(request: Request):  # noqa: ANN202
        emu.expire_sessions()
        return emu.handle(request)

    emu.faults.inject(
        Fault("custom", response=session_dies_now), when=is_save_to("Return authorizations items")
    )
    con.create_rma(req, located)

    assert ops(emu, "Authenticate") == 2
    assert ops(emu, "SaveData") == 3  # header, items refused (Invalid Session), items again
    assert len(emu.ra("501")["items"]) == 1


def test_idle_session_is_renewed_before_it_expires(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw, con = connected(emu, fake_clock)
    con.locate(push_request(raw))
    fake_clock.advance(timedelta(minutes=26))
    con.locate(push_request(raw))
    assert ops(emu, "Authenticate") == 2
    assert emu.operations.count("GetData") == 2  # no call was refused


def test_refused_login_is_an_auth_error(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    con = make_connector(emu, fake_clock, env={"PEOPLEVOX_PASSWORD": "wrong-password"})
    with pytest.raises(AuthError, match="Invalid username or password"):
        con.locate(push_request(loop_return()))


def test_password_base64_is_sent_and_secrets_are_not_logged(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    from loopsync.sandbox.server import Recorder

    emu.recorder = Recorder()
    raw, con = connected(emu, fake_clock)
    configure_logs(json_output=True, level="debug")  # capture_logs keeps the level filter
    with capture_logs() as logs:
        create(con, push_request(raw))
    sent = emu.recorder.calls()[0].body.decode()
    assert base64.b64encode(emu.password.encode()).decode() in sent
    assert emu.password not in sent
    session_id = con.client._session.session_id  # noqa: SLF001 - checking it stays private
    dumped = repr(logs)
    assert emu.password not in dumped and session_id not in dumped
    assert any(e["event"] == "peoplevox.authenticated" for e in logs)


def test_client_fault_is_not_retried_and_server_fault_is(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw, con = connected(emu, fake_clock)
    req = push_request(raw)
    con.locate(req)
    client_fault = Fault("custom", response=lambda r: soap_fault("Client", "bad request"))
    emu.faults.inject(client_fault, when=lambda r: emu.operation(r) == "GetData")
    before = ops(emu, "GetData")
    with pytest.raises(PermanentError, match="bad request"):
        con.locate(req)
    server_fault = Fault("custom", response=lambda r: soap_fault("Server", "deadlock"))
    emu.faults.inject(server_fault, times=2, when=lambda r: emu.operation(r) == "GetData")
    assert con.locate(req)["sales_order_number"] == "1001"
    assert ops(emu, "GetData") == before + 1  # faults answer before the handler counts


def test_client_limiter_keeps_under_15_calls_in_15_seconds(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    raw, con = connected(emu, fake_clock)
    start = fake_clock.monotonic()
    for _ in range(40):
        con.locate(push_request(raw))
    assert emu.throttled == 0
    assert fake_clock.monotonic() - start >= 30  # 41 calls need at least two more windows


def test_server_throttling_is_waited_out(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    raw = loop_return()
    emu.on_loop_return(raw)
    con = make_connector(emu, fake_clock, rate_limit={"requests": 100, "per": "15s"})
    for _ in range(20):
        con.locate(push_request(raw))
    assert emu.throttled >= 1
    assert ops(emu, "GetData") == 20
    assert any(s >= 1 for s in fake_clock.slept)  # waited the server's Retry-After


def test_throttle_detail_is_rate_limited() -> None:
    answer = HttpResult(200, {}, _answer("GetData", "-1", "Throttled: too many requests"), None)
    with pytest.raises(RateLimited) as info:
        read_answer(answer, "GetData", idempotent=True, throttle_wait=15.0)
    assert info.value.retry_after == 15.0
    expired = HttpResult(200, {}, _answer("GetData", "-1", "Invalid Session"), None)
    with pytest.raises(InvalidSession):
        read_answer(expired, "GetData", idempotent=True, throttle_wait=15.0)


# -- poll -------------------------------------------------------------------------------


def _created(
    emu: ServedEmulator,
    con: PeopleVoxConnector,
    rid: str,
    lines: tuple[tuple[str, str, str], ...] = (
        ("SKU-1", "", ""),
        ("SKU-2", "", ""),
        ("SKU-2", "", ""),
    ),
) -> RmaRef:
    raw = loop_return(rid, order=f"#{rid}", lines=lines)
    emu.on_loop_return(raw)
    return create(con, push_request(raw))


def test_poll_reports_status_words_conditions_and_reusability(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    con = make_connector(emu, fake_clock)
    refs = {
        scenario: _created(emu, con, rid)
        for rid, scenario in zip(
            ("601", "602", "603", "604", "605", "606"),
            ("full", "short", "over", "damaged", "cancelled", "open"),
            strict=True,
        )
    }
    for scenario in ("full", "short", "over", "damaged", "cancelled"):
        assert emu.receive(refs[scenario].return_id, scenario)

    statuses = con.poll(list(refs.values())).statuses

    def summary(scenario: str) -> tuple[Any, ...]:
        s = statuses[refs[scenario].return_id]
        return (
            s.status,
            s.expected_units,
            s.received_units,
            [(i.sku, i.received, i.condition, i.disposition) for i in s.items],
        )

    assert summary("full") == (
        "Completed",
        3,
        3,
        [("SKU-1", 1, "Good", "reusable"), ("SKU-2", 2, "Good", "reusable")],
    )
    assert summary("short") == (
        "Completed with discrepancies",
        3,
        2,
        [("SKU-1", 0, None, None), ("SKU-2", 2, "Good", "reusable")],
    )
    assert summary("over")[:3] == ("Completed with discrepancies", 3, 4)
    assert summary("damaged") == (
        "Completed",
        3,
        3,
        [("SKU-1", 1, "Damaged", "not reusable"), ("SKU-2", 2, "Good", "reusable")],
    )
    assert summary("cancelled") == (
        "Cancelled",
        3,
        0,
        [("SKU-1", 0, None, None), ("SKU-2", 0, None, None)],
    )
    assert summary("open")[:3] == ("Open", 3, 0)


def test_poll_pages_through_the_report(emu: ServedEmulator, fake_clock: FakeClock) -> None:
    con = make_connector(emu, fake_clock, items_per_page=2)
    lines = tuple((f"SKU-{n}", "", "") for n in range(5))
    ref = _created(emu, con, "701", lines)
    emu.receive("701", "full")
    before = ops(emu, "GetReportData")
    status = con.poll([ref]).statuses["701"]
    assert ops(emu, "GetReportData") - before == 3  # 5 rows, 2 a page
    assert [i.sku for i in status.items] == [f"SKU-{n}" for n in range(5)]
    assert status.received_units == 5


def test_poll_is_incremental_by_date_after_the_first_commit(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    kv = MemoryKeyValue()
    con = make_connector(emu, fake_clock, kv=kv)
    first, second = _created(emu, con, "801"), _created(emu, con, "802")
    emu.receive("801", "full")  # rows dated 01/06/2026 12:00:00
    result = con.poll([first, second])
    assert set(result.statuses) == {"801", "802"}  # first poll: every RMA by number
    assert kv.get(con.KV_DATE_CURSOR) is None  # nothing stored before the engine commits
    result.commit()
    assert kv.get(con.KV_DATE_CURSOR) == "2026-06-01T12:00:00"

    fake_clock.advance(timedelta(hours=1))
    before = ops(emu, "GetReportData")
    again = con.poll([first, second])
    # Only rows dated since the cursor (less the overlap) are read again; 802 had none.
    assert set(again.statuses) == {"801"}
    assert ops(emu, "GetReportData") - before == 2  # the date sweep, then 801 by number
    again.commit()

    emu.receive("802", "damaged")  # at 13:00
    third = _created(emu, con, "803")  # new to the poll set: read even without a date
    changed = con.poll([first, second, third])
    assert set(changed.statuses) == {"801", "802", "803"}
    assert changed.statuses["802"].items[0].condition == "Damaged"
    changed.commit()
    assert kv.get(con.KV_DATE_CURSOR) == "2026-06-01T13:00:00"
    assert set(con.poll([first, second, third]).statuses) == {"802"}


def test_poll_with_getdata_on_an_export_template(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    con = make_connector(
        emu, fake_clock, templates={"returns": {"operation": "GetData", "incremental": False}}
    )
    ref = _created(emu, con, "901")
    emu.receive("901", "cancelled")
    assert con.poll([ref]).statuses["901"].status == "Cancelled"
    assert ops(emu, "GetReportData") == 0 and ops(emu, "GetData") > 0


def test_poll_gives_way_to_shutdown_and_keeps_nothing(
    emu: ServedEmulator, fake_clock: FakeClock
) -> None:
    import dataclasses

    from loopsync.connectors.base import PollStopped

    kv = MemoryKeyValue()
    con = make_connector(emu, fake_clock, kv=kv)
    con.settings = dataclasses.replace(con.settings, poll_batch=1)
    refs = [_created(emu, con, "901"), _created(emu, con, "902")]
    emu.receive("901", "full")
    real_read = con.client.read_all

    def read_then_sigterm(*a: Any, **k: Any) -> list[dict[str, str]]:
        rows = real_read(*a, **k)
        con.ctx.stop.set()  # SIGTERM while the first batch of RAs is read
        return rows

    con.client.read_all = read_then_sigterm  # type: ignore[method-assign]
    with pytest.raises(PollStopped):
        con.poll(refs)
    assert kv.get(con.KV_POLLED) is None and kv.get(con.KV_DATE_CURSOR) is None
