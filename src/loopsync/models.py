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
            lid = li.get("line_item_id")
            if lid is None:
                raise MalformedReturn(f"return {rid}: line item {i} has no line_item_id")
            sku = li.get("sku")
            lines.append(ReturnLine(
                line_item_id=str(lid),
                sku=str(sku).strip() if isinstance(sku, str | int) and str(sku).strip() else None,
                title=_s(li.get("title")),
                return_reason=_s(li.get("return_reason")),
                parent_return_reason=_s(li.get("parent_return_reason")),
                comment=_s(li.get("return_comment")),
                barcode=_s(li.get("barcode")),
                outcome=_s(li.get("outcome")),
            ))
        return cls(
            id=rid, state=state.lower(), updated_at=updated, created_at=created,
            order_id=_opt(raw.get("order_id")), provider_order_id=_opt(raw.get("provider_order_id")),
            order_name=_opt(raw.get("order_name")), order_number=_opt(raw.get("order_number")),
            customer=_opt(raw.get("customer")), destination_id=_opt(raw.get("destination_id")),
            carrier=_opt(raw.get("carrier")), tracking_number=_opt(raw.get("tracking_number")),
            line_items=tuple(lines), raw=raw,
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
