"""Xoro (XoroERP REST): watch-only.

Xoro's own Shopify app imports each Loop return as an RMA and creates a linked ASN, so
loopsync never creates anything in Xoro. It finds the ASN of each Loop return by date
window (`asn/getasn?created_at_min&created_at_max&page`), and polls the ASNs of the open
RMAs the same way. When an ASN is closed the engine's rules process it (every line
received as expected) or flag it (a line short or over); an ASN received but not closed
waits, because Xoro keys its own action on the close.

Merchants who let loopsync decide must switch off Xoro's own Loop processing, or each
return is processed or flagged twice.

Wire facts (wms-apis.md §C): HTTP Basic with the API key and secret; every answer is an
envelope `{Result, Message, Data, TotalPages}`, and `Result: false` is a failure even
under HTTP 200, classified in `check_envelope` (inside the HTTP retry): refused
credentials or scope -> AuthError, a request Xoro cannot read -> ErrorBody, throttling ->
RateLimited, anything else -> transient, retried with backoff. A listing cut short after
its retries still decides the ASNs it read; the others wait for the next cycle.
`TotalPages` is unreliable, so paging also stops at the first empty page;
more than 3 concurrent requests get throttled, so requests go one at a time, rate-limited.

`AsnNumber`, `ItemNumber` and `BaseQtyToReceive` are confirmed names. The ASN status,
received-quantity, RMA-number and order-number fields are UNCONFIRMED and configurable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import requests
import structlog

from loopsync.configkit import Secret, Section
from loopsync.connectors.base import (ConnectorContext, PollResult, PollStopped, PushRequest,
                                      WarehouseConnector, WarehouseSettings)
from loopsync.errors import (Ambiguous, AuthError, ErrorBody, RateLimited, RemoteError,
                             TransientError, Unreadable)
from loopsync.http import HttpClient, HttpResult, shared_limiter
from loopsync.redaction import clip
from loopsync.models import (ItemStatus, LoopReturn, RmaRef, RmaStatus, guarded,
                             identifier, printable, whole_number)
from loopsync.timeutil import iso, parse_timestamp
from loopsync.paging import PageWalk, Step, WalkEnd, record_walk  # noqa: I001

log = structlog.get_logger("loopsync.connectors.xoro")

SYSTEM = "xoro"
ASN_PATH = "asn/getasn"
# Confirmed by public client code.
ASN_HEADER, ASN_DETAIL = "AsnHeaderData", "AsnDetailData"
ASN_NUMBER, ITEM_NUMBER, QTY_EXPECTED = "AsnNumber", "ItemNumber", "BaseQtyToReceive"

DATE_FORMATS = {"iso": "%Y-%m-%dT%H:%M:%SZ", "us": "%m/%d/%Y %I:%M:%S %p"}
# Xoro may stamp ASNs in the account's local time, up to 14 hours ahead of UTC; a window
# ending "now" in UTC would miss the newest ASNs.
FUTURE_PAD = timedelta(days=1)
# Linking by return id, one ASN listing serves every return linked within this long (a
# push stage); an ASN Xoro imports meanwhile is found on the next cycle.
LISTING_REUSE = timedelta(seconds=60)
# Stops a server that ignores `page` and never sends TotalPages or an empty page.
MAX_PAGES = 1000
# UNCONFIRMED: some Xoro endpoints answer an empty result as Result:false with a message
# like "No Records Found"; that is an empty page, not a failure.
_NO_RECORDS = re.compile(r"\bno (record|data|result)s?\b.*\bfound\b", re.IGNORECASE)
_THROTTLED = re.compile(r"rate limit|too many requests|throttl", re.IGNORECASE)
# UNCONFIRMED wordings (Xoro documents none): credentials or module scope refused, and a
# request Xoro cannot read. Both are permanent; any other `Result: false` on these reads
# is treated as transient and retried with backoff, since Xoro also answers passing server
# trouble this way and a read is safe to repeat.
_REFUSED = re.compile(r"api (key|secret)|unauthori[sz]ed|authenticat|credential|"
                      r"access denied|does not have access|permission|\bscope\b", re.IGNORECASE)
_BAD_REQUEST = re.compile(r"\binvalid (filter|date|parameter|page|request)|\bis required\b|"
                          r"unknown action|not supported", re.IGNORECASE)


class XoroRefused(AuthError, ErrorBody):
    """`Result: false` refusing the credentials or the key's module scope (under HTTP 200
    it is both a refusal of credentials and an error body)."""


class XoroBusy(TransientError):
    """`Result: false` with a message that does not say the request is wrong: retried."""


@dataclass(frozen=True)
class XoroSettings:
    api_key: Secret
    api_secret: Secret
    match_by: str               # return_id | order_number
    asn_lookback: timedelta     # search ASNs from this long before the Loop return's creation
    date_format: str            # iso | us
    requests_per_second: int
    asn_status_field: str       # UNCONFIRMED, in AsnHeaderData
    received_qty_field: str     # UNCONFIRMED, in each AsnDetailData line
    rma_number_field: str       # UNCONFIRMED, in AsnHeaderData
    order_number_field: str     # UNCONFIRMED, in AsnHeaderData
    max_pages: int = MAX_PAGES  # pages one listing may take


class XoroConnector(WarehouseConnector):
    kind: ClassVar[str] = "xoro"
    default_base_url: ClassVar[str] = "https://res.xorosoft.io/api/xerp"
    creates_rmas: ClassVar[bool] = False
    polls_all_at_once: ClassVar[bool] = True  # one ASN listing covers every open RMA
    # Xoro keys its own Loop action on the ASN close; "received" means not closed yet.
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": ["closed"], "flag": [], "ignore": ["open", "received"]}

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.conf: XoroSettings = settings.connector
        self._listing: tuple[datetime, datetime, list[dict[str, Any]]] | None = None
        session = requests.Session()
        session.auth = (self.conf.api_key.value, self.conf.api_secret.value)
        self.http = HttpClient(
            SYSTEM, settings.base_url, session=session,
            timeout=(min(5.0, settings.timeout), settings.timeout),
            deadline=settings.deadline, max_body=settings.max_body,
            # One budget per API key in this process: merchants sharing a key share it.
            limiter=shared_limiter(SYSTEM, self.conf.api_key.value,
                                   self.conf.requests_per_second, 1.0, ctx.clock),
            policy=ctx.policy, clock=ctx.clock,
            headers={"Content-Type": "application/json", "Accept": "application/json"})

    @classmethod
    def parse_settings(cls, section: Section) -> XoroSettings:
        return XoroSettings(
            api_key=section.secret("api_key"),
            api_secret=section.secret("api_secret"),
            match_by=section.str("match_by", "return_id", choices=("return_id", "order_number")),
            asn_lookback=section.duration("asn_lookback", "1d", min=timedelta(0),
                                          max=timedelta(days=30)),
            # UNCONFIRMED which one getasn expects; both are seen in public clients.
            date_format=section.str("date_format", "iso", choices=tuple(DATE_FORMATS)),
            requests_per_second=section.int("requests_per_second", 2, min=1, max=10),
            asn_status_field=section.str("asn_status_field", "Status"),
            received_qty_field=section.str("received_qty_field", "QtyReceived"),
            rma_number_field=section.str("rma_number_field", "RmaNumber"),
            order_number_field=section.str("order_number_field", "OrderNumber"),
            max_pages=section.int("max_pages", MAX_PAGES, min=1),
        )

    # -- engine interface -----------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        return {}

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        """The ASN Xoro's app created for this Loop return, or None while it has not
        imported the return yet."""
        ret = req.ret
        # Never from the future: a return stamped 2099 would search an empty window.
        since = min(ret.created_at or ret.updated_at, self.ctx.clock.now()) \
            - self.conf.asn_lookback
        matches = [asn for asn in self._asns_for_linking(since) if self._matches(asn, req)]
        if not matches:
            return None
        if len(matches) > 1:
            numbers = ", ".join(sorted(_asn_number(a) for a in matches))
            raise Ambiguous(SYSTEM, f"several Xoro ASNs match return {ret.id} by "
                                   f"{self.conf.match_by}: {numbers}; use match_by: return_id")
        header = _header(matches[0])
        asn_number = _asn_number(matches[0])
        if not asn_number:  # it could never be polled: hold the return with the reason
            raise Unreadable(f"the Xoro ASN matching return {ret.id} has no readable "
                             f"{ASN_NUMBER}", field=ASN_NUMBER)
        rma_number = _text(header.get(self.conf.rma_number_field)) or asn_number
        log.info("xoro.asn_found", return_id=ret.id, rma=rma_number, asn=asn_number)
        return RmaRef(ret.id, rma_number, {"asn_number": asn_number, "search_from": iso(since)})

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        """One date-window listing covers every RMA in the batch."""
        if not rmas:
            return PollResult({})
        since = min(parse_timestamp(ref.extra["search_from"]) for ref in rmas)
        asns, failure = self._read_asns(since, in_poll=True)
        by_number = {_asn_number(asn): asn for asn in asns}
        result = PollResult({})
        for ref in rmas:
            asn = by_number.get(ref.extra["asn_number"])
            if asn is None:
                # With the listing cut short the ASN may be on an unread page: it waits
                # for the next cycle; the ASNs read meanwhile still decide their returns.
                result.errors[ref.return_id] = (
                    f"Xoro ASN {ref.extra['asn_number']} not read this cycle: the ASN "
                    f"listing stopped early ({failure})" if failure is not None else
                    f"Xoro ASN {ref.extra['asn_number']} not found among the ASNs created "
                    f"since {iso(since)}")
                continue
            try:
                result.statuses[ref.return_id] = self._status(ref, asn)
            except ValueError as exc:
                result.errors[ref.return_id] = str(exc)
        return result

    def rma_label(self, ref: RmaRef) -> str:
        return f"Xoro RMA {ref.rma_id} (ASN {ref.extra.get('asn_number')})"

    @property
    def weak_matching(self) -> bool:
        return self.conf.match_by != "return_id"

    def match_key(self, ret: LoopReturn) -> str | None:
        """By order number two Loop returns of one order cannot be told apart (Xoro's app
        may make one ASN for both): the engine refuses to guess between them."""
        if self.conf.match_by == "return_id":
            return None
        key = _order_key(ret.order_number) or _order_key(ret.order_name)
        return f"order {key}" if key else None

    def close(self) -> None:
        self.http.session.close()

    # -- matching and status ------------------------------------------------------------
    def _matches(self, asn: dict[str, Any], req: PushRequest) -> bool:
        header = _header(asn)
        if self.conf.match_by == "return_id":
            return _text(header.get(self.conf.rma_number_field)) == req.ret.id
        wanted = {_order_key(req.ret.order_number), _order_key(req.ret.order_name)} - {""}
        return _order_key(header.get(self.conf.order_number_field)) in wanted

    @guarded("Xoro ASN")
    def _status(self, ref: RmaRef, asn: dict[str, Any]) -> RmaStatus:
        """Raises Unreadable when the ASN lacks a field loopsync needs (guessing a missing
        received quantity as 0 would flag every return), or holds one it cannot read."""
        asn_number = ref.extra["asn_number"]
        try:
            word = identifier(_header(asn).get(self.conf.asn_status_field),
                              f"'{self.conf.asn_status_field}'") or ""
        except Unreadable as exc:
            raise Unreadable(f"Xoro ASN {asn_number}: {exc}", field=exc.field) from None
        if not word:
            raise Unreadable(f"Xoro ASN {asn_number} has no '{self.conf.asn_status_field}' "
                             "field (set warehouse.asn_status_field)",
                             field=self.conf.asn_status_field)
        expected: dict[str, int] = {}
        received: dict[str, int] = {}
        for n, line in enumerate(_detail_lines(asn), start=1):
            try:
                sku = identifier(line.get(ITEM_NUMBER), ITEM_NUMBER)
            except Unreadable as exc:
                raise Unreadable(f"Xoro ASN {asn_number} line {n}: {exc}",
                                 field=ITEM_NUMBER) from None
            if not sku:
                raise Unreadable(f"Xoro ASN {asn_number} line {n} has no {ITEM_NUMBER}",
                                 field=ITEM_NUMBER)
            expected[sku] = expected.get(sku, 0) + _quantity(line, QTY_EXPECTED, asn_number, n)
            received[sku] = received.get(sku, 0) + _quantity(
                line, self.conf.received_qty_field, asn_number, n)
        if not expected:  # Xoro's app makes one line per returned SKU: none is garbage
            raise Unreadable(f"Xoro ASN {asn_number} has no lines", field=ASN_DETAIL)
        items = tuple(ItemStatus(sku, expected[sku], received[sku]) for sku in expected)
        return RmaStatus(
            return_id=ref.return_id, rma_id=ref.rma_id, status=word,
            expected_units=sum(expected.values()), received_units=sum(received.values()),
            items=items, detail=_discrepancies(asn_number, items))

    def _asns_for_linking(self, since: datetime) -> list[dict[str, Any]]:
        """ASNs created since `since`, or more. By return id, a listing from an earlier
        `since` made moments ago serves too: older ASNs cannot carry this return's id. By
        order number they could (an earlier return of the same order), so list afresh."""
        if self.conf.match_by != "return_id":
            return self._list_asns(since)
        now = self.ctx.clock.now()
        if self._listing is not None:
            listed_since, listed_at, asns = self._listing
            # A clock set back makes the age negative: that listing is not fresh.
            if listed_since <= since and timedelta(0) <= now - listed_at <= LISTING_REUSE:
                return asns
        asns = self._list_asns(since)
        self._listing = (since, now, asns)
        return asns

    # -- wire -----------------------------------------------------------------------------
    def _list_asns(self, since: datetime) -> list[dict[str, Any]]:
        asns, failure = self._read_asns(since)
        if failure is not None:
            raise failure
        return asns

    def _read_asns(self, since: datetime, *, in_poll: bool = False
                   ) -> tuple[list[dict[str, Any]], RemoteError | None]:
        """The ASNs created since `since`, and the error that cut the listing short after
        its retries (None when complete). Nothing read at all: that error is raised."""
        until = self.ctx.clock.now() + FUTURE_PAD
        since = min(since, until)  # a start past the end would list nothing, every time
        fmt = DATE_FORMATS[self.conf.date_format]
        params = {"created_at_min": since.strftime(fmt), "created_at_max": until.strftime(fmt)}
        asns: list[dict[str, Any]] = []
        failure: RemoteError | None = None
        try:
            for row in self._pages(ASN_PATH, params, stoppable=in_poll):
                if isinstance(row, dict):
                    asns.append(row)
        except (TransientError, ErrorBody) as exc:  # credentials refused: the cycle stops
            if not asns or isinstance(exc, AuthError):
                raise
            failure = exc
            log.warning("xoro.asn_listing_incomplete", since=iso(since), asns=len(asns),
                        error=str(exc))
        log.info("xoro.asn_window", since=iso(since), until=iso(until), asns=len(asns))
        return asns, failure

    def _pages(self, path: str, params: dict[str, Any], *, stoppable: bool = False
               ) -> Iterator[Any]:
        """Every row of every page; stops at TotalPages or the first empty page.
        `stoppable`: a poll's long listing gives way to shutdown (PollStopped).

        Through `paging.PageWalk`: a page identical to the one before (a server ignoring
        `page`) or the page cap raises PaginationStopped, so a partial listing is never
        taken for the whole one."""

        def fetch(token: Any) -> Step[list[Any]]:
            page = token or 1
            body = self.http.request("GET", path, params={**params, "page": page},
                                     check=check_envelope).data
            rows = _rows(body.get("Data"))
            total = _int_or_none(body.get("TotalPages"))
            more = bool(rows) and (total is None or page < total)
            return Step(rows, more=more, token=page + 1,
                        fingerprint=json.dumps(rows, sort_keys=True, default=str))

        walk: PageWalk[list[Any]] = PageWalk(
            fetch, name=f"xoro.{path}", max_pages=self.conf.max_pages,
            stop=self.ctx.stop if stoppable else None)
        for fetched in walk:
            yield from fetched.items
        record_walk(self.ctx.kv, walk.result, self.ctx.clock.now())
        if walk.result is not None and walk.result.outcome is WalkEnd.STOPPED:
            raise PollStopped(f"{path}: stopped after page {walk.result.pages}")
        if walk.result is not None and not walk.result.complete:
            raise walk.result.error(SYSTEM)


def check_envelope(result: HttpResult) -> None:
    """Runs inside the HTTP retry: a non-JSON body (throttling, an auth redirect) is
    retried; `Result: false` is a failure whatever the HTTP status."""
    body = result.data
    if not isinstance(body, dict) or "Result" not in body:
        raise TransientError(SYSTEM, "answer is not a Xoro envelope: "
                                     f"{clip(result.text.strip(), 200)!r}", status=result.status)
    if _is_true(body["Result"]):
        return
    message = body.get("Message")
    message = printable(message.strip(), 500) if isinstance(message, str) else ""
    message = message or "Result: false"
    if _NO_RECORDS.search(message):
        body["Data"] = []
        return
    if _THROTTLED.search(message):
        raise RateLimited(SYSTEM, message, status=result.status)
    if _REFUSED.search(message):
        raise XoroRefused(SYSTEM, message, status=result.status, code="Result: false")
    if _BAD_REQUEST.search(message):
        raise ErrorBody(SYSTEM, message, status=result.status, code="Result: false")
    raise XoroBusy(SYSTEM, message, status=result.status, code="Result: false")


def _discrepancies(asn_number: str, items: Sequence[ItemStatus]) -> dict[str, Any]:
    """The short and over lines, named for the report (the engine writes the note)."""
    detail: dict[str, Any] = {"asn_number": asn_number}
    short = [f"{i.sku} received {i.received} of {i.expected}" for i in items
             if i.received < i.expected]
    over = [f"{i.sku} received {i.received} of {i.expected}" for i in items
            if i.received > i.expected]
    if short:
        detail["short"] = short
    if over:
        detail["over"] = over
    return detail


def _header(asn: dict[str, Any]) -> dict[str, Any]:
    header = asn.get(ASN_HEADER)
    return header if isinstance(header, dict) else {}


def _detail_lines(asn: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in _rows(asn.get(ASN_DETAIL)) if isinstance(line, dict)]


def _asn_number(asn: dict[str, Any]) -> str:
    return _text(_header(asn).get(ASN_NUMBER))


def _rows(data: Any) -> list[Any]:
    """`Data` is a list on most endpoints, a single object on some."""
    if isinstance(data, list):
        return data
    return [data] if isinstance(data, dict) else []


def _quantity(line: dict[str, Any], field: str, asn_number: str, n: int) -> int:
    raw: Any = line.get(field)
    try:
        return whole_number(raw, field)  # Xoro sends quantities as decimals (1.0)
    except Unreadable:
        hint = "" if field == QTY_EXPECTED else \
            " (the field is set by warehouse.received_qty_field)"
        shown = printable(repr(raw), 60) if isinstance(raw, str | int | float | None) \
            else f"a {type(raw).__name__}"
        raise Unreadable(f"Xoro ASN {asn_number} line {n}: '{field}' is {shown}, not a "
                         f"quantity{hint}", field=field) from None


def _order_key(value: Any) -> str:
    """Shopify order numbers compare without '#' and spaces ('#1001' == '1001')."""
    return _text(value).lstrip("#").strip()


def _text(value: Any) -> str:
    """A header field as text for matching; "" when absent or unreadable (a wrong type,
    a control character, ...): such an ASN matches no return, and says so when polled."""
    try:
        return identifier(value, "field") or ""
    except Unreadable:
        return ""


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # 1e400 decodes as inf
        return None
