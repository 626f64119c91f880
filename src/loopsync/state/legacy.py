"""TRANSITIONAL: the engine's dict API, removed when the stages move to the typed API.

`engine.py` was written against the old `Store` (rows as dicts, stages and effect
statuses as bare strings, the effect status "done"). While it is split into stages in
parallel, `Store` keeps those methods here, each delegating to the typed repositories and
converting rows to dicts. The old effect status "done" exists only at this boundary: it is
translated to and from `EffectStatus.SUCCEEDED`. `loopsync.store` re-exports this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from loopsync.state.cursors import Cursor, CursorRepository
from loopsync.state.ledger import Effect, EffectKind, EffectStatus, Ledger
from loopsync.state.returns import LOOKUP, Lookup, ReturnHead, ReturnRepository, Stage, Upserted
from loopsync.state.rmas import AsnRepository, RmaRepository, RmaRow
from loopsync.state.runs import RunRepository

# The old module constants, with their old values.
NEW, SKIPPED, WAITING, STALE, REJECTED = "new", "skipped", "waiting", "stale", "rejected"
PUSHING, OPEN, ACTING, REPORTED, DONE = "pushing", "open", "acting", "reported", "done"
STAGES = tuple(s.value for s in Stage)
PENDING, INTENT, SUCCEEDED, SETTLED, FAILED = "pending", "intent", "done", "settled", "failed"
NEW_RETURN, CHANGED_RETURN = Upserted.NEW.value, Upserted.CHANGED.value

__all__ = ["ACTING", "CHANGED_RETURN", "DONE", "FAILED", "INTENT", "LOOKUP", "NEW",
           "NEW_RETURN", "OPEN", "PENDING", "PUSHING", "REJECTED", "REPORTED", "SETTLED",
           "SKIPPED", "STAGES", "STALE", "SUCCEEDED", "WAITING", "Cursor", "EngineDictApi"]


def _old_status(status: EffectStatus) -> str:
    return SUCCEEDED if status == EffectStatus.SUCCEEDED else status.value


def _new_status(status: str) -> EffectStatus:
    return EffectStatus.SUCCEEDED if status == SUCCEEDED else EffectStatus(status)


def _effect_dict(e: Effect, *, decoded: bool) -> dict[str, Any]:
    row: dict[str, Any] = {
        "key": e.key, "return_id": e.return_id, "kind": e.kind.value,
        "status": _old_status(e.status), "attempts": e.attempts, "last_error": e.last_error,
        "result": None if e.result is None else json.dumps(e.result),
        "payload": e.payload if decoded else json.dumps(e.payload),
        "created_at": e.created_at, "updated_at": e.updated_at}
    if decoded:
        row["seq"] = e.seq
    return row


def _rma_dict(r: RmaRow) -> dict[str, Any]:
    return asdict(r)


def _head(head: dict[str, Any] | Lookup | None) -> ReturnHead | Lookup | None:
    if head is None or isinstance(head, Lookup):
        return head
    return ReturnHead(head["hash"], head["updated_at"], Stage(head["stage"]))


class EngineDictApi:
    """# -- transitional: the engine's dict API, removed when the stages move to the typed
    API --"""

    returns: ReturnRepository
    ledger: Ledger
    cursors: CursorRepository
    runs: RunRepository
    rmas: RmaRepository
    asn: AsnRepository

    # returns
    def upsert_return(self, rid: str, raw: dict[str, Any], *, state: str,
                      updated_at: datetime, created_at: datetime | None,
                      destination_id: str | None, order_name: str | None,
                      head: dict[str, Any] | Lookup | None = LOOKUP) -> str | None:
        done = self.returns.upsert(rid, raw, state=state, updated_at=updated_at,
                                   created_at=created_at, destination_id=destination_id,
                                   order_name=order_name, head=_head(head))
        return None if done is None else done.value

    def return_heads(self, rids: list[str]) -> dict[str, dict[str, Any]]:
        return {rid: {"hash": h.hash, "updated_at": h.updated_at, "stage": h.stage.value}
                for rid, h in self.returns.heads(rids).items()}

    def get_return_row(self, rid: str) -> dict[str, Any] | None:
        row = self.returns.get(rid)
        return None if row is None else asdict(row) | {"stage": row.stage.value}

    def snapshot(self, rid: str) -> dict[str, Any] | None:
        return self.returns.snapshot(rid)

    def set_stage(self, rid: str, stage: str, reason: str | None = None, *,
                  action: str | None = None, keep_wait_since: bool = False) -> None:
        self.returns.move(rid, Stage(stage), reason, action=action,
                          keep_wait_since=keep_wait_since)

    def return_ids_in_stage(self, *stages: str, limit: int | None = None) -> list[str]:
        return self.returns.ids_in_stage(*(Stage(s) for s in stages), limit=limit)

    # ASN and RMAs
    def upsert_asn_row(self, row: dict[str, Any]) -> None:
        self.asn.upsert(row)

    def asn_rows_for(self, rid: str) -> list[dict[str, Any]]:
        return self.asn.rows_for(rid)

    def link_rma(self, rid: str, rma_id: str, extra: dict[str, Any]) -> None:
        self.rmas.link(rid, rma_id, extra)

    def rma(self, rid: str) -> dict[str, Any] | None:
        row = self.rmas.get(rid)
        return None if row is None else _rma_dict(row)

    def rma_owners(self, rma_id: str) -> list[str]:
        return self.rmas.owners(rma_id)

    def open_rmas(self) -> list[dict[str, Any]]:
        return [_rma_dict(r) for r in self.rmas.open()]

    def record_poll(self, rid: str, status_word: str, status_json: str, fingerprint: str,
                    decision: str, reason: str) -> str | None:
        return self.rmas.record_poll(rid, status_word, status_json, fingerprint, decision,
                                     reason)

    # effects ledger
    def effect(self, key: str) -> dict[str, Any] | None:
        e = self.ledger.get(key)
        return None if e is None else _effect_dict(e, decoded=False)

    def plan_effect(self, key: str, rid: str, kind: str, payload: Any = None) -> None:
        self.ledger.plan(key, rid, EffectKind(kind), payload)

    def effect_intent(self, key: str, rid: str, kind: str, payload: Any = None) -> None:
        self.ledger.intent(key, rid, EffectKind(kind), payload)

    def effect_outcome(self, key: str, status: str, *, result: Any = None,
                       error: str | None = None) -> None:
        self.ledger.outcome(key, _new_status(status), result=result, error=error)

    def effect_not_sent(self, key: str, error: str) -> None:
        self.ledger.not_sent(key, error)

    def effect_error(self, key: str, error: str) -> None:
        self.ledger.error(key, error)

    def pending_effects(self, rid: str | None = None) -> list[dict[str, Any]]:
        return [_effect_dict(e, decoded=True) for e in self.ledger.pending(rid)]

    # cursors and problems
    def cursor(self, stream: str, state: str) -> Cursor:
        return self.cursors.get(stream, state)

    def save_page(self, stream: str, state: str, window_from: datetime, window_to: datetime,
                  next_cursor: str | None) -> None:
        self.cursors.save_page(stream, state, window_from, window_to, next_cursor)

    def complete_window(self, stream: str, state: str, window_to: datetime) -> None:
        self.cursors.complete_window(stream, state, window_to)

    def set_done_until(self, stream: str, state: str, done_until: datetime | None) -> None:
        self.cursors.set_done_until(stream, state, done_until)

    def last_updated_at(self, stream: str, state: str) -> datetime | None:
        return self.cursors.last_updated_at(stream, state)

    def add_problem(self, rid: str | None, stage: str, message: str, run_id: str | None) -> None:
        self.runs.add_problem(rid, stage, message, run_id)
