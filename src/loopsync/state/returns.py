"""Loop returns as stored: the latest snapshot of each and its pipeline stage.

A return moves between stages only along `TRANSITIONS`, and every stage update is guarded:
`UPDATE ... WHERE stage IN (the stages allowed to move there)` with a row-count check, so
a move from the wrong stage raises `TransitionRefused` and changes nothing. The one move
the ingest makes by itself is named too: a changed snapshot of a skipped return puts it
back to `new` (RECONSIDER), since its state or destination may now make it eligible.

Ingest writes are the hot path (BENCHMARKS.md, 1): a page of returns costs one look-up
query (`heads`), and a snapshot is dumped once for both its text and its hash.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loopsync import jsonio
from loopsync.errors import TransitionRefused
from loopsync.models import ReturnFacts
from loopsync.redaction import contains_secret_in, redact, redact_obj, redact_optional
from loopsync.state.db import Db, integer, marks, text
from loopsync.timeutil import iso, parse_timestamp


class Stage(enum.StrEnum):
    """Pipeline stage of a return (returns.stage)."""

    NEW = "new"  # ingested; push not yet evaluated
    SKIPPED = "skipped"  # not for the warehouse (state, destination, ...); reason says why
    WAITING = "waiting"  # warehouse not ready (order not found, ...); retried each cycle
    STALE = "stale"  # waited longer than order_wait; needs a person
    REJECTED = "rejected"  # warehouse refused the RMA, or the Loop record is malformed
    PUSHING = "pushing"  # RMA create intended; outcome being established
    OPEN = "open"  # RMA exists; polled until the warehouse finishes
    ACTING = "acting"  # the warehouse finished; the Loop calls it decided are under way
    REPORTED = "reported"  # warehouse outcome needs a person (e.g. cancelled in the warehouse)
    DONE = "done"  # processed, flagged or settled in Loop


# What the push stage may make of a return it works on (new, waiting, or pushing).
_PUSH_OUTCOMES = frozenset(
    {
        Stage.NEW,
        Stage.SKIPPED,
        Stage.WAITING,
        Stage.STALE,
        Stage.REJECTED,
        Stage.PUSHING,
        Stage.OPEN,
        Stage.REPORTED,
    }
)
# What the poll and act stages may make of a return with an RMA.
_WAREHOUSE_OUTCOMES = frozenset(
    {Stage.OPEN, Stage.ACTING, Stage.DONE, Stage.REJECTED, Stage.REPORTED}
)

# Every allowed move, from -> to. Stale, rejected and done are left to a person.
TRANSITIONS: dict[Stage, frozenset[Stage]] = {
    Stage.NEW: _PUSH_OUTCOMES,
    Stage.WAITING: _PUSH_OUTCOMES,
    Stage.PUSHING: _PUSH_OUTCOMES,
    Stage.SKIPPED: frozenset({Stage.NEW}),  # RECONSIDER, by the ingest alone
    Stage.OPEN: _WAREHOUSE_OUTCOMES,
    Stage.ACTING: _WAREHOUSE_OUTCOMES - {Stage.OPEN},
    Stage.REPORTED: frozenset({Stage.REPORTED, Stage.DONE, Stage.REJECTED}),
    Stage.STALE: frozenset(),
    Stage.REJECTED: frozenset(),
    Stage.DONE: frozenset(),
}

# The named move a changed snapshot makes: skipped -> new (eligible again, maybe).
RECONSIDER = (Stage.SKIPPED, Stage.NEW)

# The stages each stage may be entered from (TRANSITIONS read backwards), as SQL args.
SOURCES: dict[Stage, tuple[str, ...]] = {
    to: tuple(sorted(s.value for s, tos in TRANSITIONS.items() if to in tos)) for to in Stage
}

# Stages `loopsync status` lists as waiting on something.
HELD = (Stage.WAITING, Stage.STALE, Stage.PUSHING, Stage.ACTING, Stage.REPORTED, Stage.REJECTED)

# How far past our clock a stored snapshot's updated_at may be and still count as newer
# than a later read (a Loop clock a little ahead of ours); beyond it the row was bad.
FUTURE_SNAPSHOT_ALLOWANCE = timedelta(days=1)


class ReturnAction(enum.StrEnum):
    """What became of a return in Loop (returns.action; `loopsync status` counts them)."""

    PROCESSED = "processed"  # loopsync processed it
    FLAGGED = "flagged"  # loopsync flagged it for review
    SETTLED = "settled"  # already done in Loop (by hand, or a call whose answer was lost)
    FAILED = "failed"  # Loop refused the call for good; the return is rejected


class Upserted(enum.StrEnum):
    """What `upsert` did with a snapshot (None: unchanged, or older than the stored one)."""

    NEW = "new"
    CHANGED = "changed"


class Lookup(enum.Enum):
    LOOKUP = "lookup"


LOOKUP = Lookup.LOOKUP  # upsert(head=LOOKUP): read the stored row's head itself


@dataclass(frozen=True)
class ReturnHead:
    """What `upsert` compares, without the snapshot."""

    hash: str | None
    updated_at: str | None
    stage: Stage


@dataclass(frozen=True)
class ReturnRow:
    """One stored return. Timestamps are the stored ISO texts."""

    id: str
    state: str | None
    updated_at: str | None
    created_at: str | None
    destination_id: str | None
    order_name: str | None
    snapshot: str | None
    hash: str | None
    first_seen_at: str | None
    last_seen_at: str | None
    stage: Stage
    reason: str | None
    stage_at: str | None
    wait_since: str | None
    action: str | None


_RETURN_COLUMNS = (
    "id, state, updated_at, created_at, destination_id, order_name, snapshot, "
    "hash, first_seen_at, last_seen_at, stage, reason, stage_at, wait_since, "
    "action"
)


def _return_row(r: tuple[Any, ...]) -> ReturnRow:
    return ReturnRow(
        str(r[0]),
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        r[9],
        Stage(r[10]),
        r[11],
        r[12],
        r[13],
        r[14],
    )


@dataclass(frozen=True)
class HeldRow:
    """A return waiting on something (`loopsync status`)."""

    id: str
    stage: Stage
    reason: str | None
    stage_at: str | None
    wait_since: str | None
    order_name: str | None


def encode_snapshot(raw: dict[str, Any], encoded: bytes | None = None) -> tuple[str, str]:
    """(stored JSON text, hash): one dump serves both (ingest's hot path); `encoded` is
    that dump when the caller made it already (`LoopReturn.encoded`). Keys keep Loop's
    order, which is stable; sorting them cost a quarter of the dump, and a reordered
    answer would only be stored again, never missed."""
    data = jsonio.dumps(raw) if encoded is None else encoded
    if contains_secret_in(data):  # rare: re-dump so the masked text is still valid JSON
        data = jsonio.dumps(redact_obj(raw))
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()[:16]


def legacy_hash(raw: dict[str, Any]) -> str:
    """The hash `encode_snapshot` gave before orjson (the standard library's ASCII dump):
    a return stored then and unchanged since must not count as changed (it would go back
    from skipped to new). Asked only when a stored hash differs."""
    dumped = json.dumps(raw, separators=(",", ":"), default=str)
    if redact(dumped) != dumped:
        dumped = json.dumps(redact_obj(raw), separators=(",", ":"), default=str)
    return hashlib.sha256(dumped.encode()).hexdigest()[:16]


def _legacy_unchanged(existing: ReturnHead, raw: dict[str, Any]) -> bool:
    try:
        return existing.hash == legacy_hash(raw)
    except (TypeError, ValueError, RecursionError):  # the old dump could not take it
        return False


_NEW_COLUMNS = (
    "insert into returns (id, state, updated_at, created_at, destination_id, order_name, "
    "snapshot, hash, last_seen_at, first_seen_at, stage, stage_at) values "
)
_NEW_ROW = f"({marks(12)})"
_INSERT_NEW = _NEW_COLUMNS + _NEW_ROW
# Bound values one statement may carry: SQLite's limit is 32,766 since 3.32, 999 before.
_MAX_VARIABLES = 999


class ReturnRepository:
    def __init__(self, db: Db) -> None:
        self.db = db
        try:
            limit = db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        except (AttributeError, sqlite3.Error):  # a connection stand-in
            limit = _MAX_VARIABLES
        self._rows_a_statement = max(1, limit // 12)

    def insert_new(self, returns: Sequence[ReturnFacts], now: str) -> None:
        """Store returns the caller knows are not stored (a page's first sight of them),
        in the caller's transaction (the ingest wraps it in a savepoint, so a failure
        keeps none of them). One statement for many rows: SQLite writes them in one step
        without the interpreter lock; a statement a row released and retook the lock
        250 times a page (BENCHMARKS.md, 1b)."""
        values: list[object] = []
        for ret in returns:
            dumped, h = encode_snapshot(ret.raw, ret.encoded)
            values += (
                ret.id,
                ret.state,
                iso(ret.updated_at),
                iso(ret.created_at),
                ret.destination_id,
                ret.order_name,
                dumped,
                h,
                now,
                now,
                Stage.NEW.value,
                now,
            )
        per = self._rows_a_statement
        for start in range(0, len(returns), per):
            rows = min(per, len(returns) - start)
            self.db.execute(
                _NEW_COLUMNS + ", ".join([_NEW_ROW] * rows),
                values[start * 12 : (start + rows) * 12],
            )

    def heads(self, rids: list[str]) -> dict[str, ReturnHead]:
        """The head of each stored return among `rids`, by id, in few queries."""
        out: dict[str, ReturnHead] = {}
        for i in range(0, len(rids), 500):
            chunk = rids[i : i + 500]
            for row in self.db.execute(
                "select id, hash, updated_at, stage from returns where "
                f"id in ({marks(len(chunk))})",
                chunk,
            ):
                out[row[0]] = ReturnHead(row[1], row[2], Stage(row[3]))
        return out

    def upsert(
        self,
        rid: str,
        raw: dict[str, Any],
        *,
        state: str,
        updated_at: datetime,
        created_at: datetime | None,
        destination_id: str | None,
        order_name: str | None,
        head: ReturnHead | Lookup | None = LOOKUP,
        encoded: bytes | None = None,
        now: str | None = None,
    ) -> Upserted | None:
        """Store the latest snapshot: Upserted.NEW, Upserted.CHANGED, or None (unchanged or
        older than the stored one).

        `head`: what `heads` gave for this id (None: not stored), so a page of returns
        needs one look-up query, not one per return. `encoded`: `raw` dumped already
        (`LoopReturn.encoded`). `now`: the store's time as text, read once a page by
        the ingest (about 2 us a return when read per return).

        An older snapshot (updated_at before the stored one) never overwrites a newer one:
        overlapping windows re-read returns, possibly from different state passes.
        """
        dumped, h = encode_snapshot(raw, encoded)
        now = self.db.now() if now is None else now
        existing = self.heads([rid]).get(rid) if head is LOOKUP else head
        assert not isinstance(existing, Lookup)
        if existing is not None:
            if existing.hash == h:
                self.db.execute("update returns set last_seen_at = ? where id = ?", [now, rid])
                return None
            if _legacy_unchanged(existing, raw):
                # Stored before orjson, unchanged since: the new hash, nothing else.
                self.db.execute(
                    "update returns set last_seen_at = ?, hash = ? where id = ?", [now, h, rid]
                )
                return None
            if self._stored_is_newer(existing, updated_at):
                return None
        if existing is None:
            # Plain SQL: sqlite-utils' insert() costs more than the rest of ingest per row.
            self.db.execute(
                _INSERT_NEW,
                (
                    rid,
                    state,
                    iso(updated_at),
                    iso(created_at),
                    destination_id,
                    order_name,
                    dumped,
                    h,
                    now,
                    now,
                    Stage.NEW.value,
                    now,
                ),
            )
            return Upserted.NEW
        row: dict[str, object] = {
            "state": state,
            "updated_at": iso(updated_at),
            "created_at": iso(created_at),
            "destination_id": destination_id,
            "order_name": order_name,
            "snapshot": dumped,
            "hash": h,
            "last_seen_at": now,
        }
        from_stages: tuple[str, ...] = ()
        if existing.stage == RECONSIDER[0]:
            row.update(stage=RECONSIDER[1].value, reason=None, stage_at=now)
            from_stages = (RECONSIDER[0].value,)
        self._update(rid, row, RECONSIDER[1] if from_stages else None, from_stages)
        return Upserted.CHANGED

    def _stored_is_newer(self, existing: ReturnHead, updated_at: datetime) -> bool:
        stored_at = parse_timestamp(existing.updated_at) if existing.updated_at else None
        # A stored updated_at far in our future was a bad row (or a clock that ran
        # ahead): it must not win over every later read of the return as "newer".
        return (
            stored_at is not None
            and stored_at > updated_at
            and stored_at <= self.db.clock.now() + FUTURE_SNAPSHOT_ALLOWANCE
        )

    def _update(
        self, rid: str, fields: dict[str, object], to: Stage | None, from_stages: tuple[str, ...]
    ) -> None:
        """Plain SQL: sqlite-utils' update() costs ~0.2 ms a call, and ingest and the first
        cycle's push stage call this for every return they read. With `from_stages`, the
        update is a guarded move to `to`."""
        sql = f"update returns set {', '.join(f'{k} = ?' for k in fields)} where id = ?"
        if from_stages:
            sql += f" and stage in ({marks(len(from_stages))})"
        cur = self.db.execute(sql, [*fields.values(), rid, *from_stages])
        if cur.rowcount == 0:
            found = self.db.one("select stage from returns where id = ?", [rid])
            raise TransitionRefused(
                f"return {rid}", str(to or "an update"), None if found is None else str(found[0])
            )

    def get(self, rid: str) -> ReturnRow | None:
        row = self.db.one(f"select {_RETURN_COLUMNS} from returns where id = ?", [rid])
        return _return_row(row) if row else None

    def snapshot(self, rid: str) -> dict[str, Any] | None:
        row = self.db.one("select snapshot from returns where id = ?", [rid])
        if row is None:
            return None
        value: dict[str, Any] = json.loads(str(row[0]))
        return value

    def move(
        self,
        rid: str,
        stage: Stage,
        reason: str | None = None,
        *,
        action: ReturnAction | None = None,
        keep_wait_since: bool = False,
    ) -> None:
        """Move a return to `stage` from a stage TRANSITIONS allows (else TransitionRefused,
        nothing changed). Entering `waiting` starts its clock unless `keep_wait_since`."""
        stage = Stage(stage)
        now = self.db.now()
        fields: dict[str, object] = {
            "stage": stage.value,
            "reason": redact_optional(reason),
            "stage_at": now,
        }
        if action is not None:
            fields["action"] = ReturnAction(action).value
        if stage == Stage.WAITING and not keep_wait_since:
            fields["wait_since"] = now
        self._update(rid, fields, stage, SOURCES[stage] or ("",))

    def ids_in_stage(self, *stages: Stage, limit: int | None = None) -> list[str]:
        sql = (
            f"select id from returns where stage in ({marks(len(stages))}) order by updated_at, id"
        )
        if limit:
            sql += f" limit {int(limit)}"
        return [str(r[0]) for r in self.db.execute(sql, [str(s) for s in stages])]

    def stage_counts(self) -> dict[Stage, int]:
        return {
            Stage(r[0]): integer(r[1])
            for r in self.db.execute("select stage, count(*) from returns group by stage")
        }

    def action_counts(self) -> dict[str, int]:
        return {
            str(r[0]): integer(r[1])
            for r in self.db.execute(
                "select action, count(*) from returns where action is not null group by action"
            )
        }

    def held(self, limit: int = 50) -> list[HeldRow]:
        """Returns waiting on something (a person, the warehouse), oldest move first."""
        return [
            HeldRow(str(r[0]), Stage(r[1]), text(r[2]), text(r[3]), text(r[4]), text(r[5]))
            for r in self.db.execute(
                "select id, stage, reason, stage_at, wait_since, order_name from returns "
                f"where stage in ({marks(len(HELD))}) order by stage_at limit ?",
                [*(s.value for s in HELD), limit],
            )
        ]
