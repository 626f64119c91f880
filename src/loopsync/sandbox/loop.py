"""An emulated Loop Returns API (loop-api.md §9), served over real HTTP by `ApiServer`.

It keeps returns in memory with a per-return state machine and answers the way Loop's
docs say Loop answers: state conflicts as HTTP 200 with an error body, 422 validation
bodies in Laravel's shape, opaque base64-JSON cursors, bare arrays where Loop sends them,
fields the client never heard of on every object. Where Loop's behaviour is UNCONFIRMED
the choice made here is noted in place; when in doubt it is the stricter one, so client
bugs show.

Forced faults (500s, 429 bursts with or without Retry-After, HTML bodies, lost answers)
come from the shared `FaultInjector` (`self.faults`); the token bucket here is Loop's own
300 requests a minute per key.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import json
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from loopsync.sandbox.server import EmulatedApi, Request, Response, json_response
from loopsync.sandbox.webhooks import Source, WebhookSender
from loopsync.timeutil import Clock, iso, parse_timestamp

LOOP_STATES = ("open", "closed", "cancelled", "expired", "review")
DEFAULT_LIST_STATES = ("open", "closed", "expired")  # what Loop lists without `state`
LIST_FILTERS = ("created_at", "updated_at")
# A range of exactly 120 days passes (our choice; Loop's exact rule is UNCONFIRMED).
MAX_RANGE = timedelta(days=120)
DEFAULT_LIST_WINDOW = timedelta(hours=24)  # no from/to: the last 24 hours
DEFAULT_ASN_LOOKBACK = timedelta(days=7)  # no ASN `from`: a week ago (w6w)
PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 750
RATE_LIMIT_PER_MINUTE = 300
NOTE_LIMIT = 255  # content must be shorter
MAX_DISPOSITION_ITEMS = 30
REMOVABLE_OUTCOMES = ("refund", "credit")
SCOPES = frozenset({"returns", "destinations"})

UNAUTHORIZED = {
    "error": {"code": "401", "http_code": "GEN-UNAUTHORIZED", "message": "Unauthorized."}
}
# Unknown return ids: 404 with this body is our choice (real behaviour UNCONFIRMED);
# `not_found_as_200` sends it with 200 instead.
RETURN_NOT_FOUND = {"errors": {"message": "Return not found", "code": "NOT_FOUND"}}
PROCESSING_ERROR = {"message": "An error was encountered during processing."}
NOTE_INVALID = {"errors": {"message": "Content is required and must be less than 255 characters."}}
# Loop adds response fields without notice; every object served carries some.
EXTRA_FIELDS: dict[str, Any] = {"shop_id": 48213, "x_loop_added_later": {"since": "2026-07"}}
EXTRA_LINE_FIELDS: dict[str, Any] = {"weight_grams": 410, "x_loop_line_hint": None}

CONDITION_CATEGORIES = (
    "grade_a",
    "grade_b",
    "grade_c",
    "grade_d",
    "incorrect_item",
    "missing",
    "junk",
)
DISPOSITION_OUTCOMES = ("back_to_stock", "resale_hold", "recycle", "donate", "missing")

_API_PATH = re.compile(r"(?P<prefix>/api/(?:v1|\d{4}-\d{2}|unstable))(?P<route>/.*)")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")

SortKey = tuple[datetime, int]
Handler = Callable[..., Response]


def default_destinations() -> list[dict[str, Any]]:
    """Destinations 12 and 13: the ids `seed.make_returns` uses by default."""

    def address(city: str, state: str, zip_code: str) -> dict[str, str]:
        return {
            "address1": "500 Dock Rd",
            "address2": "",
            "city": city,
            "state": state,
            "zip": zip_code,
            "country": "United States",
            "country_code": "US",
        }

    return [
        {
            "id": 12,
            "type": "warehouse",
            "name": "East Returns Center",
            "enabled": True,
            "address": address("Columbus", "Ohio", "43210"),
        },
        {
            "id": 13,
            "type": "warehouse",
            "name": "West Returns Center",
            "enabled": True,
            "address": address("Reno", "Nevada", "89501"),
        },
    ]


# -- the state machine (pure: the emulator and `loopsync.testing.FakeLoop` both use it) ----

# The state each accepted action leads to (process: once Loop's queue has run it).
ACTION_STATES = {"process": "closed", "flag": "review", "cancel": "cancelled", "close": "closed"}


def action_conflict(
    state: str, action: str, *, allow_flagged_process: bool = False
) -> dict[str, Any] | None:
    """The HTTP 200 error body Loop answers when a return in `state` refuses `action`
    (process, flag, cancel, close), else None: the action is accepted."""
    if state == "open" or (action == "process" and allow_flagged_process and state == "review"):
        return None
    if action == "process" and state == "review":
        return {
            "errors": {
                "message": "Return is review and therefore cannot be processed.",
                "code": "UNPROCESSABLE_FLAGGED_RETURN",
            }
        }
    if action == "cancel" and state in ("expired", "review"):
        word = "flagged" if state == "review" else state
        return {"content": f"Return is {word} and cannot be processed."}
    verb = {"process": "processed", "flag": "flagged", "cancel": "cancelled", "close": "closed"}[
        action
    ]
    return {
        "errors": {
            "message": f"Return is {state} and therefore cannot be {verb}.",
            "code": "UNPROCESSABLE_RETURN",
        }
    }


# -- stored state ---------------------------------------------------------------------


@dataclass
class _Stored:
    """One return. `raw` is list-shaped (as seeded) with state/updated_at kept current."""

    raw: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    notes: list[dict[str, Any]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    grades: list[dict[str, Any]] = field(default_factory=list)
    assessments: list[dict[str, Any]] = field(default_factory=list)
    closes_at: datetime | None = None  # a queued process finishes then

    @property
    def id(self) -> str:
        return str(self.raw["id"])

    @property
    def state(self) -> str:
        return str(self.raw["state"])

    @property
    def sort_key(self) -> SortKey:
        # Laravel cursor pagination orders by the cursor columns: (created_at, id).
        return (self.created_at, int(self.raw["id"]))


@dataclass
class _Selection:
    """The returns of one list query, in page order, with their sort keys for bisecting."""

    rows: list[_Stored]
    keys: list[SortKey]


@dataclass
class _ListQuery:
    filter_field: str
    start: datetime
    end: datetime
    states: tuple[str, ...]
    paginate: bool
    page_size: int
    cursor: tuple[SortKey, bool] | None  # (key, points to next items)


@dataclass
class _Bucket:
    tokens: float
    at: float


# -- cursors --------------------------------------------------------------------------


def encode_cursor(key: SortKey, *, forward: bool) -> str:
    """Laravel's cursor: URL-safe base64 of JSON, padding stripped."""
    created_at, return_id = key
    payload = {
        "created_at": _laravel_time(created_at, micro=True),
        "id": return_id,
        "_pointsToNextItems": forward,
    }
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[SortKey, bool]:
    """(sort key, points to next items); ValueError for anything that is not ours."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        key = (parse_timestamp(data["created_at"], assume_utc=True), int(data["id"]))
        return key, bool(data["_pointsToNextItems"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise ValueError(f"invalid cursor {token[:40]!r}") from None


# -- the emulator ---------------------------------------------------------------------


class LoopEmulator(EmulatedApi):
    """Loop over HTTP, plus hooks that play Loop's other users (tests, demo, sandbox)."""

    name = "loop"

    def __init__(
        self,
        *,
        clock: Clock,
        api_keys: Iterable[str] | Mapping[str, Iterable[str]],
        process_delay_seconds: float = 0.0,
    ) -> None:
        """`api_keys`: keys with every scope, or a mapping key -> scopes ("returns",
        "destinations"); a key lacking an endpoint's scope gets 401, as on Loop."""
        super().__init__(clock=clock)
        self.api_keys = _scoped_keys(api_keys)
        # Switches (plain attributes; tests flip them).
        self.rate_limit_enabled = True
        self.rate_limit_per_minute = RATE_LIMIT_PER_MINUTE
        self.rate_limit_retry_after = False  # Loop documents no Retry-After header
        self.drop_params_in_next_url = True  # docs: nextPageUrl has to/filter/pageSize/cursor
        self.repeat_cursor_once = False  # next page link repeats the cursor just used
        self.omit_cursor_once = False  # next page link without a cursor
        self.process_delay_seconds = process_delay_seconds  # Loop queues processing
        self.allow_flagged_process = False  # Loop admin: "Allow flagged returns to process"
        self.not_found_as_200 = False
        # Whether notes and grades change a return's updated_at is UNCONFIRMED. They are
        # not part of the listed return, so by default they do not; switch on to have the
        # worker's own writes bring returns back into its next window.
        self.annotations_bump_updated_at = False
        self.destinations = default_destinations()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.webhook_sender: WebhookSender | None = None  # its webhooks (sandbox/webhooks.py)
        self._returns: dict[str, _Stored] = {}
        self._line_owner: dict[str, str] = {}  # line item id -> return id
        self._processing: set[str] = set()  # ids with a queued process
        self._version = 0  # bumped on every change to any return
        self._selections: dict[tuple[Any, ...], _Selection] = {}
        self._selections_version = -1
        self._buckets: dict[str, _Bucket] = {}
        self._request_times: defaultdict[str, list[float]] = defaultdict(list)
        self._note_ids = itertools.count(1)
        self._routes: list[tuple[str, re.Pattern[str], Handler, str]] = [
            ("GET", re.compile(r"/warehouse/return/list"), self._list_returns, "returns"),
            ("GET", re.compile(r"/warehouse/return/details"), self._return_details, "returns"),
            ("GET", re.compile(r"/warehouse/reporting/asn"), self._asn_report, "returns"),
            ("GET", re.compile(r"/warehouse/return/(\d+)/notes"), self._notes, "returns"),
            (
                "POST",
                re.compile(r"/warehouse/return/(\d+)/(process|flag|cancel|close)"),
                self._state_action,
                "returns",
            ),
            ("POST", re.compile(r"/warehouse/return/(\d+)/remove"), self._remove, "returns"),
            ("POST", re.compile(r"/warehouse/return/(\d+)/note"), self._add_note, "returns"),
            ("POST", re.compile(r"/dispositioning/grade"), self._grade, "returns"),
            ("POST", re.compile(r"/dispositioning/assess"), self._assess, "returns"),
            ("GET", re.compile(r"/destinations"), self._list_destinations, "destinations"),
        ]

    # -- hooks ----------------------------------------------------------------------------

    def add_return(self, raw: dict[str, Any]) -> None:
        """A customer created a return. Listeners (warehouse emulators) hear of it."""
        with self.lock:
            rec = self._store(raw)
            snapshot = _copy_return(rec.raw)
            self._announce(rec, "return.created")
        for listener in list(self.listeners):
            listener(snapshot)

    def add_poison_return(self, raw: dict[str, Any], *, at: datetime) -> None:
        """A return Loop's own checks would never let through (poison): an overflowing
        timestamp, an id in full-width digits, a lone surrogate in a SKU. Served exactly as
        given in the list, the details and the ASN report; placed in windows and pages as
        if created and updated `at`; heard by no warehouse. Its id must still read as a
        number with int() (the pages' sort key), which full-width digits do."""
        with self.lock:
            rid = str(raw["id"])
            if rid in self._returns:
                raise ValueError(f"return {rid} already exists")
            int(rid)
            rec = _Stored(_copy_return(raw), at, at)
            rec.raw.setdefault("state", "open")
            self._returns[rid] = rec
            self._index_line_items(rec)
            self._version += 1

    def update_return(self, return_id: str | int, **changes: Any) -> None:
        """Change fields as Loop's admin would; bumps updated_at unless it is given."""
        with self.lock:
            rec = self._require(return_id)
            if "id" in changes:
                raise ValueError("a return's id cannot change")
            if "state" in changes and changes["state"] not in LOOP_STATES:
                raise ValueError(f"unknown state {changes['state']!r}")
            for key, value in changes.items():
                rec.raw[key] = iso(value) if isinstance(value, datetime) else value
            if "line_items" in changes:
                self._index_line_items(rec)
            if "created_at" in changes:
                rec.created_at = parse_timestamp(rec.raw["created_at"], assume_utc=True)
            if "updated_at" in changes:
                rec.updated_at = parse_timestamp(rec.raw["updated_at"], assume_utc=True)
                self._version += 1
            else:
                self._touch(rec)
            self._announce(rec, "return.closed" if rec.state == "closed" else "return.updated")

    def set_state(self, return_id: str | int, state: str) -> None:
        self.update_return(return_id, state=state)

    def get(self, return_id: str | int) -> dict[str, Any]:
        with self.lock:
            self._settle_processing()
            return _copy_return(self._require(return_id).raw)

    def notes_for(self, return_id: str | int) -> list[str]:
        with self.lock:
            return [str(n["content"]) for n in self._require(return_id).notes]

    def actions_for(self, return_id: str | int) -> list[str]:
        """Every accepted process/flag/cancel/close/remove, in order."""
        with self.lock:
            return list(self._require(return_id).actions)

    def grades_for(self, return_id: str | int) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(g) for g in self._require(return_id).grades]

    def assessments_for(self, return_id: str | int) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(a) for a in self._require(return_id).assessments]

    def request_times(self, key: str) -> list[float]:
        """When each request with this key arrived (emulator clock, monotonic seconds)."""
        with self.lock:
            return list(self._request_times.get(key, ()))

    def busiest_window(self, key: str, seconds: float = 60.0) -> int:
        """Most requests with this key inside any `seconds`-long span."""
        times = sorted(self.request_times(key))
        best, first = 0, 0
        for last, at in enumerate(times):
            while at - times[first] >= seconds:
                first += 1
            best = max(best, last - first + 1)
        return best

    # -- dispatch -------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        match = _API_PATH.fullmatch(req.path)
        if match is None:
            return json_response({"message": "Not Found"}, 404)
        key = req.headers.get("X-Authorization") or ""
        scopes = self.api_keys.get(key)
        if scopes is None:
            return json_response(UNAUTHORIZED, 401)
        throttled = self._throttle(key)
        if throttled is not None:
            return throttled
        self._settle_processing()
        route = match.group("route")
        allowed = []
        for method, pattern, handler, scope in self._routes:
            found = pattern.fullmatch(route)
            if found is None:
                continue
            if method != req.method:
                allowed.append(method)
                continue
            if scope not in scopes:
                return json_response(UNAUTHORIZED, 401)
            return handler(req, *found.groups())
        if allowed:
            return json_response(
                {
                    "message": f"The {req.method} method is not supported for "
                    f"this route. Supported: {', '.join(allowed)}."
                },
                405,
            )
        return json_response({"message": "Not Found"}, 404)

    def _throttle(self, key: str) -> Response | None:
        """Loop's 300 a minute per key, as a token bucket on the emulator clock."""
        now = self.clock.monotonic()
        self._request_times[key].append(now)
        if not self.rate_limit_enabled:
            return None
        rate = self.rate_limit_per_minute / 60.0
        bucket = self._buckets.setdefault(key, _Bucket(float(self.rate_limit_per_minute), now))
        bucket.tokens = min(
            float(self.rate_limit_per_minute), bucket.tokens + (now - bucket.at) * rate
        )
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        headers = {}
        if self.rate_limit_retry_after:
            headers["Retry-After"] = str(math.ceil((1 - bucket.tokens) / rate))
        return json_response({"message": "Too Many Attempts."}, 429, headers)

    # -- Detailed Returns List --------------------------------------------------------------

    def _list_returns(self, req: Request) -> Response:
        query = self._parse_list_query(req)
        if isinstance(query, Response):
            return query
        selection = self._select(query.filter_field, query.start, query.end, query.states)
        if not query.paginate:
            return json_response([_list_view(r) for r in selection.rows])
        rows, has_next, has_prev = _page(selection, query.cursor, query.page_size)
        next_url = prev_url = None
        if rows and has_next:
            next_url = self._next_page_url(req, encode_cursor(rows[-1].sort_key, forward=True))
        if rows and has_prev:
            prev_url = self._list_url(req, encode_cursor(rows[0].sort_key, forward=False))
        return json_response(
            {
                "returns": [_list_view(r) for r in rows],
                "nextPageUrl": next_url,
                "previousPageUrl": prev_url,
            }
        )

    def _parse_list_query(self, req: Request) -> _ListQuery | Response:
        q = {k: v for k, v in req.query.items() if v != ""}  # Laravel: empty means absent
        errors: dict[str, list[str]] = {}
        filter_field = q.get("filter", "created_at")
        if filter_field not in LIST_FILTERS:
            errors["filter"] = ["The selected filter is invalid."]
        state = q.get("state")
        if state is not None and state not in LOOP_STATES:
            errors["state"] = ["The selected state is invalid."]
        window = self._list_window(q.get("from"), q.get("to"), errors)
        paginate = q.get("paginate", "false").lower()
        if paginate not in ("true", "false", "1", "0"):
            errors["paginate"] = ["The paginate field must be true or false."]
        page_size = _page_size(q.get("pageSize"), errors)
        cursor = None
        if "cursor" in q:
            try:
                cursor = decode_cursor(q["cursor"])
            except ValueError:
                # Laravel would quietly restart at page one; failing loudly is stricter.
                errors["cursor"] = ["The cursor is invalid."]
        if errors or window is None:
            return _invalid(errors)
        states = (state,) if state else DEFAULT_LIST_STATES
        return _ListQuery(
            filter_field, window[0], window[1], states, paginate in ("true", "1"), page_size, cursor
        )

    def _list_window(
        self, start_text: str | None, end_text: str | None, errors: dict[str, list[str]]
    ) -> tuple[datetime, datetime] | None:
        """Both bounds inclusive; neither given: the last 24 hours. Only one given is
        UNCONFIRMED on Loop: here a missing `to` is now, a missing `from` 24 h before `to`."""
        start = _parse_bound(start_text, "from", errors)
        end = _parse_bound(end_text, "to", errors)
        if "from" in errors or "to" in errors:
            return None
        if end is None:
            end = self.clock.now()
        if start is None:
            start = end - DEFAULT_LIST_WINDOW
        if end < start:
            errors["to"] = ["The to must be a date after or equal to from."]
        elif end - start > MAX_RANGE:
            errors["to"] = [f"The date range may not be greater than {MAX_RANGE.days} days."]
        return None if errors.get("to") else (start, end)

    def _select(
        self, filter_field: str, start: datetime, end: datetime, states: tuple[str, ...]
    ) -> _Selection:
        """The matching returns sorted by (created_at, id); cached until any return
        changes, so walking 100k returns page by page is not quadratic."""
        if self._selections_version != self._version:
            self._selections.clear()
            self._selections_version = self._version
        cache_key = (filter_field, start, end, states)
        selection = self._selections.get(cache_key)
        if selection is None:
            if len(self._selections) >= 32:
                self._selections.clear()
            rows = sorted(
                (
                    r
                    for r in self._returns.values()
                    if r.state in states and start <= getattr(r, filter_field) <= end
                ),
                key=lambda r: r.sort_key,
            )
            selection = self._selections[cache_key] = _Selection(rows, [r.sort_key for r in rows])
        return selection

    def _next_page_url(self, req: Request, token: str) -> str:
        if self.omit_cursor_once:
            self.omit_cursor_once = False
            return self._list_url(req, None)
        used = req.query.get("cursor")
        if self.repeat_cursor_once and used:
            self.repeat_cursor_once = False
            return self._list_url(req, used)
        return self._list_url(req, token)

    def _list_url(self, req: Request, cursor: str | None) -> str:
        names = (
            ("to", "filter", "pageSize")
            if self.drop_params_in_next_url
            else ("from", "to", "filter", "state", "paginate", "pageSize")
        )
        params = [(n, req.query[n]) for n in names if n in req.query]
        if cursor is not None:
            params.append(("cursor", cursor))
        match = _API_PATH.fullmatch(req.path)
        prefix = match.group("prefix") if match else "/api/v1"
        host = req.headers.get("Host") or "127.0.0.1"
        return f"http://{host}{prefix}/warehouse/return/list?{urlencode(params)}"

    # -- other reads ----------------------------------------------------------------------

    def _return_details(self, req: Request) -> Response:
        q = req.query
        if q.get("return_id"):
            if not q["return_id"].isdigit():
                return _invalid({"return_id": ["The return id must be an integer."]})
            rec = self._returns.get(q["return_id"])
        elif q.get("order_name") or q.get("order_id"):
            rec = self._find_by_order(q.get("order_name"), q.get("order_id"))
        else:
            return _invalid({"return_id": ["A return_id, order_id or order_name is required."]})
        if rec is None:
            return self._unknown_return()
        return json_response(_details_view(rec))

    def _find_by_order(self, order_name: str | None, order_id: str | None) -> _Stored | None:
        for rec in self._returns.values():
            if order_name and str(rec.raw.get("order_name", "")).lstrip("#") == order_name.lstrip(
                "#"
            ):
                return rec
            if order_id and order_id in (
                str(rec.raw.get("provider_order_id")),
                str(rec.raw.get("order_id")),
            ):
                return rec
        return None

    def _asn_report(self, req: Request) -> Response:
        """One row per line item of the returns updated in [from, to] (which timestamp
        the real report filters on is UNCONFIRMED)."""
        errors: dict[str, list[str]] = {}
        now = self.clock.now()
        start = _parse_asn_bound(req.query.get("from"), "from", errors, end_of_day=False)
        end = _parse_asn_bound(req.query.get("to"), "to", errors, end_of_day=True)
        if errors:  # w6w says Loop reads a bad date as the epoch; failing is stricter
            return _invalid(errors)
        start = start or now - DEFAULT_ASN_LOOKBACK
        end = end or datetime.combine(now.date(), time.max, tzinfo=now.tzinfo)
        tracking = req.query.get("tracking_status")
        matches = sorted(
            (r for r in self._returns.values() if start <= r.updated_at <= end),
            key=lambda r: r.sort_key,
        )
        rows = [
            row
            for rec in matches
            for row in self._asn_rows(rec)
            if not tracking or row["label_status"] == tracking
        ]
        return json_response(rows)

    def _asn_rows(self, rec: _Stored) -> list[dict[str, Any]]:
        raw = rec.raw
        destination = next(
            (d for d in self.destinations if str(d.get("id")) == str(raw.get("destination_id"))), {}
        )
        common = {
            # UNCONFIRMED: the docs call `id` the "identifier of the ASN report". We assume
            # it is the return id (as an integer) and `return_line_item_id` the line item
            # id; PostHog keys rows on the pair because neither is documented as unique.
            "id": int(raw["id"]),
            "order_id": raw.get("order_id"),
            "order_name": raw.get("order_name"),
            "order_number": raw.get("order_number"),
            "provider_order_number": raw.get("provider_order_number"),
            "state": rec.state,
            "customer_email": raw.get("customer"),
            "carrier": raw.get("carrier"),
            "service": "Ground" if raw.get("carrier") else None,
            "label_status": raw.get("label_status"),
            "tracking_number": raw.get("tracking_number"),
            "integration_tracking_url": None,
            "restock_status": None,
            "currency": raw.get("currency"),
            "label_updated_at": raw.get("label_updated_at"),
            "label_url": raw.get("label_url"),
            "label_rate": raw.get("label_rate"),
            "closed_at": raw.get("updated_at") if rec.state == "closed" else None,
            "updated_at": raw.get("updated_at"),
            "created_at": raw.get("created_at"),
            "actioned_by": None,
            "return_method": raw.get("return_method"),
            "return_method_rma_code": None,
            "return_method_state": None,
            "date_delivered": None,
            "scannable_id": None,
            "package_reference": raw.get("package_reference"),
            "shipping_box_barcode": None,
            "provider_created_at": raw.get("created_at"),
            "destination_id": raw.get("destination_id"),
            "destination_name": destination.get("name"),
            **EXTRA_FIELDS,
        }
        return [
            {
                **common,
                "return_line_item_id": li.get("line_item_id"),
                "title": li.get("title"),
                "purchase_price": li.get("price"),
                "sku": li.get("sku"),
                "barcode": li.get("barcode"),
                "return_reason": li.get("return_reason"),
                "outcome": li.get("outcome") or raw.get("outcome"),
            }
            for li in raw.get("line_items") or []
        ]

    def _notes(self, req: Request, return_id: str) -> Response:
        rec = self._returns.get(return_id)
        if rec is None:
            return self._unknown_return()
        if not rec.notes:
            return json_response(False, 422)  # [E]: a 422 whose body is false
        return json_response({"notes": [dict(n) for n in rec.notes]})

    def _list_destinations(self, req: Request) -> Response:
        if any(not d.get("address") for d in self.destinations):
            return json_response(PROCESSING_ERROR, 500)  # Loop: a destination lacks an address
        return json_response({"destinations": [{**d, **EXTRA_FIELDS} for d in self.destinations]})

    # -- actions --------------------------------------------------------------------------

    def _state_action(self, req: Request, return_id: str, action: str) -> Response:
        rec = self._returns.get(return_id)
        if rec is None:
            return self._unknown_return()
        conflict = self._conflict(rec.state, action)
        if conflict is not None:
            return json_response(conflict)  # HTTP 200: Loop's way of saying no
        rec.actions.append(action)
        if action == "process":
            self._start_processing(rec)
        else:
            self._transition(rec, ACTION_STATES[action])
        return json_response("true")

    def _conflict(self, state: str, action: str) -> dict[str, Any] | None:
        return action_conflict(state, action, allow_flagged_process=self.allow_flagged_process)

    def _processable(self, state: str) -> bool:
        return state == "open" or (state == "review" and self.allow_flagged_process)

    def _start_processing(self, rec: _Stored) -> None:
        """Loop queues processing; with a delay, a second process before the state flips
        is accepted too (the double-process race the worker must avoid)."""
        if self.process_delay_seconds <= 0:
            self._transition(rec, "closed")
        elif rec.closes_at is None:
            rec.closes_at = self.clock.now() + timedelta(seconds=self.process_delay_seconds)
            self._processing.add(rec.id)

    def _settle_processing(self) -> None:
        """Finish queued processing whose time has come (closed at the queued time)."""
        if not self._processing:
            return
        now = self.clock.now()
        for rid in list(self._processing):
            rec = self._returns[rid]
            if rec.closes_at is not None and rec.closes_at <= now:
                self._processing.discard(rid)
                finished_at, rec.closes_at = rec.closes_at, None
                if self._processable(rec.state):
                    self._transition(rec, "closed", at=finished_at)

    def _remove(self, req: Request, return_id: str) -> Response:
        rec = self._returns.get(return_id)
        if rec is None:
            return self._unknown_return()
        wanted = [i.strip() for i in (req.query.get("line_item_id") or "").split(",") if i.strip()]
        if not wanted:
            return json_response({"error": {"message": "The line item id field is required."}}, 422)
        if not self._processable(rec.state):
            return json_response({"message": "Return cannot be modified."}, 422)
        outcomes = {str(li["line_item_id"]): li.get("outcome") for li in rec.raw["line_items"]}
        qualifying = [i for i in wanted if outcomes.get(i) in REMOVABLE_OUTCOMES]
        if not qualifying:
            return json_response(
                {"message": "There are no line items that qualify for removal"}, 422
            )
        if len(qualifying) < len(wanted):
            return json_response({"message": "Not all line items qualify for removal"}, 422)
        rec.raw["line_items"] = [
            li for li in rec.raw["line_items"] if str(li["line_item_id"]) not in set(wanted)
        ]
        rec.actions.append("remove")
        self._touch(rec)
        self._start_processing(rec)  # Loop: the items are removed and the return processed
        return json_response("true")

    def _add_note(self, req: Request, return_id: str) -> Response:
        rec = self._returns.get(return_id)
        if rec is None:
            return self._unknown_return()
        body = _json_body(req)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str) or not content.strip() or len(content) >= NOTE_LIMIT:
            return json_response(NOTE_INVALID, 422)
        rec.notes.append(
            {"id": next(self._note_ids), "content": content, "created_at": iso(self.clock.now())}
        )
        if self.annotations_bump_updated_at:
            self._touch(rec)
        return json_response("true")

    # -- grading and dispositions ---------------------------------------------------------

    def _grade(self, req: Request) -> Response:
        return self._disposition(req, GRADE_FIELDS, lambda rec: rec.grades)

    def _assess(self, req: Request) -> Response:
        return self._disposition(req, ASSESS_FIELDS, lambda rec: rec.assessments)

    def _disposition(
        self,
        req: Request,
        fields: dict[str, tuple[bool, _Check]],
        kept: Callable[[_Stored], list[dict[str, Any]]],
    ) -> Response:
        body = _json_body(req)
        items = body.get("items") if isinstance(body, dict) else None
        errors = validate_items(items, fields)
        if errors or not isinstance(items, list):
            return _invalid(errors)
        owners = [self._line_owner.get(str(item["line_item_id"])) for item in items]
        if None in owners:  # a line item of another shop
            return json_response({"message": "This action is unauthorized."}, 403)
        accepted = []
        for item, owner in zip(items, owners, strict=True):
            echoed = {**item, "line_item_id": int(item["line_item_id"])}
            kept(self._returns[str(owner)]).append(echoed)
            accepted.append(echoed)
        if self.annotations_bump_updated_at:
            for owner in dict.fromkeys(owners):
                self._touch(self._returns[str(owner)])
        return json_response(accepted)

    # -- internals ------------------------------------------------------------------------

    def _store(self, raw: dict[str, Any]) -> _Stored:
        rid = str(raw.get("id", "")).strip()
        if not rid.isdigit():
            raise ValueError(f"a Loop return id is numeric: {raw.get('id')!r}")
        if rid in self._returns:
            raise ValueError(f"return {rid} already exists")
        data = _copy_return(raw)
        data["id"] = rid
        data.setdefault("state", "open")
        if data["state"] not in LOOP_STATES:
            raise ValueError(f"unknown state {data['state']!r}")
        now = self.clock.now()
        data["created_at"] = data.get("created_at") or iso(now)
        data["updated_at"] = data.get("updated_at") or data["created_at"]
        rec = _Stored(
            data,
            parse_timestamp(data["created_at"], assume_utc=True),
            parse_timestamp(data["updated_at"], assume_utc=True),
        )
        self._returns[rid] = rec
        self._index_line_items(rec)
        self._version += 1
        return rec

    def _index_line_items(self, rec: _Stored) -> None:
        items = rec.raw.setdefault("line_items", [])
        if not isinstance(items, list) or any(
            not isinstance(li, dict) or li.get("line_item_id") is None for li in items
        ):
            raise ValueError(f"return {rec.id}: line_items must be objects with line_item_id")
        for li in items:
            self._line_owner[str(li["line_item_id"])] = rec.id

    def _require(self, return_id: str | int) -> _Stored:
        rec = self._returns.get(str(return_id))
        if rec is None:
            raise KeyError(f"no return {return_id} in the emulated Loop")
        return rec

    def _transition(self, rec: _Stored, state: str, *, at: datetime | None = None) -> None:
        rec.raw["state"] = state
        self._touch(rec, at)
        self._announce(rec, "return.closed" if state == "closed" else "return.updated")

    def _announce(self, rec: _Stored, trigger: str) -> None:
        """Loop's `return` webhook (loop-api.md §8): the return plus topic and trigger.
        Queued without waiting (the sender never blocks a request)."""
        if self.webhook_sender is not None:
            payload = {"topic": "return", "trigger": trigger, **_list_view(rec)}
            self.webhook_sender.emit(Source.LOOP, trigger, rec.id, payload)

    def _touch(self, rec: _Stored, at: datetime | None = None) -> None:
        """The return changed: its updated_at moves to now (or `at`)."""
        rec.updated_at = at or self.clock.now()
        rec.raw["updated_at"] = iso(rec.updated_at)
        self._version += 1

    def _unknown_return(self) -> Response:
        return json_response(RETURN_NOT_FOUND, 200 if self.not_found_as_200 else 404)


# -- views ----------------------------------------------------------------------------


def _list_view(rec: _Stored) -> dict[str, Any]:
    raw = rec.raw
    return {
        **raw,
        "line_items": [{**li, **EXTRA_LINE_FIELDS} for li in raw["line_items"]],
        **EXTRA_FIELDS,
    }


def _details_view(rec: _Stored) -> dict[str, Any]:
    """Get Return Details differs from the list: integer ids, 'YYYY-MM-DD HH:MM:SS'."""
    raw = rec.raw
    view = {k: v for k, v in raw.items() if k not in ("line_items", "exchanges")}
    edited = raw.get("edited_at")
    view.update(
        id=int(raw["id"]),
        created_at=_laravel_time(rec.created_at),
        updated_at=_laravel_time(rec.updated_at),
        edited_at=_laravel_time(parse_timestamp(edited, assume_utc=True)) if edited else None,
        provider_order_id=_int_or_none(raw.get("provider_order_id")),
        provider_order_number=_int_or_none(raw.get("provider_order_number")),
        refunds=_refunds(raw),
        line_items=[_details_line(li) for li in raw["line_items"]],
        **EXTRA_FIELDS,
    )
    return view


def _details_line(li: dict[str, Any]) -> dict[str, Any]:
    title = str(li.get("title") or "")
    product, _, variant = title.partition(" - ")
    return {
        **li,
        **EXTRA_LINE_FIELDS,
        "line_item_id": _int_or_none(li.get("line_item_id")),
        "provider_line_item_id": _int_or_none(li.get("provider_line_item_id")),
        "product_id": _int_or_none(li.get("product_id")),
        "variant_id": _int_or_none(li.get("variant_id")),
        "line_item_title": product,
        "variant_title": variant,
        "image": f"https://cdn.example.com/products/{li.get('sku') or 'none'}.jpg",
        "consolidation_tracking": None,
    }


def _refunds(raw: dict[str, Any]) -> list[dict[str, Any]]:
    amount = str(raw.get("refund") or "0.00")
    if amount in ("0", "0.00"):
        return []
    return [
        {
            "gateway": "Stripe",
            "amount": amount,
            "currency": raw.get("currency", "USD"),
            "provider_refund_id": f"{raw['id']}01",
            "provider": "shopify",
        }
    ]


def _page(
    selection: _Selection, cursor: tuple[SortKey, bool] | None, size: int
) -> tuple[list[_Stored], bool, bool]:
    """(rows, has next, has previous) for a cursor over rows sorted by their keys."""
    if cursor is None:
        return selection.rows[:size], len(selection.rows) > size, False
    key, forward = cursor
    if forward:
        start = bisect.bisect_right(selection.keys, key)
        return selection.rows[start : start + size], start + size < len(selection.rows), True
    end = bisect.bisect_left(selection.keys, key)
    start = max(0, end - size)
    return selection.rows[start:end], True, start > 0


# -- request parsing and validation -----------------------------------------------------


def _invalid(errors: dict[str, list[str]]) -> Response:
    """Laravel's 422: the first message, '(and N more errors)', and every error by field."""
    messages = [m for ms in errors.values() for m in ms]
    extra = len(messages) - 1
    message = (
        messages[0]
        if not extra
        else f"{messages[0]} (and {extra} more error{'s' if extra > 1 else ''})"
    )
    return json_response({"message": message, "errors": errors}, 422)


def _parse_bound(text: str | None, name: str, errors: dict[str, list[str]]) -> datetime | None:
    """Both documented forms: 2024-01-01T00:00:00.000Z and 2024-01-01 00:00:00 (UTC)."""
    if text is None:
        return None
    try:
        return parse_timestamp(text, assume_utc=True)
    except ValueError:
        errors[name] = [f"The {name} is not a valid date."]
        return None


def _parse_asn_bound(
    text: str | None, name: str, errors: dict[str, list[str]], *, end_of_day: bool
) -> datetime | None:
    """ASN dates are yyyy-mm-dd (a whole day; `to` takes the day's end) or ISO."""
    if text and _DATE_ONLY.fullmatch(text) and end_of_day:
        day = _parse_bound(text, name, errors)
        return None if day is None else datetime.combine(day.date(), time.max, day.tzinfo)
    return _parse_bound(text or None, name, errors)


def _page_size(text: str | None, errors: dict[str, list[str]]) -> int:
    if text is None:
        return PAGE_SIZE_DEFAULT
    if not text.isdigit() or int(text) < 1:
        errors["pageSize"] = ["The page size must be an integer of at least 1."]
        return PAGE_SIZE_DEFAULT
    return min(int(text), PAGE_SIZE_MAX)


def _json_body(req: Request) -> Any:
    try:
        return req.json()
    except ValueError:
        return None


_Check = Callable[[Any], str | None]  # None when valid, else why (Laravel's words)


def _integer(value: Any) -> str | None:
    ok = (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.isdigit()
    )
    return None if ok else "must be an integer"


def _text(limit: int) -> _Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        return f"may not be greater than {limit} characters" if len(value) > limit else None

    return check


def _email(limit: int) -> _Check:
    def check(value: Any) -> str | None:
        problem = _text(limit)(value)
        if problem is None and not _EMAIL.fullmatch(value):
            problem = "must be a valid email address"
        return problem

    return check


def _one_of(values: tuple[str, ...]) -> _Check:
    return lambda value: None if value in values else "is invalid"


def _urls(limit: int) -> _Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or len(value) > limit:
            return f"must be an array of at most {limit} items"
        if not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in value):
            return "must contain valid URLs"
        return None

    return check


def _date_time(value: Any) -> str | None:
    try:
        parse_timestamp(str(value), assume_utc=True)
    except ValueError:
        return "is not a valid date"
    return None


# field -> (required, check), per loop-api.md §6
GRADE_FIELDS: dict[str, tuple[bool, _Check]] = {
    "line_item_id": (True, _integer),
    "description": (True, _text(255)),
    "condition_category": (False, _one_of(CONDITION_CATEGORIES)),
    "return_processor": (False, _email(100)),
    "note": (False, _text(65535)),
    "images": (False, _urls(5)),
    "inspected_at": (False, _date_time),
}
ASSESS_FIELDS: dict[str, tuple[bool, _Check]] = {
    "line_item_id": (True, _integer),
    "disposition_outcome": (True, _one_of(DISPOSITION_OUTCOMES)),
    "return_processor": (False, _text(100)),
    "note": (False, _text(65535)),
    "inspected_at": (False, _date_time),
}


def validate_items(items: Any, fields: dict[str, tuple[bool, _Check]]) -> dict[str, list[str]]:
    """Laravel-style errors for a grade/assess `items` array (1..30 objects)."""
    if not isinstance(items, list) or not items:
        return {"items": ["The items field is required and must be a non-empty array."]}
    if len(items) > MAX_DISPOSITION_ITEMS:
        return {"items": [f"The items may not have more than {MAX_DISPOSITION_ITEMS} items."]}
    errors: dict[str, list[str]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors[f"items.{i}"] = [f"The items.{i} must be an object."]
            continue
        for name, (required, check) in fields.items():
            path = f"items.{i}.{name}"
            value = item.get(name)
            if value is None or value == "":
                if required:
                    errors[path] = [f"The {path} field is required."]
                continue
            problem = check(value)
            if problem:
                errors[path] = [f"The {path} {problem}."]
    return errors


# -- small helpers --------------------------------------------------------------------


def _scoped_keys(
    api_keys: Iterable[str] | Mapping[str, Iterable[str]],
) -> dict[str, frozenset[str]]:
    if isinstance(api_keys, Mapping):
        return {key: frozenset(scopes) for key, scopes in api_keys.items()}
    return dict.fromkeys(api_keys, SCOPES)


def _copy_return(raw: dict[str, Any]) -> dict[str, Any]:
    """Copy deep enough that callers cannot change stored state (and fast for 100k)."""
    copy = dict(raw)
    for key in ("line_items", "exchanges"):
        if isinstance(raw.get(key), list):
            copy[key] = [dict(x) if isinstance(x, dict) else x for x in raw[key]]
    return copy


def _laravel_time(dt: datetime, *, micro: bool = False) -> str:
    text = dt.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{dt.microsecond:06d}" if micro and dt.microsecond else text


def _int_or_none(value: Any) -> int | None:
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() else None
