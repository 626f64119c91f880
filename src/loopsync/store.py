"""The merchant's SQLite state, through sqlite-utils.

Tables (schema version in `meta`):
  returns    latest Loop snapshot of each return and its pipeline stage
  asn_rows   Loop ASN report rows, keyed (id, return_line_item_id)
  rmas       the link between a Loop return and its warehouse RMA, last polled status
  effects    ledger of every remote side effect: intent before, outcome after
  cursors    ingest windows per (stream, state): completed-until and the one in progress
  runs       one row per cycle: start, end, counts, errors
  problems   records that could not be used (malformed, rejected), for `loopsync status`
  kv         connectors' own small state

Writes that belong together go in one `atomic()` block, so a kill at any line leaves
either the old state or the new one.

Every write of text that may come from a remote (snapshots, reasons, errors, problems,
results, connector state) passes through `redaction`: a remote that echoes a credential
never gets it into this file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.db import NotFoundError

from loopsync.errors import (LockHeld, StateCorrupt, StateError, StateIOError,
                             StateUnwritable)
from loopsync.redaction import (contains_secret, dumps_redacted, redact, redact_obj,
                                redact_optional)
from loopsync.timeutil import Clock, iso, parse_timestamp

SCHEMA_VERSION = 1

# Pipeline stages of a return (returns.stage).
NEW = "new"            # ingested; push not yet evaluated
SKIPPED = "skipped"    # not for the warehouse (state, destination, ...); reason says why
WAITING = "waiting"    # warehouse not ready (order not found, ...); retried each cycle
STALE = "stale"        # waited longer than order_wait; needs a person
REJECTED = "rejected"  # warehouse refused the RMA, or the Loop record is malformed
PUSHING = "pushing"    # RMA create intended; outcome being established
OPEN = "open"          # RMA exists; polled until the warehouse finishes
ACTING = "acting"      # the warehouse finished; the Loop calls it decided are under way
REPORTED = "reported"  # warehouse outcome needs a person (e.g. cancelled in the warehouse)
DONE = "done"          # processed, flagged or settled in Loop
STAGES = (NEW, SKIPPED, WAITING, STALE, REJECTED, PUSHING, OPEN, ACTING, REPORTED, DONE)

# Effect statuses (effects.status).
PENDING = "pending"    # decided, not yet attempted
INTENT = "intent"      # attempt started: the outcome is unknown until recorded
SUCCEEDED = "done"
SETTLED = "settled"    # the remote was already in the wanted state (or refused for state)
FAILED = "failed"      # permanent failure; recorded, not retried

# What upsert_return did with a snapshot.
# How far past our clock a stored snapshot's updated_at may be and still count as newer
# than a later read (a Loop clock a little ahead of ours); beyond it the row was bad.
FUTURE_SNAPSHOT_ALLOWANCE = timedelta(days=1)
NEW_RETURN = "new"
CHANGED_RETURN = "changed"

LOOKUP: Any = object()  # upsert_return(head=LOOKUP): read the stored row's head itself


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db["returns"].create({
        "id": str, "state": str, "updated_at": str, "created_at": str, "destination_id": str,
        "order_name": str, "snapshot": str, "hash": str, "first_seen_at": str,
        "last_seen_at": str, "stage": str, "reason": str, "stage_at": str, "wait_since": str,
        "action": str,
    }, pk="id", not_null={"stage"}, defaults={"stage": NEW})
    db["returns"].create_index(["stage"])
    db["asn_rows"].create({
        "id": str, "return_line_item_id": str, "return_id": str, "tracking_number": str,
        "updated_at": str, "snapshot": str,
    }, pk=("id", "return_line_item_id"))
    db["asn_rows"].create_index(["return_id"])
    db["rmas"].create({
        "return_id": str, "rma_id": str, "extra": str, "created_at": str, "status": str,
        "status_json": str, "fingerprint": str, "polled_at": str, "decision": str,
        "decision_reason": str,
    }, pk="return_id")
    db["effects"].create({
        "key": str, "return_id": str, "kind": str, "status": str, "attempts": int,
        "last_error": str, "result": str, "payload": str, "created_at": str, "updated_at": str,
    }, pk="key")
    db["effects"].create_index(["return_id"])
    db["effects"].create_index(["status"])
    db["cursors"].create({
        "stream": str, "state": str, "done_until": str, "window_from": str, "window_to": str,
        "page_cursor": str, "pages": int, "updated_at": str,
    }, pk=("stream", "state"))
    db["runs"].create({
        "id": str, "started_at": str, "ended_at": str, "mode": str, "status": str,
        "counts": str, "errors": int, "error": str,
    }, pk="id")
    db["problems"].create({
        "id": int, "return_id": str, "stage": str, "message": str, "at": str, "run_id": str,
    }, pk="id")
    db["problems"].create_index(["return_id"])
    db["kv"].create({"namespace": str, "key": str, "value": str}, pk=("namespace", "key"))


MIGRATIONS = {1: _migrate_v1}


def _snapshot(raw: dict[str, Any]) -> tuple[str, str]:
    """(stored JSON text, hash): one dump serves both (ingest's hot path). Keys keep
    Loop's order, which is stable; sorting them cost a quarter of the dump, and a reordered
    answer would only be stored again, never missed."""
    text = json.dumps(raw, separators=(",", ":"), default=str)
    if redact(text) != text:  # rare: re-dump so the masked text is still valid JSON
        text = json.dumps(redact_obj(raw), separators=(",", ":"), default=str)
    return text, hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cursor:
    stream: str
    state: str
    done_until: datetime | None
    window_from: datetime | None
    window_to: datetime | None
    page_cursor: str | None


class Store:
    """A merchant's state. Every failure to open, read or write the file itself surfaces
    as a StateError naming the file (see `state_error`), never as a raw sqlite3 error.

    `read_only`: look without changing any file (`status`): the schema is checked, never
    migrated. `memory_copy_of` (with path ":memory:"): a private copy (dry runs)."""

    def __init__(self, path: str | Path, clock: Clock, *, memory_copy_of: Path | None = None,
                 read_only: bool = False) -> None:
        self.clock = clock
        self.path = Path(path)
        self.read_only = read_only
        try:
            if str(path) == ":memory:":
                conn = sqlite3.connect(":memory:", check_same_thread=False)
                if memory_copy_of is not None and memory_copy_of.exists():
                    # Dry runs work on a private copy: identical decisions, nothing persists.
                    _check_header(memory_copy_of)
                    with _snapshot_source(memory_copy_of) as src:
                        src.backup(conn)
            elif read_only:
                _check_header(self.path)
                conn = _open_read_only(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _check_header(self.path)
                _refuse_newer(self.path)  # before anything is written, -wal and -shm included
                _create_private(self.path)
                old_umask = os.umask(0o077)  # -wal and -shm files: owner only, like the db
                try:
                    conn = sqlite3.connect(str(self.path), timeout=10, check_same_thread=False)
                finally:
                    os.umask(old_umask)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            self.db = sqlite_utils.Database(conn)
            if read_only:
                self._check_version()
            else:
                self.migrate()
        except (sqlite3.Error, OSError) as exc:
            raise state_error(self.path, exc) from None

    # -- schema -------------------------------------------------------------------------
    def migrate(self) -> None:
        with self.db.atomic():
            if "meta" not in self.db.table_names():
                self.db["meta"].create({"key": str, "value": str}, pk="key")
            version = self._check_version()
            for v in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](self.db)
                self._set_meta("schema_version", str(v))

    def _check_version(self) -> int:
        """The file's schema version; a newer one than this loopsync knows is refused
        (migrating down, or writing rows it does not understand, would lose data)."""
        if "meta" not in self.db.table_names():
            return 0
        return _schema_version(self.path, self._meta("schema_version"))

    def _meta(self, key: str) -> str | None:
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        self.db["meta"].upsert({"key": key, "value": value}, pk="key")

    @property
    def schema_version(self) -> int:
        return int(self._meta("schema_version") or 0)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        with self.db.atomic():
            yield

    def now(self) -> str:
        return iso(self.clock.now()) or ""

    def close(self) -> None:
        self.db.close()

    # -- returns ------------------------------------------------------------------------
    def upsert_return(self, rid: str, raw: dict[str, Any], *, state: str, updated_at: datetime,
                      created_at: datetime | None, destination_id: str | None,
                      order_name: str | None, head: Any = LOOKUP) -> str | None:
        """Store the latest snapshot: NEW_RETURN, CHANGED_RETURN, or None (unchanged or
        older than the stored one).

        `head`: what `return_heads` gave for this id (None: not stored), so a page of
        returns needs one look-up query, not one per return.

        An older snapshot (updated_at before the stored one) never overwrites a newer one:
        overlapping windows re-read returns, possibly from different state passes.
        """
        text, h = _snapshot(raw)
        now = self.now()
        existing = self._return_head(rid) if head is LOOKUP else head
        if existing is not None:
            if existing["hash"] == h:
                self.db.execute("update returns set last_seen_at = ? where id = ?", [now, rid])
                return None
            stored_at = parse_timestamp(existing["updated_at"]) if existing["updated_at"] \
                else None
            # A stored updated_at far in our future was a bad row (or a clock that ran
            # ahead): it must not win over every later read of the return as "newer".
            if stored_at is not None and stored_at > updated_at and \
                    stored_at <= self.clock.now() + FUTURE_SNAPSHOT_ALLOWANCE:
                return None
        row = {"id": rid, "state": state, "updated_at": iso(updated_at),
               "created_at": iso(created_at), "destination_id": destination_id,
               "order_name": order_name, "snapshot": text, "hash": h, "last_seen_at": now}
        if existing is None:
            row.update(first_seen_at=now, stage=NEW, stage_at=now)
            # Plain SQL: sqlite-utils' insert() costs more than the rest of ingest per row.
            self.db.execute(f"insert into returns ({', '.join(row)}) "
                            f"values ({', '.join('?' * len(row))})", list(row.values()))
            return NEW_RETURN
        # A skipped return may have become eligible (state or destination changed).
        if existing["stage"] == SKIPPED:
            row.update(stage=NEW, reason=None, stage_at=now)
        del row["id"]
        self._update_return(rid, row)
        return CHANGED_RETURN

    def _return_head(self, rid: str) -> dict[str, Any] | None:
        """What upsert_return compares, without reading the snapshot."""
        return self.return_heads([rid]).get(rid)

    def _update_return(self, rid: str, fields: dict[str, Any]) -> None:
        # Plain SQL: sqlite-utils' update() costs ~0.2 ms a call, and ingest and the first
        # cycle's push stage call this for every return they read.
        cur = self.db.execute(f"update returns set {', '.join(f'{k} = ?' for k in fields)} "
                              "where id = ?", [*fields.values(), rid])
        if cur.rowcount == 0:
            raise NotFoundError(f"no return {rid} in the store")

    def return_heads(self, rids: list[str]) -> dict[str, dict[str, Any]]:
        """`_return_head` of each stored return among `rids`, by id, in few queries."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(rids), 500):
            chunk = rids[i:i + 500]
            for row in self.db.execute("select id, hash, updated_at, stage from returns where "
                                       f"id in ({', '.join('?' * len(chunk))})", chunk):
                out[row[0]] = {"hash": row[1], "updated_at": row[2], "stage": row[3]}
        return out

    def get_return_row(self, rid: str) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from returns where id = ?", [rid]))
        return rows[0] if rows else None

    def snapshot(self, rid: str) -> dict[str, Any] | None:
        row = self.get_return_row(rid)
        return json.loads(row["snapshot"]) if row else None

    def set_stage(self, rid: str, stage: str, reason: str | None = None, *,
                  action: str | None = None, keep_wait_since: bool = False) -> None:
        assert stage in STAGES, stage
        now = self.now()
        fields: dict[str, Any] = {"stage": stage, "reason": redact_optional(reason),
                                  "stage_at": now}
        if action is not None:
            fields["action"] = action
        if stage == WAITING and not keep_wait_since:
            fields["wait_since"] = now
        self._update_return(rid, fields)

    def return_ids_in_stage(self, *stages: str, limit: int | None = None) -> list[str]:
        marks = ",".join("?" * len(stages))
        sql = f"select id from returns where stage in ({marks}) order by updated_at, id"
        if limit:
            sql += f" limit {int(limit)}"
        return [r["id"] for r in self.db.query(sql, list(stages))]

    def stage_counts(self) -> dict[str, int]:
        return {r["stage"]: r["n"] for r in
                self.db.query("select stage, count(*) as n from returns group by stage")}

    def action_counts(self) -> dict[str, int]:
        return {r["action"]: r["n"] for r in self.db.query(
            "select action, count(*) as n from returns where action is not null group by action")}

    def waiting(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.db.query(
            "select id, stage, reason, stage_at, wait_since, order_name from returns "
            "where stage in (?, ?, ?, ?, ?, ?) order by stage_at limit ?",
            [WAITING, STALE, PUSHING, ACTING, REPORTED, REJECTED, limit]))

    # -- ASN --------------------------------------------------------------------------------
    def upsert_asn_row(self, row: dict[str, Any]) -> None:
        self.db["asn_rows"].upsert({
            "id": str(row.get("id")), "return_line_item_id": str(row.get("return_line_item_id")),
            # UNCONFIRMED: we read the ASN row's `id` as the Loop return id (one row per
            # returned line item, as PostHog keys them).
            "return_id": str(row.get("id")), "tracking_number": row.get("tracking_number"),
            "updated_at": row.get("updated_at"), "snapshot": dumps_redacted(row),
        }, pk=("id", "return_line_item_id"))

    def asn_rows_for(self, rid: str) -> list[dict[str, Any]]:
        return [json.loads(r["snapshot"]) for r in
                self.db.query("select snapshot from asn_rows where return_id = ?", [rid])]

    # -- RMAs -------------------------------------------------------------------------------
    def link_rma(self, rid: str, rma_id: str, extra: dict[str, Any]) -> None:
        self.db["rmas"].upsert({"return_id": rid, "rma_id": rma_id,
                                "extra": dumps_redacted(extra),
                                "created_at": self.now()}, pk="return_id")

    def rma(self, rid: str) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from rmas where return_id = ?", [rid]))
        if not rows:
            return None
        row = rows[0]
        row["extra"] = json.loads(row["extra"] or "{}")
        return row

    def rma_owners(self, rma_id: str) -> list[str]:
        """The Loop returns linked to this RMA id (more than one means a bad match)."""
        return [r["return_id"] for r in self.db.query(
            "select return_id from rmas where rma_id = ? order by return_id", [rma_id])]

    def open_rmas(self) -> list[dict[str, Any]]:
        rows = list(self.db.query(
            "select m.* from rmas m join returns r on r.id = m.return_id where r.stage = ? "
            "order by m.polled_at is not null, m.polled_at, m.return_id", [OPEN]))
        for row in rows:
            row["extra"] = json.loads(row["extra"] or "{}")
        return rows

    def record_poll(self, rid: str, status_word: str, status_json: str, fingerprint: str,
                    decision: str, reason: str) -> str | None:
        """Store a polled status; returns the fingerprint it replaces (None: first poll)."""
        row = self.db.execute("select fingerprint from rmas where return_id = ?",
                              [rid]).fetchone()
        cur = self.db.execute(  # plain SQL: a poll stage records thousands of these
            "update rmas set status = ?, status_json = ?, fingerprint = ?, polled_at = ?, "
            "decision = ?, decision_reason = ? where return_id = ?",
            [redact_optional(status_word), redact_optional(status_json), fingerprint,
             self.now(), decision, redact_optional(reason), rid])
        if cur.rowcount == 0:
            raise NotFoundError(f"no RMA for return {rid} in the store")
        return row[0] if row else None

    # -- effects ledger -------------------------------------------------------------------
    def effect(self, key: str) -> dict[str, Any] | None:
        rows = list(self.db.query("select * from effects where key = ?", [key]))
        return rows[0] if rows else None

    def plan_effect(self, key: str, rid: str, kind: str, payload: Any = None) -> None:
        """Record a decided side effect (status pending); a no-op if it is already known."""
        now = self.now()
        self.db.execute(
            "insert or ignore into effects (key, return_id, kind, status, attempts, payload, "
            "created_at, updated_at) values (?, ?, ?, ?, 0, ?, ?, ?)",
            [key, rid, kind, PENDING, dumps_redacted(payload), now, now])

    def effect_intent(self, key: str, rid: str, kind: str, payload: Any = None) -> None:
        """Mark the attempt as started, before the remote call (committed on its own)."""
        self.plan_effect(key, rid, kind, payload)
        self.db.execute("update effects set status = ?, attempts = attempts + 1, "
                        "updated_at = ? where key = ?", [INTENT, self.now(), key])

    def effect_outcome(self, key: str, status: str, *, result: Any = None,
                       error: str | None = None) -> None:
        self.db.execute("update effects set status = ?, result = ?, last_error = ?, "
                        "updated_at = ? where key = ?",
                        [status, dumps_redacted(result) if result is not None else None,
                         redact_optional(error), self.now(), key])

    def effect_not_sent(self, key: str, error: str) -> None:
        """The call certainly did not reach the remote: back to pending, no lookup needed."""
        self.db.execute("update effects set status = ?, last_error = ?, updated_at = ? "
                        "where key = ?", [PENDING, redact_optional(error), self.now(), key])

    def effect_error(self, key: str, error: str) -> None:
        """A transient failure: the intent stays armed (outcome unknown), error noted."""
        self.db.execute("update effects set last_error = ?, updated_at = ? where key = ?",
                        [redact_optional(error), self.now(), key])

    def effects_for(self, rid: str) -> list[dict[str, Any]]:
        return list(self.db.query("select * from effects where return_id = ? order by created_at",
                                  [rid]))

    def pending_effects(self, rid: str | None = None) -> list[dict[str, Any]]:
        """Effects not yet settled (pending or intent), in the order they were planned."""
        sql, args = "select rowid as seq, * from effects where status in (?, ?)", [PENDING, INTENT]
        if rid is not None:
            sql += " and return_id = ?"
            args.append(rid)
        rows = list(self.db.query(sql + " order by rowid", args))
        for row in rows:
            row["payload"] = json.loads(row["payload"]) if row["payload"] else None
        return rows

    def effect_counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for r in self.db.query("select kind, status, count(*) as n from effects group by 1, 2"):
            out.setdefault(r["kind"], {})[r["status"]] = r["n"]
        return out

    # -- cursors ------------------------------------------------------------------------
    def cursor(self, stream: str, state: str) -> Cursor:
        rows = list(self.db.query("select * from cursors where stream = ? and state = ?",
                                  [stream, state]))
        if not rows:
            return Cursor(stream, state, None, None, None, None)
        r = rows[0]

        def ts(v: str | None) -> datetime | None:
            return parse_timestamp(v) if v else None

        return Cursor(stream, state, ts(r["done_until"]), ts(r["window_from"]),
                      ts(r["window_to"]), r["page_cursor"])

    def cursors(self) -> list[dict[str, Any]]:
        return list(self.db.query("select * from cursors order by stream, state"))

    def save_page(self, stream: str, state: str, window_from: datetime, window_to: datetime,
                  next_cursor: str | None) -> None:
        """Checkpoint inside a window: the page before `next_cursor` is committed."""
        cur = self.cursor(stream, state)
        self.db["cursors"].upsert({
            "stream": stream, "state": state, "done_until": iso(cur.done_until),
            "window_from": iso(window_from), "window_to": iso(window_to),
            # A cursor echoing a secret is not kept (masked it would be useless): a resume
            # then reads the window again from its start, which loses nothing.
            "page_cursor": None if next_cursor and contains_secret(next_cursor) else next_cursor,
            "updated_at": self.now(),
        }, pk=("stream", "state"))
        self.db.execute("update cursors set pages = coalesce(pages, 0) + 1 "
                        "where stream = ? and state = ?", [stream, state])

    def complete_window(self, stream: str, state: str, window_to: datetime) -> None:
        self.db["cursors"].upsert({
            "stream": stream, "state": state, "done_until": iso(window_to),
            "window_from": None, "window_to": None, "page_cursor": None,
            "updated_at": self.now(),
        }, pk=("stream", "state"))

    def set_done_until(self, stream: str, state: str, done_until: datetime | None) -> None:
        """Reset a cursor to `done_until` with no window in progress (a cursor pulled back
        from the future)."""
        self.db["cursors"].upsert({
            "stream": stream, "state": state, "done_until": iso(done_until),
            "window_from": None, "window_to": None, "page_cursor": None,
            "updated_at": self.now(),
        }, pk=("stream", "state"))

    # -- runs and problems ------------------------------------------------------------------
    def start_run(self, run_id: str, mode: str) -> None:
        self.db["runs"].insert({"id": run_id, "started_at": self.now(), "mode": mode,
                                "status": "running", "errors": 0})

    def finish_run(self, run_id: str, status: str, counts: dict[str, Any], errors: int,
                   error: str | None = None) -> None:
        self.db["runs"].update(run_id, {"ended_at": self.now(), "status": status,
                                        "counts": json.dumps(counts), "errors": errors,
                                        "error": redact_optional(error)})

    def last_runs(self, n: int = 1) -> list[dict[str, Any]]:
        return list(self.db.query("select * from runs order by started_at desc, rowid desc "
                                  "limit ?", [n]))

    def add_problem(self, rid: str | None, stage: str, message: str, run_id: str | None) -> None:
        self.db["problems"].insert({"return_id": rid, "stage": stage,
                                    "message": redact(message)[:1000],
                                    "at": self.now(), "run_id": run_id})

    def problems(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.db.query("select * from problems order by id desc limit ?", [limit]))

    # -- connectors' key-value state ----------------------------------------------------------
    def kv(self, namespace: str) -> StoreKeyValue:
        return StoreKeyValue(self, namespace)

    def kv_with_prefix(self, prefix: str) -> list[tuple[str, str, Any]]:
        """(namespace, key, value) of every set kv entry whose key starts with `prefix`,
        across namespaces (for `status`: connectors write to their own namespace)."""
        rows = self.db.query("select namespace, key, value from kv where substr(key, 1, ?) = ? "
                             "order by namespace, key", [len(prefix), prefix])
        return [(r["namespace"], r["key"], v) for r in rows
                if (v := json.loads(r["value"])) is not None]

    def last_updated_at(self, stream: str, state: str) -> datetime | None:
        """The newest `updated_at` stored for a cursor's stream (returns of one state, or
        ASN rows), or None. Where a cursor found in the future is pulled back to."""
        if stream == "returns":
            sql, args = "select max(updated_at) as m from returns where state = ?", [state]
        else:
            sql, args = "select max(updated_at) as m from asn_rows", []
        value = next(iter(self.db.query(sql, args)))["m"]
        try:
            # Stored texts compare as strings; a fraction of a second may sort wrongly,
            # so step back one second (earlier is the safe side).
            return parse_timestamp(value, assume_utc=True) - timedelta(seconds=1) if value \
                else None
        except (ValueError, OverflowError):
            return None


class StoreKeyValue:
    def __init__(self, store: Store, namespace: str) -> None:
        self.store = store
        self.namespace = namespace

    def get(self, key: str, default: Any = None) -> Any:
        rows = list(self.store.db.query("select value from kv where namespace = ? and key = ?",
                                        [self.namespace, key]))
        return json.loads(rows[0]["value"]) if rows else default

    def set(self, key: str, value: Any) -> None:
        self.store.db["kv"].upsert({"namespace": self.namespace, "key": key,
                                    "value": dumps_redacted(value)},
                                   pk=("namespace", "key"))


_SQLITE_MAGIC = b"SQLite format 3\x00"


def state_error(path: str | Path, exc: BaseException) -> StateError:
    """Name what went wrong with a state file, for one line and a sysexits code: corrupt
    (65), cannot be created or written (73), disk full or I/O (74)."""
    if isinstance(exc, StateError):
        return exc
    where = str(path)
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        text = str(exc)
        if name.startswith("SQLITE_FULL") or "disk is full" in text:
            return StateIOError(where, f"disk full ({text})")
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or \
                "not a database" in text or "malformed" in text:
            return StateCorrupt(where, f"corrupt or not a loopsync state file ({text})")
        if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM",
                            "SQLITE_AUTH")) or "readonly" in text or "unable to open" in text:
            return StateUnwritable(where, f"cannot be opened for writing ({text})")
        return StateIOError(where, f"cannot be read or written ({text})")
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        at = f" ({exc.filename})" if exc.filename and str(exc.filename) != where else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StateIOError(where, f"disk full ({reason}){at}")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST,
                         errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP):
            return StateUnwritable(where, f"cannot be created or written ({reason}){at}")
        return StateIOError(where, f"cannot be read or written ({reason}){at}")
    return StateIOError(where, f"{type(exc).__name__}: {exc}")


def _check_header(path: Path) -> None:
    """Refuse a file that is not a SQLite database, or one cut short, before SQLite sees
    it: a truncated file otherwise opens and fails later, at some query mid-cycle.

    The page count in the header is trusted only without a -wal file: a checkpoint cut
    short by a kill may leave the main file shorter than its header while the WAL still
    holds the pages, and SQLite recovers that."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return  # created, never written: SQLite initialises it
    if path.is_dir():
        raise StateUnwritable(str(path), "is a directory")
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StateCorrupt(str(path), "not a SQLite database (wrong header); restore it from "
                                      "a backup or move it away to start afresh")
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    counter_valid = header[92:96] == header[24:28]
    if counter_valid and pages and size < pages * page_size:
        raise StateCorrupt(str(path), f"truncated: {size} bytes where its header says "
                                      f"{pages * page_size}; restore it from a backup")


def _schema_version(path: Path, stored: str | None) -> int:
    try:
        version = int(stored) if stored else 0
    except ValueError:
        raise StateCorrupt(str(path), f"schema version {stored!r} is not a number") from None
    if version > SCHEMA_VERSION:
        raise StateCorrupt(str(path), f"written by a newer loopsync (schema {version}; this "
                                      f"one reads up to {SCHEMA_VERSION}): upgrade loopsync")
    return version


def _refuse_newer(path: Path) -> None:
    """Look at an existing file's schema version read-only: a file this loopsync must not
    touch is left exactly as it was."""
    if not path.exists() or path.stat().st_size == 0:
        return
    conn = _open_read_only(path)
    try:
        if conn.execute("select 1 from sqlite_master where type = 'table' and name = 'meta'"
                        ).fetchone() is None:
            return
        row = conn.execute("select value from meta where key = 'schema_version'").fetchone()
    finally:
        conn.close()
    _schema_version(path, row[0] if row else None)


def _has_wal(path: Path) -> bool:
    wal = Path(f"{path}-wal")
    return wal.exists() and wal.stat().st_size > 0


def _open_read_only(path: Path) -> sqlite3.Connection:
    """Read without changing any file. SQLite's `mode=ro` still creates and writes the
    -shm (and an empty -wal) of a WAL database, measured on 3.40, so a state with no -wal
    (closed cleanly) is opened `immutable`, which touches nothing; one with a -wal
    (a worker running, or killed) needs the shared memory to read it consistently."""
    if not path.exists():
        raise StateIOError(str(path), "does not exist")
    uri = path.resolve().as_uri()
    if _has_wal(path):
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=10, check_same_thread=False)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            # No -shm and a folder we may not write (a read-only mount): read the main
            # file alone; what only the WAL holds is not shown.
            conn.close()
    return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)


@contextlib.contextmanager
def _snapshot_source(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a copy of `path` that no other file depends on (dry runs): the
    file as it is when there is no -wal; else the db and its -wal copied to a private
    temporary folder, where SQLite replays the WAL without touching the originals."""
    if not _has_wal(path):
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            yield conn
        finally:
            conn.close()
        return
    with tempfile.TemporaryDirectory(prefix="loopsync-dry-") as tmp:
        copy = Path(tmp) / "state.sqlite"
        shutil.copyfile(path, copy)
        shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        conn = sqlite3.connect(str(copy))
        try:
            yield conn
        finally:
            conn.close()


def lock_is_held(state_path: Path) -> bool:
    """Is a worker running this merchant now? Probed with a shared lock, released at
    once, on an existing lock file only (looking must not create files)."""
    path = MerchantLock(state_path).path
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (secrets never go in it, but
    customer emails and addresses do)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


# State files this process holds a MerchantLock on, by (device, inode), and the lock.
_held_states: dict[tuple[int, int], int] = {}
_held_lock = threading.Lock()


class MerchantLock:
    """An exclusive advisory lock on <state>.lock; the kernel drops it if we die, so a
    SIGKILLed run never wedges the next one."""

    def __init__(self, state_path: Path) -> None:
        # Keyed by the state file's real path: two paths to one file (a link, `..`, a
        # linked folder) must find the same lock, or two workers would run one merchant.
        self.state = Path(os.path.realpath(state_path))
        self.path = Path(f"{self.state}.lock")
        self._fd: int | None = None
        self._state_fd: int | None = None
        self._state_ident: tuple[int, int] = (0, 0)

    def acquire(self) -> MerchantLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_NOFOLLOW: truncating below must never reach a file a link points to
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            # A fault to fix, not a lock someone holds: exit 73, never 75 (which cron
            # treats as a skip, so the merchant would silently never run again).
            raise StateUnwritable(str(self.path), "is a symbolic link; loopsync will not "
                                                  "lock through it (remove it)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"another loopsync process holds {self.path}") from None
        self._fd = fd
        try:
            self._state_fd = self._lock_state_file()
        except BaseException:
            self.release()
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return self

    def _lock_state_file(self) -> int | None:
        """A hard link is a second name no real path resolves to one: the existing state
        file itself is locked too (flock, which SQLite's own fcntl locks ignore), so two
        names of one file never let two workers write it, each with a -wal of its own.
        Within this process the file is checked by identity first: closing a descriptor
        of a file this process's SQLite has open would drop SQLite's locks on it."""
        try:
            st = os.stat(self.state)
        except OSError:
            return None  # not there yet: no second name of it can exist
        ident = (st.st_dev, st.st_ino)
        with _held_lock:
            if ident in _held_states:
                raise LockHeld(f"this process already works {self.state} (under another "
                               "name)")
            try:
                fd = os.open(self.state, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return None  # not a file we can lock: the Store names the fault
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise LockHeld(f"another loopsync process holds {self.state} (under "
                               "another name)") from None
            except OSError:
                os.close(fd)
                return None
            _held_states[ident] = fd
        self._state_ident = ident
        return fd

    def release(self) -> None:
        state_fd, self._state_fd = self._state_fd, None
        if state_fd is not None:
            with _held_lock:
                _held_states.pop(self._state_ident, None)
                fcntl.flock(state_fd, fcntl.LOCK_UN)
                os.close(state_fd)
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MerchantLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
