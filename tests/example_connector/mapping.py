"""Pure mapping between Loop returns and Shelfwise records: no I/O. Every reader of
Shelfwise data returns a valid record or raises `Unreadable` naming the field."""

from __future__ import annotations

from typing import Any

from loopsync.errors import Unreadable
from loopsync.models import (
    ItemStatus,
    LoopReturn,
    RmaRef,
    RmaStatus,
    guarded,
    identifier,
    whole_number,
)


def create_body(ret: LoopReturn, order_id: str, warehouse: str) -> dict[str, Any]:
    """The POST /v1/returns body: the Loop return id is the reference (the key it is
    found by), one line per SKU."""
    return {
        "reference": ret.id,
        "order_id": order_id,
        "warehouse": warehouse,
        "lines": [{"sku": sku, "quantity": qty} for sku, qty in sorted(ret.units_by_sku().items())],
    }


@guarded("Shelfwise order")
def order_id(order: Any) -> str:
    found = identifier(order["id"], "order id")
    if not found:
        raise Unreadable("Shelfwise order without an id", field="id")
    return found


@guarded("Shelfwise return")
def reference_of(record: Any) -> str | None:
    """The Loop return id a Shelfwise return carries (None: not one of ours)."""
    return identifier(record.get("reference"), "reference")


@guarded("Shelfwise return")
def rma_ref(record: Any) -> RmaRef:
    reference = identifier(record.get("reference"), "reference")
    rma_id = identifier(record.get("id"), "id")
    if not reference or not rma_id:
        raise Unreadable("Shelfwise return without an id or a reference", field="id")
    return RmaRef(reference, rma_id)


@guarded("Shelfwise return")
def rma_status(record: Any) -> RmaStatus:
    """A Shelfwise return as loopsync's status; Unreadable for any field it cannot trust
    (a received quantity in full-width digits is not a number)."""
    ref = rma_ref(record)
    status = identifier(record.get("status"), "status")
    if not status:
        raise Unreadable(f"Shelfwise return {ref.rma_id} has no status", field="status")
    lines = record.get("lines")
    if not isinstance(lines, list) or not lines:
        raise Unreadable(f"Shelfwise return {ref.rma_id} has no lines", field="lines")
    items = tuple(_item(ref.rma_id, n, line) for n, line in enumerate(lines, start=1))
    return RmaStatus(
        return_id=ref.return_id,
        rma_id=ref.rma_id,
        status=status,
        expected_units=sum(i.expected for i in items),
        received_units=sum(i.received for i in items),
        items=items,
    )


def _item(rma_id: str, n: int, line: Any) -> ItemStatus:
    where = f"Shelfwise return {rma_id} line {n}"
    if not isinstance(line, dict):
        raise Unreadable(f"{where} is not an object", field="lines")
    sku = identifier(line.get("sku"), f"{where} sku")
    if not sku:
        raise Unreadable(f"{where} has no sku", field="sku")
    return ItemStatus(
        sku,
        whole_number(line.get("expected"), f"{where} expected"),
        whole_number(line.get("received"), f"{where} received"),
        condition=identifier(line.get("condition"), f"{where} condition"),
    )
