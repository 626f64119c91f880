"""The sandbox's Shelfwise: the imaginary REST warehouse of `tests.example_connector`, as a
`WarehouseEmulator`. It reads the protocol on its own (no code shared with the connector),
keeps returns by id, and plays the warehouse's people (`receive`, `poison`) and a broken
server (`endless_pages`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from loopsync.sandbox.base import SCENARIOS, WarehouseEmulator
from loopsync.sandbox.server import Request, Response, json_response
from loopsync.timeutil import Clock, SystemClock

TOKEN_ENV = "SHELFWISE_API_TOKEN"
DESTINATIONS = {"12": "SW-EAST", "13": "SW-WEST"}


@dataclass
class _Line:
    sku: str
    expected: int
    received: int | str = 0
    condition: str | None = None


@dataclass
class _Return:
    id: str
    reference: str
    order_id: str
    warehouse: str
    lines: list[_Line]
    status: str = "open"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "reference": self.reference,
            "status": self.status,
            "order_id": self.order_id,
            "warehouse": self.warehouse,
            "lines": [
                {
                    "sku": ln.sku,
                    "expected": ln.expected,
                    "received": ln.received,
                    "condition": ln.condition,
                }
                for ln in self.lines
            ],
        }


@dataclass
class ShelfwiseState:
    orders: dict[str, str] = field(default_factory=dict)  # order name -> id
    returns: dict[str, _Return] = field(default_factory=dict)  # by Shelfwise id


class ShelfwiseEmulator(WarehouseEmulator):
    name = "shelfwise"
    kind = "shelfwise"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        token: str = "shelfwise-sandbox-token",
        page_size: int = 50,
    ) -> None:
        super().__init__()
        self.clock = clock or SystemClock()
        self.token = token
        self.page_size = page_size
        self.state = ShelfwiseState()
        self.endless = 0  # listing requests still to answer with an endless next page
        self._ids = itertools.count(1)

    # -- HTTP -----------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return json_response({"error": "unauthorized"}, 401)
        if req.method == "GET" and req.path == "/v1/orders":
            name = req.query.get("name", "")
            found = self.state.orders.get(name)
            return json_response({"orders": [{"id": found, "name": name}] if found else []})
        if req.method == "GET" and req.path == "/v1/returns":
            return self._list(req)
        if req.method == "POST" and req.path == "/v1/returns":
            return self._create(req)
        return json_response({"error": "not found"}, 404)

    def _list(self, req: Request) -> Response:
        wanted = set(filter(None, req.query.get("reference", "").split(",")))
        limit = min(int(req.query.get("limit") or self.page_size), self.page_size)
        start = int(req.query.get("cursor") or 0)
        rows = [r.as_json() for r in self.state.returns.values() if r.reference in wanted]
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        cursor = str(start + limit) if more else None
        if self.endless > 0:  # a broken server: always another page, never the same cursor
            self.endless -= 1
            cursor = str(start + 1)
        return json_response({"returns": page, "next_cursor": cursor})

    def _create(self, req: Request) -> Response:
        try:
            body = req.json()
            reference, order_id = str(body["reference"]), str(body["order_id"])
            lines = [_Line(str(ln["sku"]), int(ln["quantity"])) for ln in body["lines"]]
            warehouse = str(body["warehouse"])
        except (ValueError, TypeError, KeyError) as exc:
            return json_response({"error": f"invalid return: {exc!r}"}, 422)
        if not lines or order_id not in self.state.orders.values():
            return json_response({"error": "unknown order or no lines"}, 422)
        if self._for(reference):
            return json_response({"error": f"reference {reference} exists"}, 409)
        ret = _Return(f"RT{next(self._ids):05d}", reference, order_id, warehouse, lines)
        self.state.returns[ret.id] = ret
        return json_response({"return": ret.as_json()}, 201)

    def _for(self, reference: str) -> list[_Return]:
        return [r for r in self.state.returns.values() if r.reference == str(reference)]

    # -- the warehouse's people -----------------------------------------------------------
    def on_loop_return(self, loop_return: dict[str, Any], *, with_order: bool = True) -> None:
        name = loop_return.get("order_name")
        if with_order and name:
            with self.lock:
                self.state.orders.setdefault(str(name), f"O{next(self._ids):05d}")

    def has_rma(self, return_id: str) -> bool:
        return self.rma_count(return_id) > 0

    def rma_count(self, return_id: str) -> int:
        with self.lock:
            return len(self._for(return_id))

    def receive(self, return_id: str, scenario: str) -> bool:
        """full/over/short: every unit arrives (one more/less of the first SKU) in good
        condition; damaged: every unit arrives, one of them damaged; then the return
        closes. cancelled: nothing arrives, it stays open."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}")
        with self.lock:
            found = self._for(return_id)
            if not found:
                return False
            ret = found[0]
            if scenario == "cancelled":
                return True
            for line in ret.lines:
                line.received, line.condition = line.expected, "good"
            first = ret.lines[0]
            if scenario == "short":
                first.received = first.expected - 1
            elif scenario == "over":
                first.received = first.expected + 1
            elif scenario == "damaged":
                first.condition = "damaged"
            ret.status = "closed"
            return True

    def poison(self, return_id: str) -> bool:
        """Closed, with the first line's received quantity in full-width digits ("１"
        passes str.isdigit() and int(); no reader may take it)."""
        with self.lock:
            found = self._for(return_id)
            if not found:
                return False
            ret = found[0]
            for line in ret.lines:
                line.received = line.expected
            ret.lines[0].received = str(ret.lines[0].expected).translate(
                str.maketrans("0123456789", "０１２３４５６７８９")
            )
            ret.status = "closed"
            return True

    def endless_pages(self, limit: int) -> None:
        """The next `limit` listings each name a next page (a new cursor each time)."""
        self.endless = limit

    # -- sandbox wiring -------------------------------------------------------------------
    def warehouse_config(self, base_url: str) -> dict[str, Any]:
        return {
            "kind": "shelfwise",
            "base_url": base_url,
            "destinations": dict(DESTINATIONS),
            "api_token": f"${{{TOKEN_ENV}}}",
        }

    def secret_env(self) -> dict[str, str]:
        return {TOKEN_ENV: self.token}
