"""Emulated Xoro (XoroERP REST, wms-apis.md §C): HTTP Basic, private-app module scopes,
the `{Result, Message, Data, TotalPages}` envelope, `GET /api/xerp/asn/getasn` by date
window and page, and the ASN lifecycle Open -> Received -> Closed.

`on_loop_return` plays Xoro's own Shopify app: it imports the Loop return as an RMA (RMA
number = Loop return id) and creates the linked open ASN. The hooks play the warehouse's
people: receive lines, close the ASN.

Field names marked UNCONFIRMED in the reference (`Status`, `QtyReceived`, `RmaNumber`,
`OrderNumber`) are the placeholders the connector's defaults use.

Failure modes: 401 or `Result:false` for bad credentials (`auth_failure`), `Result:false`
for a module outside the key's scopes, an empty `Data` page before `TotalPages`
(`phantom_pages`), a 429 answer when more than 3 requests are in flight, and, through
`faults`, HTTP 200 + `Result:false` or a non-JSON body.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from loopsync.sandbox.base import SCENARIOS, WarehouseEmulator
from loopsync.sandbox.server import (
    HANDLER_RUNS,
    Fault,
    FaultInjector,
    Request,
    Response,
    json_response,
    text_response,
)
from loopsync.timeutil import Clock, parse_timestamp

API_PREFIX = "/api/xerp/"
US_FORMAT = "%m/%d/%Y %I:%M:%S %p"
KEY_ENV, SECRET_ENV = "XORO_API_KEY", "XORO_API_SECRET"
MAX_IN_FLIGHT = 3  # public client notes: more than 3 concurrent requests get throttled
OPEN, RECEIVED, CLOSED = "Open", "Received", "Closed"


@dataclass
class AsnLine:
    sku: str
    expected: int
    received: int = 0


@dataclass
class Asn:
    number: str
    rma_number: str
    order_number: str
    created_at: datetime
    lines: list[AsnLine]
    status: str = OPEN
    history: list[str] = field(default_factory=lambda: [OPEN])
    poison: bool = False  # QtyReceived served as Infinity (Python's json reads it)

    def to_wire(self) -> dict[str, Any]:
        """Xoro sends quantities as decimals."""
        return {
            "AsnHeaderData": {
                "AsnNumber": self.number,
                "Status": self.status,
                "RmaNumber": self.rma_number,
                "OrderNumber": self.order_number,
                "VendorName": "Loop Returns",
                "CreatedDate": self.created_at.strftime(US_FORMAT),
                "DeliveryDate": None,
            },
            "AsnDetailData": [
                {
                    "LineNumber": n,
                    "ItemNumber": line.sku,
                    "BaseQtyToReceive": float(line.expected),
                    "QtyReceived": float("inf") if self.poison else float(line.received),
                }
                for n, line in enumerate(self.lines, start=1)
            ],
        }


class _InFlightCounter(FaultInjector):
    """Requests from arrival (fault pick, outside the API lock) to the end of `handle`, so
    concurrent callers are seen even though handlers run one at a time."""

    # Faults after which the handler still runs (and so ends the request's count).
    HANDLER_RUNS = HANDLER_RUNS

    def __init__(self) -> None:
        super().__init__()
        self._arrived: set[int] = set()  # id() of each request being served

    def pick(self, req: Request) -> Fault | None:
        fault = super().pick(req)
        if fault is None or fault.kind in self.HANDLER_RUNS:
            with self._lock:
                self._arrived.add(id(req))
        return fault

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._arrived)

    def finished(self, req: Request) -> None:
        with self._lock:
            self._arrived.discard(id(req))


class XoroEmulator(WarehouseEmulator):
    name = "xoro"
    kind = "xoro"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        api_key: str = "xoro-sandbox-key",
        api_secret: str = "xoro-sandbox-secret",  # noqa: S107 - made up
        scopes: tuple[str, ...] = ("asn",),
        page_size: int = 25,
        auth_failure: str = "401",
        latency: float = 0.0,
        rate_limit_enabled: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self.api_key = api_key
        self.api_secret = api_secret
        self.scopes = set(scopes)
        self.page_size = page_size
        self.auth_failure = auth_failure  # "401" | "result_false"
        self.latency = latency  # real seconds per answer (concurrency tests)
        self.rate_limit_enabled = rate_limit_enabled
        self.phantom_pages = 0  # TotalPages overstated by this many pages
        self.counter = _InFlightCounter()
        self.faults = self.counter
        self.asns: dict[str, Asn] = {}
        self.rmas: dict[str, list[str]] = {}  # Loop return id -> ASN numbers (one normally)
        self.throttled = 0
        self._numbers = itertools.count(1)

    # -- HTTP -----------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        try:
            if self.latency:
                time.sleep(self.latency)
            if self.rate_limit_enabled and self.counter.in_flight > MAX_IN_FLIGHT:
                self.throttled += 1
                return text_response("Too Many Requests", 429)
            return self._route(req)
        finally:
            self.counter.finished(req)

    def _route(self, req: Request) -> Response:
        if not self._authorized(req):
            if self.auth_failure == "401":
                return text_response("Unauthorized", 401)
            return _envelope(False, "Invalid API Key or API Secret")
        if not req.path.startswith(API_PREFIX):
            return _envelope(False, "Not found", status=404)
        module, _, action = req.path[len(API_PREFIX) :].strip("/").partition("/")
        if module not in self.scopes:
            return _envelope(False, f"This app does not have access to the {module} module")
        if (module, action.lower(), req.method) == ("asn", "getasn", "GET"):
            return self._get_asn(req)
        return _envelope(False, f"Unknown action {module}/{action}", status=404)

    def _authorized(self, req: Request) -> bool:
        scheme, _, encoded = str(req.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            key, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return (key, secret) == (self.api_key, self.api_secret)

    def _get_asn(self, req: Request) -> Response:
        try:
            since = _parse_filter(req.query.get("created_at_min"))
            until = _parse_filter(req.query.get("created_at_max"))
            page = int(req.query.get("page") or 1)
        except ValueError as exc:
            return _envelope(False, str(exc))
        asns = sorted(
            (
                a
                for a in self.asns.values()
                if (since is None or a.created_at >= since)
                and (until is None or a.created_at <= until)
            ),
            key=lambda a: (a.created_at, a.number),
        )
        real_pages = math.ceil(len(asns) / self.page_size)
        chunk = asns[(page - 1) * self.page_size : page * self.page_size] if page >= 1 else []
        return _envelope(
            True,
            "",
            [a.to_wire() for a in chunk],
            total_pages=real_pages + self.phantom_pages if asns else 0,
            page=page,
        )

    # -- Xoro's own Loop app ---------------------------------------------------------------
    def on_loop_return(self, loop_return: dict[str, Any], *, with_order: bool = True) -> None:
        """Import the return as an RMA with a linked open ASN, as Xoro's app does on its
        poll. Without the order in Xoro (with_order=False) the app cannot import it."""
        if not with_order:
            return
        rid = str(loop_return["id"])
        units: dict[str, int] = {}
        for line in loop_return.get("line_items") or []:
            if line.get("sku"):
                units[str(line["sku"])] = units.get(str(line["sku"]), 0) + 1
        with self.lock:
            if rid in self.rmas:
                return  # the app imports each Loop return once
            number = f"ASN-{next(self._numbers):06d}"
            order = str(loop_return.get("order_name") or loop_return.get("order_number") or "")
            self.asns[number] = Asn(
                number, rid, order, self.clock.now(), [AsnLine(sku, n) for sku, n in units.items()]
            )
            self.rmas[rid] = [number]

    def asn(self, return_id: str) -> Asn | None:
        with self.lock:
            numbers = self.rmas.get(str(return_id))
            return self.asns[numbers[0]] if numbers else None

    def has_rma(self, return_id: str) -> bool:
        return self.asn(return_id) is not None

    def rma_count(self, return_id: str) -> int:
        with self.lock:
            return len(self.rmas.get(str(return_id), []))

    # -- the warehouse's people -----------------------------------------------------------
    def receive_lines(self, return_id: str, quantities: Mapping[str, int]) -> None:
        """Add received units per SKU; a SKU not on the ASN arrives as a new line (a wrong
        item). The ASN becomes Received unless it is already closed."""
        with self.lock:
            asn = self._asn_or_fail(return_id)
            for sku, qty in quantities.items():
                line = next((ln for ln in asn.lines if ln.sku == sku), None)
                if line is None:
                    line = AsnLine(sku, 0)
                    asn.lines.append(line)
                line.received += qty
            if asn.status == OPEN:
                self._set_status(asn, RECEIVED)

    def close_asn(self, return_id: str) -> None:
        with self.lock:
            self._set_status(self._asn_or_fail(return_id), CLOSED)

    def receive(self, return_id: str, scenario: str) -> bool:
        """full/short/over: receive (first SKU one unit less/more) and close; damaged:
        Xoro has no condition, the damaged unit is not received (short) and the ASN
        closes; cancelled: nothing received, the ASN stays open."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
        asn = self.asn(return_id)
        if asn is None:
            return False
        if scenario == "cancelled":
            return True
        quantities = {line.sku: line.expected for line in asn.lines}
        first = asn.lines[0].sku
        if scenario in ("short", "damaged"):
            quantities[first] -= 1
        elif scenario == "over":
            quantities[first] += 1
        self.receive_lines(return_id, quantities)
        self.close_asn(return_id)
        return True

    def poison(self, return_id: str) -> bool:
        """Closed, every line received, but each QtyReceived goes out as `Infinity` (not
        JSON; Python's json module reads it as float inf, whose int() raises)."""
        asn = self.asn(return_id)
        if asn is None:
            return False
        self.receive_lines(return_id, {line.sku: line.expected for line in asn.lines})
        with self.lock:
            asn.poison = True
        self.close_asn(return_id)
        return True

    def _asn_or_fail(self, return_id: str) -> Asn:
        asn = self.asn(return_id)
        if asn is None:
            raise KeyError(f"no Xoro RMA for Loop return {return_id}")
        return asn

    @staticmethod
    def _set_status(asn: Asn, status: str) -> None:
        asn.status = status
        asn.history.append(status)

    # -- sandbox wiring -------------------------------------------------------------------
    def warehouse_config(self, base_url: str) -> dict[str, Any]:
        return {
            "kind": "xoro",
            "base_url": f"{base_url}/api/xerp",
            "api_key": f"${{{KEY_ENV}}}",
            "api_secret": f"${{{SECRET_ENV}}}",
        }

    def secret_env(self) -> dict[str, str]:
        return {KEY_ENV: self.api_key, SECRET_ENV: self.api_secret}


def _envelope(
    result: bool,
    message: str,
    data: Any = None,
    *,
    total_pages: int = 0,
    page: int = 1,
    status: int = 200,
) -> Response:
    return json_response(
        {
            "Result": result,
            "Message": message,
            "Data": data,
            "TotalPages": total_pages,
            "Page": page,
        },
        status,
    )


def _parse_filter(value: str | None) -> datetime | None:
    """Both date formats seen in public clients; a time without a zone is the account's
    time zone, UTC in the sandbox."""
    if not value:
        return None
    try:
        return datetime.strptime(value, US_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        pass
    try:
        return parse_timestamp(value, assume_utc=True)
    except ValueError:
        raise ValueError(f"Invalid date: {value}") from None
