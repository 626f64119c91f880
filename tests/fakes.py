"""In-memory stand-ins for Loop and a warehouse, for engine unit tests (no network).
`lose_answer` makes a write take effect and then fail as if the answer was lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from loopsync.config import LoopSettings, MerchantConfig
from loopsync.configkit import Secret
from loopsync.connectors.base import NotReady, PollResult, WarehouseConnector, WarehouseSettings
from loopsync.rules import GradingRules, StatusRules
from loopsync.errors import OutcomeUnknown, Rejected, StateConflict, TransientError
from loopsync.models import ItemStatus, RmaRef, RmaStatus
from loopsync.timeutil import parse_timestamp


@dataclass
class Page:
    returns: list[dict[str, Any]]
    next_cursor: str | None
    cursor: str | None = None


class FakeLoop:
    def __init__(self, returns: list[dict[str, Any]] | None = None, page_size: int = 2) -> None:
        self.returns = {r["id"]: r for r in (returns or [])}
        self.page_size = page_size
        self.writes: list[tuple[str, str]] = []
        self.notes_by: dict[str, list[str]] = {}
        self.lose_answer: set[str] = set()   # action names whose next answer is lost
        self.down = False
        self.pages_read = 0

    def _check(self) -> None:
        if self.down:
            raise TransientError("loop", "down")

    def iter_returns(self, start, end, state, *, cursor=None):
        self._check()
        rows = sorted((r for r in self.returns.values() if r["state"] == state
                       and start <= parse_timestamp(r["updated_at"]) <= end),
                      key=lambda r: r["id"])
        offset = int(cursor) if cursor else 0
        while True:
            chunk = rows[offset:offset + self.page_size]
            offset += self.page_size
            nxt = str(offset) if offset < len(rows) else None
            self.pages_read += 1
            yield Page(chunk, nxt)
            if nxt is None:
                return

    def asn_report(self, start, end):
        self._check()
        return []

    def return_details(self, rid):
        self._check()
        return dict(self.returns[rid])

    def _act(self, name, rid, new_state=None):
        self._check()
        ret = self.returns.get(rid, {})
        if new_state and ret["state"] != "open":
            raise StateConflict("loop", f"Return is {ret['state']}", code="UNPROCESSABLE_RETURN")
        self.writes.append((name, rid))
        if new_state:
            ret["state"] = new_state
        if name in self.lose_answer:
            self.lose_answer.discard(name)
            raise OutcomeUnknown("loop", "answer lost")

    def process(self, rid):
        self._act("process", rid, "closed")

    def flag(self, rid):
        self._act("flag", rid, "review")

    def add_note(self, rid, content):
        self.notes_by.setdefault(rid, []).append(content)
        self._act("note", rid)

    def notes(self, rid):
        self._check()
        return [{"content": c} for c in self.notes_by.get(rid, [])]

    def grade(self, items):
        self._act("grade", str(len(items)))

    def assess(self, items):
        self._act("assess", str(len(items)))


@dataclass
class FakeRma:
    rid: str
    skus: dict[str, int]
    status: str = "pending"
    received: dict[str, int] = field(default_factory=dict)
    conditions: dict[str, str] = field(default_factory=dict)


class FakeWarehouse(WarehouseConnector):
    kind = "fake"
    default_base_url = "http://fake"
    default_statuses = {"process": ["complete"], "flag": ["damaged"], "ignore": ["pending"],
                        "report": ["cancelled"]}

    def __init__(self, settings=None, ctx=None) -> None:
        super().__init__(settings, ctx)
        self.orders: set[str] = set()
        self.rmas: dict[str, FakeRma] = {}
        self.created = 0
        self.lose_create_answer = False
        self.reject: set[str] = set()
        self.down = False

    @classmethod
    def parse_settings(cls, section):
        return None

    def locate(self, req):
        if self.down:
            raise TransientError("fake", "down")
        if req.ret.order_name not in self.orders:
            raise NotReady(f"order {req.ret.order_name} not found")
        return {"order": req.ret.order_name}

    def find_rma(self, req, located):
        r = self.rmas.get(req.ret.id)
        return RmaRef(req.ret.id, f"RMA-{req.ret.id}") if r else None

    def create_rma(self, req, located):
        if req.ret.id in self.reject:
            raise Rejected("fake", "SKU not on order")
        self.created += 1
        self.rmas[req.ret.id] = FakeRma(req.ret.id, req.ret.units_by_sku())
        if self.lose_create_answer:
            self.lose_create_answer = False
            raise OutcomeUnknown("fake", "answer lost")
        return RmaRef(req.ret.id, f"RMA-{req.ret.id}")

    def poll(self, rmas):
        if self.down:
            raise TransientError("fake", "down")
        out = {}
        for ref in rmas:
            r = self.rmas[ref.return_id]
            items = tuple(ItemStatus(s, q, r.received.get(s, 0), r.conditions.get(s))
                          for s, q in r.skus.items())
            out[ref.return_id] = RmaStatus(ref.return_id, ref.rma_id, r.status,
                                           sum(r.skus.values()), sum(r.received.values()), items)
        return PollResult(out)

    def finish(self, rid, status="complete", short=0, condition=None):
        r = self.rmas[rid]
        r.status = status
        r.received = dict(r.skus)
        first = next(iter(r.skus))
        r.received[first] -= short
        if condition:
            r.conditions[first] = condition


def loop_return(rid: str, *, state="open", updated="2026-05-01T10:00:00Z", dest=12,
                skus=("A", "B")) -> dict[str, Any]:
    return {"id": rid, "state": state, "updated_at": updated, "created_at": updated,
            "order_name": f"#{rid}", "provider_order_id": f"9{rid}", "destination_id": dest,
            "line_items": [{"line_item_id": int(rid) * 10 + i, "sku": s, "return_reason": "Too big"}
                           for i, s in enumerate(skus)]}


def merchant_config(tmp_path, *, grading: GradingRules | None = None,
                    states=("open", "closed", "cancelled", "review", "expired")) -> MerchantConfig:
    rules = StatusRules.build(**{k: v for k, v in FakeWarehouse.default_statuses.items()},
                              flag_conditions=["damaged"])
    wh = WarehouseSettings(kind="fake", base_url="http://fake", destinations={"12": "WH-1"},
                           statuses=rules, grading=grading or GradingRules(),
                           order_wait=timedelta(days=7), poll_batch=50, timeout=5, connector=None)
    loop = LoopSettings(base_url="http://loop", api_key=Secret("LOOP_API_KEY", "k-123456"),
                        start_at=parse_timestamp("2026-04-01T00:00:00Z"),
                        lookback=timedelta(minutes=15), window=timedelta(days=120), page_size=2,
                        states=tuple(states), asn_enabled=False, asn_window=timedelta(days=1),
                        requests_per_minute=280, timeout=5)
    return MerchantConfig(file="test.yaml", merchant="acme", state_path=tmp_path / "acme.sqlite",
                          every=timedelta(minutes=15), loop=loop, warehouse=wh)
