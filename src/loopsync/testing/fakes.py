"""In-memory stand-ins for Loop and a warehouse, for engine tests (no network).

`FakeLoop` offers the engine's Loop API (`engine.LoopApi`, duck-typed) over a dict of raw
returns. Which action a return's state allows, the state it leads to and the refusal's
wording are the Loop emulator's (`sandbox.loop.action_conflict`, `ACTION_STATES`), read
the way `LoopClient` reads them (`classify_action_body`): the fake and the emulator cannot
disagree about Loop's state machine. Tests that need Loop's wire format too (pages,
cursors, error bodies, the `Date` header) use `emulated_loop` (the emulator itself, in
process) instead.

Faults are switches: `down` (every call a TransientError), `lose_answer` (the next write
of that name happens, then its answer is lost: OutcomeUnknown).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
from loopsync.errors import OutcomeUnknown, Rejected, TransientError
from loopsync.loop_client import classify_action_body
from loopsync.models import ItemStatus, RmaRef, RmaStatus
from loopsync.sandbox.loop import ACTION_STATES, action_conflict
from loopsync.testing.clock import FakeClock
from loopsync.testing.factories import FAKE_STATUSES, warehouse_settings
from loopsync.timeutil import parse_timestamp


@dataclass
class Page:
    """One page of returns, shaped like `loop_client.ReturnsPage`."""

    returns: list[Any]
    next_cursor: str | None
    cursor: str | None = None
    server_date: datetime | None = None


class FakeLoop:
    """Loop in memory: `returns` by id (tests edit them in place), every accepted write in
    `writes` as (action, return id), notes by return id in `notes_by`."""

    def __init__(self, returns: Sequence[dict[str, Any]] | None = None, page_size: int = 2) -> None:
        self.returns: dict[str, dict[str, Any]] = {r["id"]: r for r in (returns or [])}
        self.page_size = page_size
        self.writes: list[tuple[str, str]] = []
        self.notes_by: dict[str, list[str]] = {}
        self.lose_answer: set[str] = set()  # action names whose next answer is lost
        self.down = False
        self.pages_read = 0

    def _check(self) -> None:
        if self.down:
            raise TransientError("loop", "down")

    def iter_returns(
        self, start: datetime, end: datetime, state: str, *, cursor: str | None = None
    ) -> Iterator[Page]:
        self._check()
        rows = sorted(
            (
                r
                for r in self.returns.values()
                if r["state"] == state and start <= parse_timestamp(r["updated_at"]) <= end
            ),
            key=lambda r: r["id"],
        )
        offset = int(cursor) if cursor else 0
        while True:
            chunk = rows[offset : offset + self.page_size]
            offset += self.page_size
            nxt = str(offset) if offset < len(rows) else None
            self.pages_read += 1
            yield Page(chunk, nxt)
            if nxt is None:
                return

    def asn_report(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        self._check()
        return []

    def return_details(self, rid: str) -> dict[str, Any]:
        self._check()
        return dict(self.returns[rid])

    def _act(self, name: str, rid: str, new_state: str | None = None) -> None:
        self._check()
        ret = self.returns.get(rid, {})
        if new_state:
            refusal = action_conflict(str(ret["state"]), name)
            if refusal is not None:
                classify_action_body(refusal)  # raises StateConflict, as LoopClient does
        self.writes.append((name, rid))
        if new_state:
            ret["state"] = new_state
        if name in self.lose_answer:
            self.lose_answer.discard(name)
            raise OutcomeUnknown("loop", "answer lost")

    def process(self, rid: str) -> None:
        self._act("process", rid, ACTION_STATES["process"])

    def flag(self, rid: str) -> None:
        self._act("flag", rid, ACTION_STATES["flag"])

    def add_note(self, rid: str, content: str) -> None:
        self.notes_by.setdefault(rid, []).append(content)
        self._act("note", rid)

    def notes(self, rid: str) -> list[dict[str, Any]]:
        self._check()
        return [{"content": c} for c in self.notes_by.get(rid, [])]

    def grade(self, items: list[dict[str, Any]]) -> None:
        self._act("grade", str(len(items)))

    def assess(self, items: list[dict[str, Any]]) -> None:
        self._act("assess", str(len(items)))


@dataclass
class FakeRma:
    rid: str
    skus: dict[str, int]
    status: str = "pending"
    received: dict[str, int] = field(default_factory=dict)
    conditions: dict[str, str] = field(default_factory=dict)


class FakeWarehouse(WarehouseConnector):
    """A warehouse in memory: knows the orders in `orders`, keeps RMAs by Loop return id.
    `finish()` plays the warehouse receiving a return. Switches: `down`, `reject` (return
    ids refused at create), `lose_create_answer` (the next create happens, answer lost)."""

    kind: ClassVar[str] = "fake"
    default_base_url: ClassVar[str] = "http://fake"
    default_statuses: ClassVar[dict[str, list[str]]] = FAKE_STATUSES

    def __init__(
        self, settings: WarehouseSettings | None = None, ctx: ConnectorContext | None = None
    ) -> None:
        super().__init__(
            settings or warehouse_settings(),
            ctx or ConnectorContext(merchant="acme", clock=FakeClock()),
        )
        self.orders: set[str] = set()
        self.rmas: dict[str, FakeRma] = {}
        self.created = 0
        self.lose_create_answer = False
        self.reject: set[str] = set()
        self.down = False

    @classmethod
    def parse_settings(cls, section: Section) -> None:  # noqa: ARG003 - the interface
        return None  # the fake has no keys of its own

    def locate(self, req: PushRequest) -> dict[str, Any]:
        if self.down:
            raise TransientError("fake", "down")
        if req.ret.order_name not in self.orders:
            raise NotReady(f"order {req.ret.order_name} not found")
        return {"order": req.ret.order_name}

    def find_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef | None:
        r = self.rmas.get(req.ret.id)
        return RmaRef(req.ret.id, f"RMA-{req.ret.id}") if r else None

    def create_rma(self, req: PushRequest, located: dict[str, Any]) -> RmaRef:
        if req.ret.id in self.reject:
            raise Rejected("fake", "SKU not on order")
        self.created += 1
        self.rmas[req.ret.id] = FakeRma(req.ret.id, req.ret.units_by_sku())
        if self.lose_create_answer:
            self.lose_create_answer = False
            raise OutcomeUnknown("fake", "answer lost")
        return RmaRef(req.ret.id, f"RMA-{req.ret.id}")

    def poll(self, rmas: Sequence[RmaRef]) -> PollResult:
        if self.down:
            raise TransientError("fake", "down")
        out = {}
        for ref in rmas:
            r = self.rmas[ref.return_id]
            items = tuple(
                ItemStatus(s, q, r.received.get(s, 0), r.conditions.get(s))
                for s, q in r.skus.items()
            )
            out[ref.return_id] = RmaStatus(
                ref.return_id,
                ref.rma_id,
                r.status,
                sum(r.skus.values()),
                sum(r.received.values()),
                items,
            )
        return PollResult(out)

    def finish(
        self, rid: str, status: str = "complete", short: int = 0, condition: str | None = None
    ) -> None:
        """The warehouse received return `rid`: every unit but `short` of the first SKU,
        which gets `condition` when given; the RMA's status becomes `status`."""
        r = self.rmas[rid]
        r.status = status
        r.received = dict(r.skus)
        first = next(iter(r.skus))
        r.received[first] -= short
        if condition:
            r.conditions[first] = condition
