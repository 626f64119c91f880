"""The effects ledger: every remote side effect, its intent recorded before the call and
its outcome after, so a run killed between the two looks the outcome up instead of
repeating the call.

An effect moves only along named transitions, each one guarded: `UPDATE ... WHERE status
IN (allowed)` with a row-count check, so a transition from the wrong status raises
`TransitionRefused` and changes nothing.

    plan      (none)            -> pending    a no-op when the key is already known
    intent    pending, intent   -> intent     attempt counted; committed before the call
    not_sent  intent            -> pending    the call certainly did not reach the remote
    error     intent            -> intent     transient failure: stays armed, error noted
    outcome   pending, intent   -> succeeded | settled | failed

A row whose `kind` this version does not know (a newer loopsync wrote it) is still read,
its kind kept as the stored text, so the act stage fails it with a problem row instead of
every read of the ledger failing on it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from loopsync.errors import TransitionRefused
from loopsync.redaction import dumps_redacted, redact_optional
from loopsync.state.db import Db, integer, marks


class EffectStatus(enum.StrEnum):
    PENDING = "pending"  # decided, not yet attempted
    INTENT = "intent"  # attempt started: the outcome is unknown until recorded
    SUCCEEDED = "succeeded"  # the call took effect (schema 1 called this "done")
    SETTLED = "settled"  # the remote was already in the wanted state (or refused for state)
    FAILED = "failed"  # permanent failure; recorded, not retried


class EffectKind(enum.StrEnum):
    CREATE_RMA = "create_rma"  # the warehouse RMA (push stage)
    NOTE = "note"  # a note on the Loop return
    PROCESS = "process"  # process the return in Loop
    FLAG = "flag"  # flag it for review
    GRADE = "grade"  # grade its line items (disposition)
    ASSESS = "assess"  # assess its line items (disposition)


UNSETTLED = (EffectStatus.PENDING, EffectStatus.INTENT)
OUTCOMES = frozenset({EffectStatus.SUCCEEDED, EffectStatus.SETTLED, EffectStatus.FAILED})


@dataclass(frozen=True)
class Effect:
    """One ledger row; `payload` and `result` decoded. `seq` orders effects as planned.

    `kind` is an EffectKind, or the stored text of a kind this version does not know.
    `payload` is the call's arguments as planned, a JSON object ({} when none)."""

    key: str
    return_id: str
    kind: EffectKind | str
    status: EffectStatus
    attempts: int
    last_error: str | None
    result: Any
    payload: dict[str, Any]
    created_at: str
    updated_at: str
    seq: int


_COLUMNS = (
    "key, return_id, kind, status, attempts, last_error, result, payload, created_at, "
    "updated_at, rowid"
)


def _decode(value: object) -> Any:
    return json.loads(str(value)) if value else None


def effect_kind(value: object) -> EffectKind | str:
    """The EffectKind of a stored `kind`; an unknown one stays its text (see the docstring)."""
    try:
        return EffectKind(str(value))
    except ValueError:
        return str(value)


def _payload(value: object) -> dict[str, Any]:
    decoded = _decode(value)
    return decoded if isinstance(decoded, dict) else {}


def _effect(r: tuple[Any, ...]) -> Effect:
    return Effect(
        str(r[0]),
        str(r[1]),
        effect_kind(r[2]),
        EffectStatus(r[3]),
        integer(r[4]),
        r[5],
        _decode(r[6]),
        _payload(r[7]),
        str(r[8]),
        str(r[9]),
        integer(r[10]),
    )


class Ledger:
    def __init__(self, db: Db) -> None:
        self.db = db

    def get(self, key: str) -> Effect | None:
        row = self.db.one(f"select {_COLUMNS} from effects where key = ?", [key])
        return _effect(row) if row else None

    def plan(
        self, key: str, rid: str, kind: EffectKind, payload: dict[str, Any] | None = None
    ) -> None:
        """Record a decided side effect (pending); a no-op if it is already known."""
        self._insert(key, rid, EffectKind(kind), payload)

    def intent(
        self, key: str, rid: str, kind: EffectKind | str, payload: dict[str, Any] | None = None
    ) -> None:
        """Mark the attempt as started, before the remote call (committed on its own).
        `kind` may be the text of an unknown kind as read (`effect_kind`): such a row is
        attempted, and failed, through the same transitions as any other."""
        self._insert(key, rid, kind, payload)
        self._move(key, EffectStatus.INTENT, UNSETTLED, "attempts = attempts + 1", [])

    def _insert(
        self, key: str, rid: str, kind: EffectKind | str, payload: dict[str, Any] | None
    ) -> None:
        now = self.db.now()
        self.db.execute(
            "insert or ignore into effects (key, return_id, kind, status, attempts, payload, "
            "created_at, updated_at) values (?, ?, ?, ?, 0, ?, ?, ?)",
            [key, rid, str(kind), EffectStatus.PENDING.value, dumps_redacted(payload), now, now],
        )

    def outcome(
        self, key: str, status: EffectStatus, *, result: Any = None, error: str | None = None
    ) -> None:
        """Record how the call ended: succeeded, settled or failed."""
        status = EffectStatus(status)
        assert status in OUTCOMES, status
        self._move(
            key,
            status,
            UNSETTLED,
            "result = ?, last_error = ?",
            [dumps_redacted(result) if result is not None else None, redact_optional(error)],
        )

    def not_sent(self, key: str, error: str) -> None:
        """The call certainly did not reach the remote: back to pending, no lookup needed."""
        self._move(
            key,
            EffectStatus.PENDING,
            (EffectStatus.INTENT,),
            "last_error = ?",
            [redact_optional(error)],
        )

    def error(self, key: str, error: str) -> None:
        """A transient failure: the intent stays armed (outcome unknown), error noted."""
        self._move(
            key,
            EffectStatus.INTENT,
            (EffectStatus.INTENT,),
            "last_error = ?",
            [redact_optional(error)],
        )

    def _move(
        self,
        key: str,
        to: EffectStatus,
        allowed: tuple[EffectStatus, ...],
        sets: str,
        args: list[object],
    ) -> None:
        cur = self.db.execute(
            f"update effects set status = ?, {sets}, updated_at = ? "
            f"where key = ? and status in ({marks(len(allowed))})",
            [to.value, *args, self.db.now(), key, *(s.value for s in allowed)],
        )
        if cur.rowcount == 0:
            found = self.db.one("select status from effects where key = ?", [key])
            raise TransitionRefused(
                f"effect {key}", to.value, None if found is None else str(found[0])
            )

    def for_return(self, rid: str) -> list[Effect]:
        return [
            _effect(r)
            for r in self.db.execute(
                f"select {_COLUMNS} from effects where return_id = ? order by created_at", [rid]
            )
        ]

    def pending(self, rid: str | None = None) -> list[Effect]:
        """Effects not yet settled (pending or intent), in the order they were planned."""
        sql = f"select {_COLUMNS} from effects where status in (?, ?)"
        args: list[object] = [s.value for s in UNSETTLED]
        if rid is not None:
            sql += " and return_id = ?"
            args.append(rid)
        return [_effect(r) for r in self.db.execute(sql + " order by rowid", args)]

    def counts(self) -> dict[EffectKind | str, dict[EffectStatus, int]]:
        out: dict[EffectKind | str, dict[EffectStatus, int]] = {}
        for kind, status, n in self.db.execute(
            "select kind, status, count(*) from effects group by 1, 2"
        ):
            out.setdefault(effect_kind(kind), {})[EffectStatus(status)] = integer(n)
        return out

    def outcomes_since(self, since: str) -> list[tuple[str, str]]:
        """(kind, when) of every PROCESS or FLAG that succeeded at or after `since`, for
        the processed/flagged per hour chart."""
        return [
            (str(k), str(at))
            for k, at in self.db.execute(
                "select kind, updated_at from effects where kind in (?, ?) and status = ? "
                "and updated_at >= ?",
                [
                    EffectKind.PROCESS.value,
                    EffectKind.FLAG.value,
                    EffectStatus.SUCCEEDED.value,
                    since,
                ],
            )
        ]
