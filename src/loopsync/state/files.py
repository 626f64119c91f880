"""Opening a state file safely: its header checked before SQLite sees it, read-only and
dry-run copies that touch no file, the file created private, and every failure named as
a StateError (with a sysexits code) instead of a raw sqlite3 or OS error."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from loopsync.errors import StateCorrupt, StateError, StateIOError, StateUnwritable
from loopsync.state.schema import schema_version_of

_SQLITE_MAGIC = b"SQLite format 3\x00"


def state_error(path: str | Path, exc: BaseException) -> StateError:
    """Name what went wrong with a state file, for one line and a sysexits code: corrupt
    (65), cannot be created or written (73), disk full or I/O (74)."""
    if isinstance(exc, StateError):
        return exc
    where = str(path)
    if isinstance(exc, sqlite3.Error):
        return _sqlite_error(where, exc)
    if isinstance(exc, OSError):
        return _os_error(where, exc)
    return StateIOError(where, f"{type(exc).__name__}: {exc}")


def _sqlite_error(where: str, exc: sqlite3.Error) -> StateError:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return StateIOError(where, f"disk full ({text})")
    if (
        name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "not a database" in text
        or "malformed" in text
    ):
        return StateCorrupt(where, f"corrupt or not a loopsync state file ({text})")
    if (
        name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"))
        or "readonly" in text
        or "unable to open" in text
    ):
        return StateUnwritable(where, f"cannot be opened for writing ({text})")
    return StateIOError(where, f"cannot be read or written ({text})")


def _os_error(where: str, exc: OSError) -> StateError:
    reason = exc.strerror or str(exc)
    at = f" ({exc.filename})" if exc.filename and str(exc.filename) != where else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateIOError(where, f"disk full ({reason}){at}")
    if exc.errno in (
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EISDIR,
        errno.ENAMETOOLONG,
        errno.ELOOP,
    ):
        return StateUnwritable(where, f"cannot be created or written ({reason}){at}")
    return StateIOError(where, f"cannot be read or written ({reason}){at}")


def check_header(path: Path) -> None:
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
    with path.open("rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StateCorrupt(
            str(path),
            "not a SQLite database (wrong header); restore it from "
            "a backup or move it away to start afresh",
        )
    if has_wal(path):
        return
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    counter_valid = header[92:96] == header[24:28]
    if counter_valid and pages and size < pages * page_size:
        raise StateCorrupt(
            str(path),
            f"truncated: {size} bytes where its header says "
            f"{pages * page_size}; restore it from a backup",
        )


def refuse_newer(path: Path) -> None:
    """Look at an existing file's schema version read-only: a file this loopsync must not
    touch is left exactly as it was."""
    if not path.exists() or path.stat().st_size == 0:
        return
    conn = open_read_only(path)
    try:
        if (
            conn.execute(
                "select 1 from sqlite_master where type = 'table' and name = 'meta'"
            ).fetchone()
            is None
        ):
            return
        row = conn.execute("select value from meta where key = 'schema_version'").fetchone()
    finally:
        conn.close()
    schema_version_of(path, row[0] if row else None)


def has_wal(path: Path) -> bool:
    wal = Path(f"{path}-wal")
    return wal.exists() and wal.stat().st_size > 0


def open_read_only(path: Path) -> sqlite3.Connection:
    """Read without changing any file. SQLite's `mode=ro` still creates and writes the
    -shm (and an empty -wal) of a WAL database, measured on 3.40, so a state with no -wal
    (closed cleanly) is opened `immutable`, which touches nothing; one with a -wal
    (a worker running, or killed) needs the shared memory to read it consistently."""
    if not path.exists():
        raise StateIOError(str(path), "does not exist")
    uri = path.resolve().as_uri()
    if has_wal(path):
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
def snapshot_source(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a copy of `path` that no other file depends on (dry runs): the
    file as it is when there is no -wal; else the db and its -wal copied to a private
    temporary folder, where SQLite replays the WAL without touching the originals."""
    if not has_wal(path):
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


def create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (secrets never go in it, but
    customer emails and addresses do)."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    path.chmod(0o600)


PAGE_SIZE = 16384


def open_writable(path: Path) -> sqlite3.Connection:
    """The worker's connection: the folder and a private file made first, a newer schema
    refused before anything is written (-wal and -shm included), WAL journal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    check_header(path)
    refuse_newer(path)
    new = not path.exists() or path.stat().st_size == 0
    create_private(path)
    old_umask = os.umask(0o077)  # -wal and -shm files: owner only, like the db
    try:
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False)
    finally:
        os.umask(old_umask)
    # A new file only (an existing one keeps its own). A stored Loop return is about
    # 2.3 KB: on 4 KiB pages each row spills to an overflow page, on 16 KiB pages it
    # fits, and ingest writes about a third fewer bytes (BENCHMARKS.md, 1).
    if new:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def open_memory_copy(source: Path | None) -> sqlite3.Connection:
    """A private in-memory database, holding a copy of `source` if it exists (dry runs:
    identical decisions, nothing persists)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    if source is not None and source.exists():
        check_header(source)
        with snapshot_source(source) as src:
            src.backup(conn)
    return conn
