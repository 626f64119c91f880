"""What `loopsync status` (and the status page) says about a merchant: pure decisions over
facts read from its state file, and the typed views they produce. No I/O here: the
reading is `loopsync.status`; every function below is a function of its arguments and
the time `now`, so a verdict can be tested without a database or a clock.

    verdict(facts, now) -> (Verdict, reason)   one word per merchant, first thing shown
    group_problems(...)  -> [ProblemGroup]       count x normalised reason, resolved or not
    ago(moment, now)     -> "4 min ago"

Verdicts, first match wins (an operator acts on the worst):

    BLOCKED      the state file cannot be read, or a remote refused the credentials
    NEVER RUN    no run has been recorded
    STALLED      no fully successful cycle (status ok, no stage failure) for `stalled_after`
    INTERRUPTED  the last run is still marked running but no process holds the lock
    DEGRADED     the last finished cycle had errors
    OK           otherwise

Transient throttling (429, a throttle body: `errors.RateLimited`) is the remote pacing us,
not a problem: stage failures and problem rows that only say so are never grouped.
Every value here carries ids, stages, states, reasons and counts only: never a
customer's name, email or address.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from loopsync.state.runs import WEBHOOK_MODE
from loopsync.timeutil import iso


class Verdict(enum.StrEnum):
    OK = "OK"
    DEGRADED = "DEGRADED"  # the last cycle had errors
    STALLED = "STALLED"  # no fully successful cycle within the threshold
    BLOCKED = "BLOCKED"  # credentials refused, or the state file unreadable
    INTERRUPTED = "INTERRUPTED"  # a run died mid-cycle (running, and no lock held)
    NEVER_RUN = "NEVER RUN"


# Verdicts that page someone (`status --check`, `/readyz`).
ALERTING = frozenset({Verdict.STALLED, Verdict.BLOCKED})


class EventKind(enum.StrEnum):
    """What happened to a return, in its story."""

    INGESTED = "ingested"
    PUSHED = "pushed"
    POLLED = "polled"
    DECIDED = "decided"
    EFFECT = "effect"
    PROBLEM = "problem"
    STAGE = "stage"


@dataclass(frozen=True)
class StageFailure:
    """A stage that stopped on a remote failure in one run (the stage guard)."""

    run_id: str
    stage: str
    reason: str
    at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "stage": self.stage,
            "reason": self.reason,
            "at": iso(self.at),
        }


@dataclass(frozen=True)
class RunView:
    id: str
    started_at: datetime | None
    ended_at: datetime | None
    status: str  # ok, errors, refused, stopped, crashed, failed,
    # running, interrupted (running and no lock held)
    counts: Mapping[str, int]
    errors: int
    stage_failures: tuple[StageFailure, ...] = ()
    mode: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ("running", "interrupted")

    @property
    def cycle(self) -> bool:
        """A cycle, not a webhook's run (which never speaks for the merchant's health)."""
        return self.mode != WEBHOOK_MODE

    @property
    def fully_ok(self) -> bool:
        """A cycle that ran to its end with no error and no stage failure."""
        return self.status == "ok" and self.errors == 0 and not self.stage_failures

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "status": self.status,
            "counts": dict(self.counts),
            "errors": self.errors,
            "stage_failures": [f.to_json() for f in self.stage_failures],
            "mode": self.mode,
            "error": self.error,
        }


@dataclass(frozen=True)
class ProblemFact:
    """One problem row (a record that could not be used), as stored."""

    return_id: str | None
    stage: str
    message: str
    at: datetime | None
    run_id: str | None = None


@dataclass(frozen=True)
class ReturnPlace:
    """Where a return stands now (its pipeline stage), for resolving its problems."""

    stage: str
    stage_at: datetime | None = None


@dataclass(frozen=True)
class ProblemGroup:
    stage: str
    reason: str  # normalised: ids and numbers replaced
    count: int
    recent_ids: tuple[str, ...]  # newest first, at most RECENT_IDS
    first_seen: datetime | None
    last_seen: datetime | None
    resolved: bool  # every cause in it went away

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "reason": self.reason,
            "count": self.count,
            "recent_ids": list(self.recent_ids),
            "first_seen": iso(self.first_seen),
            "last_seen": iso(self.last_seen),
            "resolved": self.resolved,
        }


@dataclass(frozen=True)
class CredentialsRefused:
    system: str
    failures: int
    first_at: datetime | None
    retry_at: datetime | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "failures": self.failures,
            "first_at": iso(self.first_at),
            "retry_at": iso(self.retry_at),
            "message": self.message,
        }


@dataclass(frozen=True)
class Facts:
    """What the state file says, read once (`status.read_facts`); the verdict's input."""

    every: timedelta
    stalled_after: timedelta
    state_error: str | None = None
    runs: tuple[RunView, ...] = ()  # newest first
    first_run_at: datetime | None = None
    last_ok_at: datetime | None = None  # the last fully successful cycle's end
    refusal: CredentialsRefused | None = None
    next_due: datetime | None = None


@dataclass(frozen=True)
class WebhookView:
    """A merchant's webhook health, from its inbox: the last event, events accepted and
    refused (by reason), and returns polling found that webhooks missed (worth alerting
    on: `loopsync_webhook_missed_returns`)."""

    healthy: bool  # every sender with a secret was heard within webhooks.healthy_within
    accepted: int
    unhandled: int
    last_event_at: datetime | None
    last_by_source: Mapping[str, datetime | None] = field(default_factory=dict)
    refused: Mapping[str, int] = field(default_factory=dict)
    missed: int = 0
    missed_recent: tuple[str, ...] = ()
    silent: tuple[str, ...] = ()  # senders with a secret not heard within healthy_within

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "silent": list(self.silent),
            "accepted": self.accepted,
            "unhandled": self.unhandled,
            "last_event_at": iso(self.last_event_at),
            "last_by_source": {k: iso(v) for k, v in self.last_by_source.items()},
            "refused": dict(self.refused),
            "missed_by_webhooks": self.missed,
            "missed_recent": list(self.missed_recent),
        }

    def lines(self, now: datetime) -> list[str]:
        refused = ", ".join(f"{k} {n}" for k, n in sorted(self.refused.items())) or "none"
        last = ago(self.last_event_at, now) if self.last_event_at else "never"
        silent = f" (silent: {', '.join(self.silent)})" if self.silent else ""
        lines = [
            f"  webhooks {'healthy' if self.healthy else 'not healthy'}{silent}; last event {last};"
            f" accepted {self.accepted} ({self.unhandled} not handled yet); refused {refused}"
        ]
        if self.missed:
            lines.append(
                f"  webhooks missed {self.missed} return(s) polling found"
                f" (recent: {', '.join(self.missed_recent)})"
            )
        return lines


@dataclass(frozen=True)
class MerchantView:
    merchant: str
    warehouse: str
    state_path: str  # absolute
    verdict: Verdict
    reason: str
    now: datetime
    last_run: RunView | None = None
    last_ok_at: datetime | None = None
    next_due: datetime | None = None
    backlog: Mapping[str, int] = field(default_factory=dict)  # return stage -> count
    problems: tuple[ProblemGroup, ...] = ()
    recent_runs: tuple[RunView, ...] = ()
    refusal: CredentialsRefused | None = None
    schema_version: int | None = None
    effects: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # kind->status->n
    waiting: tuple[tuple[str, str, str], ...] = ()  # (return id, stage, reason)
    webhooks: WebhookView | None = None  # None: no webhook secret and no event

    def to_json(self) -> dict[str, Any]:
        return {
            "merchant": self.merchant,
            "warehouse": self.warehouse,
            "state_path": self.state_path,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "now": iso(self.now),
            "last_run": self.last_run.to_json() if self.last_run else None,
            "last_ok_at": iso(self.last_ok_at),
            "last_ok_ago": ago(self.last_ok_at, self.now),
            "next_due": iso(self.next_due),
            "backlog": dict(self.backlog),
            "problems": [p.to_json() for p in self.problems],
            "recent_runs": [r.to_json() for r in self.recent_runs],
            "credentials": self.refusal.to_json() if self.refusal else None,
            "schema_version": self.schema_version,
            "effects": {k: dict(v) for k, v in self.effects.items()},
            "waiting": [{"id": i, "stage": s, "reason": r} for i, s, r in self.waiting],
            "webhooks": self.webhooks.to_json() if self.webhooks else None,
        }


@dataclass(frozen=True)
class StoryEvent:
    at: datetime | None
    kind: EventKind
    text: str  # ids, states and reasons only

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "kind": str(self.kind), "text": self.text}


@dataclass(frozen=True)
class ReturnStory:
    return_id: str
    rma_id: str | None
    stage: str
    events: tuple[StoryEvent, ...]  # oldest first
    wait_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "return_id": self.return_id,
            "rma_id": self.rma_id,
            "stage": self.stage,
            "events": [e.to_json() for e in self.events],
            "wait_reason": self.wait_reason,
        }

    def lines(self) -> list[str]:
        head = f"return {self.return_id}" + (f"  RMA {self.rma_id}" if self.rma_id else "")
        out = [f"{head}  stage {self.stage}"]
        out += [f"  {_stamp(e.at):<19}  {e.kind:<8}  {e.text}" for e in self.events]
        out.append(f"  now: {self.wait_reason or 'nothing to wait for (done)'}")
        return out


@dataclass(frozen=True)
class HourCount:
    hour: datetime  # the hour's start (UTC)
    processed: int
    flagged: int

    def to_json(self) -> dict[str, Any]:
        return {"hour": iso(self.hour), "processed": self.processed, "flagged": self.flagged}


def _stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


# -- ages -------------------------------------------------------------------------------
def ago(moment: datetime | None, now: datetime) -> str | None:
    """ "4 min ago", "2 h ago", "in 3 min" (a moment ahead of now); None stays None."""
    if moment is None:
        return None
    seconds = int((now - moment).total_seconds())
    text = _span(abs(seconds))
    return f"{text} ago" if seconds >= 0 else f"in {text}"


def _span(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min".replace(" 0 min", "")
    return f"{seconds // 86400} days"


# -- the verdict ------------------------------------------------------------------------
def verdict(facts: Facts, now: datetime) -> tuple[Verdict, str]:
    """The merchant's verdict and its reason (see the module docstring for the order)."""
    if facts.state_error is not None:
        return Verdict.BLOCKED, f"state unreadable: {facts.state_error}"
    if facts.refusal is not None:
        r = facts.refusal
        return Verdict.BLOCKED, (
            f"credentials refused by {r.system} ({r.failures} in a row); "
            f"next try after {iso(r.retry_at)}: {r.message}"
        )
    if not facts.runs:
        return Verdict.NEVER_RUN, "no cycle has run yet"
    stalled = _stalled(facts, now)
    if stalled is not None:
        return Verdict.STALLED, stalled
    last = facts.runs[0]
    if last.status == "interrupted":
        return Verdict.INTERRUPTED, (
            f"run {last.id} started {ago(last.started_at, now)} "
            "ended without finishing (the process died)"
        )
    if not any(r.cycle for r in facts.runs):
        return Verdict.NEVER_RUN, "no cycle has run yet (only webhooks' runs)"
    finished = next((r for r in facts.runs if r.finished and r.cycle), None)
    if finished is not None and not finished.fully_ok:
        return Verdict.DEGRADED, _degraded_reason(finished)
    return Verdict.OK, f"last successful cycle {ago(facts.last_ok_at, now) or 'running now'}"


def _stalled(facts: Facts, now: datetime) -> str | None:
    since = facts.last_ok_at or facts.first_run_at
    if since is None or now - since <= facts.stalled_after:
        return None
    limit = _span(int(facts.stalled_after.total_seconds()))
    if facts.last_ok_at is None:
        return f"no successful cycle since the first run {ago(since, now)} (limit {limit})"
    return f"no successful cycle since {ago(since, now)} (limit {limit})"


def _degraded_reason(run: RunView) -> str:
    if run.stage_failures:
        return "; ".join(f"{f.stage} failed: {f.reason}" for f in run.stage_failures)
    if run.error:
        return f"last cycle {run.status}: {run.error}"
    return f"last cycle {run.status} with {run.errors} error(s) (see problems)"


# -- problems ---------------------------------------------------------------------------
RECENT_IDS = 5

# A throttling answer: the remote pacing us, not a fault. The words every connector reads as
# throttling (errors.RateLimited): HTTP 429, ShipHero's "not enough credits", PeopleVox's and
# Xoro's throttle wordings (connectors/*/wire.py).
_THROTTLED = re.compile(
    r"\bHTTP 429\b|rate[ -]?limit|throttl|too many (?:requests|calls)|"
    r"request limit|not enough credits",
    re.I,
)
# What varies between records of one cause: uuids, long hex or digit runs, quoted values.
# An HTTP status stays: "HTTP 503" and "HTTP 422" are different causes.
_VARYING = re.compile(
    r"'[^']*'|\"[^\"]*\"|\b[0-9a-f]{8}-[0-9a-f-]{27,}\b|\b(?=[0-9a-f]*\d)"
    r"[0-9a-f]{8,}\b|(?<!HTTP )\b\d+(?:\.\d+)?|(?<=[a-z_-])\d+",
    re.I,
)


def is_throttling(reason: str) -> bool:
    return bool(_THROTTLED.search(reason))


def normalise(reason: str) -> str:
    """The cause of a problem without the record's own ids and numbers, so that the same
    cause groups: "order 1234 not found" and "order 98 not found" -> "order # not found"."""
    return " ".join(_VARYING.sub("#", reason).split())[:300]


# Where each return stage stands in the pipeline: a problem of stage S is gone once its
# return stands past S (a push problem, once the return has an RMA; done: all are gone).
_PLACE = {
    "new": 1,
    "waiting": 1,
    "pushing": 1,
    "skipped": 1,
    "stale": 1,
    "rejected": 1,
    "open": 2,
    "acting": 3,
    "reported": 3,
    "done": 9,
}
_STAGE_RANK = {"ingest": 0, "asn": 0, "push": 1, "poll": 2, "act": 3}


def problem_resolved(p: ProblemFact, place: ReturnPlace | None) -> bool:
    if place is None:
        return False
    return _PLACE.get(place.stage, 0) > _STAGE_RANK.get(p.stage, 9)


def failure_resolved(f: StageFailure, runs: Sequence[RunView]) -> bool:
    """A stage failure is gone once a later run ran that stage to its end."""
    return any(
        r.status in ("ok", "errors")
        and r.started_at is not None
        and f.at is not None
        and r.started_at > f.at
        and all(g.stage != f.stage for g in r.stage_failures)
        for r in runs
    )


def group_problems(
    problems: Sequence[ProblemFact], places: Mapping[str, ReturnPlace], runs: Sequence[RunView]
) -> list[ProblemGroup]:
    """Problems and stage failures grouped by (stage, normalised reason), open groups
    first then the most recent. Throttling is left out (see the module docstring)."""
    items: list[tuple[str, str, str | None, datetime | None, bool]] = []
    for p in problems:
        if not is_throttling(p.message):
            resolved = problem_resolved(p, places.get(p.return_id) if p.return_id else None)
            items.append((p.stage, p.message, p.return_id, p.at, resolved))
    items.extend(
        (f.stage, f.reason, None, f.at, failure_resolved(f, runs))
        for run in runs
        for f in run.stage_failures
        if not is_throttling(f.reason)
    )
    groups: dict[tuple[str, str], list[tuple[str | None, datetime | None, bool]]] = {}
    for stage, message, rid, at, resolved in items:
        groups.setdefault((stage, normalise(message)), []).append((rid, at, resolved))
    out = [_group(stage, reason, members) for (stage, reason), members in groups.items()]
    return sorted(
        out, key=lambda g: (g.resolved, -(g.last_seen.timestamp() if g.last_seen else 0.0))
    )


def _group(
    stage: str, reason: str, members: list[tuple[str | None, datetime | None, bool]]
) -> ProblemGroup:
    times = [at for _, at, _ in members if at is not None]
    newest = sorted(members, key=lambda m: m[1].timestamp() if m[1] else 0.0, reverse=True)
    ids: list[str] = []
    for rid, _, _ in newest:
        if rid and rid not in ids and len(ids) < RECENT_IDS:
            ids.append(rid)
    return ProblemGroup(
        stage,
        reason,
        len(members),
        tuple(ids),
        min(times, default=None),
        max(times, default=None),
        all(r for _, _, r in members),
    )


# -- a return's story and the outcome chart -----------------------------------------------
_WAITS = {
    "new": "waiting for the push stage to evaluate it",
    "waiting": "waiting for the warehouse to know the order",
    "pushing": "the RMA create is being established (looked up next cycle)",
    "open": "waiting for the warehouse to receive it (polled each cycle)",
    "acting": "the Loop actions decided are under way",
    "reported": "needs a person",
    "stale": "waited too long for the warehouse: needs a person",
    "rejected": "rejected: needs a person",
    "skipped": "not for this warehouse",
}


def wait_reason(stage: str, reason: str | None) -> str | None:
    """What the return waits for now (None when done)."""
    if stage == "done":
        return None
    what = _WAITS.get(stage, f"stage {stage}")
    return f"{what}: {reason}" if reason else what


def hour_counts(
    seen: Mapping[tuple[datetime, str], int], start: datetime, hours: int
) -> list[HourCount]:
    """Every hour from `start`, with the processed and flagged counted in it (0 if none)."""
    out = []
    for i in range(hours):
        hour = start + timedelta(hours=i)
        out.append(HourCount(hour, seen.get((hour, "process"), 0), seen.get((hour, "flag"), 0)))
    return out


# -- text ---------------------------------------------------------------------------------
def view_lines(v: MerchantView) -> list[str]:
    """The verdict block `loopsync status` prints first for a merchant."""
    lines = [
        f"{v.merchant}  {v.verdict}  ({v.warehouse})",
        f"  state {v.state_path}",
        f"  reason {v.reason}",
    ]
    when = [f"last successful {ago(v.last_ok_at, v.now) or 'never'}"]
    if v.last_run is not None:  # its counts are in the details below
        when.append(f"last started {ago(v.last_run.started_at, v.now)} ({v.last_run.status})")
    if v.next_due is not None:
        when.append(f"next due {ago(v.next_due, v.now)} ({iso(v.next_due)})")
    lines.append("  cycles " + "; ".join(when))
    if v.backlog:
        lines.append("  backlog " + ", ".join(f"{k} {n}" for k, n in sorted(v.backlog.items())))
    if v.webhooks is not None:
        lines += v.webhooks.lines(v.now)
    lines += _group_lines(v)
    return lines


def _group_lines(v: MerchantView) -> list[str]:
    open_groups = [g for g in v.problems if not g.resolved]
    resolved = [g for g in v.problems if g.resolved]
    lines = [
        f"  problem {g.count} x {g.stage}: {g.reason}"
        + (f"  (ids {', '.join(g.recent_ids)})" if g.recent_ids else "")
        + f"  first {ago(g.first_seen, v.now)}, last {ago(g.last_seen, v.now)}"
        for g in open_groups
    ]
    if resolved:
        lines.append(
            f"  resolved {sum(g.count for g in resolved)} problem(s) in "
            f"{len(resolved)} group(s): their cause went away"
        )
    return lines
