"""The toy kind's glue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from loopsync.configkit import Section
from loopsync.connectors.base import (
    ConnectorContext,
    PollResult,
    PushRequest,
    WarehouseConnector,
    WarehouseSettings,
)
from loopsync.errors import Unreadable
from loopsync.models import RmaRef
from tests.toykind.mapping import status
from tests.toykind.settings import ToySettings, parse_settings
from tests.toykind.wire import ToyWire


class ToyConnector(WarehouseConnector):
    kind: ClassVar[str] = "toy"
    default_base_url: ClassVar[str] = "memory://toy"
    default_statuses: ClassVar[dict[str, list[str]]] = {
        "process": ["done"], "flag": [], "ignore": ["open"]}

    def __init__(self, settings: WarehouseSettings, ctx: ConnectorContext) -> None:
        super().__init__(settings, ctx)
        self.wire = ToyWire()

    @classmethod
    def parse_settings(cls, section: Section) -> ToySettings:
        return parse_settings(section)

    def locate(self, req: PushRequest) -> dict[str, Any]:
        return {}

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        return RmaRef(req.ret.id, req.ret.id) if req.ret.id in self.wire.rmas else None

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        self.wire.rmas[req.ret.id] = {"status": "open", "expected": 1, "received": 0}
        return RmaRef(req.ret.id, req.ret.id)

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        result = PollResult(statuses={})
        for ref in rmas:
            try:
                result.statuses[ref.return_id] = status(ref, self.wire.rmas.get(ref.rma_id))
            except Unreadable as exc:
                result.errors[ref.return_id] = str(exc)
        return result
