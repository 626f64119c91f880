"""The real LoopClient against the emulated Loop over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from loopsync.errors import (
    AuthError,
    ErrorBody,
    NotFound,
    PermanentError,
    RateLimited,
    StateConflict,
)
from loopsync.http import RetryPolicy
from loopsync.loop_client import LoopClient, PaginationStopped
from loopsync.models import LoopReturn
from loopsync.sandbox.loop import LoopEmulator
from loopsync.sandbox.seed import make_return, make_returns
from loopsync.sandbox.server import Fault, Recorder
from loopsync.testing import FakeClock, in_process_url, mount
from loopsync.timeutil import iso, loop_wire, parse_timestamp

NOW = datetime(2026, 6, 1, tzinfo=UTC)
POLICY = RetryPolicy(attempts=4, base=0.05, cap=0.2, retry_after_cap=30)


@dataclass
class Loop:
    emulator: LoopEmulator
    url: str  # in process: no socket (loopsync.testing.mount)
    clock: FakeClock
    key: str
    recorder: Recorder

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/v1"

    def session(self) -> requests.Session:
        session = requests.Session()
        mount(session, self.emulator)
        return session

    def client(self, **kw: Any) -> LoopClient:
        kw.setdefault("policy", POLICY)
        kw.setdefault("session", self.session())
        return LoopClient(self.base_url, self.key, clock=self.clock, **kw)

    def raw_get(
        self, path: str, params: dict[str, str] | None = None, key: str | None = None
    ) -> requests.Response:
        return self.session().get(
            f"{self.base_url}{path}",
            params=params,
            timeout=5,
            headers={"X-Authorization": key or self.key},
        )


@pytest.fixture
def loop() -> Iterator[Loop]:
    # One clock for client and emulator: a client that sleeps lets Loop's bucket refill.
    clock = FakeClock(NOW)
    key = f"loop-key-{uuid.uuid4().hex}"  # the client's limiter is shared per key
    emulator = LoopEmulator(clock=clock, api_keys={key})
    emulator.recorder = recorder = Recorder()
    yield Loop(emulator, in_process_url(emulator), clock, key, recorder)


def ids_of(pages: Any) -> list[str]:
    return [r["id"] for page in pages for r in page.returns]


def add(loop: Loop, return_id: int, **kw: Any) -> dict[str, Any]:
    kw.setdefault("created_at", NOW - timedelta(days=2))
    raw = make_return(return_id=return_id, **kw)
    loop.emulator.add_return(raw)
    return raw


# -- listing --------------------------------------------------------------------------


def test_each_state_pass_returns_exactly_that_state(loop: Loop) -> None:
    states = ("open", "closed", "cancelled", "expired", "review")
    seeded = make_returns(
        60,
        start=NOW - timedelta(days=5),
        end=NOW,
        rng=random.Random(4),
        states_weights=[(s, 1) for s in states],
    )
    for raw in seeded:
        loop.emulator.add_return(raw)
    client = loop.client()
    for state in states:
        expected = sorted(r["id"] for r in seeded if r["state"] == state)
        pages = client.iter_returns(NOW - timedelta(days=6), NOW, state)
        assert sorted(ids_of(pages)) == expected, state
        assert expected, f"the seed should hold some {state} returns"


def test_without_state_loop_lists_open_closed_and_expired_only(loop: Loop) -> None:
    for n, state in enumerate(("open", "closed", "cancelled", "expired", "review")):
        add(loop, 100 + n, state=state)
    body = loop.raw_get(
        "/warehouse/return/list", {"from": "2026-05-01 00:00:00", "to": "2026-06-01T00:00:00.000Z"}
    ).json()
    assert isinstance(body, list)  # no paginate: a bare array
    assert sorted(r["state"] for r in body) == ["closed", "expired", "open"]


def test_pagination_walks_many_pages_when_next_links_drop_our_params(loop: Loop) -> None:
    assert loop.emulator.drop_params_in_next_url
    seeded = make_returns(
        57,
        start=NOW - timedelta(days=3),
        end=NOW,
        rng=random.Random(1),
        states_weights=(("open", 1),),
    )
    for raw in seeded:
        loop.emulator.add_return(raw)
    pages = list(loop.client(page_size=5).iter_returns(NOW - timedelta(days=3), NOW, "open"))
    assert len(pages) == 12
    assert sorted(ids_of(pages)) == sorted(r["id"] for r in seeded)  # each exactly once
    calls = loop.recorder.calls(path="/warehouse/return/list")
    assert all(
        c.query["state"] == "open" and c.query["paginate"] == "true" and "from" in c.query
        for c in calls
    )


def test_next_page_url_is_shaped_like_the_docs(loop: Loop) -> None:
    for n in range(3):
        add(loop, 200 + n)
    body = loop.raw_get(
        "/warehouse/return/list",
        {
            "from": "2026-05-01T00:00:00.000Z",
            "to": "2026-06-01T00:00:00.000Z",
            "filter": "created_at",
            "state": "open",
            "paginate": "true",
            "pageSize": "2",
        },
    ).json()
    assert set(body) == {"returns", "nextPageUrl", "previousPageUrl"}
    assert body["previousPageUrl"] is None
    query = requests.utils.urlparse(body["nextPageUrl"]).query
    params = dict(p.split("=", 1) for p in query.split("&"))
    assert sorted(params) == ["cursor", "filter", "pageSize", "to"]
    cursor = json.loads(base64.urlsafe_b64decode(params["cursor"] + "=="))
    assert cursor["_pointsToNextItems"] is True and cursor["id"] == 201


@pytest.mark.parametrize("quirk", ["repeat_cursor_once", "omit_cursor_once"])
def test_broken_next_links_stop_the_walk_and_a_rerun_reads_everything(
    loop: Loop, quirk: str
) -> None:
    for n in range(12):
        add(loop, 300 + n)
    setattr(loop.emulator, quirk, True)
    client = loop.client(page_size=3)
    pages: list[Any] = []
    with pytest.raises(PaginationStopped):
        for page in client.iter_returns(NOW - timedelta(days=3), NOW, "open"):
            pages.append(page)
    assert len(pages) == (2 if quirk == "repeat_cursor_once" else 1)
    assert pages[-1].next_cursor is None  # resume from the window start
    assert len(set(ids_of(pages))) == len(ids_of(pages))  # nothing read twice
    rerun = client.iter_returns(NOW - timedelta(days=3), NOW, "open")
    assert sorted(ids_of(rerun)) == [str(300 + n) for n in range(12)]


def test_121_days_is_refused_and_120_days_passes(loop: Loop) -> None:
    add(loop, 400, created_at=NOW - timedelta(days=100))
    too_long = loop.raw_get(
        "/warehouse/return/list",
        {
            "from": loop_wire(NOW - timedelta(days=121)),
            "to": loop_wire(NOW),
            "filter": "created_at",
        },
    )
    assert too_long.status_code == 422
    assert "to" in too_long.json()["errors"] and too_long.json()["message"]
    client = loop.client()
    with pytest.raises(ValueError):
        list(client.iter_returns(NOW - timedelta(days=121), NOW, "open"))
    pages = client.iter_returns(NOW - timedelta(days=120), NOW, "open", filter="created_at")
    assert ids_of(pages) == ["400"]


@pytest.mark.parametrize(
    ("label", "params", "field"),
    [
        ("bad state", {"state": "pending"}, "state"),
        ("unparseable from", {"from": "yesterday"}, "from"),
        ("to before from", {"from": "2026-05-02", "to": "2026-05-01"}, "to"),
        ("bad filter", {"filter": "deleted_at"}, "filter"),
        ("garbage cursor", {"paginate": "true", "cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_list_validation_errors_are_laravel_422s(
    loop: Loop, label: str, params: dict[str, str], field: str
) -> None:
    answer = loop.raw_get("/warehouse/return/list", params)
    assert answer.status_code == 422
    assert field in answer.json()["errors"]


def test_both_window_bounds_are_inclusive(loop: Loop) -> None:
    start, end = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    add(loop, 500, updated_at=start)
    add(loop, 501, updated_at=end)
    add(loop, 502, updated_at=end + timedelta(seconds=1))
    add(loop, 503, updated_at=start - timedelta(seconds=1))
    pages = loop.client().iter_returns(start, end, "open")
    assert sorted(ids_of(pages)) == ["500", "501"]


def test_a_return_updated_by_an_action_moves_into_the_current_window(loop: Loop) -> None:
    add(loop, 510, updated_at=NOW - timedelta(days=1))
    loop.clock.advance(60)
    loop.client().flag("510")
    assert loop.emulator.get("510")["updated_at"] == iso(loop.clock.now())
    pages = loop.client().iter_returns(loop.clock.now(), loop.clock.now(), "review")
    assert ids_of(pages) == ["510"]


def test_listed_returns_parse_and_carry_fields_loop_added_without_notice(loop: Loop) -> None:
    raw = add(loop, 520, units=3)
    [page] = loop.client().iter_returns(NOW - timedelta(days=3), NOW, "open")
    [served] = page.returns
    assert "shop_id" in served and "weight_grams" in served["line_items"][0]
    parsed = LoopReturn.from_api(served)
    assert parsed.id == "520" and len(parsed.line_items) == 3
    assert served["total"] == raw["total"] and isinstance(served["total"], str)


def test_dated_api_versions_are_served_too(loop: Loop) -> None:
    add(loop, 530)
    client = LoopClient(
        f"{loop.url}/api/2026-07", loop.key, clock=loop.clock, policy=POLICY, session=loop.session()
    )
    assert ids_of(client.iter_returns(NOW - timedelta(days=3), NOW, "open")) == ["530"]


# -- auth and rate limits ---------------------------------------------------------------


def test_an_unknown_key_gets_loops_401_body(loop: Loop) -> None:
    answer = loop.raw_get("/destinations", key="wrong")
    assert answer.status_code == 401
    assert answer.json() == {
        "error": {"code": "401", "http_code": "GEN-UNAUTHORIZED", "message": "Unauthorized."}
    }
    with pytest.raises(AuthError):
        LoopClient(
            loop.base_url, "wrong-key", clock=loop.clock, session=loop.session()
        ).destinations()


def test_a_key_without_the_scope_gets_401_not_403(loop: Loop) -> None:
    loop.emulator.api_keys["returns-only"] = frozenset({"returns"})
    assert loop.raw_get("/destinations", key="returns-only").status_code == 401
    assert loop.raw_get("/warehouse/return/list", key="returns-only").status_code == 200


def test_the_rate_limit_answers_429_once_the_bucket_is_empty(loop: Loop) -> None:
    loop.emulator.rate_limit_per_minute = 5
    client = loop.client(policy=RetryPolicy(attempts=1))
    for _ in range(5):
        client.destinations()
    with pytest.raises(RateLimited) as caught:
        client.destinations()
    assert caught.value.retry_after is None  # Loop documents no Retry-After
    loop.clock.advance(12)  # one token back at 5 a minute
    assert client.destinations()
    assert loop.emulator.busiest_window(loop.key) == 7


def test_a_retrying_client_rides_out_429_with_retry_after(loop: Loop) -> None:
    loop.emulator.rate_limit_per_minute = 5
    loop.emulator.rate_limit_retry_after = True
    client = loop.client()
    for _ in range(6):
        client.destinations()
    assert any(11 <= s <= 13 for s in loop.clock.slept)  # waited Loop's 12 s hint


def test_the_clients_limiter_keeps_the_busiest_minute_under_loops_limit(loop: Loop) -> None:
    client = loop.client(requests_per_minute=280)
    for _ in range(320):
        client.destinations()
    assert loop.emulator.busiest_window(loop.key) <= 280
    assert not [c for c in loop.recorder.calls() if c.status == 429]
    assert len(loop.emulator.request_times(loop.key)) == 320


def test_an_html_page_from_a_proxy_is_retried(loop: Loop) -> None:
    add(loop, 540)
    loop.emulator.faults.inject(Fault("malformed"), times=2)
    assert ids_of(loop.client().iter_returns(NOW - timedelta(days=3), NOW, "open")) == ["540"]


# -- details and ASN --------------------------------------------------------------------


def test_details_use_integer_ids_and_space_separated_times(loop: Loop) -> None:
    add(loop, 600, units=2)
    details = loop.client().return_details("600")
    assert details["id"] == 600
    assert details["created_at"] == "2026-05-30 00:00:00"
    assert all(isinstance(li["line_item_id"], int) for li in details["line_items"])
    assert parse_timestamp(details["updated_at"], assume_utc=True) == NOW - timedelta(days=2)


def test_unknown_details_are_404_or_a_200_error_body(loop: Loop) -> None:
    with pytest.raises(NotFound):
        loop.client().return_details("999")
    loop.emulator.not_found_as_200 = True
    with pytest.raises(ErrorBody) as caught:
        loop.client().return_details("999")
    assert caught.value.code == "NOT_FOUND"


def test_asn_has_one_row_per_line_item_keyed_by_return_and_line(loop: Loop) -> None:
    raw = add(loop, 610, units=3, updated_at=NOW - timedelta(hours=5))
    add(loop, 611, units=1, updated_at=NOW - timedelta(days=3))
    rows = loop.client().asn_report(NOW - timedelta(days=1), NOW)
    assert [(r["id"], r["return_line_item_id"]) for r in rows] == [
        (610, li["line_item_id"]) for li in raw["line_items"]
    ]
    assert [r["sku"] for r in rows] == [li["sku"] for li in raw["line_items"]]


def test_asn_accepts_plain_dates(loop: Loop) -> None:
    add(loop, 620, units=2, updated_at=datetime(2026, 5, 20, 23, 59, tzinfo=UTC))
    rows = loop.raw_get(
        "/warehouse/reporting/asn", {"from": "2026-05-20", "to": "2026-05-20"}
    ).json()
    assert [r["id"] for r in rows] == [620, 620]


# -- actions --------------------------------------------------------------------------


def test_process_closes_and_a_second_process_is_a_state_conflict(loop: Loop) -> None:
    add(loop, 700)
    client = loop.client()
    client.process("700", {"warehouse": "EAST"})
    assert loop.emulator.get("700")["state"] == "closed"
    with pytest.raises(StateConflict) as caught:
        client.process("700")
    assert caught.value.code == "UNPROCESSABLE_RETURN"
    assert loop.emulator.actions_for("700") == ["process"]


def test_a_flagged_return_refuses_process_and_cancel(loop: Loop) -> None:
    add(loop, 710)
    client = loop.client()
    client.flag("710")
    assert loop.emulator.get("710")["state"] == "review"
    with pytest.raises(StateConflict) as processed:
        client.process("710")
    assert processed.value.code == "UNPROCESSABLE_FLAGGED_RETURN"
    with pytest.raises(StateConflict) as cancelled:
        client.cancel("710")
    assert cancelled.value.message == "Return is flagged and cannot be processed."
    with pytest.raises(StateConflict):
        client.flag("710")
    assert loop.emulator.actions_for("710") == ["flag"]


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("expired", "cancel"),
        ("expired", "process"),
        ("cancelled", "close"),
        ("closed", "flag"),
        ("closed", "cancel"),
    ],
)
def test_finished_returns_refuse_actions_with_a_200_conflict(
    loop: Loop, state: str, action: str
) -> None:
    add(loop, 720, state=state)
    with pytest.raises(StateConflict):
        getattr(loop.client(), action)("720")
    assert loop.emulator.get("720")["state"] == state
    assert loop.emulator.actions_for("720") == []


@pytest.mark.parametrize(
    ("action", "state"),
    [("cancel", "cancelled"), ("close", "closed"), ("flag", "review"), ("process", "closed")],
)
def test_open_returns_take_every_action(loop: Loop, action: str, state: str) -> None:
    add(loop, 730)
    getattr(loop.client(), action)("730")
    assert loop.emulator.get("730")["state"] == state
    assert loop.emulator.actions_for("730") == [action]


def test_queued_processing_accepts_a_racing_second_process(loop: Loop) -> None:
    loop.emulator.process_delay_seconds = 30
    add(loop, 740)
    client = loop.client()
    client.process("740")
    client.process("740")  # Loop has not flipped the state yet: accepted again
    assert loop.emulator.actions_for("740") == ["process", "process"]
    assert loop.emulator.get("740")["state"] == "open"
    queued_at = loop.clock.now()
    loop.clock.advance(31)
    closed = loop.emulator.get("740")
    assert closed["state"] == "closed"
    assert closed["updated_at"] == iso(queued_at + timedelta(seconds=30))


def test_unknown_returns_are_404_on_actions(loop: Loop) -> None:
    with pytest.raises(NotFound):
        loop.client().close("424242")


def test_notes_are_added_truncated_and_listed(loop: Loop) -> None:
    add(loop, 750)
    client = loop.client()
    assert client.notes("750") == []  # Loop answers 422 when there are none
    client.add_note("750", "RMA created in ShipHero")
    client.add_note("750", "z" * 400)
    assert loop.emulator.notes_for("750") == ["RMA created in ShipHero", "z" * 253 + "…"]
    assert [n["content"][:3] for n in client.notes("750")] == ["RMA", "zzz"]


def test_the_emulator_refuses_notes_of_255_characters(loop: Loop) -> None:
    add(loop, 751)
    answer = loop.session().post(
        f"{loop.base_url}/warehouse/return/751/note",
        timeout=5,
        json={"content": "n" * 255},
        headers={"X-Authorization": loop.key},
    )
    assert answer.status_code == 422
    assert loop.emulator.notes_for("751") == []


def test_grades_and_assessments_are_validated_and_recorded(loop: Loop) -> None:
    raw = add(loop, 760, units=2)
    first, second = (int(li["line_item_id"]) for li in raw["line_items"])
    client = loop.client()
    grade = {
        "line_item_id": first,
        "description": "Like new",
        "condition_category": "grade_a",
        "return_processor": "dock@example.com",
    }
    assert client.grade([grade]) == [grade]
    client.assess([{"line_item_id": second, "disposition_outcome": "back_to_stock"}])
    assert [g["condition_category"] for g in loop.emulator.grades_for("760")] == ["grade_a"]
    assert [a["line_item_id"] for a in loop.emulator.assessments_for("760")] == [second]
    with pytest.raises(PermanentError) as bad_enum:
        client.grade([{"line_item_id": first, "description": "x", "condition_category": "grade_z"}])
    assert bad_enum.value.status == 422
    with pytest.raises(AuthError) as foreign:
        client.assess([{"line_item_id": 1, "disposition_outcome": "recycle"}])
    assert foreign.value.status == 403


def test_more_than_30_items_is_422_but_the_client_sends_20_at_a_time(loop: Loop) -> None:
    raw = add(loop, 770, units=1)
    item: dict[str, Any] = {
        "line_item_id": int(raw["line_items"][0]["line_item_id"]),
        "description": "ok",
    }
    answer = loop.session().post(
        f"{loop.base_url}/dispositioning/grade",
        timeout=5,
        json={"items": [item] * 31},
        headers={"X-Authorization": loop.key},
    )
    assert answer.status_code == 422
    assert len(loop.client().grade([item] * 31)) == 31
    assert len(loop.emulator.grades_for("770")) == 31


def test_destinations_and_their_500_when_one_lacks_an_address(loop: Loop) -> None:
    assert [d["id"] for d in loop.client().destinations()] == [12, 13]
    loop.emulator.destinations.append(
        {"id": 14, "type": "donate", "name": "Charity", "enabled": True}
    )
    with pytest.raises(Exception, match="500"):
        loop.client(policy=RetryPolicy(attempts=1)).destinations()


def test_reads_are_not_writes_and_every_action_is(loop: Loop) -> None:
    raw = add(loop, 780)
    client = loop.client()
    list(client.iter_returns(NOW - timedelta(days=3), NOW, "open"))
    client.return_details("780")
    client.notes("780")
    client.add_note("780", "hello")
    client.grade([{"line_item_id": int(raw["line_items"][0]["line_item_id"]), "description": "ok"}])
    client.process("780")
    writes = [c.path.rsplit("/", 1)[-1] for c in loop.recorder.calls(writes=True)]
    reads = [c.path.rsplit("/", 1)[-1] for c in loop.recorder.calls(writes=False)]
    assert writes == ["note", "grade", "process"]
    assert reads == ["list", "details", "notes"]


def test_a_dry_run_client_sends_no_writes(loop: Loop) -> None:
    add(loop, 790)
    client = loop.client(dry_run=True)
    for write in (lambda: client.process("790"), lambda: client.add_note("790", "x")):
        with pytest.raises(Exception, match="dry run"):
            write()
    client.return_details("790")
    assert loop.recorder.calls(writes=True) == []


def test_listeners_hear_of_new_returns(loop: Loop) -> None:
    heard: list[dict[str, Any]] = []
    loop.emulator.listeners.append(heard.append)
    raw = add(loop, 800)
    assert [r["id"] for r in heard] == ["800"]
    heard[0]["state"] = "closed"  # a listener's copy is its own
    assert loop.emulator.get("800")["state"] == raw["state"] == "open"


def test_update_return_bumps_updated_at_unless_given(loop: Loop) -> None:
    add(loop, 810)
    loop.clock.advance(5)
    loop.emulator.update_return("810", tracking_number="1Z999")
    assert loop.emulator.get("810")["updated_at"] == iso(loop.clock.now())
    loop.emulator.set_state("810", "expired")
    pinned = NOW - timedelta(days=9)
    loop.emulator.update_return("810", updated_at=pinned)
    got = loop.emulator.get("810")
    assert (got["state"], got["tracking_number"], got["updated_at"]) == (
        "expired",
        "1Z999",
        iso(pinned),
    )


# -- seed -----------------------------------------------------------------------------


def test_seed_is_deterministic_realistic_and_parseable() -> None:
    def seed() -> list[dict[str, Any]]:
        return make_returns(300, start=NOW - timedelta(days=10), end=NOW, rng=random.Random(42))

    returns = seed()
    assert returns == seed()
    parsed = [LoopReturn.from_api(r) for r in returns]
    assert all(NOW - timedelta(days=10) <= p.updated_at <= NOW for p in parsed)
    assert all(1 <= len(p.line_items) <= 4 for p in parsed)
    assert len({r["id"] for r in returns}) == 300
    assert {r["state"] for r in returns} == {"open", "closed", "cancelled", "expired", "review"}
    assert sum(r["state"] == "open" for r in returns) > 150
    assert any(max(p.units_by_sku().values()) > 1 for p in parsed)  # a SKU repeated
    assert any(not r["customer"].isascii() for r in returns)
    assert all(
        len(r["provider_order_id"]) == 13 and r["order_name"].startswith("#") for r in returns
    )
    assert all(isinstance(r["destination_id"], int) for r in returns)
