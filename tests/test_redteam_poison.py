"""Red team, poison records and hostile servers (issue 15 §1, §2): answers that are wrong
at every level, end to end through the engine against the sandbox on 127.0.0.1. Each
test names the guarantee it holds: a valid record or the one Unreadable error, a bad
answer holds back only what it is about, nothing crashes a stage or a run."""

from __future__ import annotations

import json
import re
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopsync import http
from loopsync.connectors import peoplevox as pvx
from loopsync.connectors.shiphero import mapping as shiphero
from loopsync.errors import Unreadable
from loopsync.http import HttpClient, RetryPolicy, decode_text, parse_json
from loopsync.sandbox.server import Fault, Response
from loopsync.status import merchant_status, render_status
from tests.hostile import HostileServer, reply

HTML_PAGE = Response(
    200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", {"Content-Type": "text/html"}
)


def open_returns(sb: Any, n: int) -> list[str]:
    return [str(r["id"]) for r in sb.seed(n, states_weights=[("open", 1)])]


def config(sb: Any, tmp_path: Any) -> Any:
    return sb.merchant_config(tmp_path, start_days=4)


def on_path(suffix: str):
    return lambda req: req.path.endswith(suffix)


# -- ShipHero: a token endpoint that answers an HTML page under 200 -------------------------


def test_shiphero_refresh_answered_by_an_html_page_is_retried_not_credentials_refused(
    make_sandbox, tmp_path
):
    sb = make_sandbox("shiphero")
    ids = open_returns(sb, 2)
    sb.warehouse.faults.inject(
        Fault("custom", response=lambda req: HTML_PAGE), times=1, when=on_path("/auth/refresh")
    )
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.ok and result.counts.pushed == 2, result.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in ids)


def test_shiphero_refresh_always_html_is_a_remote_fault_without_a_credentials_backoff(
    make_sandbox, tmp_path
):
    sb = make_sandbox("shiphero")
    open_returns(sb, 1)
    sb.warehouse.faults.inject(
        Fault("custom", response=lambda req: HTML_PAGE), times=10**6, when=on_path("/auth/refresh")
    )
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert "credentials" not in result.stage_errors, result.stage_errors
    text = render_status(merchant_status(cfg))
    assert "credentials refused" not in text
    assert "/auth/refresh answered HTTP 200 without a JSON object" in text, text


# -- PeopleVox SOAP: no DTD, so no entity expansion at all ----------------------------------

SOAP_RESULT = (
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
    '<soap:Body><GetDataResponse xmlns="http://www.peoplevox.net/"><GetDataResult>'
    "<ResponseId>0</ResponseId><TotalCount>1</TotalCount><Detail>{detail}</Detail>"
    "</GetDataResult></GetDataResponse></soap:Body></soap:Envelope>"
)


def billion_laughs(levels: int = 9) -> str:
    entities = '<!ENTITY l0 "lol">' + "".join(
        f'<!ENTITY l{n} "{f"&l{n - 1};" * 10}">' for n in range(1, levels + 1)
    )
    return f'<?xml version="1.0"?><!DOCTYPE e [{entities}]>' + SOAP_RESULT.format(
        detail=f"&l{levels};"
    )


DTD_ANSWERS = [
    ("billion laughs", billion_laughs()),
    (
        "an internal entity that rewrites the data",
        '<!DOCTYPE e [<!ENTITY s "RMA,Status\n1,completed">]>' + SOAP_RESULT.format(detail="&s;"),
    ),
    (
        "an external entity",
        '<!DOCTYPE e [<!ENTITY x SYSTEM "file:///etc/passwd">]>' + SOAP_RESULT.format(detail="&x;"),
    ),
    (
        "an external parameter entity",
        '<?xml version="1.0"?><!-- c --><!DOCTYPE e [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x">'
        " %p;]>" + SOAP_RESULT.format(detail="x"),
    ),
]


@pytest.mark.parametrize("answer", [a for _, a in DTD_ANSWERS], ids=[n for n, _ in DTD_ANSWERS])
def test_peoplevox_answer_declaring_a_dtd_is_refused_before_any_entity_is_expanded(answer):
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="declares a DTD"):
            pvx.parse_result(answer, "GetData")
        assert pvx.parse_fault(answer) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20  # expat's own amplification limit still lets ~50 MiB through


def test_peoplevox_text_mentioning_doctype_inside_the_envelope_is_still_read():
    answer = SOAP_RESULT.format(detail="Code,Description\nD1,&lt;!DOCTYPE html&gt; in a note")
    assert pvx.parse_result(answer, "GetData").detail.endswith("<!DOCTYPE html> in a note")


def test_peoplevox_billion_laughs_in_the_report_holds_back_nothing_after_a_retry(
    make_sandbox, tmp_path, clock
):
    sb = make_sandbox("peoplevox")
    ids = open_returns(sb, 2)
    cfg = config(sb, tmp_path)
    assert sb.run_cycle(cfg).counts.pushed == 2
    for rid in ids:
        assert sb.warehouse.receive(rid, "full")
    bomb = Response(200, billion_laughs().encode(), {"Content-Type": "text/xml; charset=utf-8"})
    sb.warehouse.faults.inject(
        Fault("custom", response=lambda req: bomb),
        times=1,
        when=lambda req: b"GetReportData" in req.body,
    )
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.counts.processed == 2, result.stage_errors
    assert all(sb.loop.actions_for(rid) == ["process"] for rid in ids)


# -- any charset a server names: text without lone surrogates, or UTF-8 ---------------------


def hostile_client(server: HostileServer, clock: Any) -> HttpClient:
    return HttpClient(
        "t", server.url, clock=clock, policy=RetryPolicy(attempts=2, base=0.01, cap=0.02)
    )


@pytest.mark.parametrize("charset", ["idna", "undefined"])
def test_an_answer_in_a_charset_python_cannot_decode_with_replacement_is_read_as_utf8(
    charset, clock
):
    body = json.dumps({"returns": [], "note": "caf\u00e9"}).encode()
    with HostileServer(
        reply(200, body, {"Content-Type": f"application/json; charset={charset}"})
    ) as server:
        result = hostile_client(server, clock).request("GET", "/x")
    assert result.data == {"returns": [], "note": "caf\u00e9"}


@given(
    st.binary(max_size=64),
    st.sampled_from(["utf-7", "unicode_escape", "raw_unicode_escape", "utf-16", "utf-32"]),
)
@settings(max_examples=50, deadline=None)
def test_decoded_answer_text_never_holds_a_lone_surrogate(body, charset):
    text = decode_text(b"+2AA- \\ud800 " + body, charset)
    text.encode("utf-8")  # what SQLite, a log file and a request body need


def test_an_error_answer_in_utf7_reaches_status_without_a_lone_surrogate(make_sandbox, tmp_path):
    sb = make_sandbox("xoro")
    open_returns(sb, 1)
    answer = Response(500, b"+2AA- down", {"Content-Type": "text/plain; charset=utf-7"})
    sb.warehouse.faults.inject(Fault("custom", response=lambda req: answer), times=10**6)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    text = render_status(merchant_status(cfg))
    assert "\ufffd down" in text and "\\ud800" not in text, text


# -- ShipHero connections: any shape at any level is a page or Unreadable -------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda kids: (
        st.lists(kids, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["data", "orders", "edges", "node", "pageInfo", "hasNextPage", "endCursor"]
            ),
            kids,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@given(JSON)
@settings(max_examples=50, deadline=None)
def test_shiphero_connection_page_of_any_json_is_a_page_or_unreadable(body):
    try:
        step = shiphero.connection_page(body, ("orders", "data"))
    except Unreadable:
        return
    assert isinstance(step.items, list)
    hash(step.token)  # the page walk keeps the cursors it has seen in a set


@pytest.mark.parametrize(
    "edit",
    [
        lambda conn: {"data": "x"},
        lambda conn: {"data": {"edges": "abc", "pageInfo": {}}},
        lambda conn: {"data": {**conn, "pageInfo": {"hasNextPage": True, "endCursor": {"c": 1}}}},
    ],
    ids=["connection is text", "edges is text", "cursor is an object"],
)
def test_shiphero_order_listing_of_the_wrong_shape_is_unreadable_for_its_return_only(
    make_sandbox, tmp_path, edit
):
    sb = make_sandbox("shiphero")
    good = open_returns(sb, 2)
    raw = sb.seed(1, states_weights=[("open", 1)])[0]
    bad = str(raw["id"])
    marks = [str(raw[k]) for k in ("order_id", "provider_order_id", "order_name") if raw.get(k)]

    def respond(req: Any) -> Response:
        with sb.warehouse.lock:
            resp = sb.warehouse.handle(req)
        body = json.loads(resp.body)
        orders = (body.get("data") or {}).get("orders")
        text = req.body.decode()
        if isinstance(orders, dict) and any(json.dumps(m) in text for m in marks):
            body["data"]["orders"] = edit(orders["data"])
        # A batched look-up (aliases a0..aN, keys $k0..$kN): the bad order's alias alone.
        keys = json.loads(req.body).get("variables") or {}
        for alias, entry in (body.get("data") or {}).items():
            if isinstance(entry, dict) and keys.get(f"k{alias[1:]}") in marks:
                body["data"][alias] = edit(entry["data"])
        return Response(resp.status, json.dumps(body).encode(), resp.headers)

    sb.warehouse.faults.inject(
        Fault("custom", response=respond), times=10**6, when=lambda req: b"orders(" in req.body
    )
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    text = render_status(merchant_status(cfg))
    assert "unexpected" not in text, text
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good), (result.stage_errors, text)
    assert sb.warehouse.rma_count(bad) == 0
    assert re.search(rf"{bad}\s+push\s+unreadable: ShipHero (data|listing)", text), text


# -- a remote's error text with a lone surrogate is recorded, not a second error ------------


@pytest.mark.parametrize(
    "body", [b'"\\ud800"', b'{"message": "refused \\udfff"}', b'{"errors": ["\\ud800"]}']
)
def test_loop_action_error_body_with_a_lone_surrogate_is_recorded_for_a_person(
    make_sandbox, tmp_path, clock, body
):
    sb = make_sandbox("shiphero")
    ids = open_returns(sb, 2)
    cfg = config(sb, tmp_path)
    sb.run_cycle(cfg)
    for rid in ids:
        assert sb.warehouse.receive(rid, "full")
    answer = Response(200, body, {"Content-Type": "application/json"})
    sb.loop.faults.inject(
        Fault("custom", response=lambda req: answer),
        times=1,
        when=lambda req: req.path.endswith("/process"),
    )
    clock.advance(60)
    sb.run_cycle(cfg)
    text = render_status(merchant_status(cfg))
    assert "unexpected" not in text, text
    hit = [rid for rid in ids if sb.loop.actions_for(rid) == []]
    assert len(hit) == 1 and sb.loop.actions_for(next(r for r in ids if r not in hit)) == [
        "process"
    ]
    assert re.search(rf"{hit[0]}\s+act\s+needs a person: Loop answered the process call", text), (
        text
    )


def test_remote_error_text_is_always_encodable():
    from loopsync.errors import ErrorBody

    exc = ErrorBody("loop", "refused \ud800", code="\udfff")
    for text in (str(exc), exc.message, exc.code):
        text.encode("utf-8")


# -- valid JSON Python's decoder refuses: one record's trouble, not the page's --------------

DEEP = b"[" * 5000 + b"]" * 5000
HUGE_INT = b"9" * 5000


@pytest.mark.parametrize(
    "raw_value, reason",
    [
        (DEEP, r"nested more than 64 deep"),
        (HUGE_INT, r"number too long to store"),
        (b"-" + HUGE_INT, r"number too long to store"),
    ],
    ids=["nested 5000 deep", "5000 digits", "-5000 digits"],
)
def test_loop_page_with_one_record_json_cannot_decode_holds_back_only_that_record(
    make_sandbox, tmp_path, raw_value, reason
):
    sb = make_sandbox("shiphero")
    good = open_returns(sb, 3)
    bad = open_returns(sb, 1)[0]

    def respond(req: Any) -> Response:
        with sb.loop.lock:
            resp = sb.loop.handle(req)
        body = json.loads(resp.body)
        for row in body["returns"]:
            if str(row["id"]) == bad:
                row["x_new"] = "@@RAW@@"
        raw = json.dumps(body).encode().replace(b'"@@RAW@@"', raw_value)
        return Response(resp.status, raw, resp.headers)

    sb.loop.faults.inject(
        Fault("custom", response=respond),
        times=10**6,
        when=lambda req: req.path.endswith("/warehouse/return/list"),
    )
    cfg = config(sb, tmp_path)
    result = sb.run_cycle(cfg)
    assert result.counts.pushed == 3 and not result.stage_errors, result.stage_errors
    assert all(sb.warehouse.rma_count(rid) == 1 for rid in good)
    text = render_status(merchant_status(cfg))
    assert re.search(rf"{bad}\s+ingest\s+malformed Loop return: .*{reason}", text), text


@given(st.integers(min_value=1, max_value=400), st.integers(min_value=0, max_value=3))
@settings(max_examples=30, deadline=None)
def test_json_nested_any_depth_decodes_with_the_too_deep_part_cut(depth, strings):
    text = (
        '{"s": "]]}{[\\\\\\"", "v": '
        + "[" * depth * 20
        + '"x"' * min(strings, 1)
        + "]" * depth * 20
        + "}"
    )
    data = parse_json(text)
    assert data is not None and data["s"] == ']]}{[\\"'
    node, seen = data["v"], 1
    while isinstance(node, list) and node:
        node, seen = node[0], seen + 1
    assert seen >= min(depth * 20, http.JSON_DEPTH_CUT)


# -- PeopleVox: one cell over the csv module's limit holds back only its row ---------------


@pytest.mark.parametrize(
    "column, reason",
    [("RMA status", r"RMA status is 200000 characters long"), ("Bin", None)],
    ids=["in a column read", "in a column not read"],
)
def test_peoplevox_report_cell_over_the_csv_limit_holds_back_only_its_ra(
    make_sandbox, tmp_path, clock, column, reason
):
    from tests.test_bad_input import assert_bad_one_held, pvx_cell, pvx_rows_served_as

    def serve_bad(sb: Any, bad: str) -> None:
        pvx_rows_served_as(
            sb,
            bad,
            pvx_cell(column, "x" * 200_000),
            extra_column="Bin" if column == "Bin" else None,
        )

    if reason is not None:
        assert_bad_one_held(make_sandbox, tmp_path, clock, "peoplevox", serve_bad, reason)
        return
    sb = make_sandbox("peoplevox")
    ids = open_returns(sb, 3)
    cfg = config(sb, tmp_path)
    assert sb.run_cycle(cfg).counts.pushed == 3
    for rid in ids:
        assert sb.warehouse.receive(rid, "full")
    serve_bad(sb, ids[-1])
    clock.advance(60)
    result = sb.run_cycle(cfg)
    assert result.counts.processed == 3, (result.stage_errors, render_status(merchant_status(cfg)))
