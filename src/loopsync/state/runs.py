"""Runs (one row per cycle: start, end, counts, errors), the stages that failed in each
(schema 3), and problems (records that could not be used, for `loopsync status`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loopsync.errors import TransitionRefused
from loopsync.redaction import redact, redact_optional
from loopsync.state.db import Db, integer, marks, text

# A webhook's run (loopsync.inbox): one return carried through push, poll and act, no
# ingest. It never stands for a scheduled cycle in the merchant's health: with polling
# broken and webhooks flowing, the merchant would look OK while a lost webhook waited
# for a poll that never came.
WEBHOOK_MODE = "webhook"

# kv: when `serve` runs the merchant next (ISO text), written at the end of each cycle.
NEXT_DUE_NAMESPACE = "loopsync.schedule"
NEXT_DUE_KEY = "next_due"


@dataclass(frozen=True)
class RunRow:
    id: str
    started_at: str | None
    ended_at: str | None
    mode: str | None
    status: str | None
    counts: dict[str, Any]
    errors: int
    error: str | None


@dataclass(frozen=True)
class ProblemRow:
    id: int
    return_id: str | None
    stage: str
    message: str
    at: str
    run_id: str | None


@dataclass(frozen=True)
class StageFailureRow:
    run_id: str
    stage: str
    reason: str
    at: str


class RunRepository:
    def __init__(self, db: Db) -> None:
        self.db = db

    def start(self, run_id: str, mode: str) -> None:
        self.db.execute(
            "insert into runs (id, started_at, mode, status, errors) "
            "values (?, ?, ?, 'running', 0)",
            [run_id, self.db.now(), mode],
        )

    def finish(
        self,
        run_id: str,
        status: str,
        counts: dict[str, Any],
        errors: int,
        error: str | None = None,
    ) -> None:
        cur = self.db.execute(
            "update runs set ended_at = ?, status = ?, counts = ?, errors = ?, error = ? "
            "where id = ?",
            [self.db.now(), status, json.dumps(counts), errors, redact_optional(error), run_id],
        )
        if cur.rowcount == 0:
            raise TransitionRefused(f"run {run_id}", status, None)

    def last(self, n: int = 1, *, cycles_only: bool = False) -> list[RunRow]:
        """The latest `n` runs, newest first (`cycles_only`: no webhook's run)."""
        only = "where coalesce(mode, '') != ? " if cycles_only else ""
        return [
            RunRow(
                str(r[0]),
                text(r[1]),
                text(r[2]),
                text(r[3]),
                text(r[4]),
                json.loads(str(r[5])) if r[5] else {},
                integer(r[6]),
                text(r[7]),
            )
            for r in self.db.execute(
                "select id, started_at, ended_at, mode, status, counts, errors, error "
                f"from runs {only}order by started_at desc, rowid desc limit ?",
                [WEBHOOK_MODE, n] if cycles_only else [n],
            )
        ]

    def add_problem(self, rid: str | None, stage: str, message: str, run_id: str | None) -> None:
        self.db.execute(
            "insert into problems (return_id, stage, message, at, run_id) values (?, ?, ?, ?, ?)",
            [rid, stage, redact(message)[:1000], self.db.now(), run_id],
        )

    def problems(self, limit: int = 20) -> list[ProblemRow]:
        """The latest problems, newest first."""
        return [
            ProblemRow(integer(r[0]), text(r[1]), str(r[2]), str(r[3]), str(r[4]), text(r[5]))
            for r in self.db.execute(
                "select id, return_id, stage, message, at, run_id "
                "from problems order by id desc limit ?",
                [limit],
            )
        ]

    def checkpoint(self, run_id: str, counts: dict[str, Any]) -> bool:
        """The running run's counts so far, so `status` during a long cycle shows live
        numbers. Only a run still `running` is updated (a finished row keeps its final
        counts); False when there is none (an engine driven without a run row)."""
        cur = self.db.execute(
            "update runs set counts = ? where id = ? and status = 'running'",
            [json.dumps(counts), run_id],
        )
        return cur.rowcount > 0

    # -- schema 3: stage failures -------------------------------------------------------
    def add_stage_failure(self, run_id: str, stage: str, reason: str) -> None:
        """A stage stopped on a remote failure in this run (the stage guard)."""
        self.db.execute(
            "insert into stage_failures (run_id, stage, reason, at) values (?, ?, ?, ?)",
            [run_id, stage, redact(reason)[:1000], self.db.now()],
        )

    def stage_failures(self, run_ids: list[str]) -> list[StageFailureRow]:
        """The stage failures of these runs, oldest first (none before schema 3)."""
        if not run_ids or not self.has_table("stage_failures"):
            return []
        return [
            StageFailureRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]))
            for r in self.db.execute(
                f"select run_id, stage, reason, at from stage_failures "
                f"where run_id in ({marks(len(run_ids))}) order by id",
                run_ids,
            )
        ]

    def problems_for(self, rid: str) -> list[ProblemRow]:
        """One return's problems, oldest first."""
        return [
            ProblemRow(integer(r[0]), text(r[1]), str(r[2]), str(r[3]), str(r[4]), text(r[5]))
            for r in self.db.execute(
                "select id, return_id, stage, message, at, run_id "
                "from problems where return_id = ? order by id",
                [rid],
            )
        ]

    def first_started(self) -> str | None:
        row = self.db.one("select min(started_at) from runs")
        return text(row[0]) if row else None

    def last_ok(self) -> str | None:
        """When the last fully successful cycle ended: status ok, no error, no stage
        failure (a run row of schema 2 had none to record), not a webhook's run."""
        failed = (
            "and not exists (select 1 from stage_failures f where f.run_id = r.id)"
            if self.has_table("stage_failures")
            else ""
        )
        row = self.db.one(
            "select max(r.ended_at) from runs r where r.status = 'ok' and r.errors = 0 "
            f"and coalesce(r.mode, '') != ? {failed}",
            [WEBHOOK_MODE],
        )
        return text(row[0]) if row else None

    def has_table(self, table: str) -> bool:
        """Is this table there? `status` reads an older file as it is, unmigrated."""
        return (
            self.db.one("select 1 from sqlite_master where type = 'table' and name = ?", [table])
            is not None
        )
