"""The warehouse side of a return: the link to its RMA with the last polled status
(`rmas`), and Loop's ASN report rows (`asn_rows`) that a push sends along."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loopsync.errors import TransitionRefused
from loopsync.redaction import dumps_redacted, redact_optional
from loopsync.state.db import Db, text
from loopsync.state.returns import Stage


@dataclass(frozen=True)
class RmaRow:
    """A return's RMA link; `extra` is the connector's own data, decoded."""

    return_id: str
    rma_id: str
    extra: dict[str, Any]
    created_at: str | None
    status: str | None
    status_json: str | None
    fingerprint: str | None
    polled_at: str | None
    decision: str | None
    decision_reason: str | None


_COLUMNS = (
    "m.return_id, m.rma_id, m.extra, m.created_at, m.status, m.status_json, "
    "m.fingerprint, m.polled_at, m.decision, m.decision_reason"
)


def _rma(r: tuple[Any, ...]) -> RmaRow:
    return RmaRow(str(r[0]), str(r[1]), json.loads(r[2] or "{}"), *(text(v) for v in r[3:10]))


@dataclass(frozen=True)
class PollRow:
    """One status change seen on a return's RMA (the `polls` history)."""

    return_id: str
    rma_id: str | None
    status: str | None
    decision: str | None
    reason: str | None
    at: str


# The keys of `extra` that number the RMA itself (ShipHero's legacy id, Xoro's ASN
# number); the others (an order id, a date, a flag) are no RMA's name: an order with two
# returns would answer with either.
RMA_NUMBER_KEYS = ("legacy_id", "asn_number")


class RmaRepository:
    def __init__(self, db: Db) -> None:
        self.db = db

    def link(self, rid: str, rma_id: str, extra: dict[str, Any]) -> None:
        self.db.execute(
            "insert into rmas (return_id, rma_id, extra, created_at) values (?, ?, ?, ?) "
            "on conflict (return_id) do update set rma_id = excluded.rma_id, "
            "extra = excluded.extra, created_at = excluded.created_at",
            [rid, rma_id, dumps_redacted(extra), self.db.now()],
        )

    def get(self, rid: str) -> RmaRow | None:
        row = self.db.one(f"select {_COLUMNS} from rmas m where return_id = ?", [rid])
        return _rma(row) if row else None

    def owners(self, rma_id: str) -> list[str]:
        """The Loop returns linked to this RMA id (more than one means a bad match)."""
        return [
            str(r[0])
            for r in self.db.execute(
                "select return_id from rmas where rma_id = ? order by return_id", [rma_id]
            )
        ]

    def open(self) -> list[RmaRow]:
        """The RMAs of returns in stage `open`, least recently polled first."""
        return [
            _rma(r)
            for r in self.db.execute(
                f"select {_COLUMNS} from rmas m join returns r on r.id = m.return_id "
                "where r.stage = ? "
                "order by m.polled_at is not null, m.polled_at, m.return_id",
                [Stage.OPEN.value],
            )
        ]

    def record_poll(
        self,
        rid: str,
        status_word: str,
        status_json: str,
        fingerprint: str,
        decision: str,
        reason: str,
    ) -> str | None:
        """Store a polled status; returns the fingerprint it replaces (None: first poll)."""
        row = self.db.one("select fingerprint from rmas where return_id = ?", [rid])
        cur = self.db.execute(  # plain SQL: a poll stage records thousands of these
            "update rmas set status = ?, status_json = ?, fingerprint = ?, polled_at = ?, "
            "decision = ?, decision_reason = ? where return_id = ?",
            [
                redact_optional(status_word),
                redact_optional(status_json),
                fingerprint,
                self.db.now(),
                decision,
                redact_optional(reason),
                rid,
            ],
        )
        if cur.rowcount == 0:
            raise TransitionRefused(f"RMA of return {rid}", "polled", None)
        previous = text(row[0]) if row else None
        if previous != fingerprint:  # the poll history: a row per status change only
            self.db.execute(
                "insert into polls (return_id, rma_id, status, fingerprint, decision, reason, "
                "at) select return_id, rma_id, status, fingerprint, decision, decision_reason, "
                "polled_at from rmas where return_id = ?",
                [rid],
            )
        return previous

    def polls(self, rid: str) -> list[PollRow]:
        """The statuses this return's RMA was seen in, oldest first (schema 3 on)."""
        return [
            PollRow(str(r[0]), text(r[1]), text(r[2]), text(r[3]), text(r[4]), str(r[5]))
            for r in self.db.execute(
                "select return_id, rma_id, status, decision, reason, at from polls "
                "where return_id = ? order by id",
                [rid],
            )
        ]

    def find(self, rma: str) -> str | None:
        """The Loop return linked to an RMA id, or to a number a connector keeps with it
        (ShipHero's legacy id, Xoro's ASN number): matched exactly, never in part."""
        row = self.db.one(
            "select return_id from rmas where rma_id = ? order by return_id limit 1", [rma]
        )
        if row:
            return text(row[0])
        for rid, extra in self.db.execute(
            "select return_id, extra from rmas where instr(extra, ?) > 0 order by return_id", [rma]
        ):
            values = json.loads(extra or "{}")
            if isinstance(values, dict) and rma in (
                str(values[k]) for k in RMA_NUMBER_KEYS if values.get(k) is not None
            ):
                return str(rid)
        return None


class AsnRepository:
    def __init__(self, db: Db) -> None:
        self.db = db

    def upsert(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "insert into asn_rows (id, return_line_item_id, return_id, tracking_number, "
            "updated_at, snapshot) values (?, ?, ?, ?, ?, ?) "
            "on conflict (id, return_line_item_id) do update set "
            "return_id = excluded.return_id, tracking_number = excluded.tracking_number, "
            "updated_at = excluded.updated_at, snapshot = excluded.snapshot",
            # UNCONFIRMED: we read the ASN row's `id` as the Loop return id (one row per
            # returned line item, as PostHog keys them).
            [
                str(row.get("id")),
                str(row.get("return_line_item_id")),
                str(row.get("id")),
                row.get("tracking_number"),
                row.get("updated_at"),
                dumps_redacted(row),
            ],
        )

    def rows_for(self, rid: str) -> list[dict[str, Any]]:
        """The ASN rows of a return, as Loop sent them (redacted)."""
        return [
            json.loads(r[0])
            for r in self.db.execute("select snapshot from asn_rows where return_id = ?", [rid])
        ]
