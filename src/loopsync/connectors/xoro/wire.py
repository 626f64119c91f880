"""Xoro's REST transport: HTTP Basic, the `{Result, Message, Data, TotalPages}` envelope.

Wire facts (docs/api/xoro.md): HTTP Basic with the API key and secret; every answer is an
envelope, and `Result: false` is a failure even under HTTP 200, classified in
`check_envelope` (inside the HTTP retry): refused credentials or scope -> AuthError, a
request Xoro cannot read -> ErrorBody, throttling -> RateLimited, anything else ->
transient, retried with backoff. A listing cut short after its retries still decides the
ASNs it read; the others wait for the next cycle. `TotalPages` is unreliable, so paging
(through `paging.PageWalk`) also stops at the first empty page; more than 3 concurrent
requests get throttled, so requests go one at a time, rate-limited.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import requests
import structlog

from loopsync.connectors.base import ConnectorContext, PollStopped, WarehouseSettings
from loopsync.connectors.xoro.mapping import data_rows
from loopsync.connectors.xoro.settings import DATE_FORMATS, XoroSettings
from loopsync.errors import (
    AuthError,
    ErrorBody,
    RateLimited,
    RemoteError,
    TransientError,
    XoroBusy,
    XoroRefused,
)
from loopsync.http import HttpClient, HttpResult, shared_limiter
from loopsync.models import identifier, printable
from loopsync.paging import PageWalk, Step, WalkEnd, record_walk
from loopsync.redaction import clip
from loopsync.timeutil import iso

log = structlog.get_logger("loopsync.connectors.xoro")


SYSTEM = "xoro"
ASN_PATH = "asn/getasn"
# `loopsync discover`: the tenant's stores. UNCONFIRMED: docs/api/xoro.md lists no store
# endpoint; `store/getstore` follows the `<module>/get<module>` pattern of the known ones,
# and the field names (StoreCode, StoreName) are guesses a tenant may not share. A key
# without the module's scope, or a tenant without the action, gets "not offered".
STORE_PATH = "store/getstore"
STORE_ID_FIELDS = ("StoreCode", "Code", "StoreId", "Id")
STORE_NAME_FIELDS = ("StoreName", "Name", "Description")
# Xoro may stamp ASNs in the account's local time, up to 14 hours ahead of UTC; a window
# ending "now" in UTC would miss the newest ASNs.
FUTURE_PAD = timedelta(days=1)
# UNCONFIRMED: some Xoro endpoints answer an empty result as Result:false with a message
# like "No Records Found"; that is an empty page, not a failure.
_NO_RECORDS = re.compile(r"\bno (record|data|result)s?\b.*\bfound\b", re.IGNORECASE)
_THROTTLED = re.compile(r"rate limit|too many requests|throttl", re.IGNORECASE)
# UNCONFIRMED wordings (Xoro documents none): credentials or module scope refused, and a
# request Xoro cannot read. Both are permanent; any other `Result: false` on these reads
# is treated as transient and retried with backoff, since Xoro also answers passing server
# trouble this way and a read is safe to repeat.
_REFUSED = re.compile(
    r"api (key|secret)|unauthori[sz]ed|authenticat|credential|"
    r"access denied|does not have access|permission|\bscope\b",
    re.IGNORECASE,
)
_BAD_REQUEST = re.compile(
    r"\binvalid (filter|date|parameter|page|request)|\bis required\b|"
    r"unknown action|not supported",
    re.IGNORECASE,
)


class XoroClient:
    """One merchant's Xoro reads: Basic auth, one request at a time, rate-limited per key."""

    def __init__(
        self, conf: XoroSettings, settings: WarehouseSettings, ctx: ConnectorContext
    ) -> None:
        self.conf = conf
        self.ctx = ctx
        session = requests.Session()
        session.auth = (conf.api_key.value, conf.api_secret.value)
        self.http = HttpClient(
            SYSTEM,
            settings.base_url,
            session=session,
            timeout=(min(5.0, settings.timeout), settings.timeout),
            deadline=settings.deadline,
            max_body=settings.max_body,
            # One budget per API key in this process: merchants sharing a key share it.
            limiter=shared_limiter(
                SYSTEM, conf.api_key.value, conf.requests_per_second, 1.0, ctx.clock
            ),
            policy=ctx.policy,
            clock=ctx.clock,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )

    def close(self) -> None:
        self.http.session.close()

    def list_asns(self, since: datetime) -> list[dict[str, Any]]:
        asns, failure = self.read_asns(since)
        if failure is not None:
            raise failure
        return asns

    def read_asns(
        self, since: datetime, *, in_poll: bool = False
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
            for row in self.pages(ASN_PATH, params, stoppable=in_poll):
                if isinstance(row, dict):
                    asns.append(row)  # noqa: PERF401 - rows read before a failure stay
        except (TransientError, ErrorBody) as exc:  # credentials refused: the cycle stops
            if not asns or isinstance(exc, AuthError):
                raise
            failure = exc
            log.warning(
                "xoro.asn_listing_incomplete", since=iso(since), asns=len(asns), error=str(exc)
            )
        log.info("xoro.asn_window", since=iso(since), until=iso(until), asns=len(asns))
        return asns, failure

    def pages(self, path: str, params: dict[str, Any], *, stoppable: bool = False) -> Iterator[Any]:
        """Every row of every page; stops at TotalPages or the first empty page.
        `stoppable`: a poll's long listing gives way to shutdown (PollStopped).

        Through `paging.PageWalk`: a page identical to the one before (a server ignoring
        `page`) or the page cap raises PaginationStopped, so a partial listing is never
        taken for the whole one."""

        def fetch(token: Any) -> Step[list[Any]]:
            page = token or 1
            body = self.http.request(
                "GET", path, params={**params, "page": page}, check=check_envelope
            ).data
            rows = data_rows(body.get("Data"))
            total = _int_or_none(body.get("TotalPages"))
            more = bool(rows) and (total is None or page < total)
            return Step(
                rows,
                more=more,
                token=page + 1,
                fingerprint=json.dumps(rows, sort_keys=True, default=str),
            )

        walk: PageWalk[list[Any]] = PageWalk(
            fetch,
            name=f"xoro.{path}",
            max_pages=self.conf.max_pages,
            stop=self.ctx.stop if stoppable else None,
        )
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
        raise TransientError(
            SYSTEM,
            f"answer is not a Xoro envelope: {clip(result.text.strip(), 200)!r}",
            status=result.status,
        )
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


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # 1e400 decodes as inf
        return None


def store_rows(rows: list[Any]) -> list[tuple[str, str]]:
    """(id, name) for each store row with an id; pure."""
    out: list[tuple[str, str]] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        ident = next(
            (i for f in STORE_ID_FIELDS if (i := identifier(row.get(f), f"store.{f}"))), ""
        )
        name = next(
            (
                str(row[f]).strip()
                for f in STORE_NAME_FIELDS
                if isinstance(row.get(f), str) and row[f].strip()
            ),
            "",
        )
        if ident:
            out.append((printable(ident, 200), printable(name, 200)))
    return out
