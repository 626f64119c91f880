"""The connection every repository of the state package shares, and the store's clock.

The connection is in autocommit mode (`isolation_level=None`): a statement outside
`Store.atomic()` commits on its own, one inside it joins the open transaction (the
behaviour sqlite-utils' `execute` gave before the package was split)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from loopsync.timeutil import Clock, iso

Params = Sequence[object]


@dataclass(frozen=True)
class Db:
    conn: sqlite3.Connection
    clock: Clock

    def now(self) -> str:
        return iso(self.clock.now()) or ""

    def execute(self, sql: str, params: Params = ()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def one(self, sql: str, params: Params = ()) -> tuple[object, ...] | None:
        row: tuple[object, ...] | None = self.conn.execute(sql, params).fetchone()
        return row


def marks(n: int) -> str:
    """`?, ?, ...` for an `IN (...)` of n values."""
    return ", ".join("?" * n)


def text(value: object) -> str | None:
    """A TEXT column's value (None stays None)."""
    return None if value is None else str(value)


def integer(value: object) -> int:
    return int(value) if isinstance(value, (int, str)) else 0
