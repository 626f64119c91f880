"""The generic 3PL over HTTP: POST the RMA (signed), GET it back, page the receipt feed.

Every call goes through `HttpClient.request`; the receipt feed is walked through
`paging.PageWalk` (page cap, a page served under every number, shutdown). The contract
the 3PL implements (the signature, the answers, the feed) is this package's docstring
(docs/api/generic.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests
import structlog

from loopsync import redaction, webhooks
from loopsync.connectors.base import ConnectorContext, KeyValue, PollStopped
from loopsync.connectors.generic.mapping import (
    SYSTEM,
    HeldRecord,
    ReceiptLine,
    ReceiptRead,
    archive_checked_key,
    parse_receipt,
)
from loopsync.connectors.generic.settings import GenericSettings
from loopsync.errors import ErrorBody, NotFound, PermanentError, Rejected, TransientError
from loopsync.http import DEFAULT_MAX_BODY, HttpClient, HttpResult
from loopsync.models import RmaRef, identifier, remote_timestamp
from loopsync.paging import PageWalk, Step, WalkEnd, record_walk
from loopsync.timeutil import iso, parse_timestamp

log = structlog.get_logger("loopsync.connectors.generic")

SIGNATURE_HEADER = "X-Loopsync-Signature"
TIMESTAMP_HEADER = "X-Loopsync-Timestamp"
# Receipts are re-read from this long before the newest one seen: a 3PL may commit a
# record stamped a little earlier than one it already served.
SINCE_OVERLAP = timedelta(minutes=5)
SINCE_KEY = "receipts_since"

# The 3PL answers the RMA look-up with "no such endpoint/method": it has none.
NO_LOOKUP = frozenset({405, 501})


class HttpTransport:
    def __init__(
        self,
        conf: GenericSettings,
        timeout: float,
        ctx: ConnectorContext,
        *,
        deadline: float | None = None,
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        self.conf = conf
        self.clock = ctx.clock
        self.kv: KeyValue = ctx.kv
        self.stop = ctx.stop
        headers = {"Accept": "application/json"}
        if conf.auth_token is not None:
            headers[conf.auth_header] = conf.auth_token.value
        # The token goes to the two configured URLs' origins and nowhere else.
        self.http = HttpClient(
            SYSTEM,
            conf.rma_url,
            timeout=(min(5.0, timeout), timeout),
            deadline=deadline,
            max_body=max_body,
            policy=ctx.policy,
            clock=ctx.clock,
            headers=headers,
            origins=[conf.receipts_url],
        )

    def has_rma(self, rma_number: str) -> bool:
        try:
            body = self.http.request(
                "GET", f"{self.conf.rma_url}/{quote(rma_number, safe='')}", check=_json_object
            ).data
        except NotFound:
            return False
        except PermanentError as exc:
            if exc.status not in NO_LOOKUP:
                raise
            # A 3PL without the look-up endpoint: the POST itself is idempotent by RMA
            # number (the contract: a number it already has is answered 200/409, never
            # stored twice), so deliver and let the 3PL de-duplicate.
            log.warning("generic.no_rma_lookup", rma=rma_number, status=exc.status)
            return False
        if _lenient(identifier, body.get("rma_number"), "rma_number") != rma_number:
            raise ErrorBody(SYSTEM, f"asked for RMA {rma_number}, got another")
        return True

    def deliver(self, record: dict[str, Any]) -> None:
        body = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.conf.signing_secret is not None:
            # Signed over time, method and path too, so a captured request cannot be
            # replayed later or against another route.
            timestamp = str(int(self.clock.now().timestamp()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(
                self.conf.signing_secret.value,
                timestamp,
                "POST",
                request_target(self.conf.rma_url),
                body,
            )
        try:
            self.http.request(
                "POST", self.conf.rma_url, data=body, headers=headers, idempotent=False
            )
        except PermanentError as exc:
            if exc.status == 409:
                return  # the 3PL already has this RMA number: the delivery happened
            if exc.status in (400, 422):
                raise Rejected(SYSTEM, exc.message, status=exc.status) from None
            raise

    def read_receipts(self, rmas: Sequence[RmaRef]) -> ReceiptRead:
        since = self._since(rmas)
        lines: list[ReceiptLine] = []
        bad: list[tuple[str | None, str, datetime | None]] = []

        def fetch(token: Any) -> Step[dict[str, Any]]:
            page = token or 1
            body = self.http.request(
                "GET",
                self.conf.receipts_url,
                check=_json_object,
                params={"since": iso(since), "page": page, "page_size": self.conf.page_size},
            ).data
            nxt = _next_page(body, page)
            return Step(
                {"body": body, "page": page},
                more=nxt is not None,
                token=nxt,
                fingerprint=json.dumps(body.get("receipts"), sort_keys=True, default=str),
            )

        # `next_page` used to be followed forever; the walk has a cap, a guard against a
        # server that serves one page under every number, and gives way to shutdown.
        walk: PageWalk[dict[str, Any]] = PageWalk(
            fetch, name="generic.receipts", max_pages=self.conf.max_pages, stop=self.stop
        )
        for fetched in walk:
            good, wrong = _page_receipts(fetched.items["body"], fetched.items["page"])
            lines += good
            bad += wrong
        record_walk(self.kv, walk.result, self.clock.now())
        if walk.result is not None and walk.result.outcome is WalkEnd.STOPPED:
            raise PollStopped(f"generic receipts: stopped after page {walk.result.pages}")
        if walk.result is not None and not walk.result.complete:
            raise walk.result.error(SYSTEM)  # the cursor stays; status says why
        log.info("generic.receipts_read", since=iso(since), lines=len(lines), bad=len(bad))

        def commit() -> None:
            held = [at for _, _, at in bad if at is not None]
            if len(held) < len(bad):
                return  # a bad record of unknown time: read everything again next time
            now = self.clock.now()
            # Never ahead of our clock: a record dated in the future (the 3PL's clock runs
            # fast, or a 2099 typo) is left out, not trusted, so it cannot blind the feed;
            # nor past a bad record, so its correction is read.
            times = [
                at
                for line in lines
                if line.received_at and (at := parse_timestamp(line.received_at)) <= now
            ]
            if times:
                self.kv.set(SINCE_KEY, iso(min(max(times), now, *held)))

        return ReceiptRead(lines, [HeldRecord(rma, why) for rma, why, _ in bad], commit)

    def archived_receipts(self, rma_numbers: set[str]) -> list[ReceiptLine]:
        return []  # nothing put away: with the cursor lost the feed is read from the start

    def _since(self, rmas: Sequence[RmaRef]) -> datetime:
        cursor = self.kv.get(SINCE_KEY)
        if cursor:
            # A cursor stored while our clock ran ahead is pulled back to now.
            since = min(parse_timestamp(cursor), self.clock.now())
            # An RMA found again (state lost) on its first poll: its earlier receipts may
            # lie before the cursor, read by a run whose state is gone. Read from its start.
            found = [
                parse_timestamp(ref.extra["created_at"])
                for ref in rmas
                if ref.extra.get("found") and not self.kv.get(archive_checked_key(ref.rma_id))
            ]
            return min([since, *found]) - SINCE_OVERLAP
        # First poll ever: nothing can have been received before the oldest RMA existed.
        return min(parse_timestamp(ref.extra["created_at"]) for ref in rmas) - SINCE_OVERLAP

    def close(self) -> None:
        self.http.session.close()


# One signing scheme for the RMA POST and the receipt webhook (loopsync.webhooks).
canonical_string = webhooks.canonical_string


def sign(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    return webhooks.sign_generic(secret, timestamp, method, path, body)


def request_target(url: str) -> str:
    """The path (and query) as requests puts it on the request line: the 3PL signs what
    it receives, so any re-quoting requests does must be in the string we sign."""
    return requests.Request("POST", url).prepare().path_url


def _json_object(result: HttpResult) -> None:
    """A 2xx body that is not JSON (a proxy's error page) is worth another try."""
    if not isinstance(result.data, dict):
        raise TransientError(
            SYSTEM,
            f"answer is not a JSON object: {redaction.clip(result.text.strip(), 200)!r}",
            status=result.status,
        )


def _page_receipts(
    body: dict[str, Any], page: int
) -> tuple[list[ReceiptLine], list[tuple[str | None, str, datetime | None]]]:
    """The page's records, and the ones that break the schema: (RMA number when readable,
    why, received_at when readable), so only that RMA waits for the 3PL's correction."""
    records = body.get("receipts")
    if not isinstance(records, list):
        raise ErrorBody(SYSTEM, f"receipts page {page}: 'receipts' is not a list")
    out, bad = [], []
    for n, record in enumerate(records):
        try:
            if not isinstance(record, dict):
                raise ValueError("not an object")
            out.append(parse_receipt(record, require_time=True))
        except ValueError as exc:
            why = f"receipts page {page}, record {n}: {exc}"
            fields = record if isinstance(record, dict) else {}
            bad.append(
                (
                    _lenient(identifier, fields.get("rma_number"), ""),
                    why,
                    _lenient(
                        remote_timestamp, fields.get("received_at"), "received_at", assume_utc=True
                    ),
                )
            )
    return out, bad


def _lenient(parse: Callable[..., Any], value: Any, *args: Any, **kw: Any) -> Any:
    """`parse(str(value), ...)`, or None when there is nothing to read."""
    try:
        return parse(str(value), *args, **kw) if isinstance(value, str | int) else None
    except ValueError:
        return None


def _next_page(body: dict[str, Any], page: int) -> int | None:
    nxt = body.get("next_page")
    if nxt is None:
        return None
    if isinstance(nxt, bool) or not isinstance(nxt, int) or nxt <= page:
        raise ErrorBody(SYSTEM, f"receipts page {page}: next_page {nxt!r} does not move on")
    return nxt
