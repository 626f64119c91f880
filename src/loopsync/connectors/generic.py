"""A generic 3PL (the AMS model): loopsync hands each Loop return to the 3PL as an RMA and
reads back what the 3PL received, over HTTP or through shared folders.

The RMA number is always the Loop return id (the number in the Loop admin URL
https://admin.loopreturns.com/returns/99904598). A 3PL implements its side from this text.

Receipts and statuses
---------------------
A receipt record says that some units of one SKU of one RMA were received in a condition:
`available`, `damaged`, `missing`, or another word the merchant maps to one of these in
`warehouse.condition_map`. An unmapped word holds the return back (reported as a poll
problem) until it is mapped; nothing is guessed. Per RMA loopsync computes:

- `complete` when every expected unit is accounted for (available + damaged + missing >=
  expected, per SKU), else `partial`;
- per SKU: units physically received (available + damaged) and the worst condition
  (missing > damaged > available).

By default `complete` with every unit available is processed; any damaged or missing unit,
or a count that differs from the RMA, is flagged with a note; `partial` waits.

Records with the same `receipt_id` for the same RMA are one record: a repeat (a re-sent
page, a duplicated file) changes nothing, and a later record with that id replaces the
earlier one (a correction).

HTTP transport
--------------
1. loopsync POSTs each RMA to `rma_url`::

       POST {rma_url}
       Content-Type: application/json
       {auth_header}: {auth_token}                       (when auth_token is set)
       X-Loopsync-Timestamp: 1780315200                   (when signing_secret is set)
       X-Loopsync-Signature: sha256=<hex>                 (when signing_secret is set)

       {
         "rma_number": "99904598",                 string, the Loop return id
         "loop_return_id": "99904598",             string, same value
         "created_at": "2026-05-01T12:00:00Z",     ISO-8601 UTC, when the return was created
         "destination": "WH-EAST",                 string, the mapped warehouse/site ("" if none)
         "order": {"name": "#1001", "number": "1001", "id": "90001001"},   strings or null
         "customer": "jane@example.com",           string or null
         "carrier": "USPS",                        string or null
         "tracking_number": "9400...",             string or null
         "lines": [                                one per SKU, at least one
           {"line": 1, "sku": "TEE-BLK-M", "quantity": 2, "title": "Classic Tee - Black / M"}
         ]
       }

   The signature is the lowercase hex HMAC-SHA256, keyed with the shared signing secret,
   of this canonical string (bytes; `\n` is one line feed)::

       "v1\n" + timestamp + "\n" + METHOD + "\n" + path + "\n" + body

   `timestamp` is the X-Loopsync-Timestamp header exactly as sent (Unix seconds, ASCII
   digits); METHOD is upper case (`POST`); `path` is the request target exactly as on the
   request line (`/rmas`, with `?query` when rma_url has one); `body` is the exact body
   bytes. Before parsing, recompute it, compare with `hmac.compare_digest` (constant
   time), and answer 401 when it does not match or when the timestamp is more than 5
   minutes from your clock (a replayed request). A rate-limited POST is re-sent with its
   first timestamp, at most ~2 minutes later. `examples/verify_signature.py` is a
   verifying receiver.

   Answers: `201` (or `200`) with the stored RMA record `{"rma_number": "...", ...}`.
   **Idempotent by RMA number**: POSTing a number the 3PL already has must not create a
   second RMA; answer `200` or `409` with the existing record. loopsync repeats a POST only
   after checking with `GET` (below), but a lost answer can still make it repeat one.
   `400`/`422` with `{"error": "why"}` refuses the RMA (loopsync records it as rejected and
   does not retry); `401`/`403` bad credentials; `429` (Retry-After honoured) and `5xx` are
   retried later.

2. loopsync looks an RMA up before repeating a POST whose answer was lost::

       GET {rma_url}/{rma_number}    ->  200 {"rma_number": "99904598", ...}  |  404

3. loopsync polls receipts::

       GET {receipts_url}?since=2026-06-01T00:00:00Z&page=1&page_size=100

   `since` (ISO-8601 UTC): receipts with `received_at >= since`; `page` is 1-based;
   `page_size` is a maximum. Order the records by `received_at`, then `receipt_id`, so
   pages stay stable while new receipts arrive. Answer::

       {
         "receipts": [
           {
             "receipt_id": "R-1001",          string, unique within the RMA, required
             "rma_number": "99904598",        string, required
             "sku": "TEE-BLK-M",              string, required
             "quantity": 1,                   integer >= 0, required
             "condition": "available",        string, required
             "received_at": "2026-06-02T14:03:00Z"   ISO-8601 with zone, required
           }
         ],
         "next_page": 2                       integer, or null on the last page
       }

   loopsync keeps every record it has read and asks again from a few minutes before the
   newest `received_at` it has seen, so overlapping answers are expected and harmless. A
   record that breaks this schema holds back the RMA it names (`loopsync status` says
   why; nothing is skipped silently) and is read again until the 3PL corrects it;
   other RMAs go on.

Folder transport
----------------
loopsync owns `archive/` and `rejected/`; the 3PL writes `inbox/` and reads `outbox/`.

- RMAs: loopsync writes `outbox/<rma_number>.csv` atomically (a hidden temporary file in
  the same folder, fsync, rename), so a file under its final name is always complete.
  Rewriting the same RMA after a crash writes the same name: treat a repeated RMA number
  as the same RMA. The 3PL may leave, delete, or move picked-up files to `archive/`.
  Columns, in this order, with a header row (UTF-8, comma separated, RFC 4180 quoting),
  one row per SKU::

      rma_number,line,sku,quantity,title,order_name,order_number,customer,destination,carrier,tracking_number,created_at

  A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a
  leading `'` so a spreadsheet shows it as text instead of running it as a formula
  (`-TEE` is written `'-TEE`); strip that `'` when reading such a cell. `line` and
  `quantity` are plain numbers. In receipt files loopsync reads `'-TEE` back as `-TEE`.

- Receipts: the 3PL writes `*.csv` files into `inbox/`, named as it likes, each written
  under a temporary name (starting with `.` or ending in `.tmp`) and then renamed. A
  header row is required; column names are case-insensitive and in any order; other
  columns are ignored; UTF-8 (a BOM is fine)::

      rma_number,sku,quantity,condition[,receipt_id][,received_at]

  `quantity` is an integer >= 0; `received_at` is ISO-8601 (UTC when it has no zone).
  Give every row a `receipt_id`; a row without one is identified by the bytes of its file
  and its row number, so only an exact duplicate file is recognised as a repeat.
- After loopsync has stored what a file said it moves the file to `archive/` (never
  deletes; a name already there gets a `.1`, `.2`, ... suffix). A file with any bad row is
  moved whole to `rejected/` with `<name>.reason.txt` beside it, and the other files still
  apply; fix it and drop it into `inbox/` again.
- Links: loopsync never follows a symbolic link it did not create. An inbox entry that is
  a link (or a FIFO, a device, anything but a regular file) is not read and not quoted,
  only named in `loopsync status`; a link at a name loopsync would write (an outbox file,
  a reason file, an archive name) is never written through: the outbox write is refused
  and retried, and a reason file or archive name moves on to a free name. Files are only
  created inside the configured folders: names come from the folder listing or from the
  RMA number, and an RMA number that is not a plain file name (`..`, `/`) is refused.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import hmac
import io
import json
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

import requests
import structlog

from loopsync import redaction, safefiles
from loopsync.configkit import Secret, Section
from loopsync.connectors.base import (ConnectorContext, KeyValue, PollResult, PushRequest,
    WarehouseConnector, WarehouseSettings)
from loopsync.rules import normalize_status
from loopsync import errors
from loopsync.errors import ErrorBody, NotFound, PermanentError, Rejected, TransientError
from loopsync.http import DEFAULT_MAX_BODY, HttpClient, HttpResult
from loopsync.models import (MAX_UNITS, ItemStatus, RmaRef, RmaStatus, guarded, identifier,
                             printable, remote_timestamp)
from loopsync.timeutil import iso, parse_timestamp
from loopsync.connectors.base import PollStopped  # noqa: I001 - apart: fewer merge conflicts
from loopsync.paging import PageWalk, Step, WalkEnd, record_walk

log = structlog.get_logger("loopsync.connectors.generic")

SYSTEM = "generic"
AVAILABLE, DAMAGED, MISSING = "available", "damaged", "missing"
CATEGORIES = (AVAILABLE, DAMAGED, MISSING)
_SEVERITY = {AVAILABLE: 0, DAMAGED: 1, MISSING: 2}
COMPLETE, PARTIAL = "complete", "partial"

SIGNATURE_HEADER = "X-Loopsync-Signature"
TIMESTAMP_HEADER = "X-Loopsync-Timestamp"
RMA_COLUMNS = ("rma_number", "line", "sku", "quantity", "title", "order_name", "order_number",
               "customer", "destination", "carrier", "tracking_number", "created_at")
RECEIPT_REQUIRED = ("rma_number", "sku", "quantity", "condition")
# Receipts are re-read from this long before the newest one seen: a 3PL may commit a
# record stamped a little earlier than one it already served.
SINCE_OVERLAP = timedelta(minutes=5)
SINCE_KEY = "receipts_since"
_HTTP_KEYS = ("rma_url", "receipts_url", "auth_header", "auth_token", "signing_secret",
              "page_size", "max_pages")
_FOLDER_KEYS = ("outbox", "inbox", "archive", "rejected")


@dataclass(frozen=True)
class GenericSettings:
    transport: str                      # http | folder
    condition_map: dict[str, str]       # normalised 3PL word -> available|damaged|missing
    rma_url: str = ""
    receipts_url: str = ""
    auth_header: str = "X-Api-Key"
    auth_token: Secret | None = None
    signing_secret: Secret | None = None
    page_size: int = 100
    max_pages: int = 10_000             # pages one receipts read may take
    outbox: Path = Path()
    inbox: Path = Path()
    archive: Path = Path()
    rejected: Path = Path()


@dataclass(frozen=True)
class ReceiptLine:
    key: str                 # identity within the RMA: "id:<receipt_id>" or "file:<sha>:<row>"
    rma_number: str
    sku: str
    quantity: int
    condition: str           # the 3PL's word, normalised
    received_at: str | None  # ISO-8601 UTC

    def to_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity, "condition": self.condition,
                "received_at": self.received_at}

    @classmethod
    def from_json(cls, key: str, rma_number: str, raw: Mapping[str, Any]) -> ReceiptLine:
        return cls(key, rma_number, raw["sku"], int(raw["quantity"]), raw["condition"],
                   raw.get("received_at"))


Unreadable = tuple[str | None, str]  # (RMA number when known, why a record was not used)


class Transport(Protocol):
    def has_rma(self, rma_number: str) -> bool: ...

    def deliver(self, record: dict[str, Any]) -> None: ...

    def read_receipts(self, rmas: Sequence[RmaRef]
                      ) -> tuple[list[ReceiptLine], list[Unreadable], Callable[[], None]]:
        """New receipt lines, what could not be read (RMA number or None, why), and what to
        do once the engine has stored them."""
        ...

    def archived_receipts(self, rma_numbers: set[str]) -> list[ReceiptLine]:
        """Lines of these RMAs that an earlier run read and put away (lost state)."""
        ...

    def close(self) -> None: ...


class GenericConnector(WarehouseConnector):
    kind: ClassVar[str] = "generic"
    default_base_url: ClassVar[str] = ""  # unused: the URLs are rma_url and receipts_url
    # Each poll reads the whole receipt feed (every inbox file, or every page since the
    # cursor), whatever the batch: one call for all open RMAs, not one per chunk.
    polls_all_at_once: ClassVar[bool] = True
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": [COMPLETE], "flag": [], "ignore": [PARTIAL]}
    default_flag_conditions: ClassVar[list[str]] = [DAMAGED, MISSING]

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.conf: GenericSettings = settings.connector
        self.transport: Transport = (
            HttpTransport(self.conf, settings.timeout, ctx, deadline=settings.deadline,
                          max_body=settings.max_body) if self.conf.transport == "http"
            else FolderTransport(self.conf))

    @classmethod
    def parse_settings(cls, section: Section) -> GenericSettings:
        transport = section.str("transport", choices=("http", "folder"))
        other, other_name = (_FOLDER_KEYS, "folder") if transport == "http" else \
            (_HTTP_KEYS, "http")
        for key in other:
            if section.has(key):
                raise section.error(key, f"applies only to transport: {other_name}")
        condition_map = _parse_condition_map(section)
        if transport == "http":
            return GenericSettings(
                transport=transport, condition_map=condition_map,
                rma_url=section.url("rma_url"), receipts_url=section.url("receipts_url"),
                auth_header=section.str("auth_header", "X-Api-Key", pattern=r"[A-Za-z0-9-]+"),
                auth_token=section.secret("auth_token", None),
                signing_secret=section.secret("signing_secret", None),
                page_size=section.int("page_size", 100, min=1, max=1000),
                max_pages=section.int("max_pages", 10_000, min=1))
        inbox = _existing_folder(section, "inbox")
        return GenericSettings(
            transport=transport, condition_map=condition_map,
            outbox=_existing_folder(section, "outbox"), inbox=inbox,
            archive=_folder(section, "archive", inbox.parent / "archive"),
            rejected=_folder(section, "rejected", inbox.parent / "rejected"))

    # -- engine interface -----------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        return {}  # the 3PL needs nothing to exist first (no order or product lookup)

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        if not self.transport.has_rma(req.ret.id):
            return None
        ref = self._ref(req)
        # Found, not created: its receipts may have been read (and archived) by a run
        # whose state is lost; its first poll looks for them in what was archived.
        return RmaRef(ref.return_id, ref.rma_id, {**ref.extra, "found": True})

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        self.transport.deliver(rma_record(req))
        log.info("generic.rma_delivered", return_id=req.ret.id, transport=self.conf.transport)
        return self._ref(req)

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        if not rmas:
            return PollResult({})
        new_lines, unreadable, transport_commit = self.transport.read_receipts(rmas)
        unchecked = {ref.rma_id for ref in rmas if ref.extra.get("found")
                     and not self.ctx.kv.get(_archive_checked_key(ref.rma_id))}
        if unchecked:  # archived lines first: what the inbox holds now is newer
            new_lines = self.transport.archived_receipts(unchecked) + new_lines
        new_by_rma: dict[str, dict[str, ReceiptLine]] = defaultdict(dict)
        for line in new_lines:
            new_by_rma[line.rma_number][line.key] = line  # later records win (corrections)
        result = PollResult({})
        by_number = {ref.rma_id: ref for ref in rmas}
        for rma_number, why in unreadable:
            ref = by_number.get(rma_number or "")
            if ref is None:
                result.problems.append(why)
            else:  # held: a record of it cannot be read, so its receipts are incomplete
                held = result.errors.get(ref.return_id)
                result.errors[ref.return_id] = f"{held}; {why}" if held else why
        for ref in rmas:
            if ref.return_id in result.errors:
                continue
            lines = {**self._stored_lines(ref.rma_id), **new_by_rma.get(ref.rma_id, {})}
            try:
                result.statuses[ref.return_id] = receipt_status(ref, lines.values(),
                                                                self.conf.condition_map)
            except ValueError as exc:
                result.errors[ref.return_id] = str(exc)

        def commit() -> None:
            if self.ctx.dry_run:
                return  # a dry run leaves the 3PL's files and the cursor where they were
            self._store_lines(new_by_rma)  # first: the files may go only once this is kept
            for rma_number in unchecked:
                self.ctx.kv.set(_archive_checked_key(rma_number), True)
            transport_commit()

        result.on_commit = commit
        return result

    def rma_label(self, ref: RmaRef) -> str:
        return f"3PL RMA {ref.rma_id}"

    # -- receipt lines kept between polls (connector key-value state) --------------------
    def _stored_lines(self, rma_number: str) -> dict[str, ReceiptLine]:
        raw = self.ctx.kv.get(_lines_key(rma_number), {})
        return {key: ReceiptLine.from_json(key, rma_number, value) for key, value in raw.items()}

    def _store_lines(self, new_by_rma: Mapping[str, Mapping[str, ReceiptLine]]) -> None:
        for rma_number, lines in new_by_rma.items():
            stored = self.ctx.kv.get(_lines_key(rma_number), {})
            stored.update({key: line.to_json() for key, line in lines.items()})
            self.ctx.kv.set(_lines_key(rma_number), stored)

    def _ref(self, req: PushRequest) -> RmaRef:
        ret = req.ret
        return RmaRef(ret.id, ret.id, {"units": ret.units_by_sku(),
                                       "created_at": iso(ret.created_at or ret.updated_at)})

    def close(self) -> None:
        self.transport.close()


# -- pure: the RMA record and the receipt status -------------------------------------------

def rma_record(req: PushRequest) -> dict[str, Any]:
    """The RMA as the 3PL sees it (the JSON body; the CSV rows flatten it)."""
    ret = req.ret
    titles: dict[str, str] = {}
    for li in ret.line_items:
        if li.sku:
            titles.setdefault(li.sku, li.title)
    lines = [{"line": n, "sku": sku, "quantity": qty, "title": titles[sku]}
             for n, (sku, qty) in enumerate(ret.units_by_sku().items(), start=1)]
    return {
        "rma_number": ret.id, "loop_return_id": ret.id,
        "created_at": iso(ret.created_at or ret.updated_at), "destination": req.destination,
        "order": {"name": ret.order_name, "number": ret.order_number, "id": ret.order_id},
        "customer": ret.customer, "carrier": ret.carrier,
        "tracking_number": ret.tracking_number, "lines": lines,
    }


def receipt_status(ref: RmaRef, lines: Iterable[ReceiptLine],
                   condition_map: Mapping[str, str]) -> RmaStatus:
    """Raises Unreadable for a condition word the merchant has not mapped."""
    expected: dict[str, int] = {sku: int(n) for sku, n in ref.extra["units"].items()}
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    by_word: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        category = condition_map.get(line.condition)
        if category is None:
            raise errors.Unreadable(
                f"3PL condition '{line.condition}' (RMA {line.rma_number}, SKU {line.sku}) is "
                f"not in warehouse.condition_map; map it to one of {', '.join(CATEGORIES)}")
        by_category[line.sku][category] += line.quantity
        by_word[line.sku][line.condition] += line.quantity
    skus = list(expected) + sorted(set(by_category) - set(expected))
    items = tuple(_item_status(sku, expected.get(sku, 0), by_category[sku], by_word[sku])
                  for sku in skus)
    complete = all(sum(by_category[sku].values()) >= n for sku, n in expected.items())
    return RmaStatus(
        return_id=ref.return_id, rma_id=ref.rma_id, status=COMPLETE if complete else PARTIAL,
        expected_units=sum(expected.values()), received_units=sum(i.received for i in items),
        items=items, detail=_problems(by_category, expected))


def _item_status(sku: str, expected: int, categories: Counter[str],
                 words: Counter[str]) -> ItemStatus:
    present = [c for c in CATEGORIES if categories[c] > 0]
    worst = max(present, key=_SEVERITY.__getitem__) if present else None
    return ItemStatus(sku, expected, categories[AVAILABLE] + categories[DAMAGED],
                      condition=worst,
                      note=", ".join(f"{word} {n}" for word, n in sorted(words.items())))


def _problems(by_category: Mapping[str, Counter[str]],
              expected: Mapping[str, int]) -> dict[str, Any]:
    """Damaged, missing and unexpected units, named for the report."""
    detail: dict[str, Any] = {}
    for category in (DAMAGED, MISSING):
        named = [f"{sku} x{c[category]}" for sku, c in by_category.items() if c[category]]
        if named:
            detail[category] = named
    unexpected = [sku for sku in by_category if sku not in expected]
    if unexpected:
        detail["unexpected_skus"] = unexpected
    return detail


@guarded("3PL receipt")
def parse_receipt(raw: Mapping[str, Any], *, fallback_key: str | None = None,
                  require_time: bool = False) -> ReceiptLine:
    """One receipt record (a JSON object or a CSV row); Unreadable says what is wrong."""
    def text(name: str) -> str:
        return identifier(raw.get(name), name) or ""  # Unreadable: wrong type, too long, ...

    for name in RECEIPT_REQUIRED:
        if not text(name):
            raise errors.Unreadable(f"{name} is missing", field=name)
    quantity = raw["quantity"]
    if isinstance(quantity, str) and quantity.strip().isascii() and quantity.strip().isdigit():
        quantity = int(quantity)  # ASCII only: "１" and "²" pass isdigit()
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not (
            0 <= quantity <= MAX_UNITS):
        raise errors.Unreadable(f"quantity {printable(repr(raw['quantity']), 40)} is not a "
                                "whole number >= 0", field="quantity")
    receipt_id = text("receipt_id")
    if not receipt_id and fallback_key is None:
        raise errors.Unreadable("receipt_id is missing", field="receipt_id")
    received_at = None
    if text("received_at"):
        # A file may leave the zone out (UTC); the HTTP feed must give it.
        received_at = iso(remote_timestamp(text("received_at"), "received_at:",
                                           assume_utc=not require_time))
    elif require_time:
        raise errors.Unreadable("received_at is missing", field="received_at")
    return ReceiptLine(key=f"id:{receipt_id}" if receipt_id else str(fallback_key),
                       rma_number=text("rma_number"), sku=text("sku"), quantity=quantity,
                       condition=normalize_status(text("condition")), received_at=received_at)


# -- HTTP transport ------------------------------------------------------------------------

# The 3PL answers the RMA look-up with "no such endpoint/method": it has none.
NO_LOOKUP = frozenset({405, 501})


class HttpTransport:
    def __init__(self, conf: GenericSettings, timeout: float, ctx: ConnectorContext, *,
                 deadline: float | None = None, max_body: int = DEFAULT_MAX_BODY) -> None:
        self.conf = conf
        self.clock = ctx.clock
        self.kv: KeyValue = ctx.kv
        self.stop = ctx.stop
        headers = {"Accept": "application/json"}
        if conf.auth_token is not None:
            headers[conf.auth_header] = conf.auth_token.value
        # The token goes to the two configured URLs' origins and nowhere else.
        self.http = HttpClient(SYSTEM, conf.rma_url, timeout=(min(5.0, timeout), timeout),
                               deadline=deadline, max_body=max_body,
                               policy=ctx.policy, clock=ctx.clock, headers=headers,
                               origins=[conf.receipts_url])

    def has_rma(self, rma_number: str) -> bool:
        try:
            body = self.http.request("GET", f"{self.conf.rma_url}/{quote(rma_number, safe='')}",
                                     check=_json_object).data
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
            headers[SIGNATURE_HEADER] = sign(self.conf.signing_secret.value, timestamp, "POST",
                                             request_target(self.conf.rma_url), body)
        try:
            self.http.request("POST", self.conf.rma_url, data=body, headers=headers,
                              idempotent=False)
        except PermanentError as exc:
            if exc.status == 409:
                return  # the 3PL already has this RMA number: the delivery happened
            if exc.status in (400, 422):
                raise Rejected(SYSTEM, exc.message, status=exc.status) from None
            raise

    def read_receipts(self, rmas: Sequence[RmaRef]
                      ) -> tuple[list[ReceiptLine], list[Unreadable], Callable[[], None]]:
        since = self._since(rmas)
        lines: list[ReceiptLine] = []
        bad: list[tuple[str | None, str, datetime | None]] = []

        def fetch(token: Any) -> Step[dict[str, Any]]:
            page = token or 1
            body = self.http.request("GET", self.conf.receipts_url, check=_json_object,
                                     params={"since": iso(since), "page": page,
                                             "page_size": self.conf.page_size}).data
            nxt = _next_page(body, page)
            return Step({"body": body, "page": page}, more=nxt is not None, token=nxt,
                        fingerprint=json.dumps(body.get("receipts"), sort_keys=True,
                                               default=str))

        # `next_page` used to be followed forever; the walk has a cap, a guard against a
        # server that serves one page under every number, and gives way to shutdown.
        walk: PageWalk[dict[str, Any]] = PageWalk(
            fetch, name="generic.receipts", max_pages=self.conf.max_pages, stop=self.stop)
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
            held = [at for _, _, at in bad]
            if None in held:
                return  # a bad record of unknown time: read everything again next time
            now = self.clock.now()
            # Never ahead of our clock: a record dated in the future (the 3PL's clock runs
            # fast, or a 2099 typo) is left out, not trusted, so it cannot blind the feed;
            # nor past a bad record, so its correction is read.
            times = [at for line in lines if line.received_at
                     and (at := parse_timestamp(line.received_at)) <= now]
            if times:
                self.kv.set(SINCE_KEY, iso(min(max(times), now, *held)))

        return lines, [(rma, why) for rma, why, _ in bad], commit

    def archived_receipts(self, rma_numbers: set[str]) -> list[ReceiptLine]:
        return []  # nothing put away: with the cursor lost the feed is read from the start

    def _since(self, rmas: Sequence[RmaRef]) -> datetime:
        cursor = self.kv.get(SINCE_KEY)
        if cursor:
            # A cursor stored while our clock ran ahead is pulled back to now.
            since = min(parse_timestamp(cursor), self.clock.now())
            # An RMA found again (state lost) on its first poll: its earlier receipts may
            # lie before the cursor, read by a run whose state is gone. Read from its start.
            found = [parse_timestamp(ref.extra["created_at"]) for ref in rmas
                     if ref.extra.get("found")
                     and not self.kv.get(_archive_checked_key(ref.rma_id))]
            return min([since, *found]) - SINCE_OVERLAP
        # First poll ever: nothing can have been received before the oldest RMA existed.
        return min(parse_timestamp(ref.extra["created_at"]) for ref in rmas) - SINCE_OVERLAP

    def close(self) -> None:
        self.http.session.close()


def canonical_string(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    """What the signature covers (documented above for the 3PL): version, timestamp,
    method, request target, body."""
    head = f"v1\n{timestamp}\n{method.upper()}\n{path}\n"
    return head.encode("utf-8") + body


def sign(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    digest = hmac.new(secret.encode("utf-8"), canonical_string(timestamp, method, path, body),
                      hashlib.sha256).hexdigest()
    return "sha256=" + digest


def request_target(url: str) -> str:
    """The path (and query) as requests puts it on the request line: the 3PL signs what
    it receives, so any re-quoting requests does must be in the string we sign."""
    return requests.Request("POST", url).prepare().path_url


def _json_object(result: HttpResult) -> None:
    """A 2xx body that is not JSON (a proxy's error page) is worth another try."""
    if not isinstance(result.data, dict):
        raise TransientError(SYSTEM, f"answer is not a JSON object: {redaction.clip(result.text.strip(), 200)!r}",
                             status=result.status)


def _page_receipts(body: dict[str, Any], page: int
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
            bad.append((_lenient(identifier, fields.get("rma_number"), ""), why,
                        _lenient(remote_timestamp, fields.get("received_at"), "received_at",
                                 assume_utc=True)))
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


# -- folder transport ----------------------------------------------------------------------

@dataclass(frozen=True)
class _InboxFile:
    name: str
    stamp: safefiles.Stamp  # inode, size, mtime: unchanged since it was read?


# A receipt file bigger than this is refused, not read into memory (a 3PL's daily file is
# kilobytes; this is thousands of times that).
MAX_RECEIPT_FILE = 64 << 20


class FolderTransport:
    """Shared folders the 3PL can write too: nothing here follows a symbolic link it did
    not create or writes outside the configured folders (`loopsync.safefiles`)."""

    def __init__(self, conf: GenericSettings) -> None:
        self.conf = conf

    def has_rma(self, rma_number: str) -> bool:
        name = _rma_file_name(rma_number)
        return any(_is_regular(folder, name) for folder in (self.conf.outbox, self.conf.archive))

    def deliver(self, record: dict[str, Any]) -> None:
        name = _rma_file_name(record["rma_number"])
        try:
            with safefiles.open_folder(self.conf.outbox) as outbox:
                safefiles.replace_atomically(outbox, name, rma_csv(record).encode("utf-8"))
        except OSError as exc:  # a link in the way too: reported, retried, never followed
            raise TransientError(SYSTEM, f"cannot write {self.conf.outbox / name}: "
                                         f"{exc.strerror or exc}") from None

    def read_receipts(self, rmas: Sequence[RmaRef]
                      ) -> tuple[list[ReceiptLine], list[Unreadable], Callable[[], None]]:
        lines: list[ReceiptLine] = []
        applied: list[_InboxFile] = []
        rejected: list[tuple[_InboxFile, str]] = []
        refused: list[Unreadable] = []
        try:
            with safefiles.open_folder(self.conf.inbox) as inbox:
                for name in self._inbox_files(inbox, refused):
                    try:
                        data, stamp = safefiles.read_regular(
                            inbox, name, limit=MAX_RECEIPT_FILE, single_link=True)
                    except FileNotFoundError:
                        continue  # taken away by the 3PL meanwhile
                    except (OSError, ValueError) as exc:
                        refused.append((None, _refusal(name, exc)))
                        continue
                    seen = _InboxFile(name, stamp)
                    try:
                        lines.extend(parse_receipt_file(data))
                        applied.append(seen)
                    except ValueError as exc:
                        rejected.append((seen, redaction.redact(str(exc))))  # goes to a file
        except OSError as exc:
            raise TransientError(SYSTEM, f"cannot read inbox {self.conf.inbox}: "
                                         f"{exc.strerror or exc}") from None
        log.info("generic.inbox_read", files=len(applied), rejected=len(rejected),
                 refused=len(refused), lines=len(lines))
        # The whole file waits in rejected/ for the 3PL; `loopsync status` says why.
        unreadable: list[Unreadable] = refused + [
            (None, f"receipt file {seen.name} rejected: {reason}")
            for seen, reason in rejected]

        def commit() -> None:
            with safefiles.open_folder(self.conf.inbox) as inbox:
                for seen in applied:
                    self._move_aside(inbox, seen, self.conf.archive)
                for seen, reason in rejected:
                    moved = self._move_aside(inbox, seen, self.conf.rejected,
                                             reserve=REASON_SUFFIX)
                    if moved is not None:
                        _write_reason(self.conf.rejected, moved, reason + "\n")
                        log.warning("generic.receipt_file_rejected", file=moved, reason=reason)

        return lines, unreadable, commit

    def archived_receipts(self, rma_numbers: set[str]) -> list[ReceiptLine]:
        """Receipt lines of these RMAs in archive/, where every file read before went once
        its lines were kept: with that state lost they are nowhere else. Same keys as when
        first read (file hash and row), so nothing counts twice. A file that is not a
        readable receipt file (an RMA file the 3PL archived, a link) is passed over."""
        lines: list[ReceiptLine] = []
        try:
            with safefiles.open_folder(self.conf.archive) as archive:
                for name, kind in sorted(safefiles.entries(archive)):
                    if kind != "file" or name.startswith(".") or \
                            not name.lower().endswith(".csv"):
                        continue
                    try:
                        data, _ = safefiles.read_regular(
                            archive, name, limit=MAX_RECEIPT_FILE, single_link=True)
                        found = parse_receipt_file(data)
                    except (OSError, ValueError):
                        continue
                    lines += [line for line in found if line.rma_number in rma_numbers]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise TransientError(SYSTEM, f"cannot read archive {self.conf.archive}: "
                                         f"{exc.strerror or exc}") from None
        log.info("generic.archive_read", rmas=len(rma_numbers), lines=len(lines))
        return lines

    @staticmethod
    def _inbox_files(inbox: int, refused: list[Unreadable]) -> list[str]:
        """Receipt files to read, oldest first. A link or anything but a regular file is
        refused, named, and neither read nor quoted: it could point outside the share."""
        names = []
        for name, kind in safefiles.entries(inbox):
            if name.startswith(".") or not name.lower().endswith(".csv"):
                continue
            if kind != "file":
                what = "a symbolic link" if kind == "link" else "not a regular file"
                refused.append((None, f"inbox entry {name!r} is {what}: not read (loopsync "
                                      "reads only regular files)"))
                continue
            names.append(name)

        def age(name: str) -> tuple[int, str]:
            st = safefiles.lstat(inbox, name)
            return (st.st_mtime_ns if st else 0, name)

        return sorted(names, key=age)

    def _move_aside(self, inbox: int, seen: _InboxFile, folder: Path, *,
                    reserve: str = "") -> str | None:
        """Move a read file out of the inbox, never over another file and never through a
        link; the name it got. None when the file changed or went since it was read:
        then it is read again next time, or is gone."""
        st = safefiles.lstat(inbox, seen.name)
        if st is None or not stat.S_ISREG(st.st_mode) or safefiles.Stamp.of(st) != seen.stamp:
            return None
        try:
            with safefiles.open_folder(folder, create=True) as target:
                return safefiles.move_no_clobber(inbox, seen.name, target, reserve=reserve)
        except FileNotFoundError:
            return None
        except OSError as exc:  # stays in the inbox; applied again harmlessly next time
            log.warning("generic.move_aside_failed", file=seen.name, folder=str(folder),
                        error=exc.strerror or str(exc))
            return None

    def close(self) -> None:
        """Nothing held open between calls."""


REASON_SUFFIX = ".reason.txt"


def _write_reason(folder: Path, moved: str, text: str) -> None:
    """`<moved>.reason.txt` beside the rejected file, created exclusively: a link or file
    already at that name is left alone, never written through."""
    try:
        with safefiles.open_folder(folder) as fd:
            safefiles.create_exclusive(fd, moved + REASON_SUFFIX, text.encode("utf-8"))
    except OSError as exc:
        log.warning("generic.reason_file_not_written", file=moved + REASON_SUFFIX,
                    error=exc.strerror or str(exc))


def _refusal(name: str, exc: BaseException) -> str:
    """Why an inbox file was not read, naming the file and never what a link points to."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        why = "is a link (symbolic, or a file with other hard links)"
    elif isinstance(exc, OSError):
        why = exc.strerror or "cannot be read"
    else:
        why = str(exc)
    return f"inbox entry {name!r} not read: {why}"


def _is_regular(folder: Path, name: str) -> bool:
    """A regular file (not a link to one) under `name` in `folder`."""
    try:
        with safefiles.open_folder(folder) as fd:
            st = safefiles.lstat(fd, name)
    except FileNotFoundError:
        return False
    return st is not None and stat.S_ISREG(st.st_mode)


@guarded("3PL receipt file")
def parse_receipt_file(data: bytes) -> list[ReceiptLine]:
    """Every row, or Unreadable naming each bad row: a file applies whole or not at all."""
    try:
        return _receipt_file_lines(data)
    except csv.Error as exc:  # a field over the csv module's limit, ...
        raise errors.Unreadable(f"not a CSV file: {exc}") from None


def _receipt_file_lines(data: bytes) -> list[ReceiptLine]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise errors.Unreadable(f"not UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise errors.Unreadable("empty file: a header row is required")
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    missing = [c for c in RECEIPT_REQUIRED if c not in reader.fieldnames]
    if missing:
        raise errors.Unreadable(f"header lacks column(s) {', '.join(missing)}; required: "
                                f"{', '.join(RECEIPT_REQUIRED)}")
    digest = hashlib.sha256(data).hexdigest()[:16]
    lines, problems = [], []
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank line
        # A 3PL may echo a cell as loopsync wrote it ('-SKU for -SKU): read it back.
        row = {k: unneutralise(v) if isinstance(v, str) else v for k, v in row.items()}
        try:
            lines.append(parse_receipt(row, fallback_key=f"file:{digest}:{reader.line_num}"))
        except ValueError as exc:
            problems.append(f"line {reader.line_num}: {exc}")
    if problems:
        raise errors.Unreadable("; ".join(problems))
    return lines


# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): a
# customer name "=HYPERLINK(...)" must reach the 3PL's Excel as text (OWASP's advice).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula gets a leading `'`; numbers
    (line, quantity) stay numbers."""
    if isinstance(cell, str) and cell.startswith(FORMULA_START):
        return "'" + cell
    return cell


def unneutralise(cell: str) -> str:
    """The inverse for cells a 3PL echoes back: `'=x` reads as `=x`."""
    if cell.startswith("'") and cell[1:].startswith(FORMULA_START):
        return cell[1:]
    return cell


def rma_csv(record: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(RMA_COLUMNS)
    order = record["order"]
    for line in record["lines"]:
        row = [record["rma_number"], line["line"], line["sku"], line["quantity"],
               line["title"], order["name"] or "", order["number"] or "",
               record["customer"] or "", record["destination"],
               record["carrier"] or "", record["tracking_number"] or "",
               record["created_at"]]
        writer.writerow([neutralise(cell) for cell in row])
    return out.getvalue()


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, rename: a reader sees the whole file under its
    final name or nothing; never through a link. TransientError when it did not happen."""
    try:
        with safefiles.open_folder(path.parent) as folder:
            safefiles.replace_atomically(folder, path.name, data)
    except (OSError, ValueError) as exc:
        raise TransientError(SYSTEM, f"cannot write {path}: "
                                     f"{getattr(exc, 'strerror', None) or exc}") from None


def _rma_file_name(rma_number: str) -> str:
    """The RMA's file name; an RMA number that is not a harmless file name (`..`, a
    slash, a control character) is refused rather than turned into a path."""
    try:
        return safefiles.safe_name(f"{rma_number}.csv")
    except ValueError as exc:
        raise Rejected(SYSTEM, f"RMA number {rma_number!r} cannot name a file: {exc}") from None


def _archive_checked_key(rma_number: str) -> str:
    return f"archive_checked:{rma_number}"


def _lines_key(rma_number: str) -> str:
    return f"receipts:{rma_number}"


# -- settings helpers ----------------------------------------------------------------------

def _parse_condition_map(section: Section) -> dict[str, str]:
    def category(key: str, value: Any) -> str:
        if value not in CATEGORIES:
            raise section.error(key, f"{value!r} is not one of {', '.join(CATEGORIES)}")
        return str(value)

    merchant = section.str_map("condition_map", {}, value=category)
    return {**{c: c for c in CATEGORIES},
            **{normalize_status(word): cat for word, cat in merchant.items()}}


def _folder(section: Section, key: str, default: Path) -> Path:
    raw = section.str(key, None)
    if raw is None:
        return default
    path = Path(raw).expanduser()
    # Relative folders are relative to the config file, not to wherever loopsync runs.
    path = path if path.is_absolute() else Path(section.file).parent / path
    if path.is_symlink():  # refused at run time too: say so now, with the fix
        raise section.error(key, f"folder {path} is a symbolic link; give its real path "
                                 f"{Path(os.path.realpath(path))} (loopsync never follows a "
                                 "link in the shared folders)")
    return path


def _existing_folder(section: Section, key: str) -> Path:
    if not section.has(key):
        raise section.error(key, "is required for transport: folder")
    path = _folder(section, key, Path())
    if not path.is_dir():
        raise section.error(key, f"folder {path} does not exist")
    return path

