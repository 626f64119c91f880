"""The Xoro connector against the emulated Xoro over real HTTP on 127.0.0.1."""

import threading
import uuid
from datetime import timedelta

import pytest
import requests

from loopsync import rules
from loopsync.configkit import Section
from loopsync.connectors.base import ConnectorContext, PushRequest, WarehouseSettings
from loopsync.rules import GradingRules, StatusRules
from loopsync.connectors.xoro.connector import XoroConnector
from loopsync.errors import AuthError, ErrorBody, Rejected, TransientError
from loopsync.http import RetryPolicy
from loopsync.models import LoopReturn
from loopsync.sandbox.seed import make_return
from loopsync.sandbox.server import ApiServer, Fault, Recorder
from loopsync.sandbox.xoro import XoroEmulator
from loopsync.testing import in_process_url, mount

RULES = StatusRules.build(
    **XoroConnector.default_statuses, flag_conditions=XoroConnector.default_flag_conditions
)


@pytest.fixture
def xoro(clock):
    # A key of its own per test: the connector's rate limiter is shared per key.
    emu = XoroEmulator(clock=clock, api_key=f"key-{uuid.uuid4().hex[:8]}")
    emu.recorder = Recorder()
    emu.url = f"{in_process_url(emu)}/api/xerp"  # no socket: the connector's session mounts it
    return emu


def connector(emu, clock, **keys):
    section = Section(
        {"api_key": "${XORO_API_KEY}", "api_secret": "${XORO_API_SECRET}", **keys},
        file="test.yaml",
        path="warehouse",
        env=emu.secret_env(),
    )
    conf = XoroConnector.parse_settings(section)
    section.done()
    settings = WarehouseSettings(
        kind="xoro",
        base_url=emu.url,
        destinations={},
        statuses=RULES,
        grading=GradingRules(),
        order_wait=timedelta(days=7),
        poll_batch=50,
        timeout=5.0,
        connector=conf,
    )
    ctx = ConnectorContext(
        merchant="t", clock=clock, policy=RetryPolicy(attempts=3, base=0.01, cap=0.05)
    )
    conn = XoroConnector(settings, ctx)
    mount(conn.client.http.session, emu)
    return conn


def imported_return(emu, clock, return_id=52393555, *, units=3, **kw):
    raw = make_return(
        return_id=return_id, created_at=clock.now() - timedelta(hours=2), units=units, **kw
    )
    emu.on_loop_return(raw)
    return raw


def request(raw):
    return PushRequest(LoopReturn.from_api(raw), "")


def linked(emu, clock, conn, first_id, n):
    """n returns Xoro has imported, then linked (one listing serves them all)."""
    raws = [imported_return(emu, clock, first_id + i) for i in range(n)]
    return [conn.find_rma(request(raw), {}) for raw in raws]


def asn_pages(emu):
    return [c.query["page"] for c in emu.recorder.calls("xoro", path="/asn/getasn")]


def test_find_rma_links_the_asn_by_loop_return_id(xoro, clock):
    raw = imported_return(xoro, clock)
    not_imported = make_return(return_id=52393556, created_at=clock.now())
    conn = connector(xoro, clock)
    ref = conn.find_rma(request(raw), conn.locate(request(raw)))
    assert ref is not None and ref.rma_id == "52393555"
    assert ref.extra["asn_number"] == xoro.asn("52393555").number
    assert conn.find_rma(request(not_imported), {}) is None
    call = xoro.recorder.calls("xoro")[0]
    assert call.headers["Authorization"].startswith("Basic ")


def test_find_rma_by_order_number_ignores_the_hash(xoro, clock):
    raw = imported_return(xoro, clock, order_name="#1001", order_number="1001")
    other = imported_return(xoro, clock, 52393557, order_name="#1002", order_number="1002")
    conn = connector(xoro, clock, match_by="order_number")
    ref = conn.find_rma(request(raw), {})
    assert ref.extra["asn_number"] == xoro.asn(raw["id"]).number
    assert ref.extra["asn_number"] != xoro.asn(other["id"]).number


def test_two_asns_for_one_order_are_not_guessed(xoro, clock):
    raw = imported_return(xoro, clock, order_name="#1001", order_number="1001")
    imported_return(xoro, clock, 52393558, order_name="#1001", order_number="1001")
    with pytest.raises(Rejected, match="several Xoro ASNs"):
        connector(xoro, clock, match_by="order_number").find_rma(request(raw), {})


@pytest.mark.parametrize(
    ("scenario", "action", "problem"),
    [("full", rules.PROCESS, None), ("short", rules.FLAG, "short"), ("over", rules.FLAG, "over")],
)
def test_closed_asn_full_short_over(xoro, clock, scenario, action, problem):
    raw = imported_return(xoro, clock, units=3)
    conn = connector(xoro, clock)
    ref = conn.find_rma(request(raw), {})
    xoro.receive(raw["id"], scenario)
    status = conn.poll([ref]).statuses[raw["id"]]
    asn = xoro.asn(raw["id"])
    assert status.status == "Closed"
    assert status.expected_units == 3
    assert status.received_units == sum(line.received for line in asn.lines)
    assert {(i.sku, i.expected, i.received) for i in status.items} == {
        (line.sku, line.expected, line.received) for line in asn.lines
    }
    decision = rules.decide(status, RULES)
    assert decision.action == action
    if problem:
        first = asn.lines[0].sku
        assert problem in decision.reason and first in decision.reason
        assert status.detail[problem] == [
            f"{first} received {asn.lines[0].received} of {asn.lines[0].expected}"
        ]
    else:
        assert "short" not in status.detail and "over" not in status.detail


def test_received_but_not_closed_waits(xoro, clock):
    raw = imported_return(xoro, clock, units=2)
    conn = connector(xoro, clock)
    ref = conn.find_rma(request(raw), {})
    assert rules.decide(conn.poll([ref]).statuses[raw["id"]], RULES).action == rules.IGNORE
    xoro.receive_lines(raw["id"], {line.sku: line.expected for line in xoro.asn(raw["id"]).lines})
    status = conn.poll([ref]).statuses[raw["id"]]
    assert status.status == "Received" and status.received_units == 2
    assert rules.decide(status, RULES).action == rules.IGNORE


def test_one_listing_polls_many_rmas(xoro, clock):
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52393600, 5)
    xoro.recorder.clear()
    result = conn.poll(refs)
    assert len(result.statuses) == 5 and not result.errors
    assert asn_pages(xoro) == ["1"]


def test_result_false_under_http_200_raises(xoro, clock):
    raw = imported_return(xoro, clock)
    conn = connector(xoro, clock)
    ref = conn.find_rma(request(raw), {})
    xoro.faults.inject(
        Fault(
            "status", status=200, body={"Result": False, "Message": "Invalid filter", "Data": None}
        )
    )
    with pytest.raises(ErrorBody, match="Invalid filter"):
        conn.poll([ref])


def test_no_records_message_is_an_empty_answer(xoro, clock):
    raw = make_return(return_id=52393559, created_at=clock.now())
    xoro.faults.inject(
        Fault(
            "status",
            status=200,
            body={"Result": False, "Message": "No Records Found", "Data": None, "TotalPages": 0},
        )
    )
    assert connector(xoro, clock).find_rma(request(raw), {}) is None


@pytest.mark.parametrize(("style", "error"), [("401", AuthError), ("result_false", ErrorBody)])
def test_bad_credentials_both_ways(xoro, clock, style, error):
    xoro.auth_failure = style
    conn = connector(xoro, clock)
    conn.client.http.session.auth = (xoro.api_key, "wrong")
    with pytest.raises(error):
        conn.find_rma(request(make_return(created_at=clock.now())), {})


def test_key_without_the_asn_scope(xoro, clock):
    xoro.scopes = {"salesorder"}
    with pytest.raises(ErrorBody, match="asn module"):
        connector(xoro, clock).find_rma(request(make_return(created_at=clock.now())), {})


def test_non_json_body_is_retried_then_fails(xoro, clock):
    raw = imported_return(xoro, clock)
    conn = connector(xoro, clock)
    xoro.faults.inject(Fault("malformed"))
    assert conn.find_rma(request(raw), {}) is not None
    assert asn_pages(xoro) == ["1", "1"]
    clock.advance(61)  # past the listing's reuse
    xoro.faults.inject(Fault("malformed"), times=3)
    with pytest.raises(TransientError, match="not a Xoro envelope"):
        conn.find_rma(request(raw), {})


def test_paging_stops_at_total_pages(xoro, clock):
    xoro.page_size = 2
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52393700, 4)
    assert all(refs)
    xoro.recorder.clear()
    assert len(conn.poll(refs).statuses) == 4
    assert asn_pages(xoro) == ["1", "2"]


def test_empty_page_before_total_pages_stops_paging(xoro, clock):
    xoro.page_size = 2
    xoro.phantom_pages = 3  # TotalPages says 5; page 3 is already empty
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52393800, 3)
    xoro.recorder.clear()
    assert len(conn.poll(refs).statuses) == 3
    assert asn_pages(xoro) == ["1", "2", "3"]


def test_us_date_format_is_sent_and_understood(xoro, clock):
    raw = imported_return(xoro, clock)
    ref = connector(xoro, clock, date_format="us").find_rma(request(raw), {})
    assert ref is not None
    query = xoro.recorder.calls("xoro")[0].query
    assert query["created_at_min"].endswith(("AM", "PM")) and "/" in query["created_at_min"]


def test_unconfirmed_field_missing_is_an_error_not_an_action(xoro, clock):
    raw = imported_return(xoro, clock)
    conn = connector(xoro, clock, asn_status_field="AsnStatus")
    ref = conn.find_rma(request(raw), {})
    xoro.receive(raw["id"], "full")
    result = conn.poll([ref])
    assert not result.statuses
    assert "asn_status_field" in result.errors[raw["id"]]


def test_requests_go_one_at_a_time(xoro, clock):
    """The emulator throttles more than 3 requests in flight; the connector never gets
    there, even over many pages."""
    conn = connector(xoro, clock)
    refs = linked(xoro, clock, conn, 52393900, 6)
    xoro.page_size = 1
    xoro.latency = 0.02
    assert len(conn.poll(refs).statuses) == 6
    assert xoro.throttled == 0

    server = ApiServer(xoro).start()  # requests in flight at once: a real server's threads

    def burst():
        requests.get(
            f"{server.url}/api/xerp/asn/getasn", auth=(xoro.api_key, xoro.api_secret), timeout=5
        )

    threads = [threading.Thread(target=burst) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server.stop()
    assert xoro.throttled > 0


def test_rate_limit_answer_is_waited_out(xoro, clock):
    raw = imported_return(xoro, clock)
    conn = connector(xoro, clock)
    xoro.faults.inject(Fault("rate_limit", retry_after=2))
    assert conn.find_rma(request(raw), {}) is not None
    assert any(s >= 2 for s in clock.slept)


def test_a_long_listing_gives_way_to_shutdown_in_poll_only(xoro, clock):
    from loopsync.connectors.base import PollStopped

    conn = connector(xoro, clock)
    raws = [imported_return(xoro, clock, 52393600 + n) for n in range(30)]  # 2 pages of 25
    refs = [conn.find_rma(request(raw), {}) for raw in raws[:2]]
    conn.ctx.stop.set()
    assert conn.find_rma(request(raws[-1]), {}) is not None  # a push-stage read completes
    xoro.recorder.clear()
    with pytest.raises(PollStopped):
        conn.poll(refs)
    assert asn_pages(xoro) == ["1"]


def test_linking_many_returns_by_id_lists_the_asns_once_a_minute(xoro, clock):
    conn = connector(xoro, clock)
    raws = [imported_return(xoro, clock, 52393700 + n) for n in range(4)]
    xoro.recorder.clear()
    refs = [conn.find_rma(request(raw), {}) for raw in raws]
    assert all(refs) and [r.rma_id for r in refs] == [str(raw["id"]) for raw in raws]
    assert asn_pages(xoro) == ["1"]
    late = imported_return(xoro, clock, 52393710)  # Xoro imports it after the listing
    assert conn.find_rma(request(late), {}) is None  # waits for a fresh listing
    clock.advance(61)
    assert conn.find_rma(request(late), {}) is not None
    assert asn_pages(xoro) == ["1", "1"]


def test_linking_by_order_number_lists_afresh_for_each_return(xoro, clock):
    conn = connector(xoro, clock, match_by="order_number")
    raws = [imported_return(xoro, clock, 52393800 + n, order_name=f"#{7000 + n}") for n in range(3)]
    xoro.recorder.clear()
    assert all(conn.find_rma(request(raw), {}) for raw in raws)
    assert asn_pages(xoro) == ["1", "1", "1"]
