"""ShipHero (GraphQL): find the order, create the return (RMA), poll return statuses.

Facts and UNCONFIRMED points come from wms-apis.md §A. In short:
- Auth: a refresh token (from a Third-Party Developer user) is swapped at /auth/refresh
  for a 28-day access token, kept in memory only. HTTP 401 -> refresh once, retry once.
- Throttling is credit based: every answer reports its `complexity`; running short gives
  an error with `code: 30` and `time_remaining: "6 seconds"`. A local mirror of the
  credit bucket paces queries so that, at default settings, ShipHero never has to say so.
- ShipHero has no idempotency key: the Loop return id goes into `partner_id`, and
  `find_rma` looks it up through `returns(order_id)` before a create is repeated.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from loopsync import logs
from loopsync.configkit import Secret, Section
from loopsync.connectors.base import (ConnectorContext, NotReady, PollResult, PushRequest,
                                      WarehouseConnector, WarehouseSettings)
from loopsync.errors import (Ambiguous, AuthError, DryRunViolation, ErrorBody, OutcomeUnknown,
                             RateLimited, Rejected, TransientError, Unreadable)
from loopsync.http import HttpClient, HttpResult
from loopsync.models import (ItemStatus, LoopReturn, RmaRef, RmaStatus, free_text, guarded,
                             identifier, printable, whole_number)
from loopsync.paging import PageWalk, Step, WalkEnd, record_walk
from loopsync.redaction import clip
from loopsync.timeutil import Clock

log = structlog.get_logger("loopsync.connectors.shiphero")

SYSTEM = "shiphero"
# UNCONFIRMED: how a label made outside ShipHero (Loop's) should be typed; configurable.
LABEL_TYPES = ("FREE", "PAID", "FLAT_RATE", "SELF_RETURN")
THROTTLE_CODE = 30
TOKEN_RENEW_MARGIN = 86400.0   # renew a day before expiry, as ShipHero recommends
# Nested pages multiply a query's cost (`first` x `first`), so pages stay small: an
# order usually has a few lines, and a partner_order_id usually matches one order.
LINES_PAGE_SIZE = 10           # order lines fetched with each order; more are paged
# Every create looks the order's returns up first (lost state must not create a second
# return), and an order seldom has more than a few: a page of 5 costs ~6 credits, not 26.
RETURNS_PAGE_SIZE = 5
CREDIT_WAIT_MARGIN = 0.05      # seconds: rounding must not leave us one credit short

_DURATION_IN_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.IGNORECASE)


@dataclass(frozen=True)
class ShipHeroSettings:
    refresh_token: Secret | None
    access_token: Secret | None
    customer_account_id: str | None
    shop_name: str | None
    label_type: str
    return_reason: str         # when a Loop line has no reason of its own
    credits_max: int
    credits_per_second: float
    order_page_size: int
    # Pages one connection walk may read; a look-up that needs more is a looping server.
    max_pages: int = 500


# -- GraphQL documents (values always travel as variables) -------------------------------

ORDER_FIELDS = """
fragment OrderForReturn on Order {
  id legacy_id order_number partner_order_id shop_name
  shipping_address { first_name last_name address1 address2 city state country zip phone }
  line_items(first: $lines) { pageInfo { hasNextPage endCursor } edges { node { sku } } }
}"""

ORDER_LINES = """
query LoopsyncOrderLines($id: String!, $lines: Int!, $after: String) {
  order(id: $id) {
    request_id complexity
    data { line_items(first: $lines, after: $after) {
      pageInfo { hasNextPage endCursor } edges { node { sku } } } }
  }
}"""

RETURN_CREATE = """
mutation LoopsyncReturnCreate($data: CreateReturnInput!) {
  return_create(data: $data) {
    request_id complexity
    return { id legacy_id status order_id partner_id }
  }
}"""

RETURN_STATUS_FIELDS = """
fragment ReturnStatus on Return {
  id legacy_id partner_id status total_items_expected total_items_received
  line_items { quantity quantity_received condition line_item { sku } }
}"""


def _first_cost_guesses(order_page_size: int) -> dict[str, float]:
    """Rough costs per operation (ShipHero style: 1 + first x nodes selected), used until
    the first answer reports the real `complexity`. Poll is per RMA."""
    return {"orders": 1 + order_page_size * (2 + LINES_PAGE_SIZE),
            "order_lines": 2 + LINES_PAGE_SIZE, "returns": 1 + RETURNS_PAGE_SIZE,
            "return_create": 2, "poll": 4}


def _filtered_root(field: str, filters: dict[str, str | None]) -> tuple[str, str, dict[str, str]]:
    """Variable definitions, the root field call and values for the filters that are set.
    Unset filters are left out rather than sent as null."""
    used = {name: value for name, value in filters.items() if value is not None}
    definitions = "".join(f", ${name}: String" for name in used)
    arguments = ", ".join(f"{name}: ${name}" for name in used)
    return definitions, f"{field}({arguments})" if used else field, used


def _orders_query(filters: dict[str, str | None]) -> tuple[str, dict[str, str]]:
    definitions, call, values = _filtered_root("orders", filters)
    query = f"""
query LoopsyncOrders($first: Int!, $after: String, $lines: Int!{definitions}) {{
  {call} {{
    request_id complexity
    data(first: $first, after: $after) {{
      pageInfo {{ hasNextPage endCursor }}
      edges {{ node {{ ...OrderForReturn }} }}
    }}
  }}
}}{ORDER_FIELDS}"""
    return query, values


def _returns_query(filters: dict[str, str | None]) -> tuple[str, dict[str, str]]:
    definitions, call, values = _filtered_root("returns", filters)
    query = f"""
query LoopsyncReturns($first: Int!, $after: String{definitions}) {{
  {call} {{
    request_id complexity
    data(first: $first, after: $after) {{
      pageInfo {{ hasNextPage endCursor }}
      edges {{ node {{ id legacy_id partner_id order_id status }} }}
    }}
  }}
}}"""
    return query, values


def _poll_query(count: int) -> str:
    """One document reading `count` returns through aliases r0..rN."""
    definitions = ", ".join(f"$id{i}: String!" for i in range(count))
    fields = "\n".join(f"  r{i}: return(id: $id{i}) {{ request_id complexity "
                       f"data {{ ...ReturnStatus }} }}" for i in range(count))
    return f"query LoopsyncPoll({definitions}) {{\n{fields}\n}}{RETURN_STATUS_FIELDS}"


# -- credits ------------------------------------------------------------------------------

class CreditBucket:
    """Local mirror of ShipHero's credit bucket: wait before a query the balance cannot
    cover, then correct the balance with what ShipHero reports. Thread-safe; callers
    queue behind the lock while one of them waits, as the credits are shared."""

    def __init__(self, capacity: int, per_second: float, clock: Clock) -> None:
        self.capacity = float(capacity)
        self.per_second = per_second
        self.clock = clock
        self._balance = float(capacity)
        self._at = clock.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock.monotonic()
        self._balance = min(self.capacity, self._balance + (now - self._at) * self.per_second)
        self._at = now

    def take(self, cost: float) -> float:
        """Spend `cost` credits, first waiting until they exist; returns seconds waited."""
        cost = min(cost, self.capacity)
        with self._lock:
            self._refill()
            waited = 0.0
            if cost > self._balance:
                waited = (cost - self._balance) / self.per_second + CREDIT_WAIT_MARGIN
                self.clock.sleep(waited)
                self._refill()
            self._balance -= cost
            return waited

    def correct(self, estimated: float, actual: float) -> None:
        with self._lock:
            self._balance -= actual - estimated

    def throttled(self, remaining: float, charged: float) -> None:
        """ShipHero said how much is left. The call that `take` charged `charged` for did
        not run; its retry will, so it stays charged against the new balance."""
        with self._lock:
            self._refill()
            self._balance = min(self.capacity, remaining) - charged


# -- the connector ------------------------------------------------------------------------

class ShipHeroConnector(WarehouseConnector):
    kind = "shiphero"
    default_base_url = "https://public-api.shiphero.com"
    # Loop's own ShipHero mapping (seeds/001): Process / Flag / Ignore.
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": ["warehouse complete", "complete"],
        "flag": ["issue", "damaged"],
        "ignore": ["pending", "rts"],
    }

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.cfg: ShipHeroSettings = settings.connector
        self.http = HttpClient(SYSTEM, settings.base_url, timeout=settings.timeout,
                               deadline=settings.deadline, max_body=settings.max_body,
                               policy=ctx.policy, clock=ctx.clock)
        # ShipHero's credits are per account: merchants on one account share one bucket.
        self.credits = shared_bucket(self._account_key, self.cfg.credits_max,
                                     self.cfg.credits_per_second, ctx.clock)
        self._cost_per_unit = _first_cost_guesses(self.cfg.order_page_size)
        self._access_token: str | None = None   # memory only, never logged
        self._renew_at = 0.0

    @classmethod
    def parse_settings(cls, section: Section) -> ShipHeroSettings:
        refresh = section.secret("refresh_token", None)
        access = section.secret("access_token", None)
        if refresh is None and access is None:
            raise section.error("refresh_token", "is required (or access_token)")
        if refresh is not None and access is not None:
            raise section.error("access_token", "set refresh_token or access_token, not both")
        return ShipHeroSettings(
            refresh_token=refresh,
            access_token=access,
            customer_account_id=section.str("customer_account_id", None),
            shop_name=section.str("shop_name", None),
            label_type=section.str("label_type", "SELF_RETURN", choices=LABEL_TYPES),
            return_reason=section.str("return_reason", "Returned through Loop"),
            # 2019 community announcement: 1001 credits, 15/s restored (UNCONFIRMED today).
            credits_max=section.int("credits_max", 1001, min=1),
            credits_per_second=section.float("credits_per_second", 15.0, min=0.1),
            order_page_size=section.int("order_page_size", 2, min=1, max=100),
            max_pages=section.int("max_pages", 500, min=1),
        )

    # -- engine interface ---------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        ret = req.ret
        wanted = ret.units_by_sku()
        if not wanted:
            raise Rejected(SYSTEM, f"Loop return {ret.id} has no line item with a SKU")
        if not (ret.provider_order_id or ret.order_name):
            raise Rejected(SYSTEM, f"Loop return {ret.id} names no order to look up")
        order = None
        if ret.provider_order_id:
            order = self._best_order(self._orders(partner_order_id=ret.provider_order_id), wanted)
        if order is None and ret.order_name:
            order = self._best_order(self._orders(order_number=ret.order_name), wanted)
        if order is None:
            raise NotReady(f"order {ret.order_name or ret.provider_order_id} not found in ShipHero")
        missing = sorted(set(wanted) - set(order["skus"]))
        if missing:
            raise Rejected(SYSTEM, f"SKU {', '.join(missing)} not on ShipHero order "
                                   f"{order['order_number']} (Loop return {ret.id})")
        return order

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        for node in self._returns_of_order(located["order_id"]):
            if isinstance(node, dict) and node.get("partner_id") == req.ret.id:
                return _rma_ref(req.ret.id, node)
        return None

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        if self.ctx.dry_run:
            raise DryRunViolation(f"return_create for Loop return {req.ret.id} in a dry run")
        body = self._graphql("return_create", RETURN_CREATE,
                             {"data": self._return_input(req, located)}, mutation=True)
        try:
            ref = _rma_ref(req.ret.id, _created_return(body))
        except Unreadable as exc:
            # It may exist anyway: let the engine look it up rather than give up on it.
            raise OutcomeUnknown(SYSTEM, f"return_create answered without a readable return "
                                         f"id ({exc})") from None
        log.info("shiphero.rma_created", return_id=req.ret.id, rma_id=ref.rma_id,
                 legacy_id=ref.extra.get("legacy_id"))
        return ref

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        result = PollResult(statuses={})
        batch = max(1, self.settings.poll_batch)
        for start in range(0, len(rmas), batch):
            self._poll_batch(rmas[start:start + batch], result)
        return result

    def rma_label(self, ref: RmaRef) -> str:
        return f"ShipHero return {ref.extra.get('legacy_id') or ref.rma_id}"

    def close(self) -> None:
        self.http.session.close()

    # -- orders -------------------------------------------------------------------------
    def _orders(self, **match: str) -> list[dict[str, Any]]:
        """Every order matching `match` (plus the configured shop/account), with its SKUs."""
        query, filters = _orders_query({**match, "shop_name": self.cfg.shop_name,
                                        "customer_account_id": self.cfg.customer_account_id})
        variables = {**filters, "first": self.cfg.order_page_size, "lines": LINES_PAGE_SIZE}
        return [self._located(node)
                for node in self._paged("orders", query, variables, ("orders", "data"))]

    def _located(self, order: dict[str, Any]) -> dict[str, Any]:
        """The JSON-safe part of an order that create_rma needs (Unreadable when the
        order cannot be read: the return waits with the reason, nothing is guessed)."""
        located, page = read_order(order)
        if page is not None:
            located["skus"] = sorted(set(located["skus"])
                                     | self._more_skus(located["order_id"], page))
        return located

    def _more_skus(self, order_id: str, after: str | None) -> set[str]:
        nodes = self._paged("order_lines", ORDER_LINES, {"id": order_id, "lines": LINES_PAGE_SIZE},
                            ("order", "data", "line_items"), after=after)
        return {sku for node in nodes if (sku := _line_sku(node))}

    @staticmethod
    def _best_order(orders: list[dict[str, Any]], wanted: dict[str, int]
                    ) -> dict[str, Any] | None:
        """The order holding every SKU of the return, else the first one (several shops
        can share an order number). Two orders that both hold every SKU cannot be told
        apart: Ambiguous (a guess could also miss the RMA made on the other one)."""
        holding = [o for o in orders if set(wanted) <= set(o["skus"])]
        if len(holding) > 1:
            numbers = ", ".join(str(o.get("order_number") or o["order_id"]) for o in holding)
            raise Ambiguous(SYSTEM, f"{len(holding)} ShipHero orders hold every SKU of the "
                                    f"return: {numbers}; set warehouse.shop_name or settle "
                                    "it by hand")
        return holding[0] if holding else (orders[0] if orders else None)

    # -- returns ------------------------------------------------------------------------
    def _returns_of_order(self, order_id: str) -> Iterator[dict[str, Any]]:
        query, filters = _returns_query({"order_id": order_id,
                                         "customer_account_id": self.cfg.customer_account_id})
        yield from self._paged("returns", query, {**filters, "first": RETURNS_PAGE_SIZE},
                               ("returns", "data"))

    def _return_input(self, req: PushRequest, located: dict[str, Any]) -> dict[str, Any]:
        ret = req.ret
        reasons = _reasons_by_sku(ret, self.cfg.return_reason)
        distinct = set(reasons.values())
        carrier = ret.carrier or "other"
        data: dict[str, Any] = {
            "order_id": located["order_id"],
            "warehouse_id": req.destination,
            "partner_id": ret.id,
            "return_reason": distinct.pop() if len(distinct) == 1 else self.cfg.return_reason,
            "label_type": self.cfg.label_type,
            "label_cost": "0.00",
            "address": located["address"],
            "dimensions": {"weight": "0", "height": "0", "width": "0", "length": "0"},
            "shipping_carrier": carrier,
            "shipping_method": carrier,
            "line_items": [{"sku": sku, "quantity": quantity, "return_reason": reasons[sku]}
                           for sku, quantity in sorted(ret.units_by_sku().items())],
        }
        if ret.tracking_number:
            data["tracking_number"] = ret.tracking_number
        if self.cfg.customer_account_id:
            data["customer_account_id"] = self.cfg.customer_account_id
        return data

    def _poll_batch(self, batch: Sequence[RmaRef], result: PollResult) -> None:
        variables = {f"id{i}": ref.rma_id for i, ref in enumerate(batch)}
        body = self._graphql("poll", _poll_query(len(batch)), variables, units=len(batch),
                             partial_ok=True)
        data = body.get("data")
        data = data if isinstance(data, dict) else {}
        field_errors = _messages_by_root_key(body)
        for i, ref in enumerate(batch):
            try:
                result.statuses[ref.return_id] = _polled_status(ref, data.get(f"r{i}"),
                                                                field_errors.get(f"r{i}"))
            except Unreadable as exc:  # held, with the reason, until ShipHero's data is fixed
                result.errors[ref.return_id] = str(exc)

    # -- transport ----------------------------------------------------------------------
    def _paged(self, op: str, query: str, variables: dict[str, Any], path: Sequence[str],
               *, after: str | None = None) -> Iterator[dict[str, Any]]:
        """Nodes of a relay connection at `path` under the body's `data` (("orders",
        "data"): `data.orders.data`), page after page from the cursor `after`.

        Through `paging.PageWalk`: a repeated `endCursor` or the page cap raises
        PaginationStopped (a look-up built on half a listing could create a duplicate);
        `hasNextPage` without an `endCursor` ends the walk there, logged."""

        def fetch(token: Any) -> Step[list[dict[str, Any]]]:
            return _connection_page(self._graphql(op, query, {**variables, "after": token}),
                                    path)

        walk = PageWalk(fetch, name=f"shiphero.{op}", first=after, max_pages=self.cfg.max_pages,
                        stop=self.ctx.stop)
        for fetched in walk:
            yield from fetched.items
        record_walk(self.ctx.kv, walk.result, self.ctx.clock.now())
        if walk.result is not None and walk.result.outcome in (WalkEnd.CAPPED, WalkEnd.REPEATED,
                                                               WalkEnd.STOPPED):
            raise walk.result.error(SYSTEM)

    def _graphql(self, op: str, query: str, variables: dict[str, Any], *, units: int = 1,
                 mutation: bool = False, partial_ok: bool = False) -> dict[str, Any]:
        """One GraphQL call, paced by the credit bucket; returns the decoded body."""
        estimate = self._cost_per_unit[op] * units
        waited = self.credits.take(estimate)
        if waited:
            log.info("shiphero.credits_wait", seconds=round(waited, 2), operation=op)
        body = self._post({"query": query, "variables": variables}, mutation=mutation,
                          partial_ok=partial_ok, charged=estimate)
        actual = _complexity(body.get("data"))
        if actual is not None:
            self.credits.correct(estimate, actual)
            self._cost_per_unit[op] = actual / units
        return body

    def _post(self, payload: dict[str, Any], *, mutation: bool, partial_ok: bool,
              charged: float) -> dict[str, Any]:
        """POST /graphql; on HTTP 401 refresh the token once and send once more (a 401
        means nothing ran, so even a mutation is safe to repeat). A refused refresh
        token raises from `_bearer` as it is."""
        try:
            return self._post_once(payload, self._bearer(), mutation=mutation,
                                   partial_ok=partial_ok, charged=charged)
        except AuthError as exc:
            if exc.status != 401:
                raise
            if self.cfg.refresh_token is None:
                raise AuthError(SYSTEM, "access token refused; configure refresh_token so "
                                        "loopsync can renew it", status=401) from None
            log.info("shiphero.token_refused", action="refresh and retry once")
            self._access_token = None
            _TOKEN_CACHE.pop(self._token_key, None)
        token = self._bearer()
        try:
            return self._post_once(payload, token, mutation=mutation, partial_ok=partial_ok,
                                   charged=charged)
        except AuthError as exc:
            raise AuthError(SYSTEM, "access token refused even after a refresh",
                            status=exc.status) from None

    def _post_once(self, payload: dict[str, Any], token: str, *, mutation: bool,
                   partial_ok: bool, charged: float) -> dict[str, Any]:
        def check(result: HttpResult) -> None:
            self._check_answer(result, mutation=mutation, partial_ok=partial_ok,
                               charged=charged)

        result = self.http.request("POST", "/graphql", json_body=payload,
                                   headers={"Authorization": f"Bearer {token}"},
                                   idempotent=not mutation, check=check)
        body: dict[str, Any] = result.data
        return body

    def _check_answer(self, result: HttpResult, *, mutation: bool, partial_ok: bool,
                      charged: float) -> None:
        """Raise on a GraphQL error answer (HTTP 200 with `errors`)."""
        body = result.data
        if not isinstance(body, dict) or not ({"data", "errors"} & body.keys()):
            # A proxy's page, a cut-off body: a read is worth another try, and a mutation
            # may have run (it is looked up before it is repeated).
            raise (OutcomeUnknown if mutation else TransientError)(
                SYSTEM, f"not a GraphQL answer: {clip(result.text, 200)!r}", status=result.status)
        listed = body.get("errors") or []
        errors = [e if isinstance(e, dict) else {"message": _error_text(e)}
                  for e in (listed if isinstance(listed, list) else [listed])]
        throttle = next((e for e in errors if _error_field(e, "code") == THROTTLE_CODE), None)
        if throttle is not None:
            raise self._throttled(throttle, result.status, charged)
        if partial_ok and isinstance(body.get("data"), dict):
            errors = [e for e in errors if not e.get("path")]  # the caller reads field errors
        if not errors:
            return
        message = "; ".join(_error_text(e) for e in errors)
        if mutation and any(e.get("path") for e in errors):
            # The mutation ran and refused this record (bad SKU, unknown order, ...).
            raise Rejected(SYSTEM, message, status=result.status)
        raise ErrorBody(SYSTEM, message, status=result.status)

    def _throttled(self, error: dict[str, Any], status: int, charged: float) -> RateLimited:
        wait = _seconds(_error_field(error, "time_remaining"))
        if wait is None:
            wait = _seconds(error.get("message"))
        remaining = _error_field(error, "remaining_credits")
        required = _error_field(error, "required_credits")
        if isinstance(remaining, int | float) and math.isfinite(remaining):
            self.credits.throttled(remaining, charged)
        log.warning("shiphero.throttled", wait=wait, required=_number_or_none(required),
                    remaining=_number_or_none(remaining))
        return RateLimited(SYSTEM, _error_text(error, "not enough credits"),
                           retry_after=wait, status=status, code=str(THROTTLE_CODE))

    # -- auth ---------------------------------------------------------------------------
    def _bearer(self) -> str:
        if self.cfg.access_token is not None:
            return self.cfg.access_token.value
        if self._access_token is None:
            cached = _TOKEN_CACHE.get(self._token_key)
            if cached is not None and cached[2] is self.ctx.clock:
                self._access_token, self._renew_at = cached[0], cached[1]
        if self._access_token is None or self.ctx.clock.monotonic() >= self._renew_at:
            self._refresh_access_token()
        assert self._access_token is not None
        logs.register_secret(self._access_token)  # in use: kept among the masked tokens
        return self._access_token

    def _refresh_access_token(self) -> None:
        assert self.cfg.refresh_token is not None
        try:
            result = self.http.request("POST", "/auth/refresh", idempotent=True,
                                       json_body={"refresh_token": self.cfg.refresh_token.value},
                                       check=_token_answer)
        except AuthError as exc:
            raise AuthError(SYSTEM, "refresh token refused at /auth/refresh",
                            status=exc.status) from None
        body = result.data if isinstance(result.data, dict) else {}
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(SYSTEM, "/auth/refresh answered without an access_token")
        expires_in = _number_or_none(body.get("expires_in")) or TOKEN_RENEW_MARGIN * 2
        logs.register_secret(token)  # masked should it ever reach a log line
        self._access_token = token
        self._renew_at = self.ctx.clock.monotonic() + max(expires_in - TOKEN_RENEW_MARGIN,
                                                          expires_in / 2)
        _TOKEN_CACHE[self._token_key] = (token, self._renew_at, self.ctx.clock)
        log.info("shiphero.token_refreshed", expires_in=expires_in)


    @property
    def _account_key(self) -> str:
        token = self.cfg.refresh_token or self.cfg.access_token
        secret = token.value if token is not None else ""
        return hashlib.sha256(f"{self.settings.base_url}|{secret}".encode()).hexdigest()

    @property
    def _token_key(self) -> str:
        secret = self.cfg.refresh_token.value if self.cfg.refresh_token else ""
        return hashlib.sha256(f"{self.settings.base_url}|{secret}".encode()).hexdigest()


# Access tokens by (base URL, refresh token), in this process's memory only: `serve` builds
# a connector per cycle and ShipHero's tokens last 28 days, so refreshing each cycle would
# be waste. Entries carry the clock they were timed on.
_TOKEN_CACHE: dict[str, tuple[str, float, Any]] = {}

_BUCKETS: dict[str, CreditBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def shared_bucket(account: str, capacity: int, per_second: float, clock: Clock) -> CreditBucket:
    """One credit bucket per ShipHero account (hashed refresh token) in this process, kept
    across cycles; a clock on another timeline (a test's FakeClock) gets its own."""
    with _BUCKETS_LOCK:
        bucket = _BUCKETS.get(account)
        if bucket is None or bucket.capacity != float(capacity) or \
                bucket.per_second != per_second or bucket.clock.timeline is not clock.timeline:
            bucket = _BUCKETS[account] = CreditBucket(capacity, per_second, clock)
        bucket.clock = clock  # same time; this run's clock wakes its waits at shutdown
        return bucket


# -- pure helpers -------------------------------------------------------------------------

@guarded("ShipHero return")
def _rma_ref(return_id: str, node: Any) -> RmaRef:
    """Unreadable when the return has no usable id (stored, then sent in later queries)."""
    if not isinstance(node, dict):
        raise Unreadable(f"ShipHero return is a {type(node).__name__}, not an object")
    rma_id = identifier(node.get("id"), "ShipHero return id")
    if rma_id is None:
        raise Unreadable("ShipHero return has no id", field="id")
    return RmaRef(return_id=return_id, rma_id=rma_id,
                  extra={"legacy_id": _lenient_id(node.get("legacy_id")),
                         "order_id": _lenient_id(node.get("order_id"))})


@guarded("ShipHero return_create answer")
def _created_return(body: Any) -> dict[str, Any]:
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
    skus = {sku for edge in edges if isinstance(edge, dict)
            and (sku := _line_sku(edge.get("node")))}
    page = _object(lines.get("pageInfo"), f"ShipHero order {order_id}: pageInfo")
    after = identifier(page.get("endCursor"), "pageInfo.endCursor") \
        if page.get("hasNextPage") is True else None
    address = _object(order.get("shipping_address"), f"ShipHero order {order_id}: address")
    name = " ".join(filter(None, (free_text(address.get("first_name"), "first_name"),
                                  free_text(address.get("last_name"), "last_name"))))
    return {
        "order_id": order_id, "order_legacy_id": _lenient_id(order.get("legacy_id")),
        "order_number": identifier(order.get("order_number"), "order_number"),
        "skus": sorted(skus),
        # The customer's shipping address is where the return comes from.
        "address": {"name": name, **{key: free_text(address.get(key) or "", key) for key in (
            "address1", "address2", "city", "state", "country", "zip", "phone")}},
    }, after


def _line_sku(node: Any) -> str | None:
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
def _connection_page(body: Any, path: Sequence[str]) -> Step[list[dict[str, Any]]]:
    """One page of a relay connection at `path` under `data`: its nodes, `hasNextPage`
    and `endCursor`. Unreadable naming the field when a level is not the shape GraphQL
    promised (a cursor that is an object could not even be compared with the last)."""
    connection: Any = body.get("data") if isinstance(body, dict) else None
    where = "data"
    for key in path:
        if connection is not None and not isinstance(connection, dict):
            raise Unreadable(f"ShipHero {where} is a {type(connection).__name__}, not an "
                             "object", field=where)
        connection, where = (connection or {}).get(key), f"{where}.{key}"
    connection = connection or {}
    edges, page = connection.get("edges") or [], connection.get("pageInfo") or {}
    if not isinstance(connection, dict) or not isinstance(edges, list) or \
            not isinstance(page, dict):
        raise Unreadable(f"ShipHero {where} is not a connection (edges, pageInfo)",
                         field=where)
    nodes = [edge["node"] for edge in edges if isinstance(edge, dict) and edge.get("node")]
    cursor = page.get("endCursor") or None
    if cursor is not None and not isinstance(cursor, str | int):
        raise Unreadable(f"ShipHero {where}.pageInfo.endCursor is a {type(cursor).__name__}",
                         field=f"{where}.pageInfo.endCursor")
    return Step(nodes, more=bool(page.get("hasNextPage")), token=cursor)


def _token_answer(result: HttpResult) -> None:
    """A 2xx from /auth/refresh that is not a JSON object (a proxy's HTML page, an empty
    or cut body) says nothing about the refresh token: retried, never taken as refused."""
    if not isinstance(result.data, dict):
        raise TransientError(SYSTEM, f"/auth/refresh answered HTTP {result.status} without "
                                     f"a JSON object: {printable(result.text.strip(), 80)!r}",
                             status=result.status)


def _number_or_none(value: Any) -> float | None:
    """A finite number >= 0 from an answer, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _error_text(error: Any, default: str = "GraphQL error") -> str:
    """An error entry's message, safe to log and store."""
    message = error.get("message") if isinstance(error, dict) else error
    if isinstance(message, str) and message.strip():
        return printable(message, 500)
    return default


@guarded("ShipHero return")
def _polled_status(ref: RmaRef, entry: Any, field_error: str | None) -> RmaStatus:
    """One aliased `return(id)` of a poll answer -> RmaStatus; Unreadable saying why it is
    held (not found, another Loop return's, unreadable)."""
    node = entry.get("data") if isinstance(entry, dict) else None
    if node is None:
        raise Unreadable(field_error or f"ShipHero return {ref.rma_id} not found (deleted?)")
    if not isinstance(node, dict):
        raise Unreadable(f"ShipHero return {ref.rma_id} is a {type(node).__name__}, "
                         "not an object")
    partner = node.get("partner_id")
    if partner not in (None, "", ref.return_id):
        raise Unreadable(f"ShipHero return {ref.rma_id} belongs to Loop return "
                         f"{printable(str(_lenient_id(partner)), 40)}", field="partner_id")
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
        sku = identifier(_object(line.get("line_item"), f"line {n}: line_item").get("sku"),
                         f"line {n}: sku")
        if sku is None:
            raise Unreadable(f"line {n} has no SKU", field="sku")
        counts = units.setdefault((sku, identifier(line.get("condition"), f"line {n}: condition")),
                                  [0, 0])
        for i, key in enumerate(("quantity", "quantity_received")):  # null: none (nullable)
            if line.get(key) is not None:
                counts[i] += whole_number(line[key], key)
    items = tuple(ItemStatus(sku=sku, expected=expected, received=received, condition=condition)
                  for (sku, condition), (expected, received) in units.items())
    expected = node.get("total_items_expected")
    received = node.get("total_items_received")
    return RmaStatus(
        return_id=ref.return_id, rma_id=ref.rma_id, status=status,
        expected_units=sum(i.expected for i in items) if expected is None else
        whole_number(expected, "total_items_expected"),
        received_units=sum(i.received for i in items) if received is None else
        whole_number(received, "total_items_received"),
        items=items, detail={"legacy_id": _lenient_id(node.get("legacy_id"))})


def _complexity(data: Any) -> float | None:
    """Total cost of an answer: the sum of its root fields' `complexity`."""
    if not isinstance(data, dict):
        return None
    costs = [field["complexity"] for field in data.values()
             if isinstance(field, dict) and isinstance(field.get("complexity"), int | float)
             and math.isfinite(field["complexity"]) and field["complexity"] >= 0]
    return float(sum(costs)) if costs else None


def _error_field(error: dict[str, Any], key: str) -> Any:
    """Throttle details sit at the error's top level or under `extensions` (UNCONFIRMED)."""
    if key in error:
        return error[key]
    extensions = error.get("extensions")
    return extensions.get(key) if isinstance(extensions, dict) else None


def _seconds(text: Any) -> float | None:
    """'6 seconds' (or '... Try again in 6 seconds') -> 6.0."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return _number_or_none(text)
    match = _DURATION_IN_TEXT.search(text) if isinstance(text, str) else None
    return _number_or_none(match.group(1)) if match else None


def _messages_by_root_key(body: dict[str, Any]) -> dict[str, str]:
    """Field errors of an aliased query, by the alias their path starts with."""
    out: dict[str, str] = {}
    errors = body.get("errors")
    for error in errors if isinstance(errors, list) else []:
        path = error.get("path") if isinstance(error, dict) else None
        if isinstance(path, list) and path and isinstance(path[0], str):
            out.setdefault(path[0], _error_text(error))
    return out
