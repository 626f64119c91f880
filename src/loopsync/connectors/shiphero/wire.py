"""ShipHero's GraphQL transport: auth, credit pacing, paged connection walks.

Facts and UNCONFIRMED points: docs/api/shiphero.md. In short:
- Auth: a refresh token (from a Third-Party Developer user) is swapped at /auth/refresh
  for a 28-day access token, kept in memory only. HTTP 401 -> refresh once, retry once.
- Throttling is credit based: every answer reports its `complexity`; running short gives
  an error with `code: 30` and `time_remaining: "6 seconds"`. A local mirror of the
  credit bucket paces queries so that, at default settings, ShipHero never has to say so.
- Every connection walk goes through `paging.PageWalk` (page cap, repeated cursor).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from loopsync import logs
from loopsync.connectors.base import ConnectorContext, WarehouseSettings
from loopsync.connectors.shiphero.mapping import connection_page
from loopsync.connectors.shiphero.settings import ShipHeroSettings
from loopsync.errors import (
    AuthError,
    ErrorBody,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    TransientError,
)
from loopsync.http import HttpClient, HttpResult
from loopsync.models import printable
from loopsync.paging import PageWalk, Step, WalkEnd, record_walk
from loopsync.redaction import clip
from loopsync.timeutil import Clock

log = structlog.get_logger("loopsync.connectors.shiphero")

SYSTEM = "shiphero"
THROTTLE_CODE = 30
TOKEN_RENEW_MARGIN = 86400.0  # renew a day before expiry, as ShipHero recommends
# Nested pages multiply a query's cost (`first` x `first`), so pages stay small: an
# order usually has a few lines, and a partner_order_id usually matches one order.
LINES_PAGE_SIZE = 10  # order lines fetched with each order; more are paged
# Every create looks the order's returns up first (lost state must not create a second
# return), and an order seldom has more than a few: a page of 5 costs ~6 credits, not 26.
RETURNS_PAGE_SIZE = 5
# Batched look-ups (`prepare`): one document of aliased look-ups per batch. Each alias is
# priced on its own (ShipHero style: `first` x what a node selects), so its pages are the
# smallest that settle the common case: one order (a second one, or more lines, means the
# return is looked up alone with the usual pages) and an order with at most 2 returns.
BATCH_ORDERS_FIRST = 1  # orders per partner_order_id: 2+ go the single look-up's way
BATCH_LINES = 5  # order lines with each order; more are paged as in the single look-up
BATCH_RETURNS_FIRST = 2  # returns per order; more go the single look-up's way
CREDIT_WAIT_MARGIN = 0.05  # seconds: rounding must not leave us one credit short
_DURATION_IN_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.IGNORECASE)


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
# `loopsync webhooks register`: the secret is in the answer this once (docs/api/shiphero.md,
# "Webhooks"); `customer_account_id` in the input for a 3PL's child account is UNCONFIRMED.
WEBHOOK_CREATE = """
mutation LoopsyncWebhookCreate($data: CreateWebhookInput!) {
  webhook_create(data: $data) {
    request_id complexity
    webhook { id name url shared_signature_secret }
  }
}"""
RETURN_STATUS_FIELDS = """
fragment ReturnStatus on Return {
  id legacy_id partner_id status total_items_expected total_items_received
  line_items { quantity quantity_received condition line_item { sku } }
}"""

# The account's warehouses, for `loopsync discover`. `account { data { warehouses } }` is
# in ShipHero's public schema; docs/api/shiphero.md does not document it, so the fields
# beyond `id` and `identifier` are UNCONFIRMED (a 3PL sees its own account's warehouses).
ACCOUNT_WAREHOUSES = """
query LoopsyncWarehouses {
  account {
    request_id complexity
    data { warehouses { id legacy_id identifier } }
  }
}"""


def _first_cost_guesses(order_page_size: int) -> dict[str, float]:
    """Rough costs per operation (ShipHero style: 1 + first x nodes selected), used until
    the first answer reports the real `complexity`. Poll is per RMA."""
    return {
        "orders": 1 + order_page_size * (2 + LINES_PAGE_SIZE),
        "order_lines": 2 + LINES_PAGE_SIZE,
        "returns": 1 + RETURNS_PAGE_SIZE,
        "return_create": 2,
        "webhook_create": 5,
        "orders_batch": 1 + BATCH_ORDERS_FIRST * (2 + BATCH_LINES),  # per alias
        "returns_batch": 1 + BATCH_RETURNS_FIRST,  # per alias
        "poll": 4,
        "account": 3,
    }


def _filtered_root(field: str, filters: dict[str, str | None]) -> tuple[str, str, dict[str, str]]:
    """Variable definitions, the root field call and values for the filters that are set.
    Unset filters are left out rather than sent as null."""
    used = {name: value for name, value in filters.items() if value is not None}
    definitions = "".join(f", ${name}: String" for name in used)
    arguments = ", ".join(f"{name}: ${name}" for name in used)
    return definitions, f"{field}({arguments})" if used else field, used


def orders_query(filters: dict[str, str | None]) -> tuple[str, dict[str, str]]:
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


def returns_query(filters: dict[str, str | None]) -> tuple[str, dict[str, str]]:
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


def batch_query(
    operation: str,
    field: str,
    key: str,
    count: int,
    shared: dict[str, str | None],
    node: str,
    definitions: str = "",
) -> tuple[str, dict[str, str]]:
    """One document of `count` look-ups `field(key: $k{i})` through aliases a0..aN, each
    with the `shared` filters that are set (returned as values) and a page of `$first`
    nodes selecting `node`. The caller supplies $k0..$kN, $first and `definitions`."""
    shared_definitions, _, values = _filtered_root(field, shared)
    arguments = "".join(f", {name}: ${name}" for name in values)
    fields = "\n".join(
        f"  a{i}: {field}({key}: $k{i}{arguments}) {{ complexity data(first: $first) "
        f"{{ pageInfo {{ hasNextPage endCursor }} edges {{ node {{ {node} }} }} }} }}"
        for i in range(count)
    )
    keys = "".join(f", $k{i}: String" for i in range(count))
    header = f"query {operation}($first: Int!{definitions}{shared_definitions}{keys})"
    return f"{header} {{\n{fields}\n}}", values


def orders_batch_query(count: int, shared: dict[str, str | None]) -> tuple[str, dict[str, str]]:
    """Orders by partner_order_id ($k0..$kN), with `$lines` order lines each."""
    query, values = batch_query(
        "LoopsyncOrdersBatch",
        "orders",
        "partner_order_id",
        count,
        shared,
        "...OrderForReturn",
        ", $lines: Int!",
    )
    return query + ORDER_FIELDS, values


def returns_batch_query(count: int, shared: dict[str, str | None]) -> tuple[str, dict[str, str]]:
    """The first returns of orders ($k0..$kN)."""
    return batch_query(
        "LoopsyncReturnsBatch",
        "returns",
        "order_id",
        count,
        shared,
        "id legacy_id partner_id order_id status",
    )


def poll_query(count: int) -> str:
    """One document reading `count` returns through aliases r0..rN."""
    definitions = ", ".join(f"$id{i}: String!" for i in range(count))
    fields = "\n".join(
        f"  r{i}: return(id: $id{i}) {{ request_id complexity data {{ ...ReturnStatus }} }}"
        for i in range(count)
    )
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
            self._set(self._balance - (actual - estimated))

    def throttled(self, remaining: float, charged: float) -> None:
        """ShipHero said how much is left. The call that `take` charged `charged` for did
        not run; its retry will, so it stays charged against the new balance."""
        with self._lock:
            self._refill()
            self._set(min(self.capacity, max(0.0, remaining)) - charged)

    def _set(self, balance: float) -> None:
        # ShipHero runs no query its balance cannot cover, so a figure that puts ours
        # below one bucket in debt is wrong (a hostile or garbled `complexity`): believed,
        # it would hold every later call for years.
        self._balance = max(-self.capacity, balance)


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
        if (
            bucket is None
            or bucket.capacity != float(capacity)
            or bucket.per_second != per_second
            or bucket.clock.timeline is not clock.timeline
        ):
            bucket = _BUCKETS[account] = CreditBucket(capacity, per_second, clock)
        bucket.clock = clock  # same time; this run's clock wakes its waits at shutdown
        return bucket


# -- the transport ------------------------------------------------------------------------


class ShipHeroClient:
    """One merchant's GraphQL transport: credit pacing, the access token, paged walks.

    Every call goes through `HttpClient.request`; a GraphQL error answer (HTTP 200 with
    `errors`) is raised by `_check_answer` as Rejected, RateLimited or ErrorBody."""

    def __init__(
        self, cfg: ShipHeroSettings, settings: WarehouseSettings, ctx: ConnectorContext
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.ctx = ctx
        self.http = HttpClient(
            SYSTEM,
            settings.base_url,
            timeout=settings.timeout,
            deadline=settings.deadline,
            max_body=settings.max_body,
            policy=ctx.policy,
            clock=ctx.clock,
        )
        # ShipHero's credits are per account: merchants on one account share one bucket.
        self.credits = shared_bucket(
            self._account_key, self.cfg.credits_max, self.cfg.credits_per_second, ctx.clock
        )
        self._cost_per_unit = _first_cost_guesses(self.cfg.order_page_size)
        self._access_token: str | None = None  # memory only, never logged
        self._renew_at = 0.0

    def close(self) -> None:
        self.http.session.close()

    def alias_cost(self, op: str) -> float:
        """What one alias (unit) of `op` costs: ShipHero's last figure, else the guess."""
        return max(1.0, self._cost_per_unit[op])

    # -- transport -------------------------------------------------------------------------
    def paged(
        self,
        op: str,
        query: str,
        variables: dict[str, Any],
        path: Sequence[str],
        *,
        after: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Nodes of a relay connection at `path` under the body's `data` (("orders",
        "data"): `data.orders.data`), page after page from the cursor `after`.

        Through `paging.PageWalk`: a repeated `endCursor` or the page cap raises
        PaginationStopped (a look-up built on half a listing could create a duplicate);
        `hasNextPage` without an `endCursor` ends the walk there, logged."""

        def fetch(token: Any) -> Step[list[dict[str, Any]]]:
            return connection_page(self.graphql(op, query, {**variables, "after": token}), path)

        walk = PageWalk(
            fetch,
            name=f"shiphero.{op}",
            first=after,
            max_pages=self.cfg.max_pages,
            stop=self.ctx.stop,
        )
        for fetched in walk:
            yield from fetched.items
        record_walk(self.ctx.kv, walk.result, self.ctx.clock.now())
        if walk.result is not None and walk.result.outcome in (
            WalkEnd.CAPPED,
            WalkEnd.REPEATED,
            WalkEnd.STOPPED,
        ):
            raise walk.result.error(SYSTEM)

    def graphql(
        self,
        op: str,
        query: str,
        variables: dict[str, Any],
        *,
        units: int = 1,
        mutation: bool = False,
        partial_ok: bool = False,
    ) -> dict[str, Any]:
        """One GraphQL call, paced by the credit bucket; returns the decoded body."""
        estimate = self._cost_per_unit[op] * units
        waited = self.credits.take(estimate)
        if waited:
            log.info("shiphero.credits_wait", seconds=round(waited, 2), operation=op)
        body = self._post(
            {"query": query, "variables": variables},
            mutation=mutation,
            partial_ok=partial_ok,
            charged=estimate,
        )
        actual = _complexity(body.get("data"))
        if actual is not None:
            self.credits.correct(estimate, actual)
            self._cost_per_unit[op] = actual / units
        return body

    def _post(
        self, payload: dict[str, Any], *, mutation: bool, partial_ok: bool, charged: float
    ) -> dict[str, Any]:
        """POST /graphql; on HTTP 401 refresh the token once and send once more (a 401
        means nothing ran, so even a mutation is safe to repeat). A refused refresh
        token raises from `_bearer` as it is."""
        try:
            return self._post_once(
                payload, self.bearer(), mutation=mutation, partial_ok=partial_ok, charged=charged
            )
        except AuthError as exc:
            if exc.status != 401:
                raise
            if self.cfg.refresh_token is None:
                raise AuthError(
                    SYSTEM,
                    "access token refused; configure refresh_token so loopsync can renew it",
                    status=401,
                ) from None
            log.info("shiphero.token_refused", action="refresh and retry once")
            self._access_token = None
            _TOKEN_CACHE.pop(self._token_key, None)
        token = self.bearer()
        try:
            return self._post_once(
                payload, token, mutation=mutation, partial_ok=partial_ok, charged=charged
            )
        except AuthError as exc:
            raise AuthError(
                SYSTEM, "access token refused even after a refresh", status=exc.status
            ) from None

    def _post_once(
        self,
        payload: dict[str, Any],
        token: str,
        *,
        mutation: bool,
        partial_ok: bool,
        charged: float,
    ) -> dict[str, Any]:
        def check(result: HttpResult) -> None:
            self._check_answer(result, mutation=mutation, partial_ok=partial_ok, charged=charged)

        result = self.http.request(
            "POST",
            "/graphql",
            json_body=payload,
            headers={"Authorization": f"Bearer {token}"},
            idempotent=not mutation,
            check=check,
        )
        body: dict[str, Any] = result.data
        return body

    def _check_answer(
        self, result: HttpResult, *, mutation: bool, partial_ok: bool, charged: float
    ) -> None:
        """Raise on a GraphQL error answer (HTTP 200 with `errors`)."""
        body = result.data
        if not isinstance(body, dict) or not ({"data", "errors"} & body.keys()):
            # A proxy's page, a cut-off body: a read is worth another try, and a mutation
            # may have run (it is looked up before it is repeated).
            raise (OutcomeUnknown if mutation else TransientError)(
                SYSTEM, f"not a GraphQL answer: {clip(result.text, 200)!r}", status=result.status
            )
        listed = body.get("errors") or []
        errors = [
            e if isinstance(e, dict) else {"message": _error_text(e)}
            for e in (listed if isinstance(listed, list) else [listed])
        ]
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
        log.warning(
            "shiphero.throttled",
            wait=wait,
            required=_number_or_none(required),
            remaining=_number_or_none(remaining),
        )
        return RateLimited(
            SYSTEM,
            _error_text(error, "not enough credits"),
            retry_after=wait,
            status=status,
            code=str(THROTTLE_CODE),
        )

    # -- auth ------------------------------------------------------------------------------
    def bearer(self) -> str:
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
            result = self.http.request(
                "POST",
                "/auth/refresh",
                idempotent=True,
                json_body={"refresh_token": self.cfg.refresh_token.value},
                check=_token_answer,
            )
        except AuthError as exc:
            raise AuthError(
                SYSTEM, "refresh token refused at /auth/refresh", status=exc.status
            ) from None
        body = result.data if isinstance(result.data, dict) else {}
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthError(SYSTEM, "/auth/refresh answered without an access_token")
        expires_in = _number_or_none(body.get("expires_in")) or TOKEN_RENEW_MARGIN * 2
        logs.register_secret(token)  # masked should it ever reach a log line
        self._access_token = token
        self._renew_at = self.ctx.clock.monotonic() + max(
            expires_in - TOKEN_RENEW_MARGIN, expires_in / 2
        )
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


# -- answers ------------------------------------------------------------------------------


def _token_answer(result: HttpResult) -> None:
    """A 2xx from /auth/refresh that is not a JSON object (a proxy's HTML page, an empty
    or cut body) says nothing about the refresh token: retried, never taken as refused."""
    if not isinstance(result.data, dict):
        raise TransientError(
            SYSTEM,
            f"/auth/refresh answered HTTP {result.status} without "
            f"a JSON object: {printable(result.text.strip(), 80)!r}",
            status=result.status,
        )


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


def _complexity(data: Any) -> float | None:
    """Total cost of an answer: the sum of its root fields' `complexity`."""
    if not isinstance(data, dict):
        return None
    costs = [
        field["complexity"]
        for field in data.values()
        if isinstance(field, dict)
        and isinstance(field.get("complexity"), int | float)
        and math.isfinite(field["complexity"])
        and field["complexity"] >= 0
    ]
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


def messages_by_root_key(body: dict[str, Any]) -> dict[str, str]:
    """Field errors of an aliased query, by the alias their path starts with."""
    out: dict[str, str] = {}
    errors = body.get("errors")
    for error in errors if isinstance(errors, list) else []:
        path = error.get("path") if isinstance(error, dict) else None
        if isinstance(path, list) and path and isinstance(path[0], str):
            out.setdefault(path[0], _error_text(error))
    return out
