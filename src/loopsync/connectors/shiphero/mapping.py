"""Pure: ShipHero's answers -> typed models, and a Loop return -> ShipHero's return input.

No I/O here. Every reader returns a valid value or raises `errors.Unreadable` naming the
field, so the record is held with its reason and nothing is guessed. Shapes:
docs/api/shiphero.md (relay connections, `Return`, `CreateReturnInput`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from loopsync.configkit import secret_problem
from loopsync.connectors.base import Location, PushRequest
from loopsync.connectors.shiphero.settings import ShipHeroSettings
from loopsync.errors import Unreadable
from loopsync.models import (
    ItemStatus,
    LoopReturn,
    RmaRef,
    RmaStatus,
    free_text,
    guarded,
    identifier,
    printable,
    whole_number,
)
from loopsync.paging import Step


@guarded("ShipHero return")
def rma_ref(return_id: str, node: Any) -> RmaRef:
    """Unreadable when the return has no usable id (stored, then sent in later queries)."""
    if not isinstance(node, dict):
        raise Unreadable(f"ShipHero return is a {type(node).__name__}, not an object")
    rma_id = identifier(node.get("id"), "ShipHero return id")
    if rma_id is None:
        raise Unreadable("ShipHero return has no id", field="id")
    return RmaRef(
        return_id=return_id,
        rma_id=rma_id,
        extra={
            "legacy_id": _lenient_id(node.get("legacy_id")),
            "order_id": _lenient_id(node.get("order_id")),
        },
    )


@guarded("ShipHero return_create answer")
def created_return(body: Any) -> dict[str, Any]:
    """`data.return_create.return` of a mutation answer; Unreadable when absent."""
    node: Any = body
    for key in ("data", "return_create", "return"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict) or not node.get("id"):
        raise Unreadable("return_create answered without a return id", field="id")
    return node


@guarded("ShipHero order")
def read_order(order: Any) -> tuple[dict[str, Any], str | None]:
    """(the JSON-safe part of an order create_rma needs, the cursor of its next page of
    lines or None). Unreadable naming the field when it cannot be read."""
    if not isinstance(order, dict):
        raise Unreadable(f"ShipHero order is a {type(order).__name__}, not an object")
    order_id = identifier(order.get("id"), "ShipHero order id")
    if order_id is None:
        raise Unreadable("ShipHero order has no id", field="id")
    lines = _object(order.get("line_items"), f"ShipHero order {order_id}: line_items")
    edges = lines.get("edges") or []
    if not isinstance(edges, list):
        raise Unreadable(f"ShipHero order {order_id}: line_items.edges is not a list")
    skus = {sku for edge in edges if isinstance(edge, dict) and (sku := line_sku(edge.get("node")))}
    page = _object(lines.get("pageInfo"), f"ShipHero order {order_id}: pageInfo")
    after = (
        identifier(page.get("endCursor"), "pageInfo.endCursor")
        if page.get("hasNextPage") is True
        else None
    )
    address = _object(order.get("shipping_address"), f"ShipHero order {order_id}: address")
    name = " ".join(
        filter(
            None,
            (
                free_text(address.get("first_name"), "first_name"),
                free_text(address.get("last_name"), "last_name"),
            ),
        )
    )
    return {
        "order_id": order_id,
        "order_legacy_id": _lenient_id(order.get("legacy_id")),
        "order_number": identifier(order.get("order_number"), "order_number"),
        "skus": sorted(skus),
        # The customer's shipping address is where the return comes from.
        "address": {
            "name": name,
            **{
                key: free_text(address.get(key) or "", key)
                for key in ("address1", "address2", "city", "state", "country", "zip", "phone")
            },
        },
    }, after


def order_named(node: Any, field: str, value: str) -> bool:
    """Whether an order node's `field` (partner_order_id, order_number, shop_name) is the
    `value` asked for; order numbers compared without a leading "#" or case, shop names
    without case. A server that ignores the filter must not hand a return another
    customer's order."""
    found = node.get(field) if isinstance(node, dict) else None
    if isinstance(found, bool) or not isinstance(found, str | int):
        return False
    if field == "order_number":
        return _order_number(str(found)) == _order_number(value)
    if field == "shop_name":  # a host name: its case means nothing
        return str(found).strip().casefold() == value.strip().casefold()
    return str(found).strip() == value.strip()


def _order_number(text: str) -> str:
    return text.strip().lstrip("#").strip().casefold()


def line_sku(node: Any) -> str | None:
    """An order line's SKU; None for a line without one. Unreadable for a bad one."""
    if not node or not isinstance(node, dict):
        return None
    return identifier(node.get("sku"), "order line sku")


def _object(value: Any, what: str) -> dict[str, Any]:
    """A nested object that may be absent (null: empty); Unreadable for another type."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Unreadable(f"{what} is a {type(value).__name__}, not an object")
    return value


def _lenient_id(value: Any) -> str | int | None:
    """An id kept only to help a person (legacy ids), as sent (number or text): None
    when it cannot be read."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < 2**63 else None
    try:
        return identifier(value, "id")
    except Unreadable:
        return None


@guarded("ShipHero listing")
def connection_page(body: Any, path: Sequence[str]) -> Step[list[dict[str, Any]]]:
    """One page of a relay connection at `path` under `data`: its nodes, `hasNextPage`
    and `endCursor`. Unreadable naming the field when a level is not the shape GraphQL
    promised (a cursor that is an object could not even be compared with the last)."""
    connection: Any = body.get("data") if isinstance(body, dict) else None
    where = "data"
    for key in path:
        if connection is not None and not isinstance(connection, dict):
            raise Unreadable(
                f"ShipHero {where} is a {type(connection).__name__}, not an object", field=where
            )
        connection, where = (connection or {}).get(key), f"{where}.{key}"
    connection = connection or {}
    edges, page = connection.get("edges") or [], connection.get("pageInfo") or {}
    if (
        not isinstance(connection, dict)
        or not isinstance(edges, list)
        or not isinstance(page, dict)
    ):
        raise Unreadable(f"ShipHero {where} is not a connection (edges, pageInfo)", field=where)
    nodes = [edge["node"] for edge in edges if isinstance(edge, dict) and edge.get("node")]
    cursor = page.get("endCursor") or None
    if cursor is not None and not isinstance(cursor, str | int):
        raise Unreadable(
            f"ShipHero {where}.pageInfo.endCursor is a {type(cursor).__name__}",
            field=f"{where}.pageInfo.endCursor",
        )
    return Step(nodes, more=bool(page.get("hasNextPage")), token=cursor)


@guarded("ShipHero return")
def polled_status(ref: RmaRef, entry: Any, field_error: str | None) -> RmaStatus:
    """One aliased `return(id)` of a poll answer -> RmaStatus; Unreadable saying why it is
    held (not found, another Loop return's, unreadable)."""
    node = entry.get("data") if isinstance(entry, dict) else None
    if node is None:
        raise Unreadable(field_error or f"ShipHero return {ref.rma_id} not found (deleted?)")
    if not isinstance(node, dict):
        raise Unreadable(f"ShipHero return {ref.rma_id} is a {type(node).__name__}, not an object")
    partner = node.get("partner_id")
    if partner not in (None, "", ref.return_id):
        raise Unreadable(
            f"ShipHero return {ref.rma_id} belongs to Loop return "
            f"{printable(str(_lenient_id(partner)), 40)}",
            field="partner_id",
        )
    answered = _lenient_id(node.get("id"))
    if answered is None or str(answered) != ref.rma_id:
        # Aliases swapped on the way: another RMA's status must not decide this return.
        raise Unreadable(
            f"ShipHero answered return {printable(str(answered), 40)} for {ref.rma_id}",
            field="id",
        )
    return _rma_status(ref, node)


def _reasons_by_sku(ret: LoopReturn, default: str) -> dict[str, str]:
    """Each SKU's reason: its first Loop line's return_reason, else the default."""
    reasons: dict[str, str] = {}
    for line in ret.line_items:
        if line.sku and not reasons.get(line.sku):
            reasons[line.sku] = line.return_reason.strip()
    return {sku: reason or default for sku, reason in reasons.items()}


def _rma_status(ref: RmaRef, node: dict[str, Any]) -> RmaStatus:
    """ShipHero's return -> RmaStatus: status word as-is; units per SKU and condition.
    Unreadable saying what is wrong with a return that cannot be read (no status, a line
    without a SKU, a count that is not a whole number): it is held, not guessed at."""
    try:
        return _read_rma_status(ref, node)
    except ValueError as exc:
        name = _lenient_id(node.get("legacy_id")) or ref.rma_id
        raise Unreadable(f"ShipHero return {name}: {exc}") from None


@guarded("ShipHero return")
def _read_rma_status(ref: RmaRef, node: dict[str, Any]) -> RmaStatus:
    status = node.get("status")
    if status is not None and not isinstance(status, str):
        raise Unreadable(f"status {printable(repr(status), 60)} is not text", field="status")
    status = identifier(status, "status")
    if status is None:
        raise Unreadable("has no status", field="status")
    units: dict[tuple[str, str | None], list[int]] = {}
    lines = node.get("line_items") or []
    if not isinstance(lines, list):
        raise Unreadable("line_items is not a list", field="line_items")
    for n, line in enumerate(lines):
        if not isinstance(line, dict):
            raise Unreadable(f"line {n} is not an object", field="line_items")
        sku = identifier(
            _object(line.get("line_item"), f"line {n}: line_item").get("sku"), f"line {n}: sku"
        )
        if sku is None:
            raise Unreadable(f"line {n} has no SKU", field="sku")
        counts = units.setdefault(
            (sku, identifier(line.get("condition"), f"line {n}: condition")), [0, 0]
        )
        for i, key in enumerate(("quantity", "quantity_received")):  # null: none (nullable)
            if line.get(key) is not None:
                counts[i] += whole_number(line[key], key)
    items = tuple(
        ItemStatus(sku=sku, expected=expected, received=received, condition=condition)
        for (sku, condition), (expected, received) in units.items()
    )
    expected = node.get("total_items_expected")
    received = node.get("total_items_received")
    return RmaStatus(
        return_id=ref.return_id,
        rma_id=ref.rma_id,
        status=status,
        expected_units=sum(i.expected for i in items)
        if expected is None
        else whole_number(expected, "total_items_expected"),
        received_units=sum(i.received for i in items)
        if received is None
        else whole_number(received, "total_items_received"),
        items=items,
        detail={"legacy_id": _lenient_id(node.get("legacy_id"))},
    )


def return_input(
    req: PushRequest, located: dict[str, Any], cfg: ShipHeroSettings
) -> dict[str, Any]:
    """The `CreateReturnInput` of a Loop return on the located order."""
    ret = req.ret
    reasons = _reasons_by_sku(ret, cfg.return_reason)
    distinct = set(reasons.values())
    carrier = ret.carrier or "other"
    data: dict[str, Any] = {
        "order_id": located["order_id"],
        "warehouse_id": req.destination,
        "partner_id": ret.id,
        "return_reason": distinct.pop() if len(distinct) == 1 else cfg.return_reason,
        "label_type": cfg.label_type,
        "label_cost": "0.00",
        "address": located["address"],
        "dimensions": {"weight": "0", "height": "0", "width": "0", "length": "0"},
        "shipping_carrier": carrier,
        "shipping_method": carrier,
        "line_items": [
            {"sku": sku, "quantity": quantity, "return_reason": reasons[sku]}
            for sku, quantity in sorted(ret.units_by_sku().items())
        ],
    }
    if ret.tracking_number:
        data["tracking_number"] = ret.tracking_number
    if cfg.customer_account_id:
        data["customer_account_id"] = cfg.customer_account_id
    return data


def read_warehouses(body: Any) -> tuple[Location, ...]:
    """The `account` query's warehouses: (id, identifier); Unreadable names what is wrong."""
    data = _object(_object(_object(body, "answer").get("data"), "data").get("account"), "account")
    warehouses = _object(data.get("data"), "account.data").get("warehouses")
    if not isinstance(warehouses, list):
        raise Unreadable("account.data.warehouses: not a list")
    out: list[Location] = []
    for node in warehouses:
        ident = (
            identifier(node.get("id"), "account.data.warehouses[].id")
            if isinstance(node, dict)
            else None
        )
        if ident is None:
            raise Unreadable("account.data.warehouses: an entry without an id")
        name = node.get("identifier")
        out.append(Location(ident, name if isinstance(name, str) else ""))
    return tuple(out)


@guarded("ShipHero webhook_create answer")
def webhook_secret(body: Any) -> str:
    """`data.webhook_create.webhook.shared_signature_secret` (shown this once), only as
    a secret the merchant's file can be read back with (configkit's check): anything
    else, in any shape of answer, is Unreadable (never shown: it may be the secret)."""
    node: Any = body
    for key in ("data", "webhook_create", "webhook", "shared_signature_secret"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, str) or not node.strip():
        raise Unreadable("webhook_create answered without a secret", field="webhook")
    # as answered, never trimmed: ShipHero signs with exactly this
    found = secret_problem(node, "the secret it answered")
    if found is not None:
        raise Unreadable(f"webhook_create: {found}", field="webhook")
    return node


def settled_aliases(body: Any, prefix: str, count: int) -> dict[int, list[Any]]:
    """The aliases `{prefix}0`..`{prefix}{count-1}` of a batched look-up that settle their
    look-up: a connection whose page is complete (`hasNextPage` false, said outright), by
    alias number, with its nodes as sent. Total: an alias that is missing, null, named in
    an error, cut short or not a connection is left out (that return is then looked up
    alone), and an answer that is not an object settles nothing."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        return {}
    failed = _erred_aliases(body.get("errors"))
    settled: dict[int, list[Any]] = {}
    for i in range(count):
        alias = f"{prefix}{i}"
        entry = data.get(alias)
        connection = entry.get("data") if isinstance(entry, dict) else None
        if alias in failed or not isinstance(connection, dict):
            continue
        page, edges = connection.get("pageInfo"), connection.get("edges")
        if not isinstance(page, dict) or page.get("hasNextPage") is not False:
            continue
        if not isinstance(edges, list) or not all(isinstance(e, dict) for e in edges):
            continue
        settled[i] = [edge.get("node") for edge in edges if edge.get("node") is not None]
    return settled


def answers_for_others(settled: dict[int, list[Any]], keys: Sequence[str], field: str) -> bool:
    """Whether a settled alias holds a node whose `field` is not the key its alias asked
    for (`keys` by alias number): aliases swapped or renamed on the way, or a filter the
    server ignored. Then no alias of that document proves anything, an empty one least
    of all (it could hide a lost RMA: a second one would be created)."""
    for i, nodes in settled.items():
        for node in nodes:
            value = node.get(field) if isinstance(node, dict) else None
            if isinstance(value, bool) or not isinstance(value, str | int):
                return True
            if str(value).strip() != keys[i]:
                return True
    return False


def _erred_aliases(errors: Any) -> set[str]:
    """Aliases an error's `path` starts with (GraphQL's field errors)."""
    out: set[str] = set()
    for error in errors if isinstance(errors, list) else [errors]:
        path = error.get("path") if isinstance(error, dict) else None
        if isinstance(path, list) and path and isinstance(path[0], str):
            out.add(path[0])
    return out
