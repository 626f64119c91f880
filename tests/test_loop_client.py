"""LoopClient against `responses` (no network): pagination, guards, action bodies,
retries and the dry-run wall."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
import structlog
from structlog.testing import capture_logs

from loopsync.errors import (
    DryRunViolation,
    ErrorBody,
    OutcomeUnknown,
    RateLimited,
    StateConflict,
    TransientError,
)
from loopsync.http import RetryPolicy
from loopsync.loop_client import (
    LoopClient,
    PaginationStopped,
    ReturnsPage,
    classify_action_body,
    extract_cursor,
    truncate_note,
)
from loopsync.testing import FakeClock

BASE = "https://loop.test/api/v1"
LIST_URL = f"{BASE}/warehouse/return/list"
START = datetime(2026, 5, 1, tzinfo=UTC)
END = datetime(2026, 5, 2, tzinfo=UTC)
POLICY = RetryPolicy(attempts=4, base=0.2, cap=1.0, retry_after_cap=30)
Logs = list[MutableMapping[str, Any]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock("2026-06-01T00:00:00Z")


@pytest.fixture
def api_key() -> str:
    # A fresh key per test: the limiter is shared per key within the process.
    return f"test-key-{uuid.uuid4().hex}"


@pytest.fixture
def client(clock: FakeClock, api_key: str) -> LoopClient:
    return LoopClient(BASE, api_key, clock=clock, policy=POLICY)


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def logs() -> Iterator[Logs]:
    """Every log event of the test, whatever level the suite's logging is set to."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs() as captured:
        yield captured


def sent_json(call: Any) -> Any:
    return json.loads(call.request.body)


def query_of(call: Any) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(call.request.url).query).items()}


def page_body(ids: list[str], next_url: str | None) -> dict[str, Any]:
    return {
        "returns": [{"id": i, "state": "open"} for i in ids],
        "nextPageUrl": next_url,
        "previousPageUrl": None,
    }


def walk(client: LoopClient, **kw: Any) -> list[ReturnsPage]:
    return list(client.iter_returns(START, END, "open", **kw))


def walk_until_stopped(client: LoopClient, **kw: Any) -> tuple[list[ReturnsPage], str]:
    """The pages a guarded walk yielded before it stopped, and the guard's reason."""
    pages: list[ReturnsPage] = []
    with pytest.raises(PaginationStopped) as stopped:
        for page in client.iter_returns(START, END, "open", **kw):
            pages.append(page)
    return pages, stopped.value.reason


# -- pure helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "url", "expected"),
    [
        (
            "docs example",
            f"{LIST_URL}?to=2023-01-01&filter=updated_at&pageSize=2&cursor=eyJj",
            "eyJj",
        ),
        ("percent-encoded", f"{LIST_URL}?cursor=ab%3D%3D&to=x", "ab=="),
        ("plus is data, not a space", f"{LIST_URL}?cursor=a+b/c", "a+b/c"),
        ("relative url", "/warehouse/return/list?cursor=xyz", "xyz"),
        ("no cursor", f"{LIST_URL}?to=2023-01-01&filter=updated_at", None),
        ("empty cursor", f"{LIST_URL}?cursor=&to=x", None),
    ],
)
def test_extract_cursor_reads_only_the_cursor_parameter(
    label: str, url: str, expected: str | None
) -> None:
    assert extract_cursor(url) == expected


def test_truncate_note_fits_under_255_and_marks_the_cut() -> None:
    assert truncate_note("short") == "short"
    cut = truncate_note("x" * 300)
    assert len(cut) == 254 and cut.endswith("…")
    assert truncate_note("y" * 254) == "y" * 254


@pytest.mark.parametrize(
    ("label", "body", "error", "code"),
    [
        (
            "processed twice",
            {
                "errors": {
                    "message": "Return is closed and therefore cannot be processed.",
                    "code": "UNPROCESSABLE_RETURN",
                }
            },
            StateConflict,
            "UNPROCESSABLE_RETURN",
        ),
        (
            "flagged",
            {
                "errors": {
                    "message": "Return is review and therefore cannot be processed.",
                    "code": "UNPROCESSABLE_FLAGGED_RETURN",
                }
            },
            StateConflict,
            "UNPROCESSABLE_FLAGGED_RETURN",
        ),
        (
            "content variant",
            {"content": "Return is expired and cannot be processed."},
            StateConflict,
            None,
        ),
        (
            "message without code",
            {"message": "Return is cancelled and therefore cannot be processed."},
            StateConflict,
            None,
        ),
        (
            "other error",
            {"errors": {"message": "Boom", "code": "UNEXPECTED_ERROR"}},
            ErrorBody,
            "UNEXPECTED_ERROR",
        ),
        ("string false", "false", ErrorBody, None),
        ("null", None, ErrorBody, None),
    ],
)
def test_classify_action_body_tells_state_conflicts_from_other_errors(
    label: str, body: Any, error: type[Exception], code: str | None
) -> None:
    with pytest.raises(error) as caught:
        classify_action_body(body)
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize("body", ["true", True])
def test_classify_action_body_accepts_string_and_boolean_true(body: Any) -> None:
    classify_action_body(body)  # raises on anything but success


# -- pagination -----------------------------------------------------------------------


def test_next_pages_use_our_own_params_plus_only_the_cursor(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    # The docs' nextPageUrl drops from/state/paginate; this one also carries poison.
    next_url = f"{LIST_URL}?to=2001-01-01&filter=created_at&pageSize=2&state=closed&cursor=C2"
    mocked.get(LIST_URL, json=page_body(["1", "2"], next_url))
    mocked.get(LIST_URL, json=page_body(["3"], None))

    pages = walk(client)

    assert [[r["id"] for r in p.returns] for p in pages] == [["1", "2"], ["3"]]
    assert [(p.cursor, p.next_cursor) for p in pages] == [(None, "C2"), ("C2", None)]
    first, second = (query_of(c) for c in mocked.calls)
    assert first == {
        "from": "2026-05-01T00:00:00.000Z",
        "to": "2026-05-02T00:00:00.000Z",
        "filter": "updated_at",
        "state": "open",
        "paginate": "true",
        "pageSize": "250",
    }
    assert second == {**first, "cursor": "C2"}


def test_a_bare_array_is_one_page(client: LoopClient, mocked: responses.RequestsMock) -> None:
    mocked.get(LIST_URL, json=[{"id": "7"}, {"id": "8"}])
    pages = walk(client)
    assert pages == [ReturnsPage([{"id": "7"}, {"id": "8"}], None, None)]


def test_a_repeated_cursor_stops_the_walk_loudly_after_yielding_what_was_read(
    client: LoopClient, mocked: responses.RequestsMock, logs: Logs
) -> None:
    mocked.get(LIST_URL, json=page_body(["1"], f"{LIST_URL}?cursor=A"))
    mocked.get(LIST_URL, json=page_body(["2"], f"{LIST_URL}?cursor=A"))
    pages, reason = walk_until_stopped(client)
    assert reason == "repeated_cursor"
    assert len(mocked.calls) == 2
    assert [([r["id"] for r in p.returns], p.next_cursor) for p in pages] == [
        (["1"], "A"),
        (["2"], None),
    ]  # None: nothing to resume from but the window start
    assert [e["reason"] for e in logs if e["event"] == "loop.pagination_guard"] == [
        "repeated_cursor"
    ]


def test_the_starting_cursor_counts_as_seen(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(LIST_URL, json=page_body(["5"], f"{LIST_URL}?cursor=START"))
    pages, reason = walk_until_stopped(client, cursor="START")
    assert reason == "repeated_cursor" and len(mocked.calls) == 1
    assert query_of(mocked.calls[0])["cursor"] == "START"
    assert pages == [ReturnsPage([{"id": "5", "state": "open"}], None, "START")]


def test_a_next_page_url_without_cursor_stops_the_walk(
    client: LoopClient, mocked: responses.RequestsMock, logs: Logs
) -> None:
    mocked.get(LIST_URL, json=page_body(["1"], f"{LIST_URL}?to=x&filter=updated_at"))
    pages, reason = walk_until_stopped(client)
    assert reason == "next_page_url_without_cursor"
    assert len(mocked.calls) == 1 and pages[0].next_cursor is None
    assert [e["reason"] for e in logs if e["event"] == "loop.pagination_guard"] == [reason]


def test_the_page_cap_stops_an_endless_walk_and_keeps_the_resume_cursor(
    clock: FakeClock, api_key: str, mocked: responses.RequestsMock, logs: Logs
) -> None:
    client = LoopClient(BASE, api_key, clock=clock, policy=POLICY, max_pages=3)
    served = iter(range(1, 100))

    def endless(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        n = next(served)
        return 200, {}, json.dumps(page_body([str(n)], f"{LIST_URL}?cursor=c{n}"))

    mocked.add_callback(responses.GET, LIST_URL, callback=endless)
    pages, reason = walk_until_stopped(client)
    assert reason == "page_cap" and len(mocked.calls) == 3
    assert pages[-1].next_cursor == "c3"  # a later walk resumes here
    assert any(e.get("reason") == "page_cap" for e in logs)


def test_the_last_page_ends_the_walk_quietly(
    client: LoopClient, mocked: responses.RequestsMock, logs: Logs
) -> None:
    mocked.get(LIST_URL, json=page_body(["1"], f"{LIST_URL}?cursor=B"))
    mocked.get(LIST_URL, json=page_body(["2"], None))
    assert [p.next_cursor for p in walk(client)] == ["B", None]
    assert not [e for e in logs if e["event"] == "loop.pagination_guard"]


@pytest.mark.parametrize(
    ("label", "start", "end"),
    [
        ("121 days", START, START + timedelta(days=121)),
        ("120 days and a second", START, START + timedelta(days=120, seconds=1)),
        ("end before start", END, START),
        ("naive bounds", datetime(2026, 5, 1), datetime(2026, 5, 2)),
    ],
)
def test_windows_loop_would_refuse_are_refused_before_any_request(
    client: LoopClient, mocked: responses.RequestsMock, label: str, start: datetime, end: datetime
) -> None:
    with pytest.raises(ValueError):
        list(client.iter_returns(start, end, "open"))
    with pytest.raises(ValueError):
        client.asn_report(start, end)
    assert len(mocked.calls) == 0


def test_exactly_120_days_is_allowed(client: LoopClient, mocked: responses.RequestsMock) -> None:
    mocked.get(LIST_URL, json=page_body([], None))
    list(client.iter_returns(START, START + timedelta(days=120), "review"))
    assert query_of(mocked.calls[0])["to"] == "2026-08-29T00:00:00.000Z"


# -- reads answering errors -------------------------------------------------------------

ERROR_200 = {"errors": {"message": "Something broke", "code": "UNEXPECTED_ERROR"}}


@pytest.mark.parametrize(
    ("label", "path", "call"),
    [
        ("list", "/warehouse/return/list", lambda c: walk(c)),
        ("asn", "/warehouse/reporting/asn", lambda c: c.asn_report(START, END)),
        ("details", "/warehouse/return/details", lambda c: c.return_details("123")),
        ("notes", "/warehouse/return/123/notes", lambda c: c.notes("123")),
        ("destinations", "/destinations", lambda c: c.destinations()),
    ],
)
def test_a_200_with_an_error_object_on_a_read_is_an_error_body(
    client: LoopClient, mocked: responses.RequestsMock, label: str, path: str, call: Any
) -> None:
    mocked.get(f"{BASE}{path}", json=ERROR_200)
    with pytest.raises(ErrorBody) as caught:
        call(client)
    assert caught.value.code == "UNEXPECTED_ERROR" and "Something broke" in str(caught.value)
    assert len(mocked.calls) == 1  # permanent: not retried


def test_an_html_page_on_a_read_is_transient_and_retried(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/destinations", body="<html>502 Bad Gateway</html>", status=200)
    mocked.get(f"{BASE}/destinations", json={"destinations": [{"id": 12}]})
    assert client.destinations() == [{"id": 12}]
    assert len(mocked.calls) == 2


def test_notes_422_means_no_notes(client: LoopClient, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/warehouse/return/9/notes", json=False, status=422)
    assert client.notes(9) == []


def test_return_details_sends_the_id_and_returns_the_object(
    client: LoopClient, mocked: responses.RequestsMock, api_key: str
) -> None:
    mocked.get(f"{BASE}/warehouse/return/details", json={"id": 37603915, "state": "open"})
    assert client.return_details("37603915") == {"id": 37603915, "state": "open"}
    assert query_of(mocked.calls[0]) == {"return_id": "37603915"}
    assert mocked.calls[0].request.headers["X-Authorization"] == api_key


# -- retries --------------------------------------------------------------------------


def test_429_with_retry_after_waits_what_the_server_asked(
    client: LoopClient, clock: FakeClock, mocked: responses.RequestsMock
) -> None:
    mocked.get(
        f"{BASE}/destinations",
        json={"message": "Too Many Attempts."},
        status=429,
        headers={"Retry-After": "7"},
    )
    mocked.get(f"{BASE}/destinations", json={"destinations": []})
    assert client.destinations() == []
    assert len(clock.slept) == 1 and 7 <= clock.slept[0] <= 7.25


def test_429_without_retry_after_backs_off(
    client: LoopClient, clock: FakeClock, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/destinations", json={"message": "Too Many Attempts."}, status=429)
    mocked.get(f"{BASE}/destinations", json={"message": "Too Many Attempts."}, status=429)
    mocked.get(f"{BASE}/destinations", json={"destinations": []})
    client.destinations()
    # Full-jitter exponential backoff: attempt n waits within [base*2^(n-1)/2, base*2^(n-1)].
    assert len(clock.slept) == 2
    assert POLICY.base / 2 <= clock.slept[0] <= POLICY.base
    assert POLICY.base <= clock.slept[1] <= 2 * POLICY.base


def test_a_429_on_an_action_is_retried_because_it_certainly_did_not_happen(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    url = f"{BASE}/warehouse/return/5/process"
    mocked.post(url, json={"message": "Too Many Attempts."}, status=429)
    mocked.post(url, json="true")
    client.process("5")
    assert len(mocked.calls) == 2


def test_5xx_on_a_read_is_retried(client: LoopClient, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/destinations", status=503, body="unavailable")
    mocked.get(
        f"{BASE}/destinations",
        status=500,
        json={"message": "An error was encountered during processing."},
    )
    mocked.get(f"{BASE}/destinations", json={"destinations": [{"id": 1}]})
    assert client.destinations() == [{"id": 1}]
    assert len(mocked.calls) == 3


def test_5xx_on_a_read_gives_up_after_the_policy_attempts(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/destinations", status=502, body="bad gateway")
    with pytest.raises(TransientError):
        client.destinations()
    assert len(mocked.calls) == POLICY.attempts


@pytest.mark.parametrize(
    ("label", "answer"),
    [
        ("read timeout after sending", {"body": requests.ReadTimeout("read timed out")}),
        ("connection dropped", {"body": requests.ConnectionError("reset by peer")}),
        ("server error", {"status": 500, "json": {"message": "boom"}}),
        ("html instead of json", {"status": 200, "body": "<html>oops</html>"}),
    ],
)
def test_an_action_whose_answer_is_lost_is_outcome_unknown_and_not_retried(
    client: LoopClient, mocked: responses.RequestsMock, label: str, answer: dict[str, Any]
) -> None:
    mocked.post(f"{BASE}/warehouse/return/5/process", **answer)
    with pytest.raises(OutcomeUnknown):
        client.process("5")
    assert len(mocked.calls) == 1


def test_the_api_key_never_reaches_the_logs(
    client: LoopClient, api_key: str, mocked: responses.RequestsMock, logs: Logs
) -> None:
    mocked.get(f"{BASE}/destinations", status=503, body="unavailable")
    mocked.get(f"{BASE}/destinations", json={"destinations": []})
    mocked.post(f"{BASE}/warehouse/return/5/flag", json="true")
    client.destinations()
    client.flag(5)
    assert logs  # the retry and the action were logged
    assert api_key not in repr(logs)


# -- actions --------------------------------------------------------------------------

ACTIONS = ["process", "flag", "cancel", "close"]


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("body", ["true", True])
def test_actions_succeed_on_string_or_boolean_true(
    client: LoopClient, mocked: responses.RequestsMock, action: str, body: Any
) -> None:
    mocked.post(f"{BASE}/warehouse/return/37603922/{action}", json=body)
    assert getattr(client, action)("37603922") is None
    assert len(mocked.calls) == 1 and mocked.calls[0].request.method == "POST"


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize(
    ("label", "body", "error", "code"),
    [
        (
            "state conflict",
            {
                "errors": {
                    "message": "Return is closed and therefore cannot be processed.",
                    "code": "UNPROCESSABLE_RETURN",
                }
            },
            StateConflict,
            "UNPROCESSABLE_RETURN",
        ),
        (
            "flagged",
            {
                "errors": {
                    "message": "Return is review and therefore cannot be processed.",
                    "code": "UNPROCESSABLE_FLAGGED_RETURN",
                }
            },
            StateConflict,
            "UNPROCESSABLE_FLAGGED_RETURN",
        ),
        (
            "content variant",
            {"content": "Return is flagged and cannot be processed."},
            StateConflict,
            None,
        ),
        (
            "unrelated error",
            {"errors": {"message": "Unexpected", "code": "UNEXPECTED_ERROR"}},
            ErrorBody,
            "UNEXPECTED_ERROR",
        ),
        ("false", "false", ErrorBody, None),
    ],
)
def test_actions_turn_200_error_bodies_into_typed_errors(
    client: LoopClient,
    mocked: responses.RequestsMock,
    action: str,
    label: str,
    body: Any,
    error: type[Exception],
    code: str | None,
) -> None:
    mocked.post(f"{BASE}/warehouse/return/11/{action}", json=body)
    with pytest.raises(error) as caught:
        getattr(client, action)("11")
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert caught.value.status == 200  # type: ignore[attr-defined]
    assert len(mocked.calls) == 1


def test_process_sends_its_details(client: LoopClient, mocked: responses.RequestsMock) -> None:
    mocked.post(f"{BASE}/warehouse/return/11/process", json="true")
    client.process(11, {"warehouse": "EAST", "rma": "R-1"})
    assert sent_json(mocked.calls[0]) == {"warehouse": "EAST", "rma": "R-1"}


def test_a_non_numeric_return_id_never_reaches_the_url(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    with pytest.raises(ValueError):
        client.close("../destinations")
    assert len(mocked.calls) == 0


def test_add_note_truncates_long_text_instead_of_failing(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(f"{BASE}/warehouse/return/11/note", json="true")
    client.add_note("11", "Received 3 of 4 units. " * 20)
    sent = sent_json(mocked.calls[0])["content"]
    assert len(sent) == 254 and sent.endswith("…") and sent.startswith("Received 3 of 4")


def test_grade_and_assess_go_in_batches_of_20(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    def echo(request: Any) -> tuple[int, dict[str, str], str]:
        return 200, {}, json.dumps(json.loads(request.body)["items"])

    mocked.add_callback(responses.POST, f"{BASE}/dispositioning/grade", callback=echo)
    mocked.add_callback(responses.POST, f"{BASE}/dispositioning/assess", callback=echo)
    items = [{"line_item_id": i, "description": "ok"} for i in range(45)]

    assert client.grade(items) == items
    assert client.assess(items[:20]) == items[:20]

    sizes = [len(sent_json(c)["items"]) for c in mocked.calls]
    assert sizes == [20, 20, 5, 20]


def test_grade_with_an_error_object_is_an_error_body(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(f"{BASE}/dispositioning/grade", json=ERROR_200)
    with pytest.raises(ErrorBody):
        client.grade([{"line_item_id": 1, "description": "x"}])


WRITES = [
    ("process", lambda c: c.process("1")),
    ("process with details", lambda c: c.process("1", {"a": 1})),
    ("flag", lambda c: c.flag("1")),
    ("cancel", lambda c: c.cancel("1")),
    ("close", lambda c: c.close("1")),
    ("note", lambda c: c.add_note("1", "hello")),
    ("grade", lambda c: c.grade([{"line_item_id": 1, "description": "x"}])),
    ("assess", lambda c: c.assess([{"line_item_id": 1, "disposition_outcome": "recycle"}])),
    ("empty grade", lambda c: c.grade([])),
]


@pytest.mark.parametrize(("label", "write"), WRITES)
def test_dry_run_refuses_every_write_before_any_request(
    clock: FakeClock, api_key: str, mocked: responses.RequestsMock, label: str, write: Any
) -> None:
    client = LoopClient(BASE, api_key, clock=clock, policy=POLICY, dry_run=True)
    with pytest.raises(DryRunViolation):
        write(client)
    assert len(mocked.calls) == 0


def test_dry_run_still_reads(
    clock: FakeClock, api_key: str, mocked: responses.RequestsMock
) -> None:
    client = LoopClient(BASE, api_key, clock=clock, dry_run=True)
    mocked.get(f"{BASE}/destinations", json={"destinations": []})
    assert client.destinations() == []


def test_rate_limited_reads_give_up_when_the_hint_is_too_long(
    client: LoopClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/destinations", status=429, headers={"Retry-After": "3600"})
    with pytest.raises(RateLimited):
        client.destinations()
    assert len(mocked.calls) == 1


def test_runs_sharing_a_key_share_its_limiter_across_runs():
    """Each run has a SystemClock of its own (it wakes at that run's shutdown); the budget
    of an API key must still be one for the whole process, or back-to-back runs and
    merchants sharing a key could exceed Loop's 300 a minute together."""
    import threading

    from loopsync.http import shared_limiter
    from loopsync.timeutil import SystemClock

    key = f"key-{uuid.uuid4()}"
    first = shared_limiter("loop", key, 280, 60, SystemClock(threading.Event()))
    assert shared_limiter("loop", key, 280, 60, SystemClock(threading.Event())) is first
    assert shared_limiter("loop", key, 280, 60, FakeClock()) is not first  # its own time
