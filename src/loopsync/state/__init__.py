"""The merchant's state: one SQLite file, read and written through typed repositories.

    store = Store(path, clock)
    store.returns   returns and their pipeline stage (returns.Stage, TRANSITIONS)
    store.ledger    the effects ledger (ledger.EffectStatus, guarded transitions)
    store.cursors   ingest cursors and windows
    store.runs      runs and problems
    store.rmas      RMA links and polled statuses;  store.asn: Loop's ASN rows
    store.inbox     accepted webhook events until handled (inbox.InboxRepository)
    store.kv(ns)    small JSON values of one namespace;  store.kv_with_prefix(prefix)

Rows leave the package as frozen dataclasses, stages and statuses as StrEnums (so
`row.stage == "open"` still reads naturally). Writes that belong together go in one
`atomic()` block (nested blocks are savepoints), so a kill at any line leaves either the
old state or the new one. Every write of text that may come from a remote (snapshots,
reasons, errors, problems, results, connector state) passes through `redaction`: a
remote that echoes a credential never gets it into this file.

Every failure to open, read or write the file itself surfaces as a StateError naming the
file (`state_error`), never as a raw sqlite3 error.

The repositories use plain `sqlite3` (typed, and sqlite-utils' insert/update cost more
per row than the rest of ingest). sqlite-utils is kept for two things: creating the
schema-1 tables (identical definitions to older files) and `Store.db`, a handle for
ad-hoc reads in tests, benchmarks and the soak.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import sqlite_utils

from loopsync.state.cursors import Cursor, CursorRepository, CursorRow
from loopsync.state.db import Db
from loopsync.state.files import (
    check_header,
    open_memory_copy,
    open_read_only,
    open_writable,
    state_error,
)
from loopsync.state.inbox import InboxFigures, InboxRepository, InboxRow
from loopsync.state.kv import KvEntry, StoreKeyValue, kv_with_prefix
from loopsync.state.ledger import Effect, EffectKind, EffectStatus, Ledger
from loopsync.state.lock import MerchantLock, lock_is_held
from loopsync.state.returns import (
    LOOKUP,
    TRANSITIONS,
    HeldRow,
    Lookup,
    ReturnAction,
    ReturnHead,
    ReturnRepository,
    ReturnRow,
    Stage,
    Upserted,
)
from loopsync.state.rmas import AsnRepository, RmaRepository, RmaRow
from loopsync.state.runs import ProblemRow, RunRepository, RunRow
from loopsync.state.schema import MIGRATIONS, SCHEMA_VERSION, create_meta, schema_version_of
from loopsync.timeutil import Clock, iso

__all__ = [
    "LOOKUP",
    "SCHEMA_VERSION",
    "TRANSITIONS",
    "Cursor",
    "CursorRow",
    "Effect",
    "EffectKind",
    "EffectStatus",
    "HeldRow",
    "InboxFigures",
    "InboxRow",
    "KvEntry",
    "Lookup",
    "MerchantLock",
    "ProblemRow",
    "ReturnAction",
    "ReturnHead",
    "ReturnRow",
    "RmaRow",
    "RunRow",
    "Stage",
    "Store",
    "StoreKeyValue",
    "Upserted",
    "lock_is_held",
    "state_error",
]


class Store:
    """A merchant's state.

    `read_only`: look without changing any file (`status`): the schema is checked, never
    migrated. `memory_copy_of` (with path ":memory:"): a private copy (dry runs)."""

    def __init__(
        self,
        path: str | Path,
        clock: Clock,
        *,
        memory_copy_of: Path | None = None,
        read_only: bool = False,
    ) -> None:
        self.clock = clock
        self.path = Path(path)
        self.read_only = read_only
        try:
            if str(path) == ":memory:":
                conn = open_memory_copy(memory_copy_of)
            elif read_only:
                check_header(self.path)
                conn = open_read_only(self.path)
            else:
                conn = open_writable(self.path)
            conn.execute("PRAGMA busy_timeout=10000")
            # Autocommit: a statement outside atomic() commits alone (see state.db).
            conn.isolation_level = None
            self.conn = conn
            self.db = sqlite_utils.Database(conn)
            self._db = Db(conn, clock)
            self.returns = ReturnRepository(self._db)
            self.ledger = Ledger(self._db)
            self.cursors = CursorRepository(self._db)
            self.runs = RunRepository(self._db)
            self.rmas = RmaRepository(self._db)
            self.asn = AsnRepository(self._db)
            self.inbox = InboxRepository(self._db)
            if read_only:
                self._check_version()
            else:
                self.migrate()
        except (sqlite3.Error, OSError) as exc:
            raise state_error(self.path, exc) from None

    # -- schema -------------------------------------------------------------------------
    def migrate(self) -> None:
        with self.atomic():
            if not self.initialised:
                create_meta(self.db)
            version = self._check_version()
            for v in range(version + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[v](self.db)
                self._set_meta("schema_version", str(v))

    @property
    def initialised(self) -> bool:
        """Has a run ever written this file (is there a schema)?"""
        return (
            self.conn.execute(
                "select 1 from sqlite_master where type = 'table' and name = 'meta'"
            ).fetchone()
            is not None
        )

    def _check_version(self) -> int:
        """The file's schema version; a newer one than this loopsync knows is refused
        (migrating down, or writing rows it does not understand, would lose data)."""
        if not self.initialised:
            return 0
        return schema_version_of(self.path, self._meta("schema_version"))

    def _meta(self, key: str) -> str | None:
        row = self.conn.execute("select value from meta where key = ?", [key]).fetchone()
        return str(row[0]) if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "insert into meta (key, value) values (?, ?) "
            "on conflict (key) do update set value = excluded.value",
            [key, value],
        )

    @property
    def schema_version(self) -> int:
        return int(self._meta("schema_version") or 0)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction (a savepoint when nested): all of it is kept, or none."""
        with self.db.atomic():
            yield

    def now(self) -> str:
        return iso(self.clock.now()) or ""

    def close(self) -> None:
        self.conn.close()

    # -- key-value state ------------------------------------------------------------------
    def kv(self, namespace: str) -> StoreKeyValue:
        return StoreKeyValue(self, namespace)

    def kv_with_prefix(self, prefix: str) -> list[KvEntry]:
        return kv_with_prefix(self, prefix)
