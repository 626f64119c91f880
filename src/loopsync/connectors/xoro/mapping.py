"""Pure: Xoro ASNs -> typed models, and matching an ASN to a Loop return.

No I/O here. An ASN lacking a field loopsync needs, or holding one it cannot read, raises
`errors.Unreadable` naming it (guessing a missing received quantity as 0 would flag every
return). `AsnNumber`, `ItemNumber` and `BaseQtyToReceive` are confirmed names; the rest
are configurable (docs/api/xoro.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loopsync.connectors.base import PushRequest
from loopsync.connectors.xoro.settings import XoroSettings
from loopsync.errors import Unreadable
from loopsync.models import (
    ItemStatus,
    RmaRef,
    RmaStatus,
    guarded,
    identifier,
    printable,
    whole_number,
)

# Confirmed by public client code.
ASN_HEADER, ASN_DETAIL = "AsnHeaderData", "AsnDetailData"
ASN_NUMBER, ITEM_NUMBER, QTY_EXPECTED = "AsnNumber", "ItemNumber", "BaseQtyToReceive"


def asn_matches(asn: dict[str, Any], req: PushRequest, conf: XoroSettings) -> bool:
    """True when the ASN is this Loop return's, by `match_by`."""
    header = asn_header(asn)
    if conf.match_by == "return_id":
        return field_text(header.get(conf.rma_number_field)) == req.ret.id
    wanted = {order_key(req.ret.order_number), order_key(req.ret.order_name)} - {""}
    return order_key(header.get(conf.order_number_field)) in wanted


@guarded("Xoro ASN")
def asn_status(ref: RmaRef, asn: dict[str, Any], conf: XoroSettings) -> RmaStatus:
    """Raises Unreadable when the ASN lacks a field loopsync needs (guessing a missing
    received quantity as 0 would flag every return), or holds one it cannot read."""
    asn_number = ref.extra["asn_number"]
    try:
        word = (
            identifier(asn_header(asn).get(conf.asn_status_field), f"'{conf.asn_status_field}'")
            or ""
        )
    except Unreadable as exc:
        raise Unreadable(f"Xoro ASN {asn_number}: {exc}", field=exc.field) from None
    if not word:
        raise Unreadable(
            f"Xoro ASN {asn_number} has no '{conf.asn_status_field}' "
            "field (set warehouse.asn_status_field)",
            field=conf.asn_status_field,
        )
    expected: dict[str, int] = {}
    received: dict[str, int] = {}
    for n, line in enumerate(_detail_lines(asn), start=1):
        try:
            sku = identifier(line.get(ITEM_NUMBER), ITEM_NUMBER)
        except Unreadable as exc:
            raise Unreadable(f"Xoro ASN {asn_number} line {n}: {exc}", field=ITEM_NUMBER) from None
        if not sku:
            raise Unreadable(
                f"Xoro ASN {asn_number} line {n} has no {ITEM_NUMBER}", field=ITEM_NUMBER
            )
        expected[sku] = expected.get(sku, 0) + _quantity(line, QTY_EXPECTED, asn_number, n)
        received[sku] = received.get(sku, 0) + _quantity(
            line, conf.received_qty_field, asn_number, n
        )
    if not expected:  # Xoro's app makes one line per returned SKU: none is garbage
        raise Unreadable(f"Xoro ASN {asn_number} has no lines", field=ASN_DETAIL)
    items = tuple(ItemStatus(sku, expected[sku], received[sku]) for sku in expected)
    return RmaStatus(
        return_id=ref.return_id,
        rma_id=ref.rma_id,
        status=word,
        expected_units=sum(expected.values()),
        received_units=sum(received.values()),
        items=items,
        detail=_discrepancies(asn_number, items),
    )


def _discrepancies(asn_number: str, items: Sequence[ItemStatus]) -> dict[str, Any]:
    """The short and over lines, named for the report (the engine writes the note)."""
    detail: dict[str, Any] = {"asn_number": asn_number}
    short = [
        f"{i.sku} received {i.received} of {i.expected}" for i in items if i.received < i.expected
    ]
    over = [
        f"{i.sku} received {i.received} of {i.expected}" for i in items if i.received > i.expected
    ]
    if short:
        detail["short"] = short
    if over:
        detail["over"] = over
    return detail


def asn_header(asn: dict[str, Any]) -> dict[str, Any]:
    header = asn.get(ASN_HEADER)
    return header if isinstance(header, dict) else {}


def _detail_lines(asn: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in data_rows(asn.get(ASN_DETAIL)) if isinstance(line, dict)]


def asn_number_of(asn: dict[str, Any]) -> str:
    return field_text(asn_header(asn).get(ASN_NUMBER))


def data_rows(data: Any) -> list[Any]:
    """`Data` is a list on most endpoints, a single object on some."""
    if isinstance(data, list):
        return data
    return [data] if isinstance(data, dict) else []


def _quantity(line: dict[str, Any], field: str, asn_number: str, n: int) -> int:
    raw: Any = line.get(field)
    try:
        return whole_number(raw, field)  # Xoro sends quantities as decimals (1.0)
    except Unreadable:
        hint = (
            "" if field == QTY_EXPECTED else " (the field is set by warehouse.received_qty_field)"
        )
        shown = (
            printable(repr(raw), 60)
            if isinstance(raw, str | int | float | None)
            else f"a {type(raw).__name__}"
        )
        raise Unreadable(
            f"Xoro ASN {asn_number} line {n}: '{field}' is {shown}, not a quantity{hint}",
            field=field,
        ) from None


def order_key(value: Any) -> str:
    """Shopify order numbers compare without '#' and spaces ('#1001' == '1001')."""
    return field_text(value).lstrip("#").strip()


def field_text(value: Any) -> str:
    """A header field as text for matching; "" when absent or unreadable (a wrong type,
    a control character, ...): such an ASN matches no return, and says so when polled."""
    try:
        return identifier(value, "field") or ""
    except Unreadable:
        return ""
