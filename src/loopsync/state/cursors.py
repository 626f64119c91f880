"""Ingest cursors: per (stream, state), the time read up to (`done_until`) and the window
in progress with its saved page, so a killed run resumes at the page it was on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from loopsync.redaction import contains_secret
from loopsync.state.db import Db, integer, text
from loopsync.timeutil import iso, parse_timestamp


@dataclass(frozen=True)
class Cursor:
    stream: str
    state: str
    done_until: datetime | None
    window_from: datetime | None
    window_to: datetime | None
    page_cursor: str | None


@dataclass(frozen=True)
class CursorRow:
    """A cursor as stored (`loopsync status`): timestamps are the stored ISO texts."""

    stream: str
    state: str
    done_until: str | None
    window_from: str | None
    window_to: str | None
    page_cursor: str | None
    pages: int | None
    updated_at: str | None


_UPSERT = (
    "insert into cursors (stream, state, done_until, window_from, window_to, "
    "page_cursor, updated_at) values (?, ?, ?, ?, ?, ?, ?) "
    "on conflict (stream, state) do update set done_until = excluded.done_until, "
    "window_from = excluded.window_from, window_to = excluded.window_to, "
    "page_cursor = excluded.page_cursor, updated_at = excluded.updated_at"
)


def _ts(value: object) -> datetime | None:
    return parse_timestamp(str(value)) if value else None


class CursorRepository:
    def __init__(self, db: Db) -> None:
        self.db = db

    def get(self, stream: str, state: str) -> Cursor:
        r = self.db.one(
            "select done_until, window_from, window_to, page_cursor from cursors "
            "where stream = ? and state = ?",
            [stream, state],
        )
        if r is None:
            return Cursor(stream, state, None, None, None, None)
        return Cursor(stream, state, _ts(r[0]), _ts(r[1]), _ts(r[2]), text(r[3]))

    def all(self) -> list[CursorRow]:
        return [
            CursorRow(
                str(r[0]),
                str(r[1]),
                text(r[2]),
                text(r[3]),
                text(r[4]),
                text(r[5]),
                None if r[6] is None else integer(r[6]),
                text(r[7]),
            )
            for r in self.db.execute(
                "select stream, state, done_until, window_from, window_to, page_cursor, "
                "pages, updated_at from cursors order by stream, state"
            )
        ]

    def _upsert(
        self,
        stream: str,
        state: str,
        done_until: datetime | None,
        window_from: datetime | None,
        window_to: datetime | None,
        page_cursor: str | None,
    ) -> None:
        self.db.execute(
            _UPSERT,
            [
                stream,
                state,
                iso(done_until),
                iso(window_from),
                iso(window_to),
                page_cursor,
                self.db.now(),
            ],
        )

    def save_page(
        self,
        stream: str,
        state: str,
        window_from: datetime,
        window_to: datetime,
        next_cursor: str | None,
    ) -> None:
        """Checkpoint inside a window: the page before `next_cursor` is committed."""
        cur = self.get(stream, state)
        # A cursor echoing a secret is not kept (masked it would be useless): a resume
        # then reads the window again from its start, which loses nothing.
        page = None if next_cursor and contains_secret(next_cursor) else next_cursor
        self._upsert(stream, state, cur.done_until, window_from, window_to, page)
        self.db.execute(
            "update cursors set pages = coalesce(pages, 0) + 1 where stream = ? and state = ?",
            [stream, state],
        )

    def complete_window(self, stream: str, state: str, window_to: datetime) -> None:
        self._upsert(stream, state, window_to, None, None, None)

    def set_done_until(self, stream: str, state: str, done_until: datetime | None) -> None:
        """Reset a cursor to `done_until` with no window in progress (a cursor pulled back
        from the future)."""
        self._upsert(stream, state, done_until, None, None, None)

    def last_updated_at(self, stream: str, state: str) -> datetime | None:
        """The newest `updated_at` stored for a cursor's stream (returns of one state, or
        ASN rows), or None. Where a cursor found in the future is pulled back to."""
        if stream == "returns":
            row = self.db.one("select max(updated_at) from returns where state = ?", [state])
        else:
            row = self.db.one("select max(updated_at) from asn_rows")
        value = row[0] if row else None
        try:
            # Stored texts compare as strings; a fraction of a second may sort wrongly,
            # so step back one second (earlier is the safe side).
            return (
                parse_timestamp(str(value), assume_utc=True) - timedelta(seconds=1)
                if value
                else None
            )
        except (ValueError, OverflowError):
            return None
