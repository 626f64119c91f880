"""A fast Loop returns list for the ingest benchmark: every page encoded once, up front.

    python -m benchmarks.loop_server --server fast --returns N [--seed S] [--days D]

The sandbox emulator builds each page's JSON on request (about 12 ms a page of 250), so
against it a bare client is partly waiting on the server and the floor is inflated. Here
the same seeded returns (the sandbox's list view, byte for byte the same objects) are
JSON-encoded once each at start-up, and every page of the benchmark's own plan (the five
states, the <=120-day windows, the page size) is assembled once at start-up too; serving
a page is a dictionary look-up and one `sendall`.

What it honours, as Loop documents the Detailed Returns List (reference §1.5, §2):
`from`/`to` (both inclusive, either timestamp form), `filter` (`updated_at` or
`created_at`), `state` (absent: open, closed and expired), `paginate` (false: a bare
array of every match), `pageSize` (default 100, at most 750), `cursor` (Laravel's base64
JSON token, the one the sandbox emulator makes; ordered by created_at then id), and an
answer `{"returns", "nextPageUrl", "previousPageUrl"}` with the cursor in `nextPageUrl`.
A query outside the plan is answered too, assembled on first request and then kept.
Every answer carries `Date` at the benchmark clock's "now" (`common.NOW`). Bad input
gets Laravel's 422 shape; any other path a 404.
"""

from __future__ import annotations

import bisect
import email.utils
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from operator import attrgetter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from loopsync.sandbox import LOOP_KEY
from loopsync.sandbox.loop import (
    DEFAULT_LIST_STATES,
    MAX_RANGE,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    LoopEmulator,
    decode_cursor,
    encode_cursor,
)
from loopsync.sandbox.loop import _list_view as list_view
from loopsync.timeutil import parse_timestamp
from loopsync.windows import Window

LIST_PATH = "/api/v1/warehouse/return/list"
SortKey = tuple[datetime, int]


@dataclass(frozen=True)
class _Row:
    key: SortKey  # (created_at, id): Laravel's cursor order
    updated_at: datetime
    created_at: datetime
    state: str
    body: bytes  # the list view, JSON-encoded once


@dataclass(frozen=True)
class _Query:
    filter: str
    start: datetime
    end: datetime
    states: tuple[str, ...]
    paginate: bool
    page_size: int
    cursor: tuple[SortKey, bool] | None


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _bound(query: dict[str, str], name: str) -> datetime:
    try:
        return parse_timestamp(query[name], assume_utc=True)
    except (KeyError, ValueError):
        raise _Invalid(name, f"The {name} is not a valid date.") from None


def parse_query(raw_query: str) -> _Query:
    """The list query as Loop reads it; _Invalid (field, Laravel's words) otherwise."""
    q = {k: v for k, v in parse_qsl(raw_query, keep_blank_values=True) if v != ""}
    filter_field = q.get("filter", "created_at")
    if filter_field not in ("created_at", "updated_at"):
        raise _Invalid("filter", "The selected filter is invalid.")
    state = q.get("state")
    if state is not None and state not in ("open", "closed", "cancelled", "review", "expired"):
        raise _Invalid("state", "The selected state is invalid.")
    start, end = _bound(q, "from"), _bound(q, "to")
    if end < start or end - start > MAX_RANGE:
        raise _Invalid("to", "The date range is invalid.")
    paginate = q.get("paginate", "false").lower()
    if paginate not in ("true", "false", "1", "0"):
        raise _Invalid("paginate", "The paginate field must be true or false.")
    size_text = q.get("pageSize", str(PAGE_SIZE_DEFAULT))
    if not (size_text.isascii() and size_text.isdigit()) or int(size_text) < 1:
        raise _Invalid("pageSize", "The page size must be an integer of at least 1.")
    cursor = None
    if "cursor" in q:
        try:
            cursor = decode_cursor(q["cursor"])
        except ValueError:
            raise _Invalid("cursor", "The cursor is invalid.") from None
    return _Query(
        filter_field,
        start,
        end,
        (state,) if state else DEFAULT_LIST_STATES,
        paginate in ("true", "1"),
        min(int(size_text), PAGE_SIZE_MAX),
        cursor,
    )


class PageBook:
    """Every return encoded once; pages assembled once (at start-up for the plan) and
    kept by query."""

    def __init__(self, rows: Iterable[_Row]) -> None:
        by_state: dict[str, list[_Row]] = {}
        for row in rows:
            by_state.setdefault(row.state, []).append(row)
        # Per state, rows by updated_at and by created_at, for bisecting a window.
        self._by: dict[tuple[str, str], tuple[list[datetime], list[_Row]]] = {}
        for state, group in by_state.items():
            for field in ("updated_at", "created_at"):
                ordered = sorted(group, key=attrgetter(field))
                self._by[(state, field)] = ([getattr(r, field) for r in ordered], ordered)
        self._selections: dict[tuple[str, datetime, datetime, tuple[str, ...]], list[_Row]] = {}
        self._pages: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.count = sum(len(g) for g in by_state.values())

    def _select(self, q: _Query) -> tuple[list[_Row], list[SortKey]]:
        key = (q.filter, q.start, q.end, q.states)
        rows = self._selections.get(key)
        if rows is None:
            rows = []
            for state in q.states:
                stamps, ordered = self._by.get((state, q.filter), ([], []))
                lo = bisect.bisect_left(stamps, q.start)
                hi = bisect.bisect_right(stamps, q.end)
                rows.extend(ordered[lo:hi])
            rows.sort(key=lambda r: r.key)
            self._selections[key] = rows
        return rows, [r.key for r in rows]

    def page(self, raw_query: str, host: str) -> bytes:
        """The answer's body for a query string (kept, so each is assembled once)."""
        cache_key = f"{host}?{raw_query}"
        with self._lock:
            body = self._pages.get(cache_key)
            if body is None:
                body = self._pages[cache_key] = self._assemble(parse_query(raw_query), host)
            return body

    def _assemble(self, q: _Query, host: str) -> bytes:
        rows, keys = self._select(q)
        if not q.paginate:
            return b"[" + b",".join(r.body for r in rows) + b"]"
        if q.cursor is None:
            start, end = 0, q.page_size
        elif q.cursor[1]:
            start = bisect.bisect_right(keys, q.cursor[0])
            end = start + q.page_size
        else:
            end = bisect.bisect_left(keys, q.cursor[0])
            start = max(0, end - q.page_size)
        page = rows[start:end]
        next_url = prev_url = None
        if page and end < len(rows):
            next_url = _list_url(host, q, encode_cursor(page[-1].key, forward=True))
        if page and start > 0:
            prev_url = _list_url(host, q, encode_cursor(page[0].key, forward=False))
        return (
            b'{"returns":['
            + b",".join(r.body for r in page)
            + b'],"nextPageUrl":'
            + json.dumps(next_url).encode()
            + b',"previousPageUrl":'
            + json.dumps(prev_url).encode()
            + b"}"
        )

    def prepare(self, host: str, windows: list[Window], states: Iterable[str], size: int) -> int:
        """Assemble every page of a plan (the worker's query, cursor by cursor); pages."""
        pages = 0
        for state in states:
            for window in windows:
                params = worker_query(window, state, size)
                query = urlencode(params)
                while True:
                    body = self.page(query, host)
                    pages += 1
                    next_url = json.loads(body)["nextPageUrl"]
                    if not next_url:
                        break
                    cursor = dict(parse_qsl(urlsplit(next_url).query))["cursor"]
                    query = urlencode({**params, "cursor": cursor})
        return pages


def worker_query(window: Window, state: str, page_size: int) -> dict[str, str]:
    """The query `LoopClient.iter_returns` sends for a window's first page."""
    from loopsync.timeutil import loop_wire

    return {
        "from": loop_wire(window.start),
        "to": loop_wire(window.end),
        "filter": "updated_at",
        "state": state,
        "paginate": "true",
        "pageSize": str(page_size),
    }


def _list_url(host: str, q: _Query, cursor: str) -> str:
    from loopsync.timeutil import loop_wire

    params = {
        "from": loop_wire(q.start),
        "to": loop_wire(q.end),
        "filter": q.filter,
        "paginate": "true" if q.paginate else "false",
        "pageSize": str(q.page_size),
        "cursor": cursor,
    }
    if len(q.states) == 1:
        params["state"] = q.states[0]
    return f"http://{host}{LIST_PATH}?{urlencode(params)}"


def rows_of(loop: LoopEmulator) -> list[_Row]:
    """The emulator's returns as the list shows them, each JSON-encoded once."""
    out = []
    for rec in loop._returns.values():
        body = json.dumps(list_view(rec)).encode()  # the emulator's own encoding
        out.append(_Row(rec.sort_key, rec.updated_at, rec.created_at, rec.state, body))
    return out


def make_handler(book: PageBook, date: datetime) -> type[BaseHTTPRequestHandler]:
    date_header = email.utils.format_datetime(date, usegmt=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Loop
        server_version = "fast-loop"

        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if self.headers.get("X-Authorization") != LOOP_KEY:
                self._answer(401, b'{"message":"Unauthenticated."}')
            elif path != LIST_PATH:
                self._answer(404, b'{"message":"Not Found"}')
            else:
                host = self.headers.get("Host") or "127.0.0.1"
                try:
                    self._answer(200, book.page(query, host))
                except _Invalid as exc:
                    body = {"message": exc.message, "errors": {exc.field: [exc.message]}}
                    self._answer(422, json.dumps(body).encode())

        def _answer(self, status: int, body: bytes) -> None:
            head = (
                f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Date: {date_header}\r\n\r\n"
            ).encode()
            self.wfile.write(head + body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the benchmark prints its own lines

    return Handler


class FastServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


def start(book: PageBook, date: datetime) -> FastServer:
    server = FastServer(("127.0.0.1", 0), make_handler(book, date))
    threading.Thread(target=server.serve_forever, name="fast-loop", daemon=True).start()
    return server
