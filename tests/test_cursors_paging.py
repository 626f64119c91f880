"""One paging helper for every remote walk: endless pagination ends, says why, and
`loopsync status` shows it; warehouse cursors never run ahead of the worker's clock."""

from __future__ import annotations

import re
import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    MemoryKeyValue,
    PushRequest,
    WarehouseSettings,
)
from loopsync.rules import GradingRules, StatusRules
from loopsync.connectors.peoplevox.mapping import next_date_cursor
from loopsync.connectors.shiphero import ShipHeroConnector
from loopsync.cycle import Engine
from loopsync.errors import PaginationStopped
from loopsync.http import RetryPolicy
from loopsync.loop_client import LoopClient
from loopsync.models import LoopReturn
from loopsync.paging import PageWalk, Step, WalkEnd, WalkResult, record_walk, walk_items
from loopsync.sandbox.server import ApiServer, EmulatedApi, Fault, Request, Response, json_response
from loopsync.status import merchant_status, render_status
from loopsync.state import Store
from loopsync.timeutil import iso, parse_timestamp
from loopsync.testing import FakeClock

from loopsync.testing import FakeWarehouse, merchant_config
from .test_generic import http_connector, threepl  # noqa: F401 - fixture
from .test_peoplevox_connector import _created, emu, fake_clock, make_connector  # noqa: F401
from .test_xoro import connector as xoro_connector
from .test_xoro import imported_return, xoro  # noqa: F401 - fixture

POLICY = RetryPolicy(attempts=2, base=0.01, cap=0.02)


# -- the helper alone ------------------------------------------------------------------------


def pages_of(script: list[Step[list[int]]]) -> Any:
    calls: list[Any] = []

    def fetch(token: Any) -> Step[list[int]]:
        calls.append(token)
        return script[min(len(calls) - 1, len(script) - 1)]

    return fetch, calls


@pytest.mark.parametrize(
    ("script", "outcome", "pages"),
    [
        ([Step([1], True, "a"), Step([2], False)], WalkEnd.COMPLETE, 2),
        ([Step([1], True, "a"), Step([2], True, "a")], WalkEnd.REPEATED, 2),
        ([Step([1], True, None)], WalkEnd.NO_CURSOR, 1),
        (
            [Step([1], True, 2, fingerprint="x"), Step([1], True, 3, fingerprint="x")],
            WalkEnd.REPEATED,
            2,
        ),
    ],
)
def test_a_walk_ends_and_says_why(
    script: list[Step[list[int]]], outcome: WalkEnd, pages: int
) -> None:
    fetch, calls = pages_of(script)
    items, result = walk_items(fetch, name="t")
    assert result.outcome is outcome and result.pages == pages and len(calls) == pages


def test_ever_new_tokens_end_at_the_page_cap_with_a_resume_point() -> None:
    n = iter(range(10**6))
    walk = PageWalk(lambda token: Step([0], True, next(n)), name="t", max_pages=5)
    fetched = list(walk)
    assert len(fetched) == 5 and walk.result == WalkResult("t", WalkEnd.CAPPED, 5, 4)
    assert fetched[-1].next_token == 4  # a later walk may resume there


def test_a_set_stop_event_ends_the_walk_between_pages() -> None:
    stop = threading.Event()

    def fetch(token: Any) -> Step[list[int]]:
        stop.set()  # shutdown arrives while the first page is read
        return Step([1], True, (token or 0) + 1)

    walk = PageWalk(fetch, name="t", stop=stop)
    assert len(list(walk)) == 1 and walk.result.outcome is WalkEnd.STOPPED


@settings(max_examples=50, deadline=None)
@given(
    hs.lists(
        hs.tuples(
            hs.booleans(),
            hs.one_of(hs.none(), hs.integers(0, 4)),
            hs.one_of(hs.none(), hs.integers(0, 2)),
        ),
        min_size=1,
        max_size=30,
    ),
    hs.integers(1, 8),
)
def test_any_remote_walk_ends_within_the_cap(script: list[Any], cap: int) -> None:
    steps = [Step([i], more, token, fp) for i, (more, token, fp) in enumerate(script)]
    fetch, calls = pages_of(steps + [Step([0], True, 99)] * 50)
    items, result = walk_items(fetch, name="t", max_pages=cap)
    assert len(calls) <= cap and result.pages == len(calls)


def test_record_walk_counts_unfinished_runs_and_clears_on_completion() -> None:
    kv = MemoryKeyValue()
    at = parse_timestamp("2026-06-01T00:00:00Z")
    record_walk(kv, WalkResult("x", WalkEnd.REPEATED, 3), at)
    record_walk(kv, WalkResult("x", WalkEnd.REPEATED, 3), at + timedelta(hours=1))
    assert kv.get("walk:x")["times"] == 2 and kv.get("walk:x")["since"] == iso(at)
    record_walk(kv, WalkResult("x", WalkEnd.COMPLETE, 1), at)
    assert kv.get("walk:x") is None


# -- hostile servers on 127.0.0.1 ---------------------------------------------------------


class Endless(EmulatedApi):
    """Answers every request with `answer(request, n)`; n counts from 1."""

    name = "hostile"

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self.answer = answer
        self.calls = 0

    def handle(self, req: Request) -> Response:
        self.calls += 1
        return self.answer(req, self.calls)


@pytest.fixture
def serve() -> Any:
    servers: list[ApiServer] = []

    def start(answer: Any) -> tuple[Endless, str]:
        api = Endless(answer)
        servers.append(ApiServer(api).start())
        return api, servers[-1].url

    yield start
    for server in servers:
        server.stop()


LOOP_MODES = {
    "same token forever": lambda req, n: {"returns": [], "nextPageUrl": "/x?cursor=SAME"},
    "ever-new tokens": lambda req, n: {"returns": [], "nextPageUrl": f"/x?cursor=c{n}"},
    "next link without cursor": lambda req, n: {"returns": [], "nextPageUrl": "/x?page=2"},
}


@pytest.mark.parametrize("mode", list(LOOP_MODES))
def test_loop_list_walk_ends_on_endless_pagination_and_status_says_why(
    serve: Any, tmp_path: Any, mode: str
) -> None:
    api, url = serve(lambda req, n: json_response(LOOP_MODES[mode](req, n)))
    cfg = merchant_config(tmp_path, states=("open",))
    clock = FakeClock("2026-05-02T00:00:00Z")
    loop = LoopClient(url, "k-" + mode.replace(" ", "-"), clock=clock, policy=POLICY, max_pages=20)
    for _ in range(2):  # run after run
        store = Store(cfg.state_path, clock)
        Engine(cfg, store, loop, FakeWarehouse(), clock=clock, run_id="r").ingest()
        store.close()
        clock.advance(900)
    assert api.calls <= 4 * 20
    text = render_status(merchant_status(cfg))
    expected = {
        "same token forever": "repeated_token",
        "ever-new tokens": "page_cap",
        "next link without cursor": "no_cursor",
    }[mode]
    assert f"unfinished walk loop.returns.open: {expected}" in text
    store = Store(cfg.state_path, clock)
    try:
        done = store.cursors.get("returns", "open").done_until
        if mode == "next link without cursor":
            # Ended there, logged and shown, rather than left unfinished forever.
            assert done is not None and "without a cursor" in store.runs.problems()[0].message
        elif mode == "same token forever":
            assert done is None and "repeated_cursor" in store.runs.problems()[0].message
    finally:
        store.close()


def shiphero_connector(
    url: str, clock: FakeClock, kv: MemoryKeyValue, stop: threading.Event | None = None
) -> ShipHeroConnector:
    section = Section(
        {"access_token": "${SHIPHERO_ACCESS_TOKEN}", "max_pages": 15},
        file="t.yaml",
        path="warehouse",
        env={"SHIPHERO_ACCESS_TOKEN": "access-token-123456"},
    )
    own = ShipHeroConnector.parse_settings(section)
    section.done()
    settings_ = WarehouseSettings(
        kind="shiphero",
        base_url=url,
        destinations={"12": "W1"},
        statuses=StatusRules.build(**ShipHeroConnector.default_statuses),
        grading=GradingRules(),
        order_wait=timedelta(days=2),
        poll_batch=50,
        timeout=5.0,
        connector=own,
    )
    ctx = ConnectorContext(
        merchant="acme", clock=clock, policy=POLICY, kv=kv, stop=stop or threading.Event()
    )
    return ShipHeroConnector(settings_, ctx)


def shiphero_page(n: int, token: str | None) -> Response:
    connection = {
        "pageInfo": {"hasNextPage": True, "endCursor": token},
        "edges": [{"node": {"id": f"R{n}", "partner_id": "someone-else"}}],
    }
    return json_response({"data": {"returns": {"data": connection}}})


@pytest.mark.parametrize(
    ("mode", "token", "outcome"),
    [
        ("same token forever", lambda n: "SAME", "repeated_token"),
        ("ever-new tokens", lambda n: f"c{n}", "page_cap"),
    ],
)
def test_shiphero_connection_walk_ends_and_the_lookup_refuses_half_a_listing(
    serve: Any, mode: str, token: Any, outcome: str
) -> None:
    api, url = serve(lambda req, n: shiphero_page(n, token(n)))
    kv = MemoryKeyValue()
    con = shiphero_connector(url, FakeClock(), kv)
    req = PushRequest(
        LoopReturn.from_api(
            {
                "id": "1001",
                "state": "open",
                "updated_at": "2026-06-01T00:00:00Z",
                "line_items": [{"line_item_id": 1, "sku": "A"}],
            }
        ),
        "W1",
    )
    with pytest.raises(PaginationStopped) as stopped:
        con.find_rma(req, {"order_id": "O1"})
    assert stopped.value.reason == outcome and api.calls <= 15
    assert kv.get("walk:shiphero.returns")["outcome"] == outcome


def test_shiphero_next_page_without_cursor_ends_the_walk_logged(serve: Any) -> None:
    api, url = serve(lambda req, n: shiphero_page(n, None))
    kv = MemoryKeyValue()
    con = shiphero_connector(url, FakeClock(), kv)
    req = PushRequest(
        LoopReturn.from_api(
            {
                "id": "1001",
                "state": "open",
                "updated_at": "2026-06-01T00:00:00Z",
                "line_items": [{"line_item_id": 1, "sku": "A"}],
            }
        ),
        "W1",
    )
    assert con.find_rma(req, {"order_id": "O1"}) is None and api.calls == 1
    assert kv.get("walk:shiphero.returns")["outcome"] == "no_cursor"


def xoro_endless(new_rows: bool) -> Fault:
    def answer(req: Request) -> Response:
        page = int(req.query.get("page") or 1)
        number = f"A{page}" if new_rows else "A1"
        return json_response(
            {
                "Result": True,
                "Message": "",
                "TotalPages": None,
                "Data": [{"AsnHeaderData": {"AsnNumber": number}}],
            }
        )

    return Fault("custom", response=answer)


@pytest.mark.parametrize(("new_rows", "outcome"), [(False, "repeated_token"), (True, "page_cap")])
def test_xoro_listing_ends_on_a_server_that_never_stops_paging(
    xoro: Any, clock: FakeClock, new_rows: bool, outcome: str
) -> None:  # noqa: F811
    raw = imported_return(xoro, clock)
    con = xoro_connector(xoro, clock, max_pages=12)
    xoro.faults.inject(xoro_endless(new_rows), times=10**6)
    with pytest.raises(PaginationStopped) as stopped:
        con.find_rma(PushRequest(LoopReturn.from_api(raw), ""), {})
    assert stopped.value.reason == outcome
    assert len(xoro.recorder.calls(path="getasn")) <= 12
    assert con.ctx.kv.get("walk:xoro.asn/getasn")["outcome"] == outcome


def generic_endless(new_rows: bool) -> Fault:
    def answer(req: Request) -> Response:
        page = int(req.query.get("page") or 1)
        receipt = {
            "receipt_id": f"r{page if new_rows else 1}",
            "rma_number": "1",
            "sku": "A",
            "quantity": 1,
            "condition": "available",
            "received_at": "2026-06-01T11:00:00Z",
        }
        return json_response({"receipts": [receipt], "next_page": page + 1})

    return Fault("custom", response=answer)


@pytest.mark.parametrize(("new_rows", "outcome"), [(False, "repeated_token"), (True, "page_cap")])
def test_generic_receipt_feed_no_longer_follows_next_page_forever(
    threepl: Any, clock: FakeClock, new_rows: bool, outcome: str
) -> None:  # noqa: F811
    kv = MemoryKeyValue()
    con = http_connector(threepl, clock, kv=kv, max_pages=9)
    threepl.faults.inject(generic_endless(new_rows), times=10**6)
    from loopsync.models import RmaRef

    ref = RmaRef("1", "1", {"created_at": "2026-06-01T00:00:00Z", "units": {"A": 1}})
    with pytest.raises(PaginationStopped) as stopped:
        con.poll([ref])
    assert stopped.value.reason == outcome
    assert len(threepl.recorder.calls(path="receipts")) <= 9
    assert kv.get("walk:generic.receipts")["outcome"] == outcome
    assert kv.get("receipts_since") is None  # the cursor did not move past half a feed


def test_generic_cursor_stored_in_the_future_is_pulled_back_to_now(
    threepl: Any, clock: FakeClock
) -> None:  # noqa: F811
    kv = MemoryKeyValue()
    kv.set("receipts_since", "2099-01-01T00:00:00Z")
    con = http_connector(threepl, clock, kv=kv)
    from loopsync.models import RmaRef

    con.poll([RmaRef("1", "1", {"created_at": "2026-06-01T00:00:00Z", "units": {"A": 1}})])
    since = parse_timestamp(threepl.recorder.calls(path="receipts")[-1].query["since"])
    assert since <= clock.now()


# -- PeopleVox: endless pages and the 2099 row ------------------------------------------------


def test_peoplevox_read_ends_when_the_server_ignores_page_numbers(
    emu: Any, fake_clock: FakeClock
) -> None:  # noqa: F811
    kv = MemoryKeyValue()
    con = make_connector(emu, fake_clock, kv=kv, items_per_page=1, max_pages=50)
    ref = _created(emu, con, "901")
    emu.receive("901", "full")
    real = emu._read

    def ignores_page(operation: str, request: dict[str, Any]) -> Response:
        resp = real(operation, {**request, "PageNo": 1})  # always the first page...
        resp.body = re.sub(rb"(TotalCount>)\d+", rb"\g<1>99999", resp.body)  # ...and more
        return resp

    emu._read = ignores_page
    with pytest.raises(PaginationStopped) as stopped:
        con.poll([ref])
    assert stopped.value.reason == "repeated_token"
    assert kv.get("walk:peoplevox.GetReportData.Loop returns")["outcome"] == "repeated_token"


def test_peoplevox_one_row_dated_2099_does_not_blind_the_sweep(
    emu: Any, fake_clock: FakeClock
) -> None:  # noqa: F811
    kv = MemoryKeyValue()
    con = make_connector(emu, fake_clock, kv=kv)
    first, second = _created(emu, con, "801"), _created(emu, con, "802")
    emu.receive("801", "full")
    emu.ras["801"].items[0].changed_at = datetime(2099, 1, 1)  # a typo in the warehouse
    con.poll([first, second]).commit()
    assert datetime.fromisoformat(kv.get(con.KV_DATE_CURSOR)) <= datetime(2026, 6, 2)
    fake_clock.advance(timedelta(hours=1))
    emu.receive("802", "damaged")
    assert "802" in con.poll([first, second]).statuses, "the sweep was blinded by 2099"


def test_peoplevox_date_cursor_stored_in_2099_is_pulled_back(
    emu: Any, fake_clock: FakeClock
) -> None:  # noqa: F811
    kv = MemoryKeyValue()
    con = make_connector(emu, fake_clock, kv=kv)
    first, second = _created(emu, con, "801"), _created(emu, con, "802")
    con.poll([first, second]).commit()
    kv.set(con.KV_DATE_CURSOR, "2099-01-01T00:00:00")  # what today's code stored
    emu.receive("802", "full")
    assert "802" in con.poll([first, second]).statuses


@settings(max_examples=50, deadline=None)
@given(hs.one_of(hs.none(), hs.datetimes()), hs.lists(hs.datetimes(), max_size=5))
def test_peoplevox_date_cursor_is_never_past_now(
    cursor: datetime | None, seen: list[datetime]
) -> None:
    now = datetime(2026, 6, 1, 12)
    got = next_date_cursor(cursor, seen, now)
    assert got is None or got <= now
    assert got is None or all(d <= got for d in seen if d <= now)


def test_xoro_a_loop_return_stamped_in_the_future_still_finds_its_asn(
    xoro: Any, clock: FakeClock
) -> None:  # noqa: F811
    raw = imported_return(xoro, clock)
    raw = {**raw, "created_at": "2099-01-01T00:00:00Z", "updated_at": "2099-01-01T00:00:00Z"}
    con = xoro_connector(xoro, clock)
    ref = con.find_rma(PushRequest(LoopReturn.from_api(raw), ""), {})
    assert ref is not None, "a window starting in 2099 listed nothing"
    assert parse_timestamp(ref.extra["search_from"]) <= clock.now()
