"""The state file's schema and its migrations.

Tables (schema version in `meta`):
  returns    latest Loop snapshot of each return and its pipeline stage
  asn_rows   Loop ASN report rows, keyed (id, return_line_item_id)
  rmas       the link between a Loop return and its warehouse RMA, last polled status
  effects    ledger of every remote side effect: intent before, outcome after
  cursors    ingest windows per (stream, state): completed-until and the one in progress
  runs       one row per cycle: start, end, counts, errors
  problems   records that could not be used (malformed, rejected), for `loopsync status`
  kv         connectors' own small state
  stage_failures  a stage that stopped on a remote failure in a run, with the reason (v3)
  polls      each warehouse status a return's RMA was seen in, when it changed (v3)
  inbox, webhook_counts, webhook_missed   accepted webhook events until handled, refusals
             by reason, returns polling found first (v4, state/inbox.py)

Migrations run in order inside one transaction (`Store.migrate`); every file an older
loopsync wrote opens and is brought up to SCHEMA_VERSION. A file from a newer loopsync is
refused (`schema_version_of`): migrating down, or writing rows it does not understand,
would lose data.

sqlite-utils creates the version-1 tables, so their definitions stay byte-identical to
the files written before this package existed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlite_utils

from loopsync.errors import StateCorrupt

SCHEMA_VERSION = 4


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db.table("returns").create(
        {
            "id": str,
            "state": str,
            "updated_at": str,
            "created_at": str,
            "destination_id": str,
            "order_name": str,
            "snapshot": str,
            "hash": str,
            "first_seen_at": str,
            "last_seen_at": str,
            "stage": str,
            "reason": str,
            "stage_at": str,
            "wait_since": str,
            "action": str,
        },
        pk="id",
        not_null={"stage"},
        defaults={"stage": "new"},
    )
    db.table("returns").create_index(["stage"])
    db.table("asn_rows").create(
        {
            "id": str,
            "return_line_item_id": str,
            "return_id": str,
            "tracking_number": str,
            "updated_at": str,
            "snapshot": str,
        },
        pk=("id", "return_line_item_id"),
    )
    db.table("asn_rows").create_index(["return_id"])
    db.table("rmas").create(
        {
            "return_id": str,
            "rma_id": str,
            "extra": str,
            "created_at": str,
            "status": str,
            "status_json": str,
            "fingerprint": str,
            "polled_at": str,
            "decision": str,
            "decision_reason": str,
        },
        pk="return_id",
    )
    db.table("effects").create(
        {
            "key": str,
            "return_id": str,
            "kind": str,
            "status": str,
            "attempts": int,
            "last_error": str,
            "result": str,
            "payload": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="key",
    )
    db.table("effects").create_index(["return_id"])
    db.table("effects").create_index(["status"])
    db.table("cursors").create(
        {
            "stream": str,
            "state": str,
            "done_until": str,
            "window_from": str,
            "window_to": str,
            "page_cursor": str,
            "pages": int,
            "updated_at": str,
        },
        pk=("stream", "state"),
    )
    db.table("runs").create(
        {
            "id": str,
            "started_at": str,
            "ended_at": str,
            "mode": str,
            "status": str,
            "counts": str,
            "errors": int,
            "error": str,
        },
        pk="id",
    )
    db.table("problems").create(
        {
            "id": int,
            "return_id": str,
            "stage": str,
            "message": str,
            "at": str,
            "run_id": str,
        },
        pk="id",
    )
    db.table("problems").create_index(["return_id"])
    db.table("kv").create({"namespace": str, "key": str, "value": str}, pk=("namespace", "key"))


def _migrate_v2(db: sqlite_utils.Database) -> None:
    """The ledger's "done" collided with the return stage "done": a succeeded effect is
    now "succeeded" (ledger.EffectStatus.SUCCEEDED)."""
    db.conn.execute("update effects set status = 'succeeded' where status = 'done'")


def _migrate_v3(db: sqlite_utils.Database) -> None:
    """Stage failures are kept with their reason (they lived only in a log line), and a
    return's poll history (each status its RMA was seen in), for `status` and its story."""
    db.conn.execute(
        "create table stage_failures (id integer primary key, run_id text not null, "
        "stage text not null, reason text not null, at text not null)"
    )
    db.conn.execute("create index stage_failures_run on stage_failures (run_id)")
    db.conn.execute(
        "create table polls (id integer primary key, return_id text not null, "
        "rma_id text, status text, fingerprint text, decision text, reason text, "
        "at text not null)"
    )
    db.conn.execute("create index polls_return on polls (return_id)")


def _migrate_v4(db: sqlite_utils.Database) -> None:
    """The webhook inbox (state/inbox.py): accepted events until handled, refusal counts,
    and returns a cycle found that no webhook announced."""
    db.conn.execute(
        "create table inbox (key text primary key, source text not null, topic text not null, "
        "subject text not null, alt_subject text, body_hash text not null, occurred_at text, "
        "received_at text not null, handled_at text, outcome text)"
    )
    db.conn.execute("create index inbox_unhandled on inbox (handled_at, received_at)")
    db.conn.execute("create index inbox_subject on inbox (source, subject)")
    db.conn.execute("create table webhook_counts (name text primary key, n integer not null)")
    db.conn.execute("create table webhook_missed (return_id text primary key, at text not null)")


MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {
    1: _migrate_v1,
    2: _migrate_v2,
    3: _migrate_v3,
    4: _migrate_v4,
}


def create_meta(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")


def schema_version_of(path: Path, stored: str | None) -> int:
    """The version a file's `meta` holds; one newer than SCHEMA_VERSION is refused."""
    try:
        version = int(stored) if stored else 0
    except ValueError:
        raise StateCorrupt(str(path), f"schema version {stored!r} is not a number") from None
    if version > SCHEMA_VERSION:
        raise StateCorrupt(
            str(path),
            f"written by a newer loopsync (schema {version}; this "
            f"one reads up to {SCHEMA_VERSION}): upgrade loopsync",
        )
    return version
