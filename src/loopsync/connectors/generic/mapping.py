"""Pure: 3PL receipts -> typed models, and a Loop return -> the 3PL's RMA record / CSV.

No I/O here. A record that cannot be read raises `errors.Unreadable` naming the field,
so only its RMA waits for the 3PL's correction. The record shapes are the contract in
this package's docstring (`loopsync.connectors.generic`; docs/api/generic.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loopsync import errors
from loopsync.connectors.base import PushRequest
from loopsync.models import (
    ItemStatus,
    RmaRef,
    RmaStatus,
    guarded,
    identifier,
    remote_timestamp,
    whole_number,
)
from loopsync.rules import normalize_status
from loopsync.timeutil import iso

SYSTEM = "generic"
AVAILABLE, DAMAGED, MISSING = "available", "damaged", "missing"
CATEGORIES = (AVAILABLE, DAMAGED, MISSING)
_SEVERITY = {AVAILABLE: 0, DAMAGED: 1, MISSING: 2}

COMPLETE, PARTIAL = "complete", "partial"
RMA_COLUMNS = (
    "rma_number",
    "line",
    "sku",
    "quantity",
    "title",
    "order_name",
    "order_number",
    "customer",
    "destination",
    "carrier",
    "tracking_number",
    "created_at",
)
RECEIPT_REQUIRED = ("rma_number", "sku", "quantity", "condition")


@dataclass(frozen=True)
class ReceiptLine:
    key: str  # identity within the RMA: "id:<receipt_id>" or "file:<sha>:<row>"
    rma_number: str
    sku: str
    quantity: int
    condition: str  # the 3PL's word, normalised
    received_at: str | None  # ISO-8601 UTC

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "quantity": self.quantity,
            "condition": self.condition,
            "received_at": self.received_at,
        }

    @classmethod
    def from_json(cls, key: str, rma_number: str, raw: Mapping[str, Any]) -> ReceiptLine:
        return cls(
            key,
            rma_number,
            raw["sku"],
            int(raw["quantity"]),
            raw["condition"],
            raw.get("received_at"),
        )


@dataclass(frozen=True)
class HeldRecord:
    """A receipt record (or file) that could not be used, and the RMA it holds back:
    `rma_number` None when no RMA can be named (a poll problem of no one return)."""

    rma_number: str | None
    why: str


@dataclass(frozen=True)
class ReceiptRead:
    """What one read of the receipt feed gives: new lines, the records held back, and
    what to do once the engine has stored the lines (archive files, move the cursor)."""

    lines: list[ReceiptLine]
    held: list[HeldRecord]
    commit: Callable[[], None]


# -- the RMA record and the receipt status -------------------------------------------------


def rma_record(req: PushRequest) -> dict[str, Any]:
    """The RMA as the 3PL sees it (the JSON body; the CSV rows flatten it)."""
    ret = req.ret
    titles: dict[str, str] = {}
    for li in ret.line_items:
        if li.sku:
            titles.setdefault(li.sku, li.title)
    lines = [
        {"line": n, "sku": sku, "quantity": qty, "title": titles[sku]}
        for n, (sku, qty) in enumerate(ret.units_by_sku().items(), start=1)
    ]
    return {
        "rma_number": ret.id,
        "loop_return_id": ret.id,
        "created_at": iso(ret.created_at or ret.updated_at),
        "destination": req.destination,
        "order": {"name": ret.order_name, "number": ret.order_number, "id": ret.order_id},
        "customer": ret.customer,
        "carrier": ret.carrier,
        "tracking_number": ret.tracking_number,
        "lines": lines,
    }


def receipt_status(
    ref: RmaRef, lines: Iterable[ReceiptLine], condition_map: Mapping[str, str]
) -> RmaStatus:
    """Raises Unreadable for a condition word the merchant has not mapped."""
    expected: dict[str, int] = {sku: int(n) for sku, n in ref.extra["units"].items()}
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    by_word: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        category = condition_map.get(line.condition)
        if category is None:
            raise errors.Unreadable(
                f"3PL condition '{line.condition}' (RMA {line.rma_number}, SKU {line.sku}) is "
                f"not in warehouse.condition_map; map it to one of {', '.join(CATEGORIES)}"
            )
        by_category[line.sku][category] += line.quantity
        by_word[line.sku][line.condition] += line.quantity
    skus = list(expected) + sorted(set(by_category) - set(expected))
    items = tuple(
        _item_status(sku, expected.get(sku, 0), by_category[sku], by_word[sku]) for sku in skus
    )
    complete = all(sum(by_category[sku].values()) >= n for sku, n in expected.items())
    return RmaStatus(
        return_id=ref.return_id,
        rma_id=ref.rma_id,
        status=COMPLETE if complete else PARTIAL,
        expected_units=sum(expected.values()),
        received_units=sum(i.received for i in items),
        items=items,
        detail=_problems(by_category, expected),
    )


def _item_status(
    sku: str, expected: int, categories: Counter[str], words: Counter[str]
) -> ItemStatus:
    present = [c for c in CATEGORIES if categories[c] > 0]
    worst = max(present, key=_SEVERITY.__getitem__) if present else None
    return ItemStatus(
        sku,
        expected,
        categories[AVAILABLE] + categories[DAMAGED],
        condition=worst,
        note=", ".join(f"{word} {n}" for word, n in sorted(words.items())),
    )


def _problems(
    by_category: Mapping[str, Counter[str]], expected: Mapping[str, int]
) -> dict[str, Any]:
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
def parse_receipt(
    raw: Mapping[str, Any], *, fallback_key: str | None = None, require_time: bool = False
) -> ReceiptLine:
    """One receipt record (a JSON object or a CSV row); Unreadable says what is wrong."""

    def text(name: str) -> str:
        return identifier(raw.get(name), name) or ""  # Unreadable: wrong type, too long, ...

    for name in RECEIPT_REQUIRED:
        if not text(name):
            raise errors.Unreadable(f"{name} is missing", field=name)
    quantity = whole_number(raw["quantity"], "quantity", exact=True)  # the contract: integer
    receipt_id = text("receipt_id")
    if not receipt_id and fallback_key is None:
        raise errors.Unreadable("receipt_id is missing", field="receipt_id")
    received_at = None
    if text("received_at"):
        # A file may leave the zone out (UTC); the HTTP feed must give it.
        received_at = iso(
            remote_timestamp(text("received_at"), "received_at:", assume_utc=not require_time)
        )
    elif require_time:
        raise errors.Unreadable("received_at is missing", field="received_at")
    return ReceiptLine(
        key=f"id:{receipt_id}" if receipt_id else str(fallback_key),
        rma_number=text("rma_number"),
        sku=text("sku"),
        quantity=quantity,
        condition=normalize_status(text("condition")),
        received_at=received_at,
    )


# -- receipt files and RMA files (CSV) -----------------------------------------------------


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
        raise errors.Unreadable(
            f"header lacks column(s) {', '.join(missing)}; required: {', '.join(RECEIPT_REQUIRED)}"
        )
    digest = hashlib.sha256(data).hexdigest()[:16]
    lines, problems = [], []
    for raw in reader:
        if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
            continue  # a blank line
        # A 3PL may echo a cell as loopsync wrote it ('-SKU for -SKU): read it back.
        row = {k: unneutralise(v) if isinstance(v, str) else v for k, v in raw.items()}
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
        row = [
            record["rma_number"],
            line["line"],
            line["sku"],
            line["quantity"],
            line["title"],
            order["name"] or "",
            order["number"] or "",
            record["customer"] or "",
            record["destination"],
            record["carrier"] or "",
            record["tracking_number"] or "",
            record["created_at"],
        ]
        writer.writerow([neutralise(cell) for cell in row])
    return out.getvalue()


# -- connector state keys ------------------------------------------------------------------


def archive_checked_key(rma_number: str) -> str:
    return f"archive_checked:{rma_number}"


def lines_key(rma_number: str) -> str:
    return f"receipts:{rma_number}"
