"""Plain data that crosses module boundaries: a Loop return as loopsync sees it, an RMA
reference, and a warehouse's receipt status. No I/O here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loopsync.timeutil import parse_timestamp


class MalformedReturn(ValueError):
    """A Loop return object that loopsync cannot use; recorded with this reason."""


MAX_ID_DIGITS = 20      # Loop ids are 64-bit integers
MAX_IDENTIFIER = 255    # SKUs, order and destination ids, tracking numbers, status words
REPLACEMENT = "\ufffd"  # what bytes that were not UTF-8 became when the answer was decoded


def identifier(value: Any, what: str) -> str | None:
    """A remote's identifier field (SKU, order name, status word, ...) as text; None when
    absent or blank. ValueError naming `what` for a wrong type, an oversized value, or
    bytes that were not UTF-8 (free text is not checked: it is only carried along)."""
    if value is None:
        return None
    if type(value) is str:  # the common case first: ingest calls this ~10 times a return
        text = value.strip()
        if len(text) <= MAX_IDENTIFIER and REPLACEMENT not in text:
            return text or None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{what} is a {type(value).__name__}, not text")
    text = str(value).strip()
    if len(text) > MAX_IDENTIFIER:
        raise ValueError(f"{what} is {len(text)} characters long (at most {MAX_IDENTIFIER})")
    if REPLACEMENT in text:
        raise ValueError(f"{what} is not valid UTF-8")
    return text or None


def whole_number(value: Any, what: str, *, minimum: int = 0) -> int:
    """A count from a remote: an int, a whole float (1.0) or such text ("2", "2.0").
    ValueError naming `what` for anything else, or below `minimum`."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if value.strip() else None
        except ValueError:
            number = None
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or number < minimum:
        raise ValueError(f"{what} {value!r} is not a whole number >= {minimum}")
    return number


def asn_row_problem(row: Any) -> str | None:
    """Why a Loop ASN report row cannot be used, or None. loopsync keys rows on the
    numeric `id` (the return id) and takes only `tracking_number` from them."""
    if not isinstance(row, dict):
        return f"not an object: {str(row)[:100]!r}"
    rid = row.get("id")
    if rid is None:
        return "id is missing"
    text = str(rid).strip()
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not text.isdigit():
        return f"id {text[:40]!r} is not numeric"
    if len(text) > MAX_ID_DIGITS:
        return f"id is {len(text)} characters long (at most {MAX_ID_DIGITS})"
    try:
        identifier(row.get("tracking_number"), "tracking_number")
    except ValueError as exc:
        return f"return {text}: {exc}"
    return None


@dataclass(frozen=True)
class ReturnLine:
    """One Loop line item. Loop lists one line item per returned unit."""

    line_item_id: str
    sku: str | None
    title: str = ""
    return_reason: str = ""
    parent_return_reason: str = ""
    comment: str = ""
    barcode: str = ""
    outcome: str = ""


@dataclass(frozen=True)
class LoopReturn:
    id: str
    state: str
    updated_at: datetime
    created_at: datetime | None
    order_id: str | None           # Loop's order id
    provider_order_id: str | None  # Shopify order id (ShipHero partner_order_id)
    order_name: str | None         # e.g. "#1001"
    order_number: str | None
    customer: str | None
    destination_id: str | None
    carrier: str | None
    tracking_number: str | None
    line_items: tuple[ReturnLine, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def units_by_sku(self) -> dict[str, int]:
        """Expected units per SKU (lines without a SKU are not counted)."""
        return dict(Counter(li.sku for li in self.line_items if li.sku))

    @property
    def expected_units(self) -> int:
        return sum(self.units_by_sku().values())

    @classmethod
    def from_api(cls, raw: Any) -> LoopReturn:
        """Normalise a Detailed Returns List object. Raises MalformedReturn with a reason."""
        if not isinstance(raw, dict):
            raise MalformedReturn(f"return is not an object: {type(raw).__name__}")
        rid = raw.get("id")
        if rid is None or isinstance(rid, bool) or not str(rid).strip().isdigit():
            raise MalformedReturn(f"return id missing or not numeric: {str(rid)[:40]!r}")
        rid = str(rid).strip()
        if len(rid) > MAX_ID_DIGITS:
            raise MalformedReturn(f"return id is {len(rid)} characters long (at most "
                                  f"{MAX_ID_DIGITS}): {rid[:40]}...")
        state = raw.get("state")
        if not isinstance(state, str) or not state:
            raise MalformedReturn(f"return {rid}: state missing")
        try:
            updated = parse_timestamp(raw.get("updated_at") or "", assume_utc=False)
        except ValueError as exc:
            raise MalformedReturn(f"return {rid}: updated_at {exc}") from None
        created = None
        if raw.get("created_at"):
            try:
                created = parse_timestamp(raw["created_at"], assume_utc=False)
            except ValueError as exc:
                raise MalformedReturn(f"return {rid}: created_at {exc}") from None
        items = raw.get("line_items") or []
        if not isinstance(items, list):
            raise MalformedReturn(f"return {rid}: line_items is not a list")
        lines = []
        for i, li in enumerate(items):
            if not isinstance(li, dict):
                raise MalformedReturn(f"return {rid}: line item {i} is not an object")
            try:
                lid = identifier(li.get("line_item_id"), f"line item {i}: line_item_id")
                sku = identifier(li.get("sku"), f"line item {i}: sku")
            except ValueError as exc:
                raise MalformedReturn(f"return {rid}: {exc}") from None
            if lid is None:
                raise MalformedReturn(f"return {rid}: line item {i} has no line_item_id")
            lines.append(ReturnLine(
                line_item_id=lid,
                sku=sku,
                title=_s(li.get("title")),
                return_reason=_s(li.get("return_reason")),
                parent_return_reason=_s(li.get("parent_return_reason")),
                comment=_s(li.get("return_comment")),
                barcode=_s(li.get("barcode")),
                outcome=_s(li.get("outcome")),
            ))
        try:
            ids = {key: identifier(raw.get(key), key) for key in (
                "order_id", "provider_order_id", "order_name", "order_number", "destination_id",
                "carrier", "tracking_number")}
        except ValueError as exc:
            raise MalformedReturn(f"return {rid}: {exc}") from None
        return cls(
            id=rid, state=state.lower(), updated_at=updated, created_at=created,
            customer=_opt(raw.get("customer")), line_items=tuple(lines), raw=raw, **ids,
        )


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _opt(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


@dataclass(frozen=True)
class RmaRef:
    """What loopsync keeps about a warehouse RMA to poll it later.

    `rma_id` is the warehouse's id; `extra` holds connector-specific handles (ShipHero
    legacy id and order id, PeopleVox RA number, Xoro ASN number, ...). JSON-safe only.
    """

    return_id: str
    rma_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ItemStatus:
    sku: str
    expected: int
    received: int
    condition: str | None = None      # the warehouse's word (damaged, worn, grade B, ...)
    disposition: str | None = None    # the warehouse's word (restock, reusable, scrap, ...)
    note: str = ""


@dataclass(frozen=True)
class RmaStatus:
    """A warehouse's view of one RMA, normalised. `status` is the warehouse's own word;
    the merchant's status rules decide what it means."""

    return_id: str
    rma_id: str
    status: str
    expected_units: int
    received_units: int
    items: tuple[ItemStatus, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> tuple[Any, ...]:
        return (self.status, self.expected_units, self.received_units,
                tuple((i.sku, i.expected, i.received, i.condition, i.disposition)
                      for i in self.items))
