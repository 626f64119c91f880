"""Emulated ShipHero: a real GraphQL server (graphql-core) over the schema subset in
`shiphero.graphql`, ShipHero's token endpoints, credit-based throttling on the emulator's
clock, and the hooks that play the warehouse's people (receive goods, change statuses).

Queries are parsed and validated against the schema, so a client mistake that ShipHero
would refuse (`first` on the root field, an unknown enum value, a missing required input
field) is refused here too. Facts and UNCONFIRMED points: wms-apis.md §A.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import math
import secrets
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLResolveInfo,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    build_schema,
    execute_sync,
    get_named_type,
    get_operation_ast,
    parse,
    validate,
)

from loopsync.sandbox.base import SCENARIOS, WarehouseEmulator
from loopsync.sandbox.server import Fault, Request, Response, json_response
from loopsync.sandbox.webhooks import Source, WebhookTarget
from loopsync.timeutil import Clock, iso, parse_timestamp

SCHEMA = build_schema(
    resources.files("loopsync.sandbox").joinpath("shiphero.graphql").read_text(encoding="utf-8")
)

THROTTLE_CODE = 30
DEFAULT_PAGE_SIZE = 100  # `first` omitted; public clients use 100 (UNCONFIRMED)
TOKEN_LIFETIME = 2419200  # seconds: ShipHero access tokens last 28 days
WAREHOUSE_COMPLETE_SPELLINGS = (
    "Warehouse Complete",
    "warehouse_complete",
    "WAREHOUSE COMPLETE",
    "warehouse-complete",
)


def global_id(kind: str, legacy_id: int) -> str:
    """ShipHero's relay id: base64("Return:3394303") == "UmV0dXJuOjMzOTQzMDM="."""
    return base64.b64encode(f"{kind}:{legacy_id}".encode()).decode()


def legacy_from_id(kind: str, value: str) -> int | None:
    """Either id form (global base64 or legacy int) -> the legacy int, or None."""
    value = str(value).strip()
    if value.isdigit():
        return int(value)
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    prefix, _, number = decoded.partition(":")
    return int(number) if prefix == kind and number.isdigit() else None


WAREHOUSES = {
    global_id("Warehouse", 1179): "Primary (Columbus, OH)",
    global_id("Warehouse", 1180): "West (Reno, NV)",
}
# Loop destination id -> ShipHero warehouse id, as written into the sandbox config.
DESTINATIONS = dict(zip(("12", "13"), WAREHOUSES, strict=True))


# -- credits ----------------------------------------------------------------------------


class CreditMeter:
    """ShipHero's credit bucket on the emulator's clock. Defaults are the 2019 figures
    (1001 credits, 15 restored per second; UNCONFIRMED for today, hence configurable).

    `enabled=False`: no accounting at all. `enforce=False`: account but never throttle,
    so `min_balance` shows how far a client overdrew (a benchmark asserts it stayed >= 0).
    """

    def __init__(
        self,
        clock: Clock,
        capacity: int = 1001,
        per_second: float = 15.0,
        *,
        enabled: bool = True,
        enforce: bool = True,
    ) -> None:
        self.clock = clock
        self.capacity = capacity
        self.per_second = per_second
        self.enabled = enabled
        self.enforce = enforce
        self.min_balance = float(capacity)
        self.throttled = 0  # answers refused with code 30
        self.spent = 0
        # Credits spent by root field name (aliases of one field add up): what a client's
        # `return_create` mutations cost apart from its look-ups (benchmarks.push's floor).
        self.spent_by: Counter[str] = Counter()
        self._balance = float(capacity)
        self._at = clock.monotonic()

    def balance(self) -> float:
        now = self.clock.monotonic()
        self._balance = min(
            float(self.capacity), self._balance + (now - self._at) * self.per_second
        )
        self._at = now
        return self._balance

    def try_spend(self, cost: int, by_field: Mapping[str, int] | None = None) -> bool:
        if not self.enabled:
            return True
        balance = self.balance()
        if self.enforce and cost > balance:
            self.throttled += 1
            return False
        self._balance = balance - cost
        self.spent += cost
        self.spent_by.update(by_field or {})
        self.min_balance = min(self.min_balance, self._balance)
        return True

    def seconds_until(self, cost: int) -> int:
        return max(1, math.ceil((cost - self.balance()) / self.per_second))

    @property
    def peak_debt(self) -> float:
        return max(0.0, -self.min_balance)


class _CostModel:
    """Static query cost in ShipHero's style (the exact formula is UNCONFIRMED): every
    object a query selects costs 1, connection/edge/pageInfo wrappers are free, and a
    field paged with `first: N` costs N times what it selects. So an orders query with
    `data(first: 100)` costs 101, as in ShipHero's throttle example."""

    def __init__(self, document: Any, variables: Mapping[str, Any]) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.variables = variables

    def root_costs(self, operation: OperationDefinitionNode) -> dict[str, int]:
        root = (
            SCHEMA.mutation_type
            if operation.operation == OperationType.MUTATION
            else SCHEMA.query_type
        )
        return dict(self._field_costs(root, operation.selection_set))

    def _field_costs(self, parent: Any, selections: SelectionSetNode) -> Iterator[tuple[str, int]]:
        for node in selections.selections:
            if isinstance(node, FieldNode):
                yield (node.alias or node.name).value, self._field_cost(parent, node)
            elif isinstance(node, InlineFragmentNode):
                target = (
                    SCHEMA.get_type(node.type_condition.name.value)
                    if node.type_condition
                    else parent
                )
                yield from self._field_costs(target, node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                fragment = self.fragments[node.name.value]
                yield from self._field_costs(
                    SCHEMA.get_type(fragment.type_condition.name.value), fragment.selection_set
                )

    def _field_cost(self, parent: Any, node: FieldNode) -> int:
        definition = parent.fields.get(node.name.value)
        if definition is None or node.selection_set is None:
            return 0  # scalars and __typename are free
        target = get_named_type(definition.type)
        own = 0 if target.name.endswith(("Connection", "Edge")) or target.name == "PageInfo" else 1
        inner = sum(cost for _, cost in self._field_costs(target, node.selection_set))
        return self._page_size(definition, node) * (own + inner)

    def _page_size(self, definition: Any, node: FieldNode) -> int:
        if "first" not in definition.args:
            return 1
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            value: Any = None
            if isinstance(argument.value, VariableNode):
                value = self.variables.get(argument.value.name.value)
            elif isinstance(argument.value, IntValueNode):
                value = int(argument.value.value)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return DEFAULT_PAGE_SIZE


def _by_field(operation: OperationDefinitionNode, costs: Mapping[str, int]) -> Counter[str]:
    """The costs of an operation's root fields (by alias) added up by field name."""
    names = {
        (node.alias or node.name).value: node.name.value
        for node in operation.selection_set.selections
        if isinstance(node, FieldNode)
    }
    out: Counter[str] = Counter()
    for key, cost in costs.items():
        out[names.get(key, key)] += cost
    return out


def throttle_body(keys: list[str], required: int, remaining: int, seconds: int) -> dict[str, Any]:
    """ShipHero's throttle answer: the fields null, one error with code 30."""
    return {
        "data": dict.fromkeys(keys),
        "errors": [
            {
                "code": THROTTLE_CODE,
                "message": (
                    f"There are not enough credits to perform the requested operation, "
                    f"which requires {required} credits. The account has {remaining} "
                    f"credits remaining. Try again in {seconds} seconds"
                ),
                "time_remaining": f"{seconds} seconds",
                "required_credits": required,
                "remaining_credits": remaining,
            }
        ],
    }


# -- state ------------------------------------------------------------------------------


@dataclass
class _OrderLine:
    legacy_id: int
    sku: str
    quantity: int


@dataclass
class _Order:
    legacy_id: int
    order_number: str | None
    partner_order_id: str | None
    shop_name: str
    account_id: str | None
    address: dict[str, str]
    created_at: datetime
    lines: list[_OrderLine] = field(default_factory=list)

    @property
    def id(self) -> str:
        return global_id("Order", self.legacy_id)

    def line_for(self, sku: str) -> _OrderLine | None:
        return next((line for line in self.lines if line.sku == sku), None)


@dataclass
class _ReturnLine:
    legacy_id: int
    order_line: _OrderLine
    quantity: int
    reason: str
    quantity_received: int = 0
    condition: str | None = None


@dataclass
class _Return:
    legacy_id: int
    order: _Order
    partner_id: str | None
    warehouse_id: str
    reason: str
    label_type: str
    label_cost: str
    shipping_carrier: str
    shipping_method: str
    tracking_number: str | None
    created_at: datetime
    lines: list[_ReturnLine]
    status: str = "pending"
    poison: dict[str, Any] = field(default_factory=dict)  # fields served as given (poison)

    @property
    def id(self) -> str:
        return global_id("Return", self.legacy_id)

    @property
    def expected(self) -> int:
        return sum(line.quantity for line in self.lines)

    @property
    def received(self) -> int:
        return sum(line.quantity_received for line in self.lines)


@dataclass
class _Context:
    costs: dict[str, int]


def _connection(nodes: list[Any], first: int | None, after: str | None) -> dict[str, Any]:
    """Relay pagination with graphene's cursors (base64 "arrayconnection:<index>")."""
    if first is not None and first < 0:
        raise GraphQLError("Argument 'first' must be a non-negative integer.")
    start = 0
    if after:
        decoded = legacy_from_id("arrayconnection", after)
        if decoded is None:
            raise GraphQLError(f"Invalid cursor: {after!r}")
        start = decoded + 1
    size = DEFAULT_PAGE_SIZE if first is None else first
    edges = [
        {"cursor": global_id("arrayconnection", start + i), "node": node}
        for i, node in enumerate(nodes[start : start + size])
    ]
    return {
        "edges": edges,
        "pageInfo": {
            "hasNextPage": start + size < len(nodes),
            "hasPreviousPage": start > 0,
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
        },
    }


def _line_view(line: _OrderLine) -> dict[str, Any]:
    return {
        "id": global_id("LineItem", line.legacy_id),
        "legacy_id": line.legacy_id,
        "sku": line.sku,
        "partner_line_item_id": f"pli-{line.legacy_id}",
        "product_name": f"Product {line.sku}",
        "quantity": line.quantity,
    }


def _order_view(order: _Order) -> dict[str, Any]:
    lines = [_line_view(line) for line in order.lines]
    return {
        "id": order.id,
        "legacy_id": order.legacy_id,
        "order_number": order.order_number,
        "partner_order_id": order.partner_order_id,
        "shop_name": order.shop_name,
        "fulfillment_status": "fulfilled",
        "order_date": iso(order.created_at),
        "email": order.address.get("email"),
        "account_id": order.account_id,
        "shipping_address": dict(order.address),
        "line_items": lambda _info, first=None, after=None: _connection(lines, first, after),
    }


def _return_view(ret: _Return) -> dict[str, Any]:
    return {
        "id": ret.id,
        "legacy_id": ret.legacy_id,
        "account_id": ret.order.account_id,
        "order_id": ret.order.id,
        "partner_id": ret.partner_id,
        "reason": ret.reason,
        "status": ret.status,
        "label_type": ret.label_type,
        "label_cost": ret.label_cost,
        "shipping_carrier": ret.shipping_carrier,
        "shipping_method": ret.shipping_method,
        "tracking_number": ret.tracking_number,
        "total_items_expected": ret.expected,
        "total_items_received": ret.received,
        "total_items_restocked": 0,
        "created_at": iso(ret.created_at),
        "line_items": [
            {
                "id": global_id("ReturnItem", line.legacy_id),
                "legacy_id": line.legacy_id,
                "line_item_id": global_id("LineItem", line.order_line.legacy_id),
                "warehouse_id": ret.warehouse_id,
                "quantity": line.quantity,
                "quantity_received": line.quantity_received,
                "restock": 0,
                "condition": line.condition,
                "reason": line.reason,
                "type": "Refund",
                "line_item": _line_view(line.order_line),
                **ret.poison.get("line", {}),
            }
            for line in ret.lines
        ],
        **ret.poison.get("return", {}),
    }


# -- the emulator -----------------------------------------------------------------------


class ShipHeroEmulator(WarehouseEmulator):
    name = "shiphero"
    kind = "shiphero"
    webhook_source = Source.SHIPHERO  # "Return Update"

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        credits_max: int = 1001,
        credits_per_second: float = 15.0,
        credits_enabled: bool = True,
        enforce_credits: bool = True,
        customer_account_id: str | None = None,
        shop_name: str = "loopsync-sandbox.myshopify.com",
    ) -> None:
        super().__init__(clock=clock)
        self.credits = CreditMeter(
            self.clock,
            credits_max,
            credits_per_second,
            enabled=credits_enabled,
            enforce=enforce_credits,
        )
        self.customer_account_id = customer_account_id
        self.shop_name = shop_name
        self.username = "loopsync@merchant.example"
        self.password = "sandbox-password"  # noqa: S105 - the sandbox's made-up login
        self.refresh_token = secrets.token_urlsafe(24)
        self._refresh_tokens = {self.refresh_token}
        self._access_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.orders: dict[int, _Order] = {}
        self.returns: dict[int, _Return] = {}
        self._ids = itertools.count(1)
        self._receipts = itertools.count()
        self._root: dict[str, Callable[..., Any]] = {
            "orders": self._resolve_orders,
            "order": self._resolve_order,
            "returns": self._resolve_returns,
            "return": self._resolve_return,
            "user_quota": self._resolve_user_quota,
            "return_create": self._resolve_return_create,
            "account": self._resolve_account,
            "webhook_create": self._resolve_webhook_create,
        }
        # (name, shop_name) -> {"url", "secret"}: what webhook_create registered
        self.webhooks: dict[tuple[str, str | None], dict[str, str]] = {}

    @property
    def credits_enabled(self) -> bool:
        """Credit accounting on/off (the Sandbox's `rate_limits` switch sets this)."""
        return self.credits.enabled

    @credits_enabled.setter
    def credits_enabled(self, enabled: bool) -> None:
        self.credits.enabled = enabled

    # -- HTTP ---------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:
        routes: dict[tuple[str, str], Callable[[Request], Response]] = {
            ("POST", "/auth/token"): self._auth_token,
            ("POST", "/auth/refresh"): self._auth_refresh,
            ("POST", "/graphql"): self._graphql,
        }
        route = routes.get((req.method, req.path))
        if route is None:
            return json_response({"message": "Not Found"}, 404)
        return route(req)

    def is_write(self, req: Request) -> bool:
        """Only GraphQL mutations change the merchant's state (token calls do not)."""
        if req.path != "/graphql":
            return False
        try:
            payload = req.json()
            operation = get_operation_ast(parse(payload["query"]), payload.get("operationName"))
        except (ValueError, TypeError, KeyError, GraphQLError):
            return False
        return operation is not None and operation.operation == OperationType.MUTATION

    def _auth_token(self, req: Request) -> Response:
        body = _json_object(req)
        if body.get("username") != self.username or body.get("password") != self.password:
            return json_response(
                {"error": "invalid_grant", "error_description": "Wrong email or password."}, 403
            )
        refresh = secrets.token_urlsafe(24)
        self._refresh_tokens.add(refresh)
        return json_response({**self._issue_access_token(), "refresh_token": refresh})

    def _auth_refresh(self, req: Request) -> Response:
        if _json_object(req).get("refresh_token") not in self._refresh_tokens:
            return json_response(
                {
                    "error": "invalid_grant",
                    "error_description": "Unknown or invalid refresh token.",
                },
                403,
            )
        return json_response(self._issue_access_token())

    def _issue_access_token(self) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        self._access_tokens[token] = self.clock.monotonic() + TOKEN_LIFETIME
        return {
            "access_token": token,
            "expires_in": TOKEN_LIFETIME,
            "scope": "openid profile offline_access",
            "token_type": "Bearer",
        }

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (forces the refresh path)."""
        with self.lock:
            self._access_tokens.clear()

    def _authorized(self, req: Request) -> bool:
        scheme, _, token = str(req.headers.get("Authorization") or "").partition(" ")
        expiry = self._access_tokens.get(token.strip())
        return scheme.lower() == "bearer" and expiry is not None and self.clock.monotonic() < expiry

    def _graphql(self, req: Request) -> Response:
        if not self._authorized(req):
            return json_response(
                {"message": "Unauthorized: the access token is missing, unknown or expired"}, 401
            )
        payload = _json_object(req)
        query, variables = payload.get("query"), payload.get("variables") or {}
        if not isinstance(query, str) or not isinstance(variables, dict):
            return _errors_response(
                [GraphQLError("Must provide a query string and variables as an object.")]
            )
        document, errors = _checked_document(query)
        if document is None or errors:
            return _errors_response(list(errors))
        operation_name = payload.get("operationName")
        operation = get_operation_ast(document, operation_name)
        if operation is None:
            return _errors_response([GraphQLError("Unknown or ambiguous operation.")])
        costs = _CostModel(document, variables).root_costs(operation)
        required = sum(costs.values())
        if required > self.credits.capacity:
            return _errors_response(
                [
                    GraphQLError(
                        f"The operation requires {required} credits; no single operation may "
                        f"exceed {self.credits.capacity}."
                    )
                ]
            )
        if not self.credits.try_spend(required, _by_field(operation, costs)):
            return json_response(
                throttle_body(
                    list(costs),
                    required,
                    int(self.credits.balance()),
                    self.credits.seconds_until(required),
                )
            )
        result = execute_sync(
            SCHEMA,
            document,
            root_value=self._root,
            context_value=_Context(costs),
            variable_values=variables,
            operation_name=operation_name,
        )
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [error.formatted for error in result.errors]
        return json_response(body)

    # -- scripted faults ----------------------------------------------------------------
    def throttle_fault(self, *, status: int = 429, seconds: int = 3) -> Fault:
        """A code-30 throttle answer regardless of credits, as HTTP `status` (429 is the
        variant ShipHero may send; 200 is the usual one)."""
        return Fault(
            "custom",
            response=lambda req: json_response(
                throttle_body(_root_keys(req), 101, 10, seconds), status
            ),
        )

    def graphql_error_fault(self, message: str = "Internal server error") -> Fault:
        """A generic GraphQL error: every root field null, one error naming it."""

        def respond(req: Request) -> Response:
            keys = _root_keys(req)
            return json_response(
                {"data": dict.fromkeys(keys), "errors": [{"message": message, "path": keys[:1]}]}
            )

        return Fault("custom", response=respond)

    # -- resolvers ----------------------------------------------------------------------
    def _result(self, info: GraphQLResolveInfo[_Context], data: Any) -> dict[str, Any]:
        return {
            "request_id": secrets.token_hex(12),
            "complexity": info.context.costs.get(str(info.path.key), 0),
            "data": data,
        }

    def _resolve_orders(
        self,
        info: GraphQLResolveInfo[_Context],
        partner_order_id: str | None = None,
        order_number: str | None = None,
        shop_name: str | None = None,
        customer_account_id: str | None = None,
    ) -> dict[str, Any]:
        wanted = {
            "partner_order_id": partner_order_id,
            "order_number": order_number,
            "shop_name": shop_name,
            "account_id": customer_account_id,
        }
        matches = [
            _order_view(order)
            for order in self.orders.values()
            if all(value is None or getattr(order, attr) == value for attr, value in wanted.items())
        ]
        return self._result(
            info, lambda _info, first=None, after=None: _connection(matches, first, after)
        )

    def _resolve_order(
        self, info: GraphQLResolveInfo[_Context], id: str, customer_account_id: str | None = None
    ) -> dict[str, Any]:
        return self._result(info, _order_view(self._order(id)))

    def _resolve_returns(
        self,
        info: GraphQLResolveInfo[_Context],
        order_id: str | None = None,
        warehouse_id: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        customer_account_id: str | None = None,
        tracking_number: str | None = None,
    ) -> dict[str, Any]:
        order_legacy = None if order_id is None else legacy_from_id("Order", order_id)
        since, until = _timestamp(date_from), _timestamp(date_to)
        matches = [
            _return_view(ret)
            for ret in self.returns.values()
            if (order_id is None or ret.order.legacy_id == order_legacy)
            and (warehouse_id is None or ret.warehouse_id == warehouse_id)
            and (customer_account_id is None or ret.order.account_id == customer_account_id)
            and (tracking_number is None or ret.tracking_number == tracking_number)
            and (since is None or ret.created_at >= since)
            and (until is None or ret.created_at <= until)
        ]
        return self._result(
            info, lambda _info, first=None, after=None: _connection(matches, first, after)
        )

    def _resolve_return(self, info: GraphQLResolveInfo[_Context], id: str) -> dict[str, Any]:
        legacy = legacy_from_id("Return", id)
        ret = None if legacy is None else self.returns.get(legacy)
        if ret is None:
            raise GraphQLError(f"Return {id} not found")
        return self._result(info, _return_view(ret))

    def _resolve_user_quota(self, info: GraphQLResolveInfo[_Context]) -> dict[str, Any]:
        return {
            "is_expired": False,
            "expiration_date": None,
            "time_remaining": None,
            "credits_remaining": int(self.credits.balance()),
            "max_available": self.credits.capacity,
            "increment_rate": int(self.credits.per_second),
        }

    def _resolve_account(
        self, info: GraphQLResolveInfo[_Context], customer_account_id: str | None = None
    ) -> dict[str, Any]:
        """The account and its warehouses (the ids `return_create` accepts)."""
        warehouses = [
            {"id": wid, "legacy_id": legacy_from_id("Warehouse", wid), "identifier": name}
            for wid, name in WAREHOUSES.items()
        ]
        return self._result(
            info, {"id": global_id("Account", 1), "legacy_id": 1, "warehouses": warehouses}
        )

    def _resolve_return_create(
        self, info: GraphQLResolveInfo[_Context], data: dict[str, Any]
    ) -> dict[str, Any]:
        order = self._order(data["order_id"])
        if data["warehouse_id"] not in WAREHOUSES:
            raise GraphQLError(f"Warehouse {data['warehouse_id']} not found")
        lines = [self._return_line(order, item) for item in data["line_items"] if item]
        if not lines:
            raise GraphQLError("A return needs at least one line item")
        ret = _Return(
            legacy_id=3394300 + next(self._ids),
            order=order,
            partner_id=data.get("partner_id"),
            warehouse_id=data["warehouse_id"],
            reason=data["return_reason"],
            label_type=data["label_type"],
            label_cost=data["label_cost"],
            shipping_carrier=data["shipping_carrier"],
            shipping_method=data["shipping_method"],
            tracking_number=data.get("tracking_number"),
            created_at=self.clock.now(),
            lines=lines,
        )
        self.returns[ret.legacy_id] = ret
        self._announce(ret)
        return {
            "request_id": secrets.token_hex(12),
            "complexity": info.context.costs.get(str(info.path.key), 0),
            "return": _return_view(ret),
        }

    def _resolve_webhook_create(
        self, info: GraphQLResolveInfo[_Context], data: dict[str, Any]
    ) -> dict[str, Any]:
        """One webhook per name (and shop); the secret is returned here and never again."""
        key = (data["name"], data.get("shop_name"))
        if key in self.webhooks:
            raise GraphQLError(f"A webhook for {data['name']} already exists")
        secret = secrets.token_urlsafe(32)
        self.webhooks[key] = {"url": data["url"], "secret": secret}
        if self.webhook_sender is not None:  # Return Updates go there from now on
            self.webhook_sender.add_target(WebhookTarget(Source.SHIPHERO, data["url"], secret))
        return {
            "request_id": secrets.token_hex(12),
            "complexity": info.context.costs.get(str(info.path.key), 0),
            "webhook": {
                "id": global_id("Webhook", len(self.webhooks)),
                "legacy_id": len(self.webhooks),
                "name": data["name"],
                "url": data["url"],
                "shop_name": data.get("shop_name"),
                "source": "API",
                "shared_signature_secret": secret,
            },
        }

    def _return_line(self, order: _Order, item: dict[str, Any]) -> _ReturnLine:
        order_line = order.line_for(item["sku"])
        if order_line is None:
            raise GraphQLError(f"SKU {item['sku']} is not on order {order.order_number}")
        if item["quantity"] < 1:
            raise GraphQLError(f"Quantity for SKU {item['sku']} must be at least 1")
        return _ReturnLine(
            legacy_id=next(self._ids),
            order_line=order_line,
            quantity=item["quantity"],
            reason=item["return_reason"],
        )

    def _order(self, order_id: str) -> _Order:
        legacy = legacy_from_id("Order", order_id)
        order = None if legacy is None else self.orders.get(legacy)
        if order is None:
            raise GraphQLError(f"Order {order_id} not found")
        return order

    # -- hooks: the warehouse's people --------------------------------------------------
    def add_order(
        self,
        *,
        order_number: str | None,
        partner_order_id: str | None,
        units_by_sku: Mapping[str, int],
        email: str | None = None,
    ) -> str:
        """Create a ShipHero order (as the shop's order sync would); returns its id."""
        with self.lock:
            legacy = 500000000 + next(self._ids)
            order = _Order(
                legacy_id=legacy,
                order_number=order_number,
                partner_order_id=partner_order_id,
                shop_name=self.shop_name,
                account_id=self.customer_account_id,
                address=_address(legacy, email),
                created_at=self.clock.now(),
            )
            self.orders[legacy] = order
            self._add_lines(order, units_by_sku)
            return order.id

    def _add_lines(self, order: _Order, units_by_sku: Mapping[str, int]) -> None:
        for sku, quantity in units_by_sku.items():
            if order.line_for(sku) is None:
                order.lines.append(_OrderLine(next(self._ids), sku, quantity))

    def on_loop_return(self, loop_return: dict[str, Any], *, with_order: bool = True) -> None:
        """Give ShipHero the return's order: partner_order_id = Loop provider_order_id,
        order_number = Loop order_name, one line per returned SKU."""
        if not with_order:
            return
        units = Counter(
            str(li["sku"]) for li in loop_return.get("line_items") or [] if li.get("sku")
        )
        partner = loop_return.get("provider_order_id")
        partner = None if partner in (None, "") else str(partner)
        with self.lock:
            existing = next(
                (
                    o
                    for o in self.orders.values()
                    if partner is not None and o.partner_order_id == partner
                ),
                None,
            )
            if existing is not None:
                self._add_lines(existing, units)
                return
            self.add_order(
                order_number=loop_return.get("order_name"),
                partner_order_id=partner,
                units_by_sku=units,
                email=loop_return.get("customer"),
            )

    def _returns_for(self, return_id: str) -> list[_Return]:
        return [ret for ret in self.returns.values() if ret.partner_id == str(return_id)]

    def has_rma(self, return_id: str) -> bool:
        with self.lock:
            return bool(self._returns_for(return_id))

    def rma_count(self, return_id: str) -> int:
        with self.lock:
            return len(self._returns_for(return_id))

    def receive(self, return_id: str, scenario: str) -> bool:
        """full/short/over end in "Warehouse Complete" (spelled differently each time, as
        the API's exact spelling is UNCONFIRMED); damaged -> "Damaged"; cancelled -> "RTS"."""
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; use one of {SCENARIOS}")
        with self.lock:
            found = self._returns_for(return_id)
            if not found:
                return False
            ret = found[0]
            for line in ret.lines:
                line.quantity_received = 0 if scenario == "cancelled" else line.quantity
                line.condition = None if scenario == "cancelled" else "good"
            if scenario == "short":
                ret.lines[-1].quantity_received -= 1
            elif scenario == "over":
                ret.lines[0].quantity_received += 1
            elif scenario == "damaged":
                ret.lines[0].condition = "damaged"
            ret.status = {"damaged": "Damaged", "cancelled": "RTS"}.get(
                scenario
            ) or WAREHOUSE_COMPLETE_SPELLINGS[
                next(self._receipts) % len(WAREHOUSE_COMPLETE_SPELLINGS)
            ]
            self._announce(ret)
            return True

    def poison(self, return_id: str) -> bool:
        """Everything received and "Warehouse Complete", but each line's condition holds a
        lone surrogate and a NUL (String fields carry any text; GraphQL checks no more)."""
        with self.lock:
            found = self._returns_for(return_id)
            if not found:
                return False
            ret = found[0]
            for line in ret.lines:
                line.quantity_received = line.quantity
            ret.status = WAREHOUSE_COMPLETE_SPELLINGS[0]
            ret.poison = {"line": {"condition": "good\ud800\x00"}}
            self._announce(ret)
            return True

    def set_status(
        self, return_id: str, status: str, received: Mapping[str, int] | None = None
    ) -> bool:
        """Set any status word (custom ones too) and optionally units received per SKU."""
        with self.lock:
            found = self._returns_for(return_id)
            if not found:
                return False
            ret = found[0]
            ret.status = status
            for line in ret.lines:
                if received is not None and line.order_line.sku in received:
                    line.quantity_received = received[line.order_line.sku]
            self._announce(ret)
            return True

    def _announce(self, ret: _Return) -> None:
        """ShipHero's "Return Update" webhook: a return was created or changed."""
        if self.webhook_sender is not None:
            self.webhook_sender.emit(
                Source.SHIPHERO, "Return Update", ret.partner_id or "", _webhook_view(ret)
            )

    def warehouse_config(self, base_url: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "kind": "shiphero",
            "base_url": base_url,
            "refresh_token": "${SHIPHERO_REFRESH_TOKEN}",
            "destinations": dict(DESTINATIONS),
        }
        if self.customer_account_id:
            config["customer_account_id"] = self.customer_account_id
        return config

    def secret_env(self) -> dict[str, str]:
        return {"SHIPHERO_REFRESH_TOKEN": self.refresh_token}


# -- helpers ----------------------------------------------------------------------------


def _webhook_view(ret: _Return) -> dict[str, Any]:
    """The "Return Update" body (wms-apis.md): legacy ints plus `*_uuid`, no partner_id."""
    return {
        "webhook_type": "Return Update",
        "test": False,
        "return_id": ret.legacy_id,
        "return_uuid": ret.id,
        "status": ret.status,
        "reason": ret.reason,
        "items": [
            {
                "id": line.legacy_id,
                "uuid": global_id("ReturnItem", line.legacy_id),
                "quantity": line.quantity,
                "quantity_received": line.quantity_received,
                "sku": line.order_line.sku,
                "item_reason": line.reason,
                "restock": 0,
                "partner_line_item_id": None,
                "warehouse_id": ret.warehouse_id,
            }
            for line in ret.lines
        ],
        "order_id": ret.order.legacy_id,
        "order_uuid": ret.order.id,
        "partner_order_id": ret.order.partner_order_id,
        "order_number": ret.order.order_number,
        "shop_name": ret.order.shop_name,
        "created_at": iso(ret.created_at),
        "label_type": ret.label_type,
        "label_cost": ret.label_cost,
        "picked_up": False,
        "tracking_number": ret.tracking_number,
        "date_used": None,
    }


def _json_object(req: Request) -> dict[str, Any]:
    try:
        body = req.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@functools.lru_cache(maxsize=256)
def _checked_document(query: str) -> tuple[DocumentNode | None, tuple[GraphQLError, ...]]:
    """Parse and validate once per distinct query text: clients resend the same few
    documents, and validation is most of the cost of an answer."""
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, (exc,)
    return document, tuple(validate(SCHEMA, document))


def _errors_response(errors: list[GraphQLError]) -> Response:
    # Document and variable errors: nothing ran, so there is no `data` at all.
    return json_response({"errors": [error.formatted for error in errors]})


def _root_keys(req: Request) -> list[str]:
    """Response keys of the request's root fields (for scripted error answers)."""
    try:
        payload = req.json()
        operation = get_operation_ast(parse(payload["query"]), payload.get("operationName"))
    except (ValueError, TypeError, KeyError, GraphQLError):
        return []
    if operation is None:
        return []
    return [
        (node.alias or node.name).value
        for node in operation.selection_set.selections
        if isinstance(node, FieldNode)
    ]


def _timestamp(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_timestamp(value, assume_utc=True)
    except ValueError:
        raise GraphQLError(f"Invalid ISODateTime: {value!r}") from None


def _address(legacy_id: int, email: str | None) -> dict[str, str]:
    return {
        "first_name": "Pat",
        "last_name": f"Customer {legacy_id % 10000}",
        "company": "",
        "address1": f"{100 + legacy_id % 900} Market St",
        "address2": "",
        "city": "Columbus",
        "state": "Ohio",
        "state_code": "OH",
        "zip": "43215",
        "country": "United States",
        "country_code": "US",
        "email": email or "customer@example.com",
        "phone": "555-0100",
    }
