"""Moving a merchant's state between machines: `state export` and `state import`.

export(merchant, state, to)   SQLite's online backup of the state into one new file,
                              stamped with the merchant's name; never overwrites a file
import_state(merchant, state, source)
                              the file's content becomes the merchant's state, under the
                              merchant's lock, in one SQLite transaction

Export is safe while a worker runs the merchant: with the lock free it is taken (no
worker starts mid-copy); with it held, the backup reads one consistent snapshot through
SQLite's WAL, as any reader does, and the worker goes on. The copy is a self-contained
file (rollback journal, no -wal), written beside its final name and linked into place,
so a crash leaves either no file or a whole one, and an existing file is never replaced.

Import refuses, one line each (exit codes in `cli`):
- a file that is not a loopsync state: not SQLite, cut short, failing SQLite's
  quick_check, without loopsync's tables, from a newer loopsync, or with a -wal beside
  it or beside the file a link names (a live file, half of which is elsewhere):
  StateCorrupt (65);
- a file exported for another merchant, or not made by `state export` at all (a live
  state copied by hand names no merchant): StateCorrupt (65);
- an existing state that is NEWER than the file, which the import would lose: its last
  change (the latest of its runs, effects, cursors, returns and webhook inbox events, by
  the store's own timestamps) is later than the file's, its ledger holds effects the file
  does not (a remote call the file knows nothing of), or its inbox holds unhandled
  webhook events the file does not (answered 2xx, never sent again): StateUnwritable
  (73). Importing the same file again is allowed (nothing newer) and changes nothing;
- an existing state that cannot be read: StateCorrupt (65), "move it away first";
- a worker holding the merchant's lock: LockHeld (75).

After an import the merchant's ledger, RMA links and notes are the file's, so the
lost-state protection (effects.precheck, FOUND_RMAS) sees its own work and waits on
nothing: an imported state is the merchant's own, not a lost one.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from loopsync.errors import LockHeld, StateCorrupt, StateIOError, StateUnwritable
from loopsync.state.files import check_header, create_private, has_wal, state_error
from loopsync.state.lock import MerchantLock
from loopsync.state.schema import schema_version_of
from loopsync.timeutil import Clock, iso, parse_timestamp

# meta keys an export writes into its copy (never into the live state)
EXPORT_MERCHANT = "export_merchant"
EXPORTED_AT = "exported_at"
# Tables every loopsync state has had since schema 1: a SQLite file without them is some
# other program's database.
REQUIRED_TABLES = frozenset({"meta", "returns", "effects", "cursors", "runs", "kv"})
# (table, column) pairs whose latest value is when the state last changed. The webhook
# inbox (schema 4) too: an event accepted after the file was taken is newer state (its
# sender was answered 2xx and will not send it again). A table an older schema lacks is
# skipped.
_CHANGED_AT = (
    ("runs", "started_at"),
    ("runs", "ended_at"),
    ("effects", "updated_at"),
    ("cursors", "updated_at"),
    ("returns", "last_seen_at"),
    ("inbox", "received_at"),
    ("inbox", "handled_at"),
)


@dataclass(frozen=True)
class Watermark:
    """How far a state has come: its last change and its ledger's effect keys."""

    last_change: datetime | None
    effects: frozenset[str]
    unhandled: frozenset[str] = frozenset()  # inbox keys of webhook events not yet handled

    def newer_than(self, other: Watermark) -> str | None:
        """Why this state holds something `other` lacks (a reason), or None."""
        missing = self.effects - other.effects
        if missing:
            return f"its ledger holds {len(missing)} effect(s) the file does not"
        waiting = self.unhandled - other.unhandled
        if waiting:
            return f"its inbox holds {len(waiting)} unhandled webhook event(s) the file does not"
        if self.last_change and (other.last_change is None or self.last_change > other.last_change):
            return f"it changed at {iso(self.last_change)}, after the file's last change"
        return None


@dataclass(frozen=True)
class Copied:
    """What an export wrote, or an import made the merchant's state."""

    path: Path
    merchant: str
    watermark: Watermark
    replaced: bool = False  # import: an existing state (not newer) was overwritten


# -- reading (pure over a connection) ---------------------------------------------------------


def watermark(conn: sqlite3.Connection) -> Watermark:
    """A state's high-water marks, from what the store records (timestamps in the
    store's canonical UTC form; parsed, so precision differences compare correctly)."""
    tables = {str(n) for (n,) in conn.execute("select name from sqlite_master where type='table'")}
    latest: list[datetime] = []
    for table, column in _CHANGED_AT:
        if table not in tables:
            continue
        row = conn.execute(f"select max({column}) from {table}").fetchone()
        with contextlib.suppress(ValueError, TypeError):
            latest.append(parse_timestamp(str(row[0])))
    keys = frozenset(str(k) for (k,) in conn.execute("select key from effects"))
    unhandled: frozenset[str] = frozenset()
    if "inbox" in tables:
        query = "select key from inbox where handled_at is null"
        unhandled = frozenset(str(k) for (k,) in conn.execute(query))
    return Watermark(max(latest, default=None), keys, unhandled)


def check_loopsync_state(path: Path, conn: sqlite3.Connection) -> dict[str, str]:
    """The file's meta, or StateCorrupt when it is not a loopsync state SQLite trusts."""
    verdict = conn.execute("pragma quick_check").fetchone()
    if verdict is None or verdict[0] != "ok":
        said = " ".join(str(verdict and verdict[0]).split())[:200]  # one line, however long
        raise StateCorrupt(str(path), f"fails SQLite's integrity check ({said})")
    tables = {str(n) for (n,) in conn.execute("select name from sqlite_master where type='table'")}
    if not REQUIRED_TABLES.issubset(tables):
        raise StateCorrupt(str(path), "is a SQLite database but not a loopsync state")
    meta = {str(k): str(v) for k, v in conn.execute("select key, value from meta")}
    schema_version_of(path, meta.get("schema_version"))
    if "schema_version" not in meta:
        raise StateCorrupt(str(path), "is not a loopsync state (no schema version)")
    return meta


# -- export -----------------------------------------------------------------------------------


def export(merchant: str, state: Path, to: Path, clock: Clock) -> Copied:
    """Copy `state` into the new file `to` (see the module docstring)."""
    if not state.is_file():
        raise StateIOError(str(state), f"no state to export for {merchant} (no such file)")
    if to.exists() or to.is_symlink():
        raise StateUnwritable(str(to), "already exists; export never overwrites a file")
    tmp = to.with_name(f".{to.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with _lock_if_free(state):
            source = _open_live(state)
            try:
                check_header(state)
                check_loopsync_state(state, source)
                create_private(tmp)
                copy = sqlite3.connect(str(tmp))
                try:
                    source.backup(copy)
                    _stamp(copy, merchant, clock)
                    mark = watermark(copy)
                finally:
                    copy.close()
            finally:
                source.close()
        _publish(tmp, to)
    except (sqlite3.Error, OSError) as exc:
        raise state_error(to if isinstance(exc, OSError) else state, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return Copied(to, merchant, mark)


@contextlib.contextmanager
def _lock_if_free(state: Path) -> Iterator[None]:
    """The merchant's lock if no worker holds it (none starts mid-copy); else nothing:
    a reader beside a running worker is what SQLite's WAL is for."""
    try:
        lock = MerchantLock(state).acquire()
    except LockHeld:
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _open_live(state: Path) -> sqlite3.Connection:
    """Read-only, but not `immutable`: a worker may be writing it, and SQLite's shared
    memory is how a reader sees one consistent snapshot beside it."""
    conn = sqlite3.connect(f"{state.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    conn.execute("pragma busy_timeout=10000")
    return conn


def _stamp(copy: sqlite3.Connection, merchant: str, clock: Clock) -> None:
    """The copy says whose it is, and is one self-contained file (no -wal to forget)."""
    copy.execute("pragma journal_mode=delete")
    with copy:
        for key, value in ((EXPORT_MERCHANT, merchant), (EXPORTED_AT, iso(clock.now()))):
            copy.execute(
                "insert into meta (key, value) values (?, ?) "
                "on conflict (key) do update set value = excluded.value",
                [key, value],
            )


def _publish(tmp: Path, to: Path) -> None:
    """fsync, then link into place (fails, never replaces, when `to` appeared), fsync the
    folder: a crash leaves no file or a whole one."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, to)
    folder = os.open(to.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


# -- import -----------------------------------------------------------------------------------


def import_state(merchant: str, state: Path, source: Path) -> Copied:
    """Make `source` (an export) the merchant's state at `state` (see the docstring)."""
    incoming = _open_incoming(source)
    try:
        meta = check_loopsync_state(source, incoming)
        owner = meta.get(EXPORT_MERCHANT)
        if owner is None:
            # A live state copied by hand names no merchant: taken for another merchant's
            # file it would push that merchant's returns to this one's warehouse.
            raise StateCorrupt(
                str(source),
                "names no merchant (not made by `loopsync state export`): export it with "
                "`loopsync state export -c <its merchant's file>`",
            )
        if owner != merchant:
            raise StateCorrupt(
                str(source), f"was exported for merchant {owner[:80]!r}, not {merchant!r}"
            )
        theirs = watermark(incoming)
        with MerchantLock(state):
            replaced = _replace(state, incoming, theirs)
    except sqlite3.Error as exc:
        raise state_error(source, exc) from None
    finally:
        incoming.close()
    return Copied(state, merchant, theirs, replaced)


def _open_incoming(source: Path) -> sqlite3.Connection:
    if not source.is_file():
        raise StateIOError(str(source), "does not exist or is not a file")
    if source.stat().st_size == 0:  # what a copy that failed leaves (SQLite opens it empty)
        raise StateCorrupt(
            str(source), "is empty (0 bytes), not an export: make it with `loopsync state export`"
        )
    if has_wal(source) or has_wal(source.resolve()):  # a link to a live state too
        raise StateCorrupt(
            str(source),
            "has a -wal file beside it (a live state, part of it elsewhere): "
            "make the file with `loopsync state export`",
        )
    check_header(source)
    try:
        conn = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        conn.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise state_error(source, exc) from None
    return conn


def _replace(state: Path, incoming: sqlite3.Connection, theirs: Watermark) -> bool:
    """Under the lock: refuse a newer or unreadable existing state, else copy the file
    into it in one transaction (SQLite's backup writes the destination atomically)."""
    existed = state.exists() and state.stat().st_size > 0
    try:
        if existed:
            check_header(state)
        state.parent.mkdir(parents=True, exist_ok=True)
        create_private(state)
        target = sqlite3.connect(str(state), timeout=10)
    except OSError as exc:
        raise state_error(state, exc) from None
    except (sqlite3.Error, StateCorrupt) as exc:
        raise _unusable(state, exc) from None
    try:
        if existed:
            try:
                check_loopsync_state(state, target)
                ours = watermark(target)
            except (sqlite3.Error, StateCorrupt) as exc:
                raise _unusable(state, exc) from None
            why = ours.newer_than(theirs)
            if why is not None:
                raise StateUnwritable(
                    str(state),
                    f"is newer than the file to import ({why}): importing would lose it; "
                    "stop the merchant and move this state away if the file is the one "
                    "to keep",
                )
        if _page_size(target) == _page_size(incoming):
            target.execute("pragma journal_mode=wal")
        else:
            # SQLite's backup cannot change the page size of a file in WAL mode (a new
            # file, or a state made before 16 KiB pages): it goes through the rollback
            # journal, still in one transaction.
            target.execute("pragma journal_mode=delete")
        incoming.backup(target)
        target.execute("pragma journal_mode=wal")  # the backup copied the file's mode
        check_loopsync_state(state, target)
    finally:
        target.close()
    return existed


def _page_size(conn: sqlite3.Connection) -> int:
    row = conn.execute("pragma page_size").fetchone()
    return int(row[0]) if row else 0


def _unusable(state: Path, exc: BaseException) -> StateCorrupt:
    """The existing state cannot be read: the operator decides, the import does not."""
    problem = state_error(state, exc).problem
    return StateCorrupt(
        str(state), f"the existing state cannot be read ({problem}); move it away, then import"
    )
