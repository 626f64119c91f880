"""Shelfwise: creates one return per Loop return (reference = the Loop return id) on the
order found by the Loop order name, and polls them by reference. Glue only: settings,
wire and mapping do the work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    NotReady,
    PollResult,
    PushRequest,
    WarehouseConnector,
    WarehouseSettings,
)
from loopsync.errors import DryRunViolation, Unreadable
from loopsync.models import RmaRef

from . import mapping
from .settings import ShelfwiseSettings, parse_settings
from .wire import ShelfwiseClient


class ShelfwiseConnector(WarehouseConnector):
    kind: ClassVar[str] = "shelfwise"
    default_base_url: ClassVar[str] = "https://api.shelfwise.example"
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": ["closed"],
        "flag": [],
        "ignore": ["open", "receiving"],
    }

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.own: ShelfwiseSettings = settings.connector
        self.client = ShelfwiseClient(settings, self.own, ctx)

    @classmethod
    def parse_settings(cls, section: Section) -> ShelfwiseSettings:
        return parse_settings(section)

    def locate(self, req: PushRequest) -> dict[str, Any]:
        name = req.ret.order_name or ""
        orders = self.client.orders_named(name) if name else []
        if not orders:
            raise NotReady(f"Shelfwise has no order {name or '(no order name)'} yet")
        return {"order_id": mapping.order_id(orders[0])}

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        for record in self.client.returns([req.ret.id]):
            if mapping.reference_of(record) == req.ret.id:
                return mapping.rma_ref(record)
        return None

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        if self.ctx.dry_run:
            raise DryRunViolation(f"create Shelfwise return {req.ret.id} in a dry run")
        record = self.client.create(
            mapping.create_body(req.ret, located["order_id"], req.destination)
        )
        if record is None:  # 409: it exists (an earlier attempt): the look-up names it
            found = self.find_rma(req, located)
            if found is None:
                raise Unreadable(f"Shelfwise says return {req.ret.id} exists but lists none")
            return found
        return mapping.rma_ref(record)

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        result = PollResult({})
        wanted = {ref.return_id for ref in rmas}
        for record in self.client.returns(sorted(wanted)):
            try:
                status = mapping.rma_status(record)
            except Unreadable as exc:
                reference = _reference_or_none(record)
                if reference in wanted:
                    result.errors[reference] = str(exc)
                else:
                    result.problems.append(str(exc))
                continue
            if status.return_id in wanted:
                result.statuses[status.return_id] = status
        return result

    def close(self) -> None:
        self.client.close()


def _reference_or_none(record: Any) -> str | None:
    try:
        return mapping.reference_of(record)
    except Unreadable:
        return None
