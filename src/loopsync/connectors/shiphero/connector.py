"""ShipHero glue: find the order, create the return (RMA), poll return statuses.

ShipHero has no idempotency key: the Loop return id goes into `partner_id`, and
`find_rma` looks it up through `returns(order_id)` before a create is repeated
(docs/api/shiphero.md). Transport in `wire`, pure reading in `mapping`.

Batched look-ups (`prepare`): one document of aliased `orders(partner_order_id)` look-ups
and one of aliased `returns(order_id)` look-ups serve up to 50 returns each (GraphQL
aliases are standard and ShipHero prices each aliased field on its own: the emulator does
the same). An answer is used once, by its own return, and only while fresh (`Prepared`); a
return its batch did not settle (no answer for its alias, an error on it, a second order
or a second page) is looked up alone with the usual pages. A document whose answer names
another key than an alias asked for (aliases swapped on the way, a filter ignored)
settles none of its returns: an empty alias there could hide an existing RMA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import structlog

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    Locations,
    NotReady,
    PollResult,
    Prepared,
    PushRequest,
    WarehouseConnector,
    WarehouseSettings,
)
from loopsync.connectors.shiphero.mapping import (
    answers_for_others,
    created_return,
    line_sku,
    order_named,
    polled_status,
    read_order,
    read_warehouses,
    return_input,
    rma_ref,
    settled_aliases,
    webhook_secret,
)
from loopsync.connectors.shiphero.settings import ShipHeroSettings, parse_settings
from loopsync.connectors.shiphero.wire import (
    ACCOUNT_WAREHOUSES,
    BATCH_LINES,
    BATCH_ORDERS_FIRST,
    BATCH_RETURNS_FIRST,
    LINES_PAGE_SIZE,
    ORDER_LINES,
    RETURN_CREATE,
    RETURNS_PAGE_SIZE,
    SYSTEM,
    WEBHOOK_CREATE,
    ShipHeroClient,
    messages_by_root_key,
    orders_batch_query,
    orders_query,
    poll_query,
    returns_batch_query,
    returns_query,
)
from loopsync.errors import Ambiguous, DryRunViolation, OutcomeUnknown, Rejected, Unreadable
from loopsync.models import RmaRef

log = structlog.get_logger("loopsync.connectors.shiphero")

LOOKUP_BATCH = 50  # aliased look-ups per document at most (see `_chunk_size`)


@dataclass(frozen=True)
class _ReturnsOf:
    """A batched look-up of one order's returns, for find_rma."""

    order_id: str
    nodes: tuple[Any, ...]


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
        self.client = ShipHeroClient(self.cfg, settings, ctx)
        self._ready_orders: Prepared[tuple[dict[str, Any], ...]] = Prepared(ctx.clock)
        self._ready_returns: Prepared[_ReturnsOf] = Prepared(ctx.clock)

    @classmethod
    def parse_settings(cls, section: Section) -> ShipHeroSettings:
        return parse_settings(section)

    def list_locations(self) -> Locations:
        """The account's warehouses (`account` query; UNCONFIRMED fields, see wire)."""
        body = self.client.graphql("account", ACCOUNT_WAREHOUSES, {})
        return Locations(
            "ShipHero warehouse",
            read_warehouses(body),
            note="ids as return_create's warehouse_id takes them",
        )

    # -- engine interface ------------------------------------------------------------------
    def locate(self, req: PushRequest) -> dict[str, Any]:
        ret = req.ret
        wanted = ret.units_by_sku()
        if not wanted:
            raise Rejected(SYSTEM, f"Loop return {ret.id} has no line item with a SKU")
        if not (ret.provider_order_id or ret.order_name):
            raise Rejected(SYSTEM, f"Loop return {ret.id} names no order to look up")
        order = None
        if ret.provider_order_id:
            order = self._best_order(self._orders_by_partner(ret.id, ret.provider_order_id), wanted)
        if order is None and ret.order_name:
            order = self._best_order(self._orders(order_number=ret.order_name), wanted)
        if order is None:
            raise NotReady(f"order {ret.order_name or ret.provider_order_id} not found in ShipHero")
        missing = sorted(set(wanted) - set(order["skus"]))
        if missing:
            raise Rejected(
                SYSTEM,
                f"SKU {', '.join(missing)} not on ShipHero order "
                f"{order['order_number']} (Loop return {ret.id})",
            )
        return order

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        ready = self._ready_returns.take(req.ret.id)
        nodes: Iterator[Any] | tuple[Any, ...] = (
            ready.nodes
            if ready is not None and ready.order_id == located["order_id"]
            else self._returns_of_order(located["order_id"])
        )
        for node in nodes:
            if isinstance(node, dict) and node.get("partner_id") == req.ret.id:
                return rma_ref(req.ret.id, node)
        return None

    def prepare(self, reqs: Sequence[PushRequest]) -> None:
        """Batched look-ups for the coming returns (see the module docstring)."""
        self._ready_orders.clear()
        self._ready_returns.clear()
        wanted = [r for r in reqs if r.ret.provider_order_id and r.ret.units_by_sku()]
        self._prepare_orders({r.ret.id: r.ret.provider_order_id or "" for r in wanted})
        order_of: dict[str, str] = {}  # Loop return id -> the order locate will pick
        for req in wanted:
            ready = self._ready_orders.peek(req.ret.id)
            if ready is None:
                continue  # not settled: looked up alone
            try:
                order = self._best_order(list(ready), req.ret.units_by_sku())
            except Ambiguous:
                continue  # for a person to settle; locate says so

            if order is not None:
                order_of[req.ret.id] = order["order_id"]
        self._prepare_returns(order_of)

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        if self.ctx.dry_run:
            raise DryRunViolation(f"return_create for Loop return {req.ret.id} in a dry run")
        body = self.client.graphql(
            "return_create",
            RETURN_CREATE,
            {"data": return_input(req, located, self.cfg)},
            mutation=True,
        )
        try:
            ref = rma_ref(req.ret.id, created_return(body))
        except Unreadable as exc:
            # It may exist anyway: let the engine look it up rather than give up on it.
            raise OutcomeUnknown(
                SYSTEM, f"return_create answered without a readable return id ({exc})"
            ) from None
        log.debug(
            "shiphero.rma_created",
            return_id=req.ret.id,
            rma_id=ref.rma_id,
            legacy_id=ref.extra.get("legacy_id"),
        )
        return ref

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        result = PollResult(statuses={})
        batch = max(1, self.settings.poll_batch)
        for start in range(0, len(rmas), batch):
            self._poll_batch(rmas[start : start + batch], result)
        return result

    def create_webhook(self, name: str, url: str) -> str:
        """`webhook_create` (`loopsync webhooks register`, asked for explicitly): the
        shared signature secret ShipHero shows this once. Not idempotent at the remote
        (a second one with the name is refused), so it is never retried blindly."""
        if self.ctx.dry_run:
            raise DryRunViolation("webhook_create in a dry run")
        data: dict[str, Any] = {"name": name, "url": url}
        if self.cfg.shop_name:
            data["shop_name"] = self.cfg.shop_name
        if self.cfg.customer_account_id:
            data["customer_account_id"] = self.cfg.customer_account_id
        body = self.client.graphql("webhook_create", WEBHOOK_CREATE, {"data": data}, mutation=True)
        return webhook_secret(body)

    def rma_label(self, ref: RmaRef) -> str:
        return f"ShipHero return {ref.extra.get('legacy_id') or ref.rma_id}"

    def close(self) -> None:
        self.client.close()

    # -- batched look-ups -------------------------------------------------------------------
    def _chunk_size(self, op: str) -> int:
        """Aliases per document: LOOKUP_BATCH, or fewer so that one document costs at most
        half the credit bucket (a small configured bucket must not refuse the batch)."""
        per_alias = self.client.alias_cost(op)
        return max(1, min(LOOKUP_BATCH, int(self.cfg.credits_max / 2 // per_alias)))

    def _batched(
        self,
        op: str,
        keys: Iterable[str],
        document: Callable[[int], tuple[str, dict[str, str]]],
        variables: dict[str, Any],
        key_field: str,
    ) -> dict[str, list[Any]]:
        """The settled look-ups of `keys` (each once), by key: `document(n)` for n keys a
        request, at most `_chunk_size(op)` keys each. A document with a node whose
        `key_field` is not its alias's key settles nothing (`answers_for_others`)."""
        distinct = sorted(set(keys))
        found: dict[str, list[Any]] = {}
        size = self._chunk_size(op)
        for start in range(0, len(distinct), size):
            chunk = distinct[start : start + size]
            query, shared = document(len(chunk))
            values = {**shared, **variables, **{f"k{i}": key for i, key in enumerate(chunk)}}
            body = self.client.graphql(op, query, values, units=len(chunk), partial_ok=True)
            settled = settled_aliases(body, "a", len(chunk))
            if answers_for_others(settled, chunk, key_field):
                log.warning("shiphero.batch_answer_mismatched", operation=op, keys=len(chunk))
                continue  # each of them looked up alone
            for i, nodes in settled.items():
                found[chunk[i]] = nodes
        return found

    def _prepare_orders(self, partner_ids: dict[str, str]) -> None:
        """Orders by partner_order_id for many returns."""
        shared = {
            "shop_name": self.cfg.shop_name,
            "customer_account_id": self.cfg.customer_account_id,
        }
        answers = self._batched(
            "orders_batch",
            partner_ids.values(),
            lambda n: orders_batch_query(n, shared),
            {"first": BATCH_ORDERS_FIRST, "lines": BATCH_LINES},
            "partner_order_id",
        )
        found: dict[str, tuple[dict[str, Any], ...]] = {}
        for partner_id, nodes in answers.items():
            if not all(self._asked(node, {}) for node in nodes):
                continue  # another shop's order: looked up alone, where it is left out
            try:
                found[partner_id] = tuple(self._located(node) for node in nodes)
            except Unreadable:
                continue  # looked up alone, where the reason is reported
        for return_id, partner_id in partner_ids.items():
            if partner_id in found:
                self._ready_orders.put(return_id, found[partner_id])

    def _prepare_returns(self, order_of: dict[str, str]) -> None:
        """The first returns of many orders."""
        shared = {"customer_account_id": self.cfg.customer_account_id}
        found = self._batched(
            "returns_batch",
            order_of.values(),
            lambda n: returns_batch_query(n, shared),
            {"first": BATCH_RETURNS_FIRST},
            "order_id",
        )
        for return_id, order_id in order_of.items():
            if order_id in found:
                self._ready_returns.put(return_id, _ReturnsOf(order_id, tuple(found[order_id])))

    # -- orders ----------------------------------------------------------------------------
    def _orders_by_partner(self, return_id: str, partner_order_id: str) -> list[dict[str, Any]]:
        """The orders of this partner_order_id: the prepared answer, else a look-up."""
        ready = self._ready_orders.take(return_id)
        if ready is not None:
            return list(ready)
        return self._orders(partner_order_id=partner_order_id)

    def _orders(self, **match: str) -> list[dict[str, Any]]:
        """Every order matching `match` (plus the configured shop/account), with its SKUs;
        an order the answer holds that was not asked for is left out (`_asked`)."""
        query, filters = orders_query(
            {
                **match,
                "shop_name": self.cfg.shop_name,
                "customer_account_id": self.cfg.customer_account_id,
            }
        )
        variables = {**filters, "first": self.cfg.order_page_size, "lines": LINES_PAGE_SIZE}
        return [
            self._located(node)
            for node in self.client.paged("orders", query, variables, ("orders", "data"))
            if self._asked(node, match)
        ]

    def _asked(self, node: Any, match: dict[str, str]) -> bool:
        """Whether an order answered is one asked for: `match`, and the configured shop (a
        server that ignores a filter must not hand a return another customer's order)."""
        shop = {"shop_name": self.cfg.shop_name} if self.cfg.shop_name else {}
        return all(order_named(node, field, value) for field, value in {**match, **shop}.items())

    def _located(self, order: dict[str, Any]) -> dict[str, Any]:
        """The JSON-safe part of an order that create_rma needs (Unreadable when the
        order cannot be read: the return waits with the reason, nothing is guessed)."""
        located, page = read_order(order)
        if page is not None:
            located["skus"] = sorted(
                set(located["skus"]) | self._more_skus(located["order_id"], page)
            )
        return located

    def _more_skus(self, order_id: str, after: str | None) -> set[str]:
        nodes = self.client.paged(
            "order_lines",
            ORDER_LINES,
            {"id": order_id, "lines": LINES_PAGE_SIZE},
            ("order", "data", "line_items"),
            after=after,
        )
        return {sku for node in nodes if (sku := line_sku(node))}

    @staticmethod
    def _best_order(orders: list[dict[str, Any]], wanted: dict[str, int]) -> dict[str, Any] | None:
        """The order holding every SKU of the return, else the first one (several shops
        can share an order number). Two orders that both hold every SKU cannot be told
        apart: Ambiguous (a guess could also miss the RMA made on the other one)."""
        holding = [o for o in orders if set(wanted) <= set(o["skus"])]
        if len(holding) > 1:
            numbers = ", ".join(str(o.get("order_number") or o["order_id"]) for o in holding)
            raise Ambiguous(
                SYSTEM,
                f"{len(holding)} ShipHero orders hold every SKU of the "
                f"return: {numbers}; set warehouse.shop_name or settle "
                "it by hand",
            )
        return holding[0] if holding else (orders[0] if orders else None)

    # -- returns ---------------------------------------------------------------------------
    def _returns_of_order(self, order_id: str) -> Iterator[dict[str, Any]]:
        query, filters = returns_query(
            {"order_id": order_id, "customer_account_id": self.cfg.customer_account_id}
        )
        yield from self.client.paged(
            "returns", query, {**filters, "first": RETURNS_PAGE_SIZE}, ("returns", "data")
        )

    def _poll_batch(self, batch: Sequence[RmaRef], result: PollResult) -> None:
        variables = {f"id{i}": ref.rma_id for i, ref in enumerate(batch)}
        body = self.client.graphql(
            "poll", poll_query(len(batch)), variables, units=len(batch), partial_ok=True
        )
        data = body.get("data")
        data = data if isinstance(data, dict) else {}
        field_errors = messages_by_root_key(body)
        for i, ref in enumerate(batch):
            try:
                result.statuses[ref.return_id] = polled_status(
                    ref, data.get(f"r{i}"), field_errors.get(f"r{i}")
                )
            except Unreadable as exc:  # held, with the reason, until ShipHero's data is fixed
                result.errors[ref.return_id] = str(exc)
