"""The webhook inbox (schema 4): each accepted event once, until handled.

  inbox            one row per event: dedup key (UNIQUE), source, topic, subject (a return
                   id or RMA id), body hash, when it happened/arrived/was handled, outcome.
                   No body and no personal data: handling reads the return from the remote.
  webhook_counts   refusals by reason ("refused:<reason>"), added by the listener
  webhook_missed   returns a scheduled cycle found first while webhooks were healthy

`record` commits on its own (the listener answers 2xx only after it returns): an event is
either stored once or not at all; a repeat of its key changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from loopsync.state.db import Db, integer, marks, text

REFUSED = "refused:"


@dataclass(frozen=True)
class InboxRow:
    key: str
    source: str
    topic: str
    subject: str
    alt_subject: str | None
    received_at: str


@dataclass(frozen=True)
class InboxFigures:
    """Webhook health as stored: counts and times (ISO text)."""

    accepted: int
    unhandled: int
    last_event_at: str | None
    last_by_source: Mapping[str, str]
    refused: Mapping[str, int]
    missed: int
    missed_recent: tuple[str, ...]


class InboxRepository:
    def __init__(self, db: Db) -> None:
        self.db = db

    def record(
        self,
        *,
        key: str,
        source: str,
        topic: str,
        subject: str,
        alt_subject: str | None,
        body_hash: str,
        occurred_at: str | None,
    ) -> bool:
        """Store an event; False when its key is already there (a duplicate delivery)."""
        cur = self.db.execute(
            "insert or ignore into inbox (key, source, topic, subject, alt_subject, "
            "body_hash, occurred_at, received_at) values (?, ?, ?, ?, ?, ?, ?, ?)",
            [key, source, topic, subject, alt_subject, body_hash, occurred_at, self.db.now()],
        )
        return cur.rowcount == 1

    def unhandled(self, limit: int = 100) -> list[InboxRow]:
        return [
            InboxRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), text(r[4]), str(r[5]))
            for r in self.db.execute(
                "select key, source, topic, subject, alt_subject, received_at from inbox "
                "where handled_at is null order by received_at, key limit ?",
                [limit],
            )
        ]

    def mark_handled(self, keys: Iterable[str], outcome: str) -> None:
        keys = list(keys)
        self.db.execute(
            f"update inbox set handled_at = ?, outcome = ? "
            f"where handled_at is null and key in ({marks(len(keys))})",
            [self.db.now(), outcome[:200], *keys],
        )

    def has_subject(self, source: str, subject: str) -> bool:
        return (
            self.db.one(
                "select 1 from inbox where source = ? and subject = ? limit 1", [source, subject]
            )
            is not None
        )

    def last_accepted(self, source: str | None = None) -> str | None:
        if source is None:
            row = self.db.one("select max(received_at) from inbox")
        else:
            row = self.db.one("select max(received_at) from inbox where source = ?", [source])
        return text(row[0]) if row else None

    def add_refusals(self, counts: Mapping[str, int]) -> None:
        for reason, n in counts.items():
            self.db.execute(
                "insert into webhook_counts (name, n) values (?, ?) "
                "on conflict (name) do update set n = n + excluded.n",
                [REFUSED + reason, n],
            )

    def note_missed(self, return_ids: Iterable[str]) -> int:
        """Count returns polling found that no webhook announced; each once. Returns how
        many were new."""
        added = 0
        for rid in return_ids:
            cur = self.db.execute(
                "insert or ignore into webhook_missed (return_id, at) values (?, ?)",
                [rid, self.db.now()],
            )
            added += cur.rowcount
        return added

    def first_seen_since(self, since: str) -> list[str]:
        """Loop returns first stored at or after `since` that no Loop event names."""
        return [
            str(r[0])
            for r in self.db.execute(
                "select id from returns where first_seen_at >= ? and id not in "
                "(select subject from inbox where source = 'loop') order by id",
                [since],
            )
        ]

    def figures(self) -> InboxFigures:
        row = self.db.one(
            "select count(*), sum(handled_at is null), max(received_at) from inbox"
        ) or (0, 0, None)
        by_source = {
            str(s): str(at)
            for s, at in self.db.execute(
                "select source, max(received_at) from inbox group by source order by source"
            )
        }
        refused = {
            str(name).removeprefix(REFUSED): integer(n)
            for name, n in self.db.execute(
                "select name, n from webhook_counts where name like 'refused:%' order by name"
            )
        }
        missed = self.db.one("select count(*) from webhook_missed")
        recent = tuple(
            str(r[0])
            for r in self.db.execute(
                "select return_id from webhook_missed order by at desc, return_id limit 5"
            )
        )
        return InboxFigures(
            integer(row[0]),
            integer(row[1] or 0),
            text(row[2]),
            by_source,
            refused,
            integer(missed[0]) if missed else 0,
            recent,
        )

    def prune(self, handled_before: str) -> int:
        """Drop handled events older than `handled_before` (their keys dedupe no more:
        a replay that old is refused by age, or changes nothing: handling re-reads)."""
        cur = self.db.execute(
            "delete from inbox where handled_at is not null and handled_at < ?", [handled_before]
        )
        return cur.rowcount
