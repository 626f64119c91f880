"""The ingest benchmark's fast Loop server (issue 11): it answers Loop's list query from
pages encoded once, walks every return of a window exactly once by cursor, and answers a
bad query with Laravel's 422 words, never an exception of its own."""

from __future__ import annotations

import datetime as dt
import json
import random
from urllib.parse import parse_qsl, urlencode, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.fast_loop import PageBook, _Invalid, parse_query, rows_of, worker_query
from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.loop import LoopEmulator
from loopsync.sandbox.seed import FIRST_RETURN_ID, make_returns
from loopsync.testing import FakeClock
from loopsync.windows import Window

NOW = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)


def _book(n: int = 300) -> tuple[PageBook, LoopEmulator]:
    loop = LoopEmulator(clock=FakeClock(NOW), api_keys={LOOP_KEY})
    rng = random.Random(3)
    for raw in make_returns(
        n, start=NOW - dt.timedelta(days=100), end=NOW, rng=rng, first_id=FIRST_RETURN_ID
    ):
        loop.add_return(raw)
    return PageBook(rows_of(loop)), loop


def test_a_window_is_walked_page_by_page_with_every_return_once() -> None:
    book, loop = _book()
    window = Window(NOW - dt.timedelta(days=110), NOW)
    for state in ("open", "closed", "cancelled", "review", "expired"):
        params = worker_query(window, state, 25)
        query, seen = urlencode(params), []
        while True:
            body = json.loads(book.page(query, "127.0.0.1:1"))
            seen += [r["id"] for r in body["returns"]]
            if not body["nextPageUrl"]:
                break
            cursor = dict(parse_qsl(urlsplit(body["nextPageUrl"]).query))["cursor"]
            query = urlencode({**params, "cursor": cursor})
        expected = [r.id for r in loop._returns.values() if r.state == state]
        assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["from", "to", "filter", "state", "paginate", "pageSize", "cursor"]),
        st.text(max_size=30),
    )
)
def test_any_query_is_read_or_refused_in_laravels_words(query: dict[str, str]) -> None:
    try:
        parse_query(urlencode(query))
    except _Invalid as exc:
        assert exc.field in {"from", "to", "filter", "state", "paginate", "pageSize", "cursor"}
